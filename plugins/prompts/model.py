"""What a prompt is: its versions (templates and settings), the deployed one, and how a file or an
API body describes it (validated with errors naming the key)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from respan_gateway import NotFound
from respan_gateway.hookspecs import PromptInfo, PromptVersionInfo

#: What a prompt id may be: it goes in URLs and in log records.
PROMPT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\Z")
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
#: Fields of a version that are not request params.
VERSION_FIELDS = frozenset({"version", "description", "messages", "instructions", "model", "stream", "variables", "params"})
#: Request fields a version's params may not set: the prompt's own, and what makes no sense to store.
FORBIDDEN_PARAMS = frozenset({"prompt", "messages", "input", "instructions", "model", "stream", "system"})


class Invalid(ValueError):
    """A prompt description that cannot be used: ``key`` says where (``versions[1].messages[0].role``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"`{key}`: {message}" if key else message)
        self.key = key
        self.message = message


class VersionSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One ``[[versions]]`` entry of a prompt file."""

    version: int | None = None
    description: str = ""
    messages: list[Any] = []
    instructions: str | None = None
    model: str | None = None
    stream: bool = False
    params: dict[str, Any] = {}
    variables: dict[str, Any] = {}


class PromptFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A prompt file of the prompts folder (TOML or YAML): one prompt with its versions."""

    prompt_id: str | None = None
    name: str | None = None
    description: str = ""
    # The deployed version; default: the newest.
    deployed: int | None = None
    # The tenants that may use it; default: every tenant.
    tenants: list[str] | None = None
    versions: list[VersionSpec]


class Version:
    """One version: its stored description and its templates (compiled on first use, see render.py)."""

    __slots__ = ("info", "compiled")

    def __init__(self, info: PromptVersionInfo) -> None:
        self.info = info
        self.compiled: Any = None

    @property
    def number(self) -> int:
        return self.info.version

    def template_messages(self) -> list[dict[str, Any]]:
        """The messages as written, ``instructions`` as a leading system message."""
        lead = [{"role": "system", "content": self.info.instructions}] if self.info.instructions else []
        return lead + list(self.info.messages)


class Prompt:
    """A prompt with its versions: from a file (``tenants``: who may use it, None = every tenant) or
    from the database (one tenant's)."""

    __slots__ = ("info", "versions", "tenants", "path")

    def __init__(self, info: PromptInfo, versions: list[Version], *, tenants: list[str] | None = None,
                 path: str | None = None) -> None:
        self.info = info
        self.versions = {v.number: v for v in versions}
        self.tenants = frozenset(tenants) if tenants is not None else None
        self.path = path

    @property
    def prompt_id(self) -> str:
        return self.info.prompt_id

    def visible_to(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def pick(self, version: int | str | None) -> Version | None:
        """``None``: the deployed version; a number: that one; ``"latest"``: the newest."""
        if version is None:
            number = self.info.deployed_version
        elif version == "latest":
            number = self.info.latest_version
        else:
            number = version  # type: ignore[assignment]
        return self.versions.get(number) if number is not None else None

    def version_infos(self) -> list[PromptVersionInfo]:
        deployed = self.info.deployed_version
        return [msgspec.structs.replace(v.info, deployed=v.number == deployed) for _, v in sorted(self.versions.items())]


def check_prompt_id(value: Any, key: str = "prompt_id") -> str:
    if not isinstance(value, str) or not PROMPT_ID.match(value):
        raise Invalid(key, "a prompt id is 1 to 128 letters, digits, `_`, `-` or `.`, starting with a letter or digit")
    return value


def check_messages(messages: Any, key: str = "messages") -> list[dict[str, Any]]:
    """Chat messages whose content is a string or a list of content parts (text parts are templates)."""
    if not isinstance(messages, list):
        raise Invalid(key, "expected an array of messages")
    for i, message in enumerate(messages):
        where = f"{key}[{i}]"
        if not isinstance(message, dict):
            raise Invalid(where, "expected a message object ({role, content})")
        role = message.get("role")
        if role not in ROLES:
            raise Invalid(f"{where}.role", f"expected one of {', '.join(sorted(ROLES))}")
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise Invalid(f"{where}.content[{j}]", "expected a content part with a `type`")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise Invalid(f"{where}.content[{j}].text", "expected a string (the template)")
        elif not isinstance(content, str) and not (content is None and role == "assistant"):
            raise Invalid(f"{where}.content", "expected a string (the template) or an array of content parts")
    return messages


def check_params(params: Any, key: str = "params") -> dict[str, Any]:
    if not isinstance(params, dict):
        raise Invalid(key, "expected a table of request params")
    for name in params:
        if name in FORBIDDEN_PARAMS:
            raise Invalid(f"{key}.{name}", f"`{name}` is a field of the version itself, not a param" if name in VERSION_FIELDS
                          else f"a prompt cannot set `{name}`")
    return params


def version_info(number: int, spec: VersionSpec, *, key: str, created_at: float | None = None) -> PromptVersionInfo:
    """The stored description of a version, checked (templates are checked by compiling them)."""
    check_messages(spec.messages, f"{key}.messages")
    check_params(spec.params, f"{key}.params")
    if not spec.messages and not spec.instructions:
        raise Invalid(f"{key}.messages", "a version needs `messages` or `instructions`")
    if not isinstance(spec.variables, dict):
        raise Invalid(f"{key}.variables", "expected a table of default values")
    return PromptVersionInfo(
        version=number, messages=spec.messages, instructions=spec.instructions, model=spec.model,
        stream=spec.stream, params=spec.params, variables=spec.variables, description=spec.description,
        created_at=created_at,
    )


def version_from_api(body: dict[str, Any], number: int, created_at: float) -> PromptVersionInfo:
    """A version from the API's body, Respan's flat shape: ``messages``, ``model``, ``stream``,
    ``variables``, ``description``, ``instructions``, and every other field a request param
    (``temperature``, ``max_tokens``, ``tools``, ``fallback_models``...). ``deploy`` is not stored."""
    fields = {k: v for k, v in body.items() if k != "deploy"}
    params = dict(fields.pop("params", None) or {})
    for name in list(fields):
        if name not in VERSION_FIELDS:
            params[name] = fields.pop(name)
    fields.pop("version", None)
    try:
        spec = msgspec.convert(fields, VersionSpec)
    except msgspec.ValidationError as exc:
        from respan_gateway.config import describe_validation_error

        raise Invalid("", describe_validation_error(exc)) from None
    spec.params = params
    return _strip_key(lambda: version_info(number, spec, key="", created_at=created_at))


def _strip_key(make: Any) -> PromptVersionInfo:
    """API errors name the body's field (``messages[0].role``), not ``.messages[0].role``."""
    try:
        return make()
    except Invalid as exc:
        raise Invalid(exc.key.lstrip("."), exc.message) from None


def version_to_api(prompt_id: str, info: PromptVersionInfo, deployed: bool) -> dict[str, Any]:
    """A version as the API shows it (Respan's flat shape)."""
    out: dict[str, Any] = {
        "prompt_id": prompt_id, "version": info.version, "description": info.description,
        "messages": info.messages, "instructions": info.instructions, "model": info.model,
        "stream": info.stream, "variables": info.variables,
    }
    out.update({k: v for k, v in info.params.items() if k not in out})
    out["deployed"] = deployed
    out["created_at"] = info.created_at
    return out


def prompt_to_api(prompt: Prompt) -> dict[str, Any]:
    info = prompt.info
    return {
        "id": info.prompt_id, "prompt_id": info.prompt_id, "name": info.name, "description": info.description,
        "source": info.source, "deployed_version": info.deployed_version, "latest_version": info.latest_version,
        "versions": sorted(prompt.versions), "created_at": info.created_at, "updated_at": info.updated_at,
    }


def not_found(prompt_id: str, version: Any = None, prompt: Prompt | None = None) -> NotFound:
    if prompt is None:
        return NotFound(f"prompt `{prompt_id}` not found", param="prompt.prompt_id", code="prompt_not_found")
    if version is None:
        return NotFound(f"prompt `{prompt_id}` has no deployed version: deploy one, or name a `version`",
                        param="prompt.version", code="prompt_version_not_found")
    if version == "latest":
        return NotFound(f"prompt `{prompt_id}` has no version yet", param="prompt.version", code="prompt_version_not_found")
    return NotFound(f"prompt `{prompt_id}` has no version {version}", param="prompt.version", code="prompt_version_not_found")
