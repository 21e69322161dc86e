"""A two-turn chat against a running `bitnet serve` through the official `openai` client: each
turn's prompt tokens, how many the server's prompt cache served (usage.prompt_tokens_details),
its time to first token and its total time. Greedy, streamed, 32 tokens per answer; the first
message is `user_words` words (default 300).

    python bench/chat_turns.py http://127.0.0.1:8080 [user_words]

(`scripts/python-test-env.sh` makes a venv with the client and prints its python.)
"""
import sys, time
from openai import OpenAI
base = sys.argv[1]
words = int(sys.argv[2]) if len(sys.argv) > 2 else 300
client = OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=600)
corpus = ("the quick brown fox jumps over the lazy dog while the river runs past the old mill "
          "and the miller counts his sacks of grain one by one ").split()
msg1 = " ".join(corpus[i % len(corpus)] for i in range(words))
def turn(messages, n):
    t0 = time.time(); ttft = None; text = ""; usage = None
    for ch in client.chat.completions.create(model="m", messages=messages, max_tokens=n,
            temperature=0, stream=True, stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].delta.content:
            if ttft is None: ttft = time.time() - t0
            text += ch.choices[0].delta.content
        if ch.usage is not None: usage = ch.usage
    return ttft, time.time() - t0, text, usage
m = [{"role": "user", "content": msg1}]
a = turn(m, 32)
m += [{"role": "assistant", "content": a[2]}, {"role": "user", "content": "and then what happened next?"}]
b = turn(m, 32)
for name, r in (("turn 1", a), ("turn 2", b)):
    u = r[3]
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else None
    print(f"{name}: prompt {u.prompt_tokens} tokens, cached {cached}, TTFT {r[0]*1000:.0f} ms, total {r[1]:.2f} s")
