#!/usr/bin/env bash
# The machine code (SASS) and register/spill counts of the CUDA kernels, on a machine without a
# GPU or a CUDA toolkit: NVRTC (scripts/nvrtc-env.sh) compiles kernels.cu to PTX exactly as the
# engine does (--fmad=false), then ptxas and cuobjdump from NVIDIA's PyPI wheels (fetched once
# into target/cuda-tools) assemble and disassemble it.
#
#   scripts/cuda-sass.sh [ARCH] [KERNEL]     (default sm_90; without KERNEL: ptxas -v for all)
#
# e.g. `scripts/cuda-sass.sh sm_90 decode_step_f16 | grep -E 'LDG|MEMBAR|BAR.SYNC'`. The driver's
# own JIT may schedule slightly differently, but registers, spills and instruction choice match.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:-sm_90}
KERNEL=${2:-}
lib=$(scripts/nvrtc-env.sh)
tools=target/cuda-tools
bin="$PWD/$tools/venv/lib/python3.*/site-packages/nvidia/cu13/bin"
if ! ls $bin/ptxas > /dev/null 2>&1; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: \
    "nvidia-cuda-nvcc==13.5.37" "nvidia-cuda-cuobjdump==13.5.37" "nvidia-cuda-nvdisasm==13.5.37" >&2
fi
bin=$(echo $bin)
out="$tools/$ARCH"
mkdir -p "$out"
LD_LIBRARY_PATH="$lib" python3 - "$ARCH" "$out/kernels.ptx" <<'EOF'
import ctypes, sys
arch, dest = sys.argv[1], sys.argv[2]
nvrtc = ctypes.CDLL("libnvrtc.so.13")
src = open("crates/bitnet-cuda/src/kernels.cu", "rb").read()
prog = ctypes.c_void_p()
assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, b"kernels.cu", 0, None, None) == 0
opts = [b"--gpu-architecture=compute_" + arch.split("_")[1].encode(), b"--fmad=false", b"-lineinfo"]
ok = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
n = ctypes.c_size_t()
nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
log = ctypes.create_string_buffer(n.value)
nvrtc.nvrtcGetProgramLog(prog, log)
if ok != 0:
    sys.exit("NVRTC: " + log.value.decode())
nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(n))
ptx = ctypes.create_string_buffer(n.value)
nvrtc.nvrtcGetPTX(prog, ptx)
open(dest, "wb").write(ptx.value)
EOF
"$bin/ptxas" -arch="$ARCH" -v "$out/kernels.ptx" -o "$out/kernels.cubin" 2> "$out/ptxas.txt"
if [ -z "$KERNEL" ]; then
  grep -E "Compiling entry|Used|spill" "$out/ptxas.txt"
else
  PATH="$bin:$PATH" "$bin/cuobjdump" -sass -fun "$KERNEL" "$out/kernels.cubin"
fi
