#!/usr/bin/env python3
"""Mutation fuzzing of the model loaders through the CLI.

Each round copies a fixture GGUF (`gguf`) or a fixture Hugging Face directory (`hf`), damages it
(GGUF: random bytes, bit flips and interesting integers, mostly in the header and metadata; HF:
wrong types and values in config.json, wrong dtypes, shapes and offsets in the safetensors
header, or random header bytes, or a sharded model's index), runs `bitnet generate` on it under a 4 GiB address-space limit
and a 60 s timeout, and reports every run that panicked, died of a signal or hung. Bad input
must end in a clear error (exit 1 or 2) or a normal run, never anything else.

    cargo build --release -p bitnet-cli
    python3 scripts/fuzz/models.py gguf SEED ROUNDS
    python3 scripts/fuzz/models.py hf SEED ROUNDS

Failing inputs are kept under target/fuzz/. Not part of CI (BENCHMARKS.md, session 22: 1,690
GGUF and 2,490 Hugging Face rounds, none failed).
"""
import glob
import json
import random
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target/release/bitnet"
OUT = ROOT / "target/fuzz"
WEIRD = [None, True, 0, -1, 1, 3, 7, 2**31, 2**63, -(2**63), 1e308, -1e308, 0.5, float("nan"), "", "x",
         [], {}, [1], 10**30, 65536, 1e-300]


def limit():
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def damage_gguf(data):
    head = random.random() < 0.7
    for _ in range(random.choice([1, 1, 2, 4, 8])):
        i = random.randrange(min(len(data), 32768) if head else len(data))
        r = random.random()
        if r < 0.4:
            data[i] = random.randrange(256)
        elif r < 0.7:
            v = random.choice([0, 1, 2, 3, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 20, 1 << 31])
            n = random.choice([4, 8])
            data[i:i + n] = struct.pack("<Q", v)[:n]
        else:
            data[i] ^= 1 << random.randrange(8)
    return data


def damage_hf(d):
    if random.random() < 0.5:
        cfg = json.loads((d / "config.json").read_text())
        for _ in range(random.randint(1, 3)):
            k = random.choice(list(cfg) + ["head_dim", "rope_scaling", "partial_rotary_factor"])
            if k == "quantization_config" and isinstance(cfg[k], dict) and random.random() < 0.5:
                cfg[k] = {kk: random.choice(WEIRD + ["bitlinear", "autobitlinear", "online"]) for kk in cfg[k]}
            else:
                cfg[k] = random.choice(WEIRD)
        (d / "config.json").write_text(json.dumps(cfg, allow_nan=True))
        return
    index = d / "model.safetensors.index.json"
    if index.exists() and random.random() < 0.3:
        idx = json.loads(index.read_text())
        wm = idx.get("weight_map", {})
        for _ in range(random.randint(1, 2)):
            name = random.choice(list(wm) + ["missing.weight"])
            wm[name] = random.choice(WEIRD + ["model-00009-of-00002.safetensors", "../config.json"])
        index.write_text(json.dumps(idx))
        return
    path = random.choice(sorted(d.glob("*.safetensors")))
    data = bytearray(path.read_bytes())
    hlen = struct.unpack("<Q", data[:8])[0]
    if random.random() < 0.6:
        hdr = json.loads(data[8:8 + hlen])
        names = [k for k in hdr if k != "__metadata__"]
        for _ in range(random.randint(1, 2)):
            t = hdr[random.choice(names)]
            f = random.choice(["dtype", "shape", "data_offsets"])
            if f == "dtype":
                t[f] = random.choice(["F32", "F16", "BF16", "U8", "I8", "F64", "I64", "BOOL", "X", 1])
            elif f == "shape":
                t[f] = random.choice([[], [0], [1], [2**40], [-1], [3, 3], ["a"], [2**31, 2**31], t[f][::-1]])
            else:
                a, b = t[f]
                t[f] = random.choice([[0, 0], [0, 2**62], [5, 1], [0, 1], [-1, 3], [b, a], [a, b + 8]])
        h = json.dumps(hdr).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        data = bytearray(struct.pack("<Q", len(h)) + h + data[8 + hlen:])
    else:
        for _ in range(random.randint(1, 6)):
            data[random.randrange(min(len(data), 8 + hlen + 64))] = random.randrange(256)
    path.write_bytes(data)


def main():
    mode, seed, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    random.seed(seed)
    OUT.mkdir(parents=True, exist_ok=True)
    if mode == "gguf":
        sources = sorted(glob.glob(str(ROOT / "fixtures/models/*/*.gguf")))
    else:
        sources = sorted(glob.glob(str(ROOT / "fixtures/models/*/hf-*")))
    bad = 0
    for it in range(rounds):
        src = Path(random.choice(sources))
        work = OUT / f"work-{mode}-{seed}"
        shutil.rmtree(work, ignore_errors=True)
        if mode == "gguf":
            work.mkdir()
            model = work / "m.gguf"
            model.write_bytes(damage_gguf(bytearray(src.read_bytes())))
        else:
            shutil.copytree(src, work)
            damage_hf(work)
            model = work
        cmd = [str(BIN), "generate", "-m", str(model), "-p", "a b", "-n", "3", "--temperature", "0", "-t", "1"]
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=60, preexec_fn=limit)
            err = p.stderr.decode(errors="replace")
            failed = p.returncode not in (0, 1, 2) or "panicked" in err
            what = f"exit {p.returncode}: {err[-400:]}"
        except subprocess.TimeoutExpired:
            failed, what = True, "hung (60 s)"
        if failed:
            bad += 1
            keep = OUT / f"bad-{mode}-{seed}-{it}"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(work, keep)
            print(f"round {it} ({src.name}): {what} -> {keep}", flush=True)
    print(f"{rounds} rounds, {bad} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
