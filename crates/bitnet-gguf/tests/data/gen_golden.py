#!/usr/bin/env python3
"""Regenerates the golden vectors in this folder with llama.cpp's gguf-py (an independent
implementation of GGUF and of the ggml quantizers).

    python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf numpy
    /tmp/gguf-venv/bin/python crates/bitnet-gguf/tests/data/gen_golden.py

Generated with gguf 0.19.0, numpy 2.4. Files are little-endian raw arrays:
  *.i8 int8, *.f32 float32, *.bin encoded tensor bytes, *.gguf whole files.
"""
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize, dequantize

OUT = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(20240917)


def save(name, arr):
    path = os.path.join(OUT, name)
    with open(path, "wb") as f:
        f.write(np.ascontiguousarray(arr).tobytes())


# Ternary codes: 3 blocks of 256, the last one all zero (ggml writes d = 0 there).
codes = rng.integers(-1, 2, size=768).astype(np.int8)
codes[512:] = 0
scale = np.float32(0.6875)  # exact in f16
w = (codes.astype(np.float32) * scale).reshape(1, 768)
save("ternary_codes.i8", codes)
save("tq1_0.bin", quantize(w, Q.TQ1_0))
save("tq2_0.bin", quantize(w, Q.TQ2_0))

# Arbitrary (non-canonical) TQ1_0 / TQ2_0 bytes with sane f16 scales, and gguf-py's dequantization:
# exercises the trit extraction on every byte value and TQ2_0's code 3 (read as 2d by ggml).
tq1 = rng.integers(0, 256, size=(2, 54), dtype=np.uint8)
tq1[:, 52:54] = np.array([0.375, -1.5], dtype=np.float16).view(np.uint8).reshape(2, 2)
tq1[0, :48] = np.arange(48, dtype=np.uint8) * 5 + 13
tq1 = tq1.reshape(-1)
save("tq1_0_random.bin", tq1)
save("tq1_0_random_dequant.f32", dequantize(tq1.reshape(1, -1), Q.TQ1_0).astype(np.float32))
tq2 = rng.integers(0, 256, size=(2, 66), dtype=np.uint8)
tq2[:, 64:66] = np.array([0.25, 3.0], dtype=np.float16).view(np.uint8).reshape(2, 2)
tq2 = tq2.reshape(-1)
save("tq2_0_random.bin", tq2)
save("tq2_0_random_dequant.f32", dequantize(tq2.reshape(1, -1), Q.TQ2_0).astype(np.float32))

# Q8_0: gguf-py's quantizer is documented bit-exact with ggml's reference.
x = (rng.standard_normal(128) * 0.05).astype(np.float32)
x[5] = 0.0
x[64:96] = 0.0  # an all-zero block
save("q8_0_input.f32", x)
q8 = quantize(x.reshape(1, -1), Q.Q8_0).reshape(-1)
save("q8_0.bin", q8)
save("q8_0_dequant.f32", dequantize(q8.reshape(1, -1), Q.Q8_0).astype(np.float32))

# Q6_K: gguf-py has no Q6_K quantizer, so check dequantization of arbitrary blocks.
q6 = rng.integers(0, 256, size=(2, 210), dtype=np.uint8)
q6[:, 208:210] = np.array([0.0123, -0.00042], dtype=np.float16).view(np.uint8).reshape(2, 2)
q6 = q6.reshape(-1)
save("q6_k.bin", q6)
save("q6_k_dequant.f32", dequantize(q6.reshape(1, -1), Q.Q6_K).astype(np.float32))

# Q4_0: gguf-py's quantizer follows ggml's quantize_row_q4_0_ref. Its own generator, so the files
# above do not change: head-like normal values, an all-zero block, sign ties (the first of +-a
# wins), a block whose extreme is positive, exact half-levels, values near f16's range, and
# subnormal-ish tiny blocks whose f16 scale rounds to zero. (Not -0.0 in a zero block: gguf-py
# takes the sign of the element there, ggml the +0.0 it starts from.)
rng4 = np.random.default_rng(4)
x4 = (rng4.standard_normal(32 * 12) * 0.02).astype(np.float32)
x4[32:64] = 0.0
x4[64:96] = np.linspace(-1, 1, 32, dtype=np.float32)
x4[70], x4[90] = np.float32(-3.0), np.float32(3.0)
x4[96:128] *= 50
x4[100] = np.float32(5.0)
x4[128:160] = np.float32(0.25) * (np.arange(32, dtype=np.float32) % 17 - 8) / 2  # k/2 levels
x4[135] = np.float32(-2.0)
x4[160:192] = (rng4.standard_normal(32) * 1e5).astype(np.float32)
x4[160] = np.float32(5.2e5)
x4[192:224] = (rng4.standard_normal(32) * 1e-9).astype(np.float32)
x4[224:256] = (rng4.standard_normal(32) * 3e-7).astype(np.float32)
save("q4_0_input.f32", x4)
q4 = quantize(x4.reshape(1, -1), Q.Q4_0).reshape(-1)
save("q4_0.bin", q4)
save("q4_0_dequant.f32", dequantize(q4.reshape(1, -1), Q.Q4_0).astype(np.float32))

# Q4_K: gguf-py has no Q4_K quantizer. Its dequantization of arbitrary blocks (every 6-bit scale
# and min packing, sane f16 d/dmin), and an input for ggml's own quantizer: gen_q4_k.c (see there)
# turns q4_k_input.f32 into q4_k.bin with quantize_row_q4_K_ref.
rngk = np.random.default_rng(12)
qk = rngk.integers(0, 256, size=(3, 144), dtype=np.uint8)
qk[:, 0:4] = np.array([[0.0123, 0.25], [-0.00042, 0.003], [1.5, -0.75]],
                      dtype=np.float16).view(np.uint8).reshape(3, 4)
qk = qk.reshape(-1)
save("q4_k_random.bin", qk)
save("q4_k_random_dequant.f32", dequantize(qk.reshape(1, -1), Q.Q4_K).astype(np.float32))
xk = (rngk.standard_normal(256 * 6) * 0.02).astype(np.float32)
xk[256:512] = rngk.uniform(0, 1, 256).astype(np.float32)  # all positive: the min clamps to 0
xk[512:768] = (rngk.integers(-8, 8, 256) * 0.125).astype(np.float32)
xk[768:800] = 0.0  # an all-zero sub-block
xk[1024:1280] *= np.where(np.arange(256) % 37 == 3, 50, 1).astype(np.float32)  # outliers
xk[1280:1536] = 0.0  # an all-zero super-block
save("q4_k_input.f32", xk)

# F16 / BF16 rounding (including exact ties for bf16).
f = np.concatenate([
    (rng.standard_normal(60) * 3).astype(np.float32),
    np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 65504.0, 1e-8, -0.0, 2**-24, 3 * 2**-25],
             dtype=np.float32),
])
save("float_input.f32", f)
save("f16.bin", f.astype(np.float16))
save("bf16.bin", quantize(f, Q.BF16))

# A whole GGUF file written by gguf-py: every metadata type, nested arrays, custom alignment,
# and tensors of several types. Architecture "bitnet" (upstream ids).
path = os.path.join(OUT, "gguf_py_sample.gguf")
wr = gguf.GGUFWriter(path, "bitnet")
wr.add_custom_alignment(64)
wr.add_uint8("t.u8", 200)
wr.add_int8("t.i8", -100)
wr.add_uint16("t.u16", 60000)
wr.add_int16("t.i16", -30000)
wr.add_uint32("t.u32", 4000000000)
wr.add_int32("t.i32", -2000000000)
wr.add_float32("t.f32", 0.1)
wr.add_bool("t.bool", True)
wr.add_string("t.str", "héllo ✓")
wr.add_uint64("t.u64", 2**63 + 5)
wr.add_int64("t.i64", -(2**62))
wr.add_float64("t.f64", -2.5e-300)
wr.add_array("t.arr_str", ["a", "", "Ġthe", "<|eot_id|>"])
wr.add_key_value("t.arr_i32", [1, -2, 3], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
wr.add_key_value("t.arr_f32", [0.5, -1.25], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.FLOAT32)
wr.add_key_value("t.arr_bool", [True, False, True], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.BOOL)
wr.add_key_value("t.arr_u8", [0, 255], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT8)
wr.add_array("t.arr_nested", [[1, 2], [3]])
f32_t = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
wr.add_tensor("f32.weight", f32_t)
wr.add_tensor("f16.weight", (np.arange(4, dtype=np.float32) * 0.5).astype(np.float16))
wr.add_tensor("q8_0.weight", q8[:68].reshape(1, 68), raw_shape=(1, 68), raw_dtype=Q.Q8_0)
tq2_t = quantize(w[:, :512], Q.TQ2_0)
wr.add_tensor("tq2_0.weight", tq2_t.reshape(2, 66), raw_shape=(2, 66), raw_dtype=Q.TQ2_0)
wr.write_header_to_file()
wr.write_kv_data_to_file()
wr.write_tensors_to_file()
wr.close()
print("written to", OUT)
