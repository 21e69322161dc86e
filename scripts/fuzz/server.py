#!/usr/bin/env python3
"""Mutation fuzzing of `bitnet serve` over loopback.

Starts the server on the bundled default model, then sends ROUNDS requests built from valid
chat and completion requests with fields replaced by values of the wrong type or range,
removed, repeated in lists, or with the JSON bytes damaged, and a few to other paths. Every
response must be a 2xx or 4xx (no 5xx, no dropped connection, no hang); at the end the server
gets SIGTERM and must exit 0 without having logged a panic.

    cargo build --release -p bitnet-cli
    python3 scripts/fuzz/server.py SEED ROUNDS [PORT]

Not part of CI (BENCHMARKS.md, session 22: 2,980 requests, none failed).
"""
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(__file__).resolve().parents[2] / "target/release/bitnet"
WEIRD = [None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63), 1e308, -1e308, 0.5, -0.5, "", "x", "\u0000",
         [], {}, [1, 2], {"a": 1}, "NaN", 1e-320, 10**30]
FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p",
          "top_k", "min_p", "seed", "stop", "presence_penalty", "frequency_penalty", "stream",
          "stream_options", "n", "logprobs", "user", "logit_bias", "response_format"]


def request(port, method, path, body=b"", timeout=30):
    """The status code of one HTTP/1.1 request (None: timed out; -1: no status line)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    s.sendall(head.encode() + body)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except socket.timeout:
        return None, data
    finally:
        s.close()
    try:
        return int(data.split(b" ", 2)[1]), data
    except (IndexError, ValueError):
        return -1, data


def mutated():
    if random.random() < 0.5:
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    else:
        path, body = "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 4}
    for _ in range(random.randint(1, 4)):
        f = random.choice(FIELDS)
        r = random.random()
        if r < 0.6:
            body[f] = random.choice(WEIRD)
        elif r < 0.7 and f == "messages":
            role = random.choice(["user", "system", "assistant", "tool", "x", 1, None])
            body[f] = [{"role": role, "content": random.choice(WEIRD + ["hello"])}]
        elif r < 0.8:
            body.pop(f, None)
        elif f == "stream_options":
            body[f] = {"include_usage": random.choice(WEIRD)}
        else:
            body[f] = [random.choice(WEIRD)] * random.randint(0, 5)
    raw = json.dumps(body).encode()
    if random.random() < 0.15:
        raw = bytearray(raw)
        for _ in range(random.randint(1, 3)):
            raw[random.randrange(len(raw))] = random.randrange(256)
        raw = bytes(raw)
    if random.random() < 0.03:
        path = random.choice(["/v1/models", "/metrics", "/v1/x", "/../", "/v1/completions?x=1"])
    return path, raw


def main():
    seed, rounds = int(sys.argv[1]), int(sys.argv[2])
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 18123
    random.seed(seed)
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([str(BIN), "serve", "--port", str(port), "-t", "1", "--max-batch", "4",
                               "--queue", "8"], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(120):
        try:
            if request(port, "GET", "/health", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.5)
    bad = 0
    for it in range(rounds):
        path, raw = mutated()
        try:
            code, data = request(port, "POST", path, raw)
        except OSError as e:
            code, data = -2, str(e).encode()
        if code is None or code < 0 or code >= 500:
            bad += 1
            print(f"round {it}: {code} for POST {path} {raw[:200]!r}: {data[:200]!r}", flush=True)
            if server.poll() is not None:
                print("the server died")
                break
    server.send_signal(signal.SIGTERM)
    try:
        rc = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        rc = "a hang on SIGTERM"
    log.seek(0)
    panics = log.read().count(b"panicked")
    print(f"{rounds} requests, {bad} failed; server exit {rc}, {panics} panics logged")
    sys.exit(1 if bad or rc != 0 or panics else 0)


if __name__ == "__main__":
    main()
