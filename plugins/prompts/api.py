"""The prompts admin API, scoped to the caller's tenant (Respan's paths, trailing slash optional):

``GET|POST          /api/prompts/``                        list; create ``{name, description?, prompt_id?}``
``GET|PATCH|DELETE  /api/prompts/{id}/``                   one prompt; rename/describe; delete with its versions
``GET|POST          /api/prompts/{id}/versions/``          list; add a version (``deploy: true`` deploys it)
``GET|PATCH         /api/prompts/{id}/versions/{n}/``      one version; ``{"deploy": true}`` makes it live

Reads need a gateway key; changes need an admin key (``admin = true`` in ``[auth]``). Prompts of the
folder are read here too (``source: "file"``) and cannot be changed through the API (409).
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from respan_gateway import BadRequest, Gateway, GatewayError, NotFound, json_body
from respan_gateway.database import StoreUnavailable
from respan_gateway.errors import PermissionDenied

from .catalog import Prompts
from .middleware import PromptsMiddleware, PromptStoreDown
from .model import Invalid, Prompt, Version, check_prompt_id, prompt_to_api, version_from_api, version_to_api

_encode = msgspec.json.Encoder().encode


class ReadOnlyPrompt(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "prompt_read_only"


def _json(status: int, body: Any) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


async def _context(request: Request, *, write: bool = False) -> tuple[PromptsMiddleware, str]:
    gateway: Gateway = request.app.state.gateway
    principal = await gateway.authenticate(request.headers)
    middleware = dict(gateway.middlewares).get("prompts")  # this plugin's own middleware
    if not isinstance(middleware, PromptsMiddleware):
        raise NotFound("the prompts API needs the `prompts` middleware running")
    if write and not principal.admin:
        raise PermissionDenied("changing prompts needs an admin key (`admin = true` in [auth])")
    return middleware, principal.tenant


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"`{name}` is required", param=name)
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(f"`{name}` must be a{' non-empty' if required else ''} string", param=name)
    return value


def _store(prompts: Prompts) -> Any:
    if prompts.store is None:
        raise NotFound("the prompts API needs the gateway's database")
    return prompts.store


async def _prompt(prompts: Prompts, tenant: str, prompt_id: str, *, write: bool = False) -> Prompt:
    """The prompt as the tenant sees it (a 404 naming it), read from the store (not the cache)."""
    file = prompts.file_prompt(tenant, prompt_id)
    if file is not None:
        if write:
            raise ReadOnlyPrompt(f"prompt `{prompt_id}` comes from the prompts folder ({os.path.basename(file.path or '')}): "
                                 "change the file, not the API")
        return file
    found = await _store(prompts).load(tenant, prompt_id)
    if found is None:
        raise NotFound(f"prompt `{prompt_id}` not found", param="prompt_id", code="prompt_not_found")
    return found


def _version_number(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"no version `{raw}`: versions are numbers", code="prompt_version_not_found")
    return int(raw)


def _guard(handler: Any) -> Any:
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except StoreUnavailable as exc:
            raise PromptStoreDown(f"the prompt store is unavailable ({exc}); retry shortly") from None
        except Invalid as exc:
            raise BadRequest(str(exc), param=exc.key or None) from None

    guarded.__name__ = handler.__name__
    return guarded


# -- prompts ----------------------------------------------------------------------------------------

@_guard
async def prompts_collection(request: Request) -> Response:
    if request.method == "GET":
        middleware, tenant = await _context(request)
        infos = await middleware.prompts.list_prompts(tenant)
        results = [{"id": i.prompt_id, **msgspec.to_builtins(i)} for i in infos]
        return _json(200, {"count": len(results), "next": None, "previous": None, "results": results})
    middleware, tenant = await _context(request, write=True)
    body = await json_body(request)
    name = _text(body, "name", required=True)
    prompt_id = body.get("prompt_id")
    prompt_id = check_prompt_id(prompt_id) if prompt_id is not None else os.urandom(4).hex()
    prompts = middleware.prompts
    if prompts.file_prompt(tenant, prompt_id) is not None:
        raise ReadOnlyPrompt(f"prompt `{prompt_id}` is the id of a prompt of the prompts folder")
    if not await _store(prompts).create(tenant, prompt_id, name or "", _text(body, "description") or ""):
        raise GatewayError(f"prompt `{prompt_id}` already exists", status=409, type="invalid_request_error",
                           param="prompt_id", code="prompt_exists")
    prompts.forget(tenant, prompt_id)
    return _json(201, prompt_to_api(await _prompt(prompts, tenant, prompt_id)))


@_guard
async def prompt_item(request: Request) -> Response:
    prompt_id = request.path_params["prompt_id"]
    write = request.method != "GET"
    middleware, tenant = await _context(request, write=write)
    prompts = middleware.prompts
    prompt = await _prompt(prompts, tenant, prompt_id, write=write)
    if request.method == "GET":
        out = prompt_to_api(prompt)
        deployed = prompt.pick(None)
        out["deployed"] = version_to_api(prompt_id, deployed.info, True) if deployed is not None else None
        return _json(200, out)
    store = _store(prompts)
    if request.method == "DELETE":
        await store.delete(tenant, prompt_id)
        prompts.forget(tenant, prompt_id)
        return Response(status_code=204)
    body = await json_body(request)
    changes = {}
    for name in ("name", "description"):
        if name in body:
            changes[name] = _text(body, name, required=name == "name")
    unknown = sorted(set(body) - {"name", "description"})
    if unknown:
        raise BadRequest(f"`{unknown[0]}` cannot be changed here (name and description can; versions have their own API)",
                         param=unknown[0])
    if changes:
        await store.update(tenant, prompt_id, changes)
        prompts.forget(tenant, prompt_id)
    return _json(200, prompt_to_api(await _prompt(prompts, tenant, prompt_id)))


# -- versions ---------------------------------------------------------------------------------------

@_guard
async def versions_collection(request: Request) -> Response:
    prompt_id = request.path_params["prompt_id"]
    write = request.method == "POST"
    middleware, tenant = await _context(request, write=write)
    prompts = middleware.prompts
    prompt = await _prompt(prompts, tenant, prompt_id, write=write)
    if request.method == "GET":
        results = [version_to_api(prompt_id, v, v.deployed) for v in prompt.version_infos()]
        return _json(200, {"count": len(results), "next": None, "previous": None, "results": results})
    body = await json_body(request)
    deploy = body.get("deploy", False)
    if not isinstance(deploy, bool):
        raise BadRequest("`deploy` must be a boolean", param="deploy")
    info = version_from_api(body, 0, 0.0)
    from .engine import compile_version  # Jinja, once a version is made

    compile_version(middleware.env, Version(info))  # a template that does not compile is a 400 now
    store = _store(prompts)
    stored = await store.add_version(tenant, prompt_id, info)
    if stored is None:
        raise NotFound(f"prompt `{prompt_id}` not found", param="prompt_id", code="prompt_not_found")
    if deploy:
        await store.deploy(tenant, prompt_id, stored.version)
    prompts.forget(tenant, prompt_id)
    return _json(201, version_to_api(prompt_id, stored, deploy))


@_guard
async def version_item(request: Request) -> Response:
    prompt_id = request.path_params["prompt_id"]
    number = _version_number(request.path_params["version"])
    write = request.method == "PATCH"
    middleware, tenant = await _context(request, write=write)
    prompts = middleware.prompts
    prompt = await _prompt(prompts, tenant, prompt_id, write=write)
    version = prompt.versions.get(number)
    if version is None:
        raise NotFound(f"prompt `{prompt_id}` has no version {number}", param="version", code="prompt_version_not_found")
    if request.method == "PATCH":
        body = await json_body(request)
        other = sorted(set(body) - {"deploy"})
        if other:
            raise BadRequest(f"`{other[0]}`: a version cannot be changed once created (add a new version); "
                             "only `deploy` can be set", param=other[0])
        deploy = body.get("deploy")
        if deploy is not None and not isinstance(deploy, bool):
            raise BadRequest("`deploy` must be a boolean", param="deploy")
        if deploy:
            await _store(prompts).deploy(tenant, prompt_id, number)
            prompts.forget(tenant, prompt_id)
            prompt = await _prompt(prompts, tenant, prompt_id)
    return _json(200, version_to_api(prompt_id, version.info, prompt.info.deployed_version == number))


def _paths(path: str) -> list[str]:
    return [path, path.rstrip("/")]


ROUTES: list[tuple[str, Any, list[str]]] = [
    *((p, prompts_collection, ["GET", "POST"]) for p in _paths("/api/prompts/")),
    *((p, prompt_item, ["GET", "PATCH", "DELETE"]) for p in _paths("/api/prompts/{prompt_id}/")),
    *((p, versions_collection, ["GET", "POST"]) for p in _paths("/api/prompts/{prompt_id}/versions/")),
    *((p, version_item, ["GET", "PATCH"]) for p in _paths("/api/prompts/{prompt_id}/versions/{version}/")),
]
