"""The mock provider reports the usage of its canned answers in ``call.outcome.usage``, as every adapter
does (word counts: its stand-in for tokens)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from respan_gateway.testing import CallRecorder, GatewayServer

MESSAGES = [{"role": "user", "content": "three little words"}]


@pytest.fixture
def recorded(gateway_factory: Callable[..., GatewayServer]) -> tuple[GatewayServer, CallRecorder]:
    recorder = CallRecorder()
    return gateway_factory(plugins=(recorder,)), recorder


def test_answer_usage_is_reported(recorded: tuple[GatewayServer, CallRecorder]) -> None:
    gateway, recorder = recorded
    answer = gateway.openai().chat.completions.create(model="mock/m", messages=MESSAGES, extra_body={"mock_response": "a b"})
    usage = recorder.last.outcome.usage
    assert usage is not None and not usage.estimated
    assert (usage.prompt_tokens, usage.completion_tokens) == (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 2)


def test_stream_usage_is_reported_with_or_without_the_usage_chunk(recorded: tuple[GatewayServer, CallRecorder]) -> None:
    gateway, recorder = recorded
    client = gateway.openai()
    chunks = list(client.chat.completions.create(model="mock/m", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}, extra_body={"mock_response": "a b c d"}))
    usage = recorder.last.outcome.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 4)
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)
    list(client.chat.completions.create(model="mock/m", messages=MESSAGES, stream=True, extra_body={"mock_response": "a"}))
    usage = recorder.last.outcome.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 1)
