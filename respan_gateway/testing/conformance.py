"""A conformance suite any provider plugin runs against itself: chat, stream, tools, errors, usage
(in the answer and in ``call.outcome.usage``), and the Responses API at ``/api/responses`` (served
natively by an adapter with a ``responses`` method, else through its chat: the same checks hold), and the native Anthropic endpoint
(``/api/anthropic/v1/messages``, through the ``anthropic`` SDK), which an adapter that speaks only chat
serves through the core's translation (``respan_gateway.translate.messages``).

Subclass :class:`ProviderConformance` in a test module, name the provider table and its id, and pytest
runs every check through the real ``openai`` SDK (strict response validation) against the gateway on a
real socket, the gateway talking to :class:`~respan_gateway.testing.FakeUpstream` on another::

    from respan_gateway.testing.conformance import ProviderConformance

    class TestMyProvider(ProviderConformance):
        provider_id = "acme"
        provider_toml = '''
            [providers.acme]
            type = "acme"
            base_url = "{upstream}/v1"
            api_key = "sk-acme-test"
        '''

``{upstream}`` is replaced by the fake's URL. The fake answers OpenAI's, Anthropic's, Gemini's and
Azure's wire formats (an adapter for another API overrides the ``conformance_upstream`` fixture with a
fake of its own that keeps the same contract: the answer text :data:`ANSWER`, a tool call to the first
tool with arguments ``{"city": "Paris"}``, and the scenarios of ``fake_upstream`` picked from an upstream
model named ``fake-<scenario>``). Checks run on slugs ``<provider_id>/fake-<scenario>``; a provider
whose slugs look different overrides :meth:`slug`.

The suite needs nothing else: its fixtures live on the class, so it works with or without the
``respan_gateway.testing.pytest_plugin`` fixtures, from the provider's own repository.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from .call_recorder import CallRecorder
from .fake_upstream import ANSWER_WORDS, FakeUpstream
from .gateway_server import TEST_KEY, GatewayServer, test_config

#: The text the fake upstream answers (in 5 streamed pieces by default).
ANSWER = " ".join(ANSWER_WORDS)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
#: The same function tool in the Responses API's flat shape.
WEATHER_FUNCTION = {"type": "function", **WEATHER_TOOL["function"]}
ANTHROPIC_WEATHER_TOOL = {
    "name": "get_weather", "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


class ProviderConformance:
    """Base class of a provider's conformance tests (not collected itself: no ``Test`` prefix)."""

    #: The ``[providers.<id>]`` table(s) to add to the test config; ``{upstream}`` = the fake's URL.
    provider_toml: str = ""
    #: The provider id of that table.
    provider_id: str = ""
    #: Extra plugin objects to register (a plugin defined in the test module, not installed).
    plugins: tuple[Any, ...] = ()

    def slug(self, scenario: str = "model") -> str:
        """The model slug whose upstream model is ``fake-<scenario>``."""
        return f"{self.provider_id}/fake-{scenario}"

    # -- fixtures ---------------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def conformance_upstream(cls) -> Iterator[Any]:
        with FakeUpstream() as upstream:
            yield upstream

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_recorder(cls) -> CallRecorder:
        """Keeps every call, for the checks of what the adapter put on ``call.outcome``."""
        return CallRecorder()

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_gateway(cls, conformance_upstream: Any, conformance_recorder: CallRecorder) -> Iterator[GatewayServer]:
        if not cls.provider_id or not cls.provider_toml:
            pytest.fail(f"{cls.__name__}: set provider_id and provider_toml")
        extra = cls.provider_toml.replace("{upstream}", conformance_upstream.url)
        with GatewayServer(test_config(conformance_upstream.url, extra), (*cls.plugins, conformance_recorder)) as server:
            yield server

    @pytest.fixture
    def client(self, conformance_gateway: GatewayServer) -> Any:
        return conformance_gateway.openai(_strict_response_validation=True)

    @pytest.fixture
    def anthropic_client(self, conformance_gateway: GatewayServer) -> Any:
        """The ``anthropic`` SDK (strict response validation) on the gateway's native Anthropic endpoint."""
        anthropic = pytest.importorskip("anthropic")
        return anthropic.Anthropic(base_url=conformance_gateway.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0,
                                   _strict_response_validation=True)

    # -- chat -------------------------------------------------------------------------------------
    def test_chat_text(self, client: Any) -> None:
        answer = client.chat.completions.create(model=self.slug(), messages=[{"role": "system", "content": "Be terse."}, *USER])
        choice = answer.choices[0]
        assert choice.message.role == "assistant" and choice.message.content == ANSWER
        assert choice.finish_reason == "stop" and choice.index == 0
        assert answer.object == "chat.completion" and answer.id

    def test_usage(self, client: Any) -> None:
        usage = client.chat.completions.create(model=self.slug(), messages=USER).usage
        assert usage is not None, "a complete answer reports usage"
        assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    def test_outcome_usage(self, client: Any, conformance_recorder: CallRecorder) -> None:
        answer = client.chat.completions.create(model=self.slug(), messages=USER)
        usage = conformance_recorder.last.outcome.usage
        assert usage is not None, "the adapter reports the answer's usage in call.outcome.usage"
        assert not usage.estimated
        assert (usage.prompt_tokens, usage.completion_tokens) == (answer.usage.prompt_tokens, answer.usage.completion_tokens)

    # -- streams ----------------------------------------------------------------------------------
    def test_stream_text(self, client: Any) -> None:
        chunks = list(client.chat.completions.create(model=self.slug(), messages=USER, stream=True))
        assert chunks and chunks[0].choices[0].delta.role == "assistant", "the role comes in the first delta"
        assert all(c.choices[0].delta.role is None for c in chunks[1:]), "and only there"
        assert all(c.object == "chat.completion.chunk" and len({c.id for c in chunks}) == 1 for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
        assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert all(c.usage is None for c in chunks), "no usage unless include_usage was asked"

    def test_stream_usage_chunk(self, client: Any) -> None:
        chunks = list(client.chat.completions.create(model=self.slug(), messages=USER, stream=True,
                                                     stream_options={"include_usage": True}))
        last = chunks[-1]
        assert last.choices == [] and last.usage is not None, "one usage chunk with no choices, last"
        assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens > 0
        assert all(c.choices for c in chunks[:-1])

    def test_stream_outcome_usage(self, client: Any, conformance_recorder: CallRecorder) -> None:
        chunks = list(client.chat.completions.create(model=self.slug(), messages=USER, stream=True,
                                                     stream_options={"include_usage": True}))
        usage = conformance_recorder.last.outcome.usage
        assert usage is not None, "the adapter reports a stream's usage in call.outcome.usage"
        assert not usage.estimated
        sent = chunks[-1].usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (sent.prompt_tokens, sent.completion_tokens)

    def test_stream_helper(self, client: Any) -> None:
        with client.chat.completions.stream(model=self.slug(), messages=USER) as stream:
            final = stream.get_final_completion()
        assert final.choices[0].message.content == ANSWER and final.choices[0].message.role == "assistant"

    # -- tools ------------------------------------------------------------------------------------
    def test_tool_call(self, client: Any) -> None:
        answer = client.chat.completions.create(model=self.slug(), messages=USER, tools=[WEATHER_TOOL])
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id and call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}

    def test_stream_tool_call(self, client: Any) -> None:
        with client.chat.completions.stream(model=self.slug(), messages=USER, tools=[WEATHER_TOOL]) as stream:
            final = stream.get_final_completion()
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls  # id and name sent once, arguments reassembled by index
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    def test_tool_result_round_trip(self, client: Any) -> None:
        first = client.chat.completions.create(model=self.slug(), messages=USER, tools=[WEATHER_TOOL])
        call = first.choices[0].message.tool_calls[0]
        messages = [*USER,
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
                    {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
        second = client.chat.completions.create(model=self.slug(), messages=messages, tools=[WEATHER_TOOL], tool_choice="none")
        assert second.choices[0].message.content == ANSWER and second.choices[0].finish_reason == "stop"

    # -- errors -----------------------------------------------------------------------------------
    @pytest.mark.parametrize(("status", "name"), [
        (400, "BadRequestError"), (401, "AuthenticationError"), (403, "PermissionDeniedError"),
        (404, "NotFoundError"), (429, "RateLimitError"), (500, "InternalServerError"), (503, "InternalServerError"),
    ])
    def test_upstream_error_keeps_its_status(self, client: Any, status: int, name: str) -> None:
        import openai

        with pytest.raises(getattr(openai, name)) as info:
            client.chat.completions.create(model=self.slug(f"error-{status}"), messages=USER)
        assert info.value.status_code == status
        body = info.value.body
        assert isinstance(body, dict) and isinstance(body.get("message"), str), "the OpenAI error envelope"

    def test_error_before_the_stream(self, client: Any) -> None:
        import openai

        with pytest.raises(openai.BadRequestError):  # 400: not retried, so the check stays fast
            client.chat.completions.create(model=self.slug("error-400"), messages=USER, stream=True)

    def test_midstream_error(self, client: Any) -> None:
        import openai

        stream = client.chat.completions.create(model=self.slug("midstream-error"), messages=USER, stream=True)
        with pytest.raises(openai.APIError):
            list(stream)

    def test_cut_stream_is_an_error(self, client: Any) -> None:
        import openai

        # Before the first token it is an error answer; after it, an error event.
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model=self.slug("cut-after-2"), messages=USER, stream=True))

    def test_unreachable_upstream_is_a_502(self, client: Any) -> None:
        import openai

        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=self.slug("reset"), messages=USER)
        assert info.value.status_code == 502

    # -- the Responses API ------------------------------------------------------------------------
    def test_responses_text(self, client: Any) -> None:
        answer = client.responses.create(model=self.slug(), input=USER[0]["content"], instructions="Be terse.")
        assert answer.object == "response" and answer.status == "completed" and answer.id
        assert answer.output_text == ANSWER
        usage = answer.usage
        assert usage.input_tokens > 0 and usage.output_tokens > 0
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens

    def test_responses_stream(self, client: Any) -> None:
        events = list(client.responses.create(model=self.slug(), input=USER, stream=True))
        types = [e.type for e in events]
        assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events))), "numbered from 0, no gap"
        assert len({e.response.id for e in events if hasattr(e, "response")}) == 1, "one response id throughout"
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
        assert events[-1].response.output_text == ANSWER and events[-1].response.usage.output_tokens > 0

    def test_responses_stream_helper(self, client: Any) -> None:
        with client.responses.stream(model=self.slug(), input=USER) as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        assert "".join(deltas) == ANSWER and final.output_text == ANSWER and final.status == "completed"

    def test_responses_tool_round_trip(self, client: Any) -> None:
        first = client.responses.create(model=self.slug(), input=USER, tools=[WEATHER_FUNCTION])
        (call,) = [item for item in first.output if item.type == "function_call"]
        assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"} and call.call_id
        follow_up = [*USER, {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                     {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}]
        second = client.responses.create(model=self.slug(), input=follow_up, tools=[WEATHER_FUNCTION], tool_choice="none")
        assert second.output_text == ANSWER and second.status == "completed"

    def test_responses_stream_tool_call(self, client: Any) -> None:
        with client.responses.stream(model=self.slug(), input=USER, tools=[WEATHER_FUNCTION]) as stream:
            types = [e.type for e in stream]
            final = stream.get_final_response()
        assert "response.function_call_arguments.delta" in types and "response.function_call_arguments.done" in types
        (call,) = [item for item in final.output if item.type == "function_call"]
        assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}

    def test_responses_error_before_the_stream(self, client: Any) -> None:
        import openai

        with pytest.raises(openai.BadRequestError):
            client.responses.create(model=self.slug("error-400"), input=USER, stream=True)

    def test_responses_cut_stream_is_response_failed(self, client: Any) -> None:
        events = list(client.responses.create(model=self.slug("cut-after-2"), input=USER, stream=True))
        types = [e.type for e in events]
        assert types[0] == "response.created" and types[-2:] == ["response.failed", "error"], types
        assert events[-2].response.status == "failed" and events[-2].response.error.message
        assert [e.sequence_number for e in events] == list(range(len(events)))
    # -- the native Anthropic endpoint ------------------------------------------------------------
    def test_anthropic_messages(self, anthropic_client: Any) -> None:
        message = anthropic_client.messages.create(model=self.slug(), max_tokens=100, messages=USER, system="Be terse.")
        assert message.type == "message" and message.role == "assistant" and message.stop_reason == "end_turn"
        assert [b.type for b in message.content] == ["text"] and message.content[0].text == ANSWER
        assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0

    def test_anthropic_messages_stream(self, anthropic_client: Any) -> None:
        with anthropic_client.messages.stream(model=self.slug(), max_tokens=100, messages=USER) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == ANSWER and final.stop_reason == "end_turn"
        assert final.usage.output_tokens > 0, "message_delta carries the usage"

    def test_anthropic_messages_tool_round_trip(self, anthropic_client: Any) -> None:
        with anthropic_client.messages.stream(model=self.slug(), max_tokens=100, messages=USER, tools=[ANTHROPIC_WEATHER_TOOL]) as stream:
            first = stream.get_final_message()
        assert first.stop_reason == "tool_use"
        use = first.content[-1]
        assert use.type == "tool_use" and use.id and use.name == "get_weather" and use.input == {"city": "Paris"}
        messages = [*USER, {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": '{"temp_c": 21}'}]}]
        second = anthropic_client.messages.create(model=self.slug(), max_tokens=100, messages=messages,
                                                  tools=[ANTHROPIC_WEATHER_TOOL], tool_choice={"type": "none"})
        assert second.stop_reason == "end_turn" and second.content[0].text == ANSWER

    def test_anthropic_messages_errors(self, anthropic_client: Any) -> None:
        import anthropic

        with pytest.raises(anthropic.BadRequestError) as info:  # 400: not retried, so the check stays fast
            anthropic_client.messages.create(model=self.slug("error-400"), max_tokens=10, messages=USER)
        assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "invalid_request_error"
        with pytest.raises(anthropic.APIStatusError) as info:
            with anthropic_client.messages.stream(model=self.slug("midstream-error"), max_tokens=10, messages=USER) as stream:
                for _ in stream:
                    pass
        assert info.value.body["type"] == "error", "an error after the first event is an Anthropic error event"
