"""Token estimates (respan_gateway.tokens): the vocabulary counter against the real BPE, and when it loads.

The real BPE is bpe-openai's (a dependency: its wheel supplies the vocabularies), loaded here only to
compare: the gateway itself never loads it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from respan_gateway import tokens
from respan_gateway.testing import FakeUpstream, GatewayServer

ROOT = Path(__file__).resolve().parents[1]

SAMPLES = {
    "english": (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8"),
    "code": (ROOT / "respan_gateway" / "gateway.py").read_text(encoding="utf-8"),
    "german": 'Die Bundesrepublik Deutschland ist ein Bundesstaat in Mitteleuropa. Sie besteht aus sechzehn Ländern und ist als freiheitlich-demokratischer und sozialer Rechtsstaat verfasst. Die Hauptstadt und zugleich größte Stadt ist Berlin; weitere Metropolen sind Hamburg, München, Köln und Frankfurt am Main. Mit rund 84 Millionen Einwohnern zählt Deutschland zu den dicht besiedelten Flächenstaaten.\nDas Wetter war gestern ungewöhnlich mild, sodass viele Menschen ihre Mittagspause im Park verbrachten. Die Verkehrsbetriebe kündigten an, dass die Straßenbahnlinien wegen Bauarbeiten bis Ende des Monats umgeleitet werden. Bitte beachten Sie die Aushänge an den Haltestellen und planen Sie zusätzliche Fahrzeit ein.\nKönnen Sie mir bitte erklären, wie die Rückerstattung funktioniert? Ich habe die Bestellung vor zwei Wochen storniert, aber bisher keine Gutschrift auf meinem Konto erhalten. Vielen Dank für Ihre Hilfe und freundliche Grüße.',
    "chinese+japanese": '人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。该领域的研究包括机器人、语言识别、图像识别、自然语言处理和专家系统等。\n今天天气很好，我们一起去公园散步吧。公园里有很多人在跑步、打太极拳和放风筝。孩子们在草地上玩耍，老人们坐在长椅上聊天。\n请问您能帮我查一下订单的物流信息吗？我上周五下的单，到现在还没有收到货。订单号是二零二六一二零一。谢谢！\n東京は日本の首都であり、世界有数の大都市です。多くの観光客が毎年訪れ、伝統的な寺院と近代的な高層ビルが共存しています。',
    "json": '{"model":"gpt-4o","messages":[{"role":"user","content":"What is the weather in Paris?"}],"tools":[{"type":'
            '"function","function":{"name":"get_weather","description":"Get the current weather for a city","parameters":'
            '{"type":"object","properties":{"city":{"type":"string","description":"The city name"},"unit":{"type":'
            '"string","enum":["celsius","fahrenheit"]}},"required":["city"]}}}]}',
}


@functools.cache
def _vocabulary(encoding: str) -> tokens.Vocabulary:
    return tokens.Vocabulary(encoding)


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_the_vocabulary_count_is_within_3_percent_of_the_bpe(encoding: str, kind: str) -> None:
    from bpe_openai import _bindings

    exact = _bindings.tokenizer_for_encoding(encoding).count(SAMPLES[kind])
    counted = _vocabulary(encoding).count(SAMPLES[kind])
    assert abs(counted - exact) <= 0.03 * exact, (counted, exact)


def test_ascii_text_is_split_as_the_encodings_own_pattern_splits_it() -> None:
    # The stdlib pattern used for ASCII text (the streamed answers' estimate, per chunk of text) against
    # the encoding's own: every ASCII character, and random runs of the characters the pattern tells apart.
    import random
    import string

    vocabulary = _vocabulary("o200k_base")
    assert vocabulary.split_ascii is not None
    rng = random.Random(17)
    alphabets = ["".join(map(chr, range(128))), string.printable, "aA 'sS'lL'dD're\r\n\t\x0b/12345!?.-"]
    texts = [SAMPLES["english"], SAMPLES["code"], SAMPLES["json"], "".join(map(chr, range(128)))]
    texts += ["".join(rng.choice(a) for _ in range(rng.randint(1, 40))) for a in alphabets for _ in range(3000)]
    for text in texts:
        if text.isascii():
            assert vocabulary.split_ascii(text) == vocabulary.split(text), repr(text)


def test_quick_is_utf8_bytes_over_4() -> None:
    assert (tokens.quick(""), tokens.quick("hi"), tokens.quick("a" * 40), tokens.quick("é" * 10)) == (0, 1, 10, 5)


@pytest.fixture
def fresh_tokens() -> Iterator[None]:
    """The module as a new process has it: nothing loaded, nothing loading."""
    tokens.use("heuristic")
    tokens.use("o200k_base")
    yield
    if tokens._loading is not None:
        tokens._loading.join(60)


def test_nothing_is_loaded_for_requests_whose_provider_reports_usage(
        gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream, fresh_tokens: None) -> None:
    gw = gateway_factory()
    client = gw.openai()
    assert client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}]).usage.total_tokens
    with client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True,
                                        stream_options={"include_usage": True}) as stream:
        assert [c.usage for c in stream if c.usage is not None]
    client.embeddings.create(model="fake/embed", input="hi")
    assert tokens._loading is None and tokens.method() == "heuristic"
    # A stream without usage is estimated: that loads the vocabulary (in a thread).
    with client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True) as stream:
        list(stream)
    deadline = time.monotonic() + 60  # the estimate runs once the answer is sent: a guard, not a timing
    while tokens._loading is None and time.monotonic() < deadline:
        time.sleep(0.01)
    loading = tokens._loading
    assert loading is not None
    loading.join(60)
    assert tokens.method() == "o200k_base"
