"""The one cost function (respan_gateway.cost), against hand-computed values for each usage shape.

Prices (USD per 1M tokens): input 3.00, output 15.00, cache read 0.30, cache write 3.75.
"""

from __future__ import annotations

import pytest

from respan_gateway.config import ModelEntry
from respan_gateway.cost import Usage, cost, usage_from

ENTRY = ModelEntry(provider="p", input_cost=3.0, output_cost=15.0, cache_read_cost=0.3, cache_write_cost=3.75)
# 1000 prompt tokens of which 400 read from the cache, 200 completion tokens:
# 600 * 3.00 + 400 * 0.30 + 200 * 15.00 = 1800 + 120 + 3000 = 4920 per 1M -> 0.00492 USD.
READ_ONLY = 0.00492
# ... and 100 of the prompt tokens written to the cache:
# 500 * 3.00 + 400 * 0.30 + 100 * 3.75 + 200 * 15.00 = 1500 + 120 + 375 + 3000 = 4995 -> 0.004995 USD.
READ_WRITE = 0.004995


@pytest.mark.parametrize(("shape", "usage", "expected", "tokens"), [
    ("openai chat", {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
                     "prompt_tokens_details": {"cached_tokens": 400}}, READ_ONLY, (1000, 200, 400, 0)),
    ("openai chat, cache writes", {"prompt_tokens": 1000, "completion_tokens": 200,
                                   "prompt_tokens_details": {"cached_tokens": 400, "cache_write_tokens": 100}},
     READ_WRITE, (1000, 200, 400, 100)),
    ("openai chat, anthropic keys (LiteLLM style)", {"prompt_tokens": 1000, "completion_tokens": 200,
                                                     "cache_read_input_tokens": 400, "cache_creation_input_tokens": 100},
     READ_WRITE, (1000, 200, 400, 100)),
    ("anthropic messages", {"input_tokens": 500, "output_tokens": 200, "cache_read_input_tokens": 400,
                            "cache_creation_input_tokens": 100}, READ_WRITE, (1000, 200, 400, 100)),
    ("openai responses", {"input_tokens": 1000, "output_tokens": 200, "total_tokens": 1200,
                          "input_tokens_details": {"cached_tokens": 400, "cache_write_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}, READ_ONLY, (1000, 200, 400, 0)),
    ("gemini usageMetadata", {"promptTokenCount": 1000, "candidatesTokenCount": 150, "thoughtsTokenCount": 50,
                              "cachedContentTokenCount": 400, "totalTokenCount": 1200}, READ_ONLY, (1000, 200, 400, 0)),
])
def test_cost_of_each_usage_shape(shape: str, usage: dict, expected: float, tokens: tuple) -> None:
    parsed = usage_from(usage)
    assert parsed is not None, shape
    assert (parsed.prompt_tokens, parsed.completion_tokens, parsed.cache_read_tokens, parsed.cache_write_tokens) == tokens
    assert cost(ENTRY, parsed) == pytest.approx(expected, rel=1e-12)


def test_reasoning_tokens_are_completion_tokens() -> None:
    parsed = usage_from({"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 20})
    assert parsed is not None and (parsed.completion_tokens, parsed.reasoning_tokens) == (25, 20)
    assert cost(ENTRY, parsed) == pytest.approx((10 * 3.0 + 25 * 15.0) / 1e6)


def test_cache_tokens_fall_back_to_the_input_price() -> None:
    entry = ModelEntry(provider="p", input_cost=3.0, output_cost=15.0)
    usage = Usage(prompt_tokens=1000, completion_tokens=200, cache_read_tokens=400, cache_write_tokens=100)
    assert cost(entry, usage) == pytest.approx((1000 * 3.0 + 200 * 15.0) / 1e6)  # 0.006


def test_request_unit_prices_override_the_catalog() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=200, cache_read_tokens=400, cache_write_tokens=100)
    # 500 * 1.00 + 400 * 0.30 + 100 * 3.75 + 200 * 2.00 = 500 + 120 + 375 + 400 = 1395 -> 0.001395
    assert cost(ENTRY, usage, prompt_unit_price=1.0, completion_unit_price=2.0) == pytest.approx(0.001395)
    assert cost(None, usage) == 0.0
    assert cost(None, Usage(prompt_tokens=1000, completion_tokens=200), prompt_unit_price=1.0,
                completion_unit_price=2.0) == pytest.approx((1000 * 1.0 + 200 * 2.0) / 1e6)


def test_not_a_usage_object() -> None:
    assert usage_from(None) is None and usage_from({}) is None and usage_from({"foo": 1}) is None
    assert usage_from({"prompt_tokens": -3, "completion_tokens": True}) == Usage()


def test_chat_usage_reads_only_the_usage_field_of_an_answer_or_chunk() -> None:
    from respan_gateway.cost import chat_usage

    answer = (b'{"id": "x", "choices": [{"message": {"content": "not read"}}], "usage": {"prompt_tokens": 12, '
              b'"completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": null}, '
              b'"completion_tokens_details": {"reasoning_tokens": 2}}}')
    assert chat_usage(answer) == Usage(prompt_tokens=12, completion_tokens=5, cache_read_tokens=4, reasoning_tokens=2)
    # LiteLLM-style cache counts; nulls and negatives count 0; no usage, a null one or junk: None.
    assert chat_usage(b'{"usage": {"prompt_tokens": 9, "completion_tokens": -1, "cache_creation_input_tokens": 3}}') == \
        Usage(prompt_tokens=9, cache_write_tokens=3)
    assert chat_usage(b'{"choices": [], "usage": null}') is None
    assert chat_usage(b'{"choices": []}') is None and chat_usage(b"not json") is None
