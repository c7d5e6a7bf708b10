"""The two stages of the Responses API: stored responses around the call, and the conversation per attempt.

``responses`` (order 260, outside the cache, routing and reliability): loads the response a
``previous_response_id`` names (the caller's tenant only: another's is a 404), stores the answer before
the client can see it complete (a complete answer before it is sent, a stream before its terminal
event is relayed), and makes sure a stream that fails after its first event ends with
``response.failed`` (the endpoint then writes the ``error`` event).

``responses_replay`` (order 950, after credentials: once per attempt, with the attempt's target and
key): forwards ``previous_response_id`` to a provider with the Responses API when the previous
response came from that provider and account; otherwise puts the stored conversation ahead of the
new input, for this attempt only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import structlog

from respan_gateway import (
    BadRequest, Call, CallNext, Chunk, Gateway, GatewayError, JSONResult, NotFound, Result, Target, aclose,
)
from respan_gateway.database import StoreUnavailable
from respan_gateway.translate.responses import CHAT_ITEM_TYPES, TERMINAL_EVENTS, EventWriter, error_of, failed_event

from .settings import ResponsesSettings
from .store import ResponseStore, StoredResponse, account_of

KIND = "responses"
#: call.state key of the previous response (this plugin's two stages share it).
PREVIOUS = "responses.previous"
_encode = msgspec.json.Encoder().encode
log = structlog.get_logger("respan_plugins.responses")


class StoreDown(GatewayError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


class _Event(msgspec.Struct):
    type: str = ""
    sequence_number: int | None = None
    response: dict[str, Any] | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


def native(gateway: Gateway, target: Target | None) -> bool:
    """Whether the target's adapter has the Responses API itself (else it is served through chat)."""
    adapter = gateway.providers.get(target.provider) if target is not None else None
    return adapter is not None and getattr(adapter, KIND, None) is not None


def own_items(value: Any) -> list[Any]:
    """A request's ``input`` as input items (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return list(value) if isinstance(value, list) else []


class ResponsesMiddleware:
    def __init__(self, settings: ResponsesSettings, gateway: Gateway) -> None:
        if gateway.database is None:  # cannot happen: this plugin registers a store
            raise RuntimeError("the responses plugin needs the gateway database")
        self.gateway = gateway
        self.store = ResponseStore(gateway.database, settings.retention_days, settings.purge_interval)

    async def startup(self) -> None:
        try:
            await self.store.purge()
        except StoreUnavailable:
            pass  # the database may come later; reads skip expired rows anyway

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        if call.kind != KIND:
            return await call_next(call)
        previous_id = call.get("previous_response_id")
        if previous_id is not None:
            if not isinstance(previous_id, str):
                raise BadRequest("`previous_response_id` must be a string", param="previous_response_id")
            try:
                previous = await self.store.get(call.principal.tenant, previous_id)
            except StoreUnavailable:
                raise StoreDown("the store of responses is unavailable: retry later") from None
            if previous is None:
                raise NotFound(f"Previous response with id '{previous_id}' not found.", param="previous_response_id",
                               code="previous_response_not_found")
            call.state[PREVIOUS] = previous
        else:
            previous = None
        store = call.get("store") is not False
        result = await call_next(call)
        if result.status >= 400:
            return result
        conversation = [*(previous.history() if previous is not None else ()), *own_items(call.get("input"))]
        if isinstance(result, JSONResult):
            data = result.data
            if isinstance(data, dict) and previous_id is not None and data.get("previous_response_id") != previous_id:
                data["previous_response_id"] = previous_id  # a native provider given the conversation instead
                result.data = data
            if store and isinstance(data, dict):
                await self._save(call, data, conversation)
            return result
        result.chunks = self._watch(call, result.chunks, conversation if store else None)
        return result

    async def _save(self, call: Call, response: dict[str, Any], conversation: list[Any]) -> None:
        target = call.target
        if not isinstance(response.get("id"), str):
            return
        stored = StoredResponse(
            id=response["id"], tenant=call.principal.tenant, response=response, conversation=conversation,
            provider=target.provider if target is not None else None,
            account=account_of(target) if target is not None else None, native=native(self.gateway, target))
        try:
            await self.store.save(stored)
        except StoreUnavailable as exc:  # the answer is the client's all the same; continuing it will 404
            log.error("response_not_stored", request_id=call.request_id, response_id=stored.id, error=str(exc))

    async def _watch(self, call: Call, chunks: AsyncIterator[Chunk], conversation: list[Any] | None) -> AsyncIterator[Chunk]:
        """The stream, stored at its terminal event (before the client gets it); a failure after the
        first event is preceded by ``response.failed`` when the stream has not said so yet."""
        head: dict[str, Any] | None = None
        sequence, failed = -1, False
        try:
            async for chunk in chunks:
                try:
                    event = _decode_event(chunk.data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    event = _Event()
                if event.sequence_number is not None:
                    sequence = max(sequence, event.sequence_number)
                if event.response is not None:
                    head = head or event.response
                    if event.type == "response.failed":
                        failed = True
                    elif event.type in TERMINAL_EVENTS and conversation is not None:
                        await self._save(call, event.response, conversation)
                yield chunk
        except GatewayError as exc:
            if head is not None and not failed:
                yield failed_event(EventWriter(sequence + 1), {**head, "error": error_of(exc)})
            raise
        finally:
            await aclose(chunks)


class ReplayMiddleware:
    def __init__(self, settings: object, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        previous: StoredResponse | None = call.state.get(PREVIOUS) if call.kind == KIND else None
        if previous is None:
            return await call_next(call)
        target = call.target
        if target is None and call.model:  # no routing stage: the core's target, as dispatch will resolve it
            target = self.gateway.catalog.resolve(call.model, call.params.route_provider_override)
        is_native = native(self.gateway, target)
        if (is_native and previous.native and target is not None and previous.provider == target.provider
                and previous.account == account_of(target)):
            return await call_next(call)  # the provider has the conversation: forward the id
        if is_native:  # another provider or account: its own items only (reasoning is bound to its account)
            history = [i for i in previous.history() if not isinstance(i, dict) or i.get("type") != "reasoning"]
        else:  # served through chat: what a chat conversation can carry
            history = [i for i in previous.history() if isinstance(i, dict) and i.get("type", "message") in CHAT_ITEM_TYPES]
        own = {name: call.body.get(name) for name in ("input", "previous_response_id")}
        call.set("input", [*history, *own_items(call.get("input"))])
        if is_native:
            call.pop("previous_response_id")  # unknown there: the conversation goes in full
        try:
            return await call_next(call)
        finally:  # the next attempt (and the log record) starts from the request as the client sent it
            for name, raw in own.items():
                if raw is None:
                    call.body.pop(name, None)
                else:
                    call.body[name] = raw
