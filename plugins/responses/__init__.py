"""The OpenAI Responses API: ``POST /api/responses`` over every provider, and stored responses.

The endpoint (kind ``responses``) runs the pipeline as chat does. Providers with the Responses API
(OpenAI, Azure) get the body natively; every other provider that speaks chat is served through the
core's one translation (:mod:`respan_gateway.translate.responses`, the endpoint's ``via_chat``).
Answers are stored per tenant (unless ``store: false``) for ``GET``/``DELETE /api/responses/{id}``
and ``previous_response_id``. See README.md beside this file, and ``docs/responses.md``.
"""

from __future__ import annotations

from respan_gateway import Call, Chunk, Endpoint, GatewayError, hookimpl
from respan_gateway.hookspecs import RegisterEndpoint, RegisterMiddleware, RegisterRoute, RegisterStore
from respan_gateway.translate.responses import ResponsesAccumulator, ResponsesTranslation, error_event, replay

from .api import ROUTES
from .middleware import ReplayMiddleware, ResponsesMiddleware
from .settings import ResponsesSettings
from .store import MIGRATIONS, ResponseStore, StoredResponse

PATHS = ("/api/responses", "/api/v1/responses", "/v1/responses")


def _stream_error(exc: GatewayError, call: Call) -> Chunk:
    # The events sent so far were numbered from 0: the error event comes next.
    return error_event(exc, call.outcome.chunks)


#: ``POST /api/responses``: OpenAI's Responses API; named events, no ``[DONE]``, an ``error`` event
#: (after ``response.failed``) when a stream breaks off.
def _cacheable(response: object) -> bool:
    # Only a finished answer (not `incomplete`, `failed`, or a background one still `in_progress`).
    return isinstance(response, dict) and response.get("status") == "completed"


ENDPOINT = Endpoint(kind="responses", paths=PATHS, accumulator=ResponsesAccumulator, via_chat=ResponsesTranslation(),
                    stream_done=b"", stream_error=_stream_error, replay=replay, cacheable=_cacheable)


@hookimpl
def register_endpoints(register: RegisterEndpoint) -> None:
    register(ENDPOINT)


@hookimpl
def register_middlewares(register: RegisterMiddleware) -> None:
    # After params and request_breakdown (the breakdown event follows the stored, complete stream),
    # outside limits, the cache, routing and reliability: one lookup and one write per request.
    register("responses", ResponsesMiddleware, order=260, settings=ResponsesSettings, requires=("responses_replay",))
    # After credentials: once per attempt, knowing the attempt's provider and key.
    register("responses_replay", ReplayMiddleware, order=950, requires=("responses",))


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    for path, endpoint, methods in ROUTES:
        register(path, endpoint, methods=methods)


@hookimpl
def register_stores(register: RegisterStore) -> None:
    register("stored_responses", MIGRATIONS)


__all__ = ["ENDPOINT", "ReplayMiddleware", "ResponseStore", "ResponsesMiddleware", "ResponsesSettings", "StoredResponse"]
