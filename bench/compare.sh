#!/usr/bin/env bash
# Side by side, in one run on this machine: llama.cpp and ik_llama.cpp (built from the source
# distributions on PyPI, which vendor them) and bitnet-rs, on the same synthetic model with the
# exact 2B4T shape, with the same threads and repetitions. Prints one table with the ratios.
#
#   bench/compare.sh [build|run|all]     (default all; WORK=target/compare THREADS=2 REPS=5)
#
# build: downloads the sdists and cmake/ninja from PyPI, builds llama-bench and llama-quantize of
#        each (GGML_NATIVE=ON, no curl); ~5 and ~16 minutes on 2 cores.
# run:   writes the synthetic model as f16 GGUF (`bitnet convert --synthetic 2b4t-silu`), has each
#        peer's llama-quantize make its ternary format (llama.cpp TQ2_0, ik_llama.cpp IQ2_BN) with
#        an f16 and a Q6_K head, writes ours (I2_S; f16, Q6_K and Q4_K heads), runs every
#        llama-bench and `bitnet bench` (pp512, tg128; ours with the 2-bit and the 1.6-bit
#        kernel, and the compact mode: 1.6-bit kernel + Q4_K head), and prints the table. Also
#        checks that our TQ1_0/TQ2_0 files load in llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
WORK=${WORK:-target/compare}
T=${THREADS:-2}
R=${REPS:-5}
LLAMA_PY=llama-cpp-python==0.3.36
IK_PY=ik-llama-cpp-python==0.1.5
mkdir -p "$WORK"
W=$(realpath "$WORK")

tools() {
  if [ ! -x "$W/venv/bin/cmake" ]; then
    python3 -m venv "$W/venv"
    "$W/venv/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: cmake ninja
  fi
  export PATH="$W/venv/bin:$PATH"
}

# fetch NAME SPEC: unpacks the sdist of SPEC into $W/NAME and prints the vendored source dir.
fetch() {
  local name=$1 spec=$2
  if [ ! -d "$W/$name" ]; then
    rm -rf "$W/dl-$name"
    mkdir -p "$W/dl-$name" "$W/$name"
    # The sdist itself, found on PyPI's simple index and checked against its sha256 (pip would
    # try to build the package's metadata first).
    python3 - "$spec" "$W/dl-$name/src.tar.gz" <<'PY'
import hashlib, re, sys, urllib.request
pkg, ver = sys.argv[1].split("==")
html = urllib.request.urlopen(f"https://pypi.org/simple/{pkg}/").read().decode()
stem = pkg.replace("-", "_")
url = next(u for u in re.findall(r'href="([^"]+)"', html)
           if re.search(rf"/{stem}-{re.escape(ver)}\.tar\.gz#", u, re.I))
link, want = url.split("#sha256=")
urllib.request.urlretrieve(link, sys.argv[2])
got = hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest()
sys.exit(0 if got == want else f"sha256 mismatch for {link}")
PY
    tar -xzf "$W/dl-$name/src.tar.gz" -C "$W/$name" --strip-components=1
  fi
  echo "$W/$name/vendor/$(ls "$W/$name/vendor" | head -1)"
}

build_one() {
  local name=$1 src=$2
  if [ -x "$W/$name-build/bin/llama-bench" ] && [ -x "$W/$name-build/bin/llama-quantize" ]; then
    return
  fi
  # ik_llama.cpp's sdist lacks common/cmake/build-info-gen-cpp.cmake; a configure_file of the
  # template it would have filled does the same job.
  if [ -f "$src/common/build-info.cpp.in" ] && [ ! -f "$src/common/cmake/build-info-gen-cpp.cmake" ]; then
    mkdir -p "$src/common/cmake"
    cat > "$src/common/cmake/build-info-gen-cpp.cmake" <<'CMAKE'
set(BUILD_NUMBER 0)
set(BUILD_COMMIT "sdist")
set(BUILD_COMPILER "${CMAKE_C_COMPILER_ID} ${CMAKE_C_COMPILER_VERSION}")
set(BUILD_TARGET "${CMAKE_SYSTEM_NAME} ${CMAKE_SYSTEM_PROCESSOR}")
configure_file("${CMAKE_CURRENT_LIST_DIR}/../build-info.cpp.in" "${CMAKE_CURRENT_LIST_DIR}/../build-info.cpp")
CMAKE
  fi
  cmake -S "$src" -B "$W/$name-build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF > "$W/$name-cmake.log"
  cmake --build "$W/$name-build" --target llama-bench llama-quantize -j "$(nproc)" > "$W/$name-build.log"
}

build() {
  tools
  build_one llama "$(fetch llama "$LLAMA_PY")"
  build_one ik "$(fetch ik "$IK_PY")"
}

# bench_peer LABEL BIN MODEL: one llama-bench line as "label|pp512|tg128" (t/s means).
bench_peer() {
  local out
  out=$("$2" -m "$3" -p 512 -n 128 -t "$T" -r "$R" -o json 2>/dev/null)
  python3 - "$1" "$out" <<'PY'
import json, sys
label, rows = sys.argv[1], json.loads(sys.argv[2])
pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
print(f"{label}|{pp:.2f}|{tg:.2f}")
PY
}

# bench_ours LABEL MODEL [KERNEL]
bench_ours() {
  local out
  out=$(target/release/bitnet bench -m "$2" -p 512 -n 128 -t "$T" -r "$R" --device cpu --kernel "${3:-auto}" -o json 2>/dev/null)
  python3 - "$1" "$out" <<'PY'
import json, sys
label, rows = sys.argv[1], json.loads(sys.argv[2])
pp = next(r["avg_ts"] for r in rows if r["test"].startswith("pp"))
tg = next(r["avg_ts"] for r in rows if r["test"].startswith("tg"))
print(f"{label}|{pp:.2f}|{tg:.2f}")
PY
}

run() {
  local L="$W/llama-build/bin" K="$W/ik-build/bin" M="$W/models"
  mkdir -p "$M"
  cargo build --release -p bitnet-cli >&2
  local B=target/release/bitnet
  local V=fixtures/models/tied-gqa2/model-tq2_0.gguf   # a small tokenizer: llama.cpp needs one
  # The peers' input: llama.cpp's `bitnet` architecture (SiLU FFN; speed is the same), f16.
  [ -f "$M/f16.gguf" ] || $B convert --synthetic 2b4t-silu --weights f16 --head f16 --vocab-from $V --out "$M/f16.gguf" >&2
  [ -f "$M/ours-f16.gguf" ] || $B convert --synthetic 2b4t --weights i2_s --head f16 --vocab-from $V --out "$M/ours-f16.gguf" >&2
  [ -f "$M/ours-q6k.gguf" ] || $B convert --synthetic 2b4t --weights i2_s --head q6_k --vocab-from $V --out "$M/ours-q6k.gguf" >&2
  [ -f "$M/ours-q4k.gguf" ] || $B convert --synthetic 2b4t --weights i2_s --head q4_k --vocab-from $V --out "$M/ours-q4k.gguf" >&2
  [ -f "$M/ours-tq2.gguf" ] || $B convert --synthetic 2b4t-silu --weights tq2_0 --head f16 --vocab-from $V --out "$M/ours-tq2.gguf" >&2
  [ -f "$M/ours-tq1.gguf" ] || $B convert --synthetic 2b4t-silu --weights tq1_0 --head f16 --vocab-from $V --out "$M/ours-tq1.gguf" >&2
  q() { [ -f "$4" ] || "$1" --token-embedding-type "$3" --output-tensor-type "$3" "$M/f16.gguf" "$4" "$2" > "$4.log" 2>&1; }
  q "$L/llama-quantize" TQ2_0 f16 "$M/llama-tq2-f16.gguf"
  q "$L/llama-quantize" TQ2_0 q6_K "$M/llama-tq2-q6k.gguf"
  q "$K/llama-quantize" IQ2_BN f16 "$M/ik-iq2bn-f16.gguf"
  q "$K/llama-quantize" IQ2_BN q6_K "$M/ik-iq2bn-q6k.gguf"
  echo "== our TQ2_0 / TQ1_0 files in llama.cpp's llama-bench (tg8, 1 repetition)" >&2
  for f in ours-tq2 ours-tq1; do
    if "$L/llama-bench" -m "$M/$f.gguf" -p 0 -n 8 -t "$T" -r 1 > "$M/$f.llama.log" 2>&1; then
      echo "$f.gguf loads and runs in llama.cpp" >&2
    else
      echo "$f.gguf FAILS in llama.cpp: $(tail -3 "$M/$f.llama.log")" >&2
    fi
  done
  local rows=()
  rows+=("$(bench_peer "llama.cpp TQ2_0, f16 head" "$L/llama-bench" "$M/llama-tq2-f16.gguf")")
  rows+=("$(bench_peer "ik_llama.cpp IQ2_BN, f16 head" "$K/llama-bench" "$M/ik-iq2bn-f16.gguf")")
  rows+=("$(bench_ours "bitnet-rs 2-bit kernel, f16 head" "$M/ours-f16.gguf" avx512vnni)")
  rows+=("$(bench_ours "bitnet-rs 1.6-bit kernel, f16 head" "$M/ours-f16.gguf" avx512vnni-t1)")
  rows+=("$(bench_peer "llama.cpp TQ2_0, Q6_K head" "$L/llama-bench" "$M/llama-tq2-q6k.gguf")")
  rows+=("$(bench_peer "ik_llama.cpp IQ2_BN, Q6_K head" "$K/llama-bench" "$M/ik-iq2bn-q6k.gguf")")
  rows+=("$(bench_ours "bitnet-rs 2-bit kernel, Q6_K head" "$M/ours-q6k.gguf" avx512vnni)")
  rows+=("$(bench_ours "bitnet-rs 1.6-bit kernel, Q6_K head" "$M/ours-q6k.gguf" avx512vnni-t1)")
  # The most compact mode: 1.6-bit weights and a 4-bit head, against the peers' Q6_K best.
  rows+=("$(bench_ours "bitnet-rs 1.6-bit kernel, Q4_K head (compact)" "$M/ours-q4k.gguf" avx512vnni-t1)")
  python3 - "$T" "$R" "${rows[@]}" <<'PY'
import sys
t, r, rows = sys.argv[1], sys.argv[2], [x.split("|") for x in sys.argv[3:]]
best_pp = max(float(x[1]) for x in rows if not x[0].startswith("bitnet-rs"))
best_tg = {h: max(float(x[2]) for x in rows if h in x[0] and not x[0].startswith("bitnet-rs"))
           for h in ("f16 head", "Q6_K head")}
print(f"| engine (synthetic 2B4T, {t} threads, {r} reps) | pp512 t/s | tg128 t/s | pp512 / best peer | tg128 / best peer, same head |")
print("|---|---:|---:|---:|---:|")
for name, pp, tg in rows:
    h = "f16 head" if "f16 head" in name else "Q6_K head"
    print(f"| {name} | {float(pp):.2f} | {float(tg):.2f} | {float(pp) / best_pp:.2f} | {float(tg) / best_tg[h]:.2f} |")
PY
}

case "$WHAT" in
  build) build ;;
  run) tools; run ;;
  all) build; run ;;
  *) echo "usage: bench/compare.sh [build|run|all]" >&2; exit 2 ;;
esac
