"""A version's messages rendered with a request's variables: images, composition, errors as 400s.

- A variable ``{"_type": "image_url", "value": "<url or base64>"}`` becomes an ``image_url`` content
  part where the template prints it (the message's content turns into parts).
- A variable ``{"_type": "prompt", "prompt_id", "version"?, "variables"?}`` is another prompt,
  rendered first and flattened to its text (messages' text joined by a blank line). Composition goes
  at most :data:`MAX_DEPTH` levels down; a prompt that includes itself, directly or not, is a 400.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError

from respan_gateway import BadRequest

from .model import Invalid, Prompt, Version
from .render import RenderLimitExceeded, TemplateEnvironment, undefined_name

#: How deep prompts may include prompts: the request's prompt is level 0, its parts 1, theirs 2.
MAX_DEPTH = 2
# Where an image variable is printed: private-use characters no filter changes, and no one types.
_IMAGE_MARK = re.compile("\ue000([\ue100-\ue8ff])\ue001")
_BASE64_TYPES = (("/9j/", "image/jpeg"), ("iVBOR", "image/png"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"))

Lookup = Callable[[str, Any], Awaitable[tuple[Prompt, Version]]]


class CompiledVersion:
    """The compiled templates of one version's messages: per message, the template of a string
    content, or per content part the template of a text part (None for other parts)."""

    __slots__ = ("messages",)

    def __init__(self, messages: list[tuple[dict[str, Any], Any]]) -> None:
        self.messages = messages


def compile_version(env: TemplateEnvironment, version: Version, prefix: str = "") -> CompiledVersion:
    """Compile (once: kept on the version) or raise :class:`Invalid` naming the message and line."""
    if version.compiled is not None:
        return version.compiled
    compiled = []
    lead = 1 if version.info.instructions else 0
    for i, message in enumerate(version.template_messages()):
        where = "instructions" if i < lead else f"messages[{i - lead}].content"
        where = f"{prefix}.{where}" if prefix else where
        content = message.get("content")
        try:
            if isinstance(content, str):
                templates: Any = env.template(content)
            elif isinstance(content, list):
                templates = [env.template(p["text"]) if p.get("type") == "text" else None for p in content]
            else:
                templates = None
        except TemplateSyntaxError as exc:
            raise Invalid(where, f"template syntax error, line {exc.lineno}: {exc.message}") from None
        compiled.append((message, templates))
    version.compiled = CompiledVersion(compiled)
    return version.compiled


class Rendered:
    """A render's result: the messages (chat shape) and the variables as used (for the log)."""

    __slots__ = ("messages", "variables")

    def __init__(self, messages: list[dict[str, Any]], variables: dict[str, Any]) -> None:
        self.messages, self.variables = messages, variables


async def render(env: TemplateEnvironment, prompt: Prompt, version: Version, variables: dict[str, Any],
                 lookup: Lookup, *, chain: tuple[str, ...] = ()) -> Rendered:
    """Render ``version`` of ``prompt`` with the request's ``variables`` over its defaults.

    ``lookup(prompt_id, version)`` finds a composed prompt (raising the 404 of an unknown one);
    ``chain``: the prompts being rendered above this one (for the depth and cycle checks)."""
    chain = (*chain, prompt.prompt_id)
    values = {**version.info.variables, **variables}
    logged = dict(values)
    images: list[dict[str, Any]] = []
    for name, value in values.items():
        kind = value.get("_type") if isinstance(value, dict) else None
        if kind == "image_url":
            images.append(_image_part(name, value))
            values[name] = f"\ue000{chr(0xE100 + len(images) - 1)}\ue001"
        elif kind == "prompt":
            text = await _compose(env, name, value, lookup, chain)
            values[name] = text
            logged[name] = {**value, "_rendered_result": text}
    compiled = compile_version(env, version)
    messages = []
    for message, templates in compiled.messages:
        out = dict(message)
        if isinstance(templates, list):
            parts: list[dict[str, Any]] = []
            for part, template in zip(message["content"], templates):
                if template is None:
                    parts.append(part)
                else:
                    parts += _with_images(_render_one(env, prompt, version, template, values), images)
            out["content"] = parts
        elif templates is not None:
            text = _render_one(env, prompt, version, templates, values)
            out["content"] = text if not images or not _IMAGE_MARK.search(text) else _with_images(text, images)
        messages.append(out)
    return Rendered(messages, logged)


def _render_one(env: TemplateEnvironment, prompt: Prompt, version: Version, template: Any, values: dict[str, Any]) -> str:
    where = f"prompt `{prompt.prompt_id}` version {version.number}"
    try:
        return env.render(template, values)
    except UndefinedError as exc:
        name = undefined_name(exc)
        if name is not None:
            raise BadRequest(f"{where}: the variable `{name}` is missing: pass it in `prompt.variables`",
                             param="prompt.variables", code="prompt_variable_missing") from None
        raise BadRequest(f"{where}: the template reads something that is not there ({exc.message})",
                         param="prompt.variables", code="prompt_variable_missing") from None
    except RenderLimitExceeded as exc:
        raise BadRequest(f"{where}: rendering stopped: {exc}", param="prompt", code="prompt_render_limit") from None
    except SecurityError as exc:
        raise BadRequest(f"{where}: the template did something the sandbox refuses: {exc}", param="prompt",
                         code="prompt_sandbox") from None
    except RecursionError:
        raise BadRequest(f"{where}: rendering stopped: the template recurses too deeply", param="prompt",
                         code="prompt_render_limit") from None
    except Exception as exc:  # the template's own error (a filter on the wrong type, a division by zero...)
        raise BadRequest(f"{where}: the template failed: {type(exc).__name__}: {exc}", param="prompt",
                         code="prompt_render_failed") from None


async def _compose(env: TemplateEnvironment, name: str, value: dict[str, Any], lookup: Lookup, chain: tuple[str, ...]) -> str:
    child_id = value.get("prompt_id")
    if not isinstance(child_id, str):
        raise BadRequest(f"variable `{name}`: a prompt variable needs a `prompt_id`", param=f"prompt.variables.{name}")
    if child_id in chain:
        cycle = " -> ".join((*chain, child_id))
        raise BadRequest(f"variable `{name}`: prompts include each other in a cycle ({cycle})",
                         param=f"prompt.variables.{name}", code="prompt_cycle")
    if len(chain) > MAX_DEPTH:
        raise BadRequest(f"variable `{name}`: prompt `{child_id}` would be composed {len(chain)} levels deep; "
                         f"at most {MAX_DEPTH} are allowed ({' -> '.join((*chain, child_id))})",
                         param=f"prompt.variables.{name}", code="prompt_too_deep")
    child_vars = value.get("variables") or {}
    if not isinstance(child_vars, dict):
        raise BadRequest(f"variable `{name}`: `variables` must be an object", param=f"prompt.variables.{name}")
    version = value.get("version")
    if version is not None and version != "latest" and (not isinstance(version, int) or isinstance(version, bool)):
        raise BadRequest(f"variable `{name}`: `version` must be a number or \"latest\"", param=f"prompt.variables.{name}")
    prompt, picked = await lookup(child_id, version)
    rendered = await render(env, prompt, picked, child_vars, lookup, chain=chain)
    return flatten(rendered.messages)


def flatten(messages: list[dict[str, Any]]) -> str:
    """The text of rendered messages, joined by a blank line (composition injects plain text)."""
    texts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.append("".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"))
    return "\n\n".join(t for t in texts if t)


def _image_part(name: str, value: dict[str, Any]) -> dict[str, Any]:
    url = value.get("value")
    if not isinstance(url, str) or not url:
        raise BadRequest(f"variable `{name}`: an image variable needs a `value` (a URL or base64 data)",
                         param=f"prompt.variables.{name}")
    if not url.startswith(("http://", "https://", "data:")):
        media = next((t for prefix, t in _BASE64_TYPES if url.startswith(prefix)), "image/png")
        url = f"data:{media};base64,{url}"
    image: dict[str, Any] = {"url": url}
    if isinstance(value.get("detail"), str):
        image["detail"] = value["detail"]
    return {"type": "image_url", "image_url": image}


def _with_images(text: str, images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text parts and, where an image variable was printed, its image part."""
    parts: list[dict[str, Any]] = []
    last = 0
    for match in _IMAGE_MARK.finditer(text):
        if match.start() > last:
            parts.append({"type": "text", "text": text[last:match.start()]})
        index = ord(match.group(1)) - 0xE100
        if index < len(images):
            parts.append(images[index])
        last = match.end()
    if last < len(text) or not parts:
        parts.append({"type": "text", "text": text[last:]})
    return parts
