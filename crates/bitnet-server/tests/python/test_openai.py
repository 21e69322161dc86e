"""The official `openai` client against a running `bitnet serve`.

Run by crates/bitnet-cli/tests/serve_openai.rs with BITNET_BASE_URL, BITNET_API_KEY and
BITNET_EXPECT (JSON: prompt, n, completion, chat_user, chat) in the environment. Fixture models
produce gibberish by design, so texts are compared exactly, never for meaning. Exits non-zero on
the first mismatch.
"""

import json
import os
import sys

import openai
from openai import OpenAI


def main() -> int:
    base = os.environ["BITNET_BASE_URL"]
    key = os.environ["BITNET_API_KEY"]
    exp = json.loads(os.environ["BITNET_EXPECT"])
    client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
    n = exp["n"]

    # Completions, not streamed.
    r = client.completions.create(model="m", prompt=exp["prompt"], max_tokens=n, temperature=0)
    assert r.choices[0].text == exp["completion"], (r.choices[0].text, exp["completion"])
    assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= n, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    # Completions, streamed, with usage.
    text, usage, finish = "", None, None
    for chunk in client.completions.create(
        model="m", prompt=exp["prompt"], max_tokens=n, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == exp["completion"], (text, exp["completion"])
    assert finish == r.choices[0].finish_reason, finish
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
    # The same prompt again: all of it but its last token came from the server's prompt cache.
    details = usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == usage.prompt_tokens - 1, usage

    # Chat, not streamed.
    messages = [{"role": "user", "content": exp["chat_user"]}]
    c = client.chat.completions.create(
        model="m", messages=messages, max_completion_tokens=n, temperature=0
    )
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == exp["chat"], (c.choices[0].message.content, exp["chat"])

    # Chat, streamed.
    text, roles = "", []
    for chunk in client.chat.completions.create(
        model="m", messages=messages, max_tokens=n, temperature=0, stream=True
    ):
        for ch in chunk.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            text += ch.delta.content or ""
    assert roles == ["assistant"], roles
    assert text == exp["chat"], (text, exp["chat"])

    # Models, and errors the client maps to its exception types.
    assert [m.id for m in client.models.list().data] == [exp["model"]]
    try:
        client.completions.create(model="m", prompt="x", max_tokens=2, n=2)
        raise AssertionError("n=2 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "n" in str(e), e
    bad = OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0, timeout=60)
    try:
        bad.models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e

    print("openai client test: ok (openai %s)" % openai.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
