"""The ``prompts`` middleware: a request's ``prompt`` param rendered and merged into the request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from respan_gateway import BadRequest, Call, CallNext, Chunk, ConfigError, Gateway, GatewayError, JSONResult, PromptRef, Result, StreamResult, aclose
from respan_gateway.database import StoreUnavailable
from respan_gateway.hookspecs import PromptCatalog
from respan_gateway.params import PromptParams

from .catalog import Prompts
from .merge import SHAPES, apply, check_request
from .model import Prompt, Version, not_found
from .settings import PromptsSettings

if TYPE_CHECKING:
    from .render import TemplateEnvironment

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode


class PromptStoreDown(GatewayError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


class PromptsMiddleware:
    def __init__(self, settings: PromptsSettings, gateway: Gateway) -> None:
        self.settings = settings
        self._env: TemplateEnvironment | None = None
        self.prompts = Prompts(settings, lambda: self.env, gateway.database)
        self.prompts.load_files()
        if self.prompts.file_errors:  # at start-up a broken prompt file stops the start, by name
            raise ConfigError("[prompts] folder: " + "; ".join(str(e) for e in self.prompts.file_errors))
        gateway.provide(PromptCatalog, self.prompts)

    @property
    def env(self) -> TemplateEnvironment:
        """The Jinja sandbox, built on the first prompt file loaded, template checked or prompt rendered:
        a gateway that uses no prompt never imports Jinja (~2 MB of every worker's memory)."""
        if self._env is None:
            from .render import Limits, TemplateEnvironment

            s = self.settings
            self._env = TemplateEnvironment(Limits(s.max_output_chars, s.max_iterations, s.render_timeout))
        return self._env

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        p = call.params.prompt
        if p is None:
            return await call_next(call)
        if call.kind not in SHAPES:
            raise BadRequest(f"`prompt` is not supported on this endpoint ({call.kind})", param="prompt")
        check_request(p)
        tenant = call.principal.tenant
        prompt, version = await self.lookup(tenant, p.prompt_id, p.version)
        from .engine import render  # Jinja's, once a prompt is used

        rendered = await render(self.env, prompt, version, p.variables, lambda pid, v: self.lookup(tenant, pid, v))
        call.outcome.prompt = PromptRef(
            prompt_id=prompt.prompt_id, version=version.number, variables=rendered.variables or None,
            name=prompt.info.name, template=version.template_messages(), rendered=rendered.messages,
        )
        apply(call, p, version, rendered.messages)
        result = await call_next(call)
        if p.echo and result.status < 400:
            echo(call, result, rendered.messages)
        return result

    async def lookup(self, tenant: str, prompt_id: str, version: int | str | None) -> tuple[Prompt, Version]:
        try:
            prompt = await self.prompts.get(tenant, prompt_id)
        except StoreUnavailable as exc:
            raise PromptStoreDown(f"the prompt store is unavailable ({exc}); retry shortly") from None
        if prompt is None:
            raise not_found(prompt_id)
        picked = prompt.pick(version)
        if picked is None:
            raise not_found(prompt_id, version, prompt)
        return prompt, picked


# -- echo -------------------------------------------------------------------------------------------

def echo(call: Call, result: Result, messages: list[dict[str, Any]]) -> None:
    """``prompt_message`` (the rendered messages, chat shape) in the answer: a field of the JSON
    answer; in a stream, of the chat chunk that has the ``finish_reason`` (Anthropic: the
    ``message_delta`` event; Responses: ``response.completed``)."""
    if isinstance(result, JSONResult):
        data = result.data
        if isinstance(data, dict):
            result.data = {**data, "prompt_message": messages}
    elif isinstance(result, StreamResult):
        result.chunks = _echo_stream(call.kind, result.chunks, messages)


def _is_last(kind: str, event: Any) -> bool:
    if not isinstance(event, dict):
        return False
    if kind == "chat":
        choices = event.get("choices")
        return bool(choices) and isinstance(choices[0], dict) and choices[0].get("finish_reason") is not None
    if kind == "anthropic_messages":
        return event.get("type") == "message_delta"
    return event.get("type") == "response.completed"


async def _echo_stream(kind: str, chunks: AsyncIterator[Chunk], messages: list[dict[str, Any]]) -> AsyncIterator[Chunk]:
    done = False
    try:
        async for chunk in chunks:
            if not done:
                try:
                    event = _decode(chunk.data)
                except msgspec.DecodeError:
                    event = None
                if _is_last(kind, event):
                    done = True
                    chunk = Chunk(_encode({**event, "prompt_message": messages}), chunk.event)
            yield chunk
    finally:
        await aclose(chunks)


__all__ = ["PromptParams", "PromptsMiddleware", "PromptStoreDown", "echo"]
