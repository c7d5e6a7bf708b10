"""The openai 1.x SDK line against the gateway (it differs from 3.x in its error text and its httpx).

1.x cannot share site-packages with 3.x, so it lives in .venv/openai-1.x (the Makefile puts it
there) and runs in a subprocess; the test is skipped, loudly, where that folder is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from respan_gateway.testing import TEST_KEY, GatewayServer

OPENAI1 = Path(sys.prefix) / "openai-1.x"

SCRIPT = r'''
import sys, openai
assert openai.__version__.startswith("1."), openai.__version__
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0, _strict_response_validation=True)
msgs = [{"role": "user", "content": "hi"}]
r = client.chat.completions.create(model="gpt-test", messages=msgs, extra_body={"metadata": {"k": "v"}})
assert r.choices[0].message.content == "Hello from the fake upstream!", r
chunks = list(client.chat.completions.create(model="gpt-test", messages=msgs, stream=True, stream_options={"include_usage": True}))
assert chunks[-1].usage.total_tokens > 0 and chunks[-1].choices == []
try:
    client.chat.completions.create(model="fake/fake-error-429", messages=msgs)
except openai.RateLimitError as e:
    assert e.status_code == 429 and "fake upstream error 429" in str(e), str(e)
else:
    raise AssertionError("no RateLimitError")
try:
    client.chat.completions.create(model="unknown-model", messages=msgs)
except openai.NotFoundError as e:
    assert e.code == "model_not_found"
try:
    for _ in client.chat.completions.create(model="fake/fake-midstream-error", messages=msgs, stream=True):
        pass
except openai.APIError as e:
    assert not isinstance(e, openai.APIStatusError)
else:
    raise AssertionError("no APIError mid-stream")
# The request_breakdown chunk is a valid chunk to the strict client and to the .stream() helper.
chunks = list(client.chat.completions.create(model="gpt-test", messages=msgs, stream=True,
                                             stream_options={"include_usage": True}, extra_body={"request_breakdown": True}))
assert chunks[-1].id == "request_breakdown" and chunks[-1].usage is None
assert chunks[-1].choices[0].model_extra["request_breakdown"]["completion_tokens"] == 5
assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
with client.beta.chat.completions.stream(model="gpt-test", messages=msgs, extra_body={"request_breakdown": True}) as stream:
    final = stream.get_final_completion()
assert final.choices[0].message.content == "Hello from the fake upstream!", final
print("openai", openai.__version__, "ok")
'''


@pytest.mark.skipif(not OPENAI1.is_dir(), reason=f"openai 1.x is not installed in {OPENAI1} (run `make test`)")
def test_openai_1x_line(gateway: GatewayServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(OPENAI1)}
    result = subprocess.run([sys.executable, "-c", SCRIPT, gateway.base_url, TEST_KEY], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("openai 1.")
