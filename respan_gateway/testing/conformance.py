"""A conformance suite any provider plugin runs against itself: chat, stream, tools, errors, usage
(in the answer and in ``call.outcome.usage``).

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
from .gateway_server import GatewayServer, test_config

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
