//! Throughput of the quantized dot kernels, one thread (ignored by default; run with
//! `cargo test --release -p bitnet-gguf --test quant_dot_bench -- --ignored --nocapture`).
//!
//! Two cases per format and kernel: a matrix far larger than the caches (memory-bound, as a
//! head is in decode) and one that stays in L2 (the kernel's compute speed). For comparison it
//! also times an f32-activation AVX-512 Q8_0 kernel (decode codes to f32 and FMA with the
//! unquantized vector; exact up to f32 rounding), the alternative design.

use std::time::Instant;

use bitnet_gguf::TensorType;
use bitnet_gguf::quants::dot::{DotKernel, QuantizedActs, dot_rows_quantized};

/// Random blocks with a sane f16 scale in every block.
fn random_rows(kind: TensorType, rows: usize, cols: usize) -> Vec<u8> {
    let (block, scale_at) = match kind {
        TensorType::Q8_0 => (34, 0),
        TensorType::Q4_0 => (18, 0),
        TensorType::Q4_K => (144, 0),
        _ => (210, 208),
    };
    let n = rows * cols / kind.block_size() as usize;
    let mut s = 0x1234_5678_9abc_def0u64;
    let mut out: Vec<u8> = (0..n * block)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    let d = half::f16::from_f32(0.001).to_bits().to_le_bytes();
    for b in out.chunks_exact_mut(block) {
        b[scale_at..scale_at + 2].copy_from_slice(&d);
        if kind == TensorType::Q4_K {
            b[2..4].copy_from_slice(&d); // dmin
        }
    }
    out
}

fn time(mut f: impl FnMut(), bytes: usize, reps: usize) -> (f64, f64) {
    f();
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best * 1e3, bytes as f64 / best / 1e9)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
fn q8_0_f32_row(row: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let nb = row.len() / 34;
    assert!(x.len() == nb * 32);
    let mut acc = [_mm512_setzero_ps(); 2];
    for b in 0..nb {
        // SAFETY: block b lies in `row` and its 32 codes at 2..34; x holds nb * 32 values.
        unsafe {
            let p = row.as_ptr().add(b * 34);
            let d =
                _mm512_set1_ps(half::f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32());
            for (h, a) in acc.iter_mut().enumerate() {
                let w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                    p.add(2 + 16 * h).cast(),
                )));
                let xv = _mm512_mul_ps(d, _mm512_loadu_ps(x.as_ptr().add(b * 32 + 16 * h)));
                *a = _mm512_fmadd_ps(w, xv, *a);
            }
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

#[test]
#[ignore]
fn kernel_throughput() {
    let cols = 2560;
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let mut acts = QuantizedActs::new();
    acts.quantize(&x, 1).unwrap();
    for kind in [
        TensorType::Q8_0,
        TensorType::Q6_K,
        TensorType::Q4_K,
        TensorType::Q4_0,
    ] {
        for rows in [32768usize, 256] {
            let data = random_rows(kind, rows, cols);
            let mut out = vec![0.0f32; rows];
            let reps = if rows > 1000 { 5 } else { 2000 };
            for kernel in DotKernel::available() {
                let (ms, gbs) = time(
                    || dot_rows_quantized(kernel, kind, &data, cols, 0, &acts, &mut out).unwrap(),
                    data.len(),
                    if kernel == DotKernel::Scalar {
                        reps.min(50)
                    } else {
                        reps
                    },
                );
                eprintln!(
                    "{kind} {rows}x{cols} {:>10}: {ms:8.3} ms, {gbs:6.1} GB/s, {:6.1} ns/row",
                    kernel.name(),
                    ms * 1e6 / rows as f64
                );
            }
            #[cfg(target_arch = "x86_64")]
            if kind == TensorType::Q8_0 && std::arch::is_x86_feature_detected!("avx512f") {
                let (ms, gbs) = time(
                    || {
                        for (row, o) in data.chunks_exact(cols / 32 * 34).zip(out.iter_mut()) {
                            // SAFETY: avx512f was detected just above (f16c comes with it).
                            *o = unsafe { q8_0_f32_row(row, &x) };
                        }
                    },
                    data.len(),
                    reps,
                );
                eprintln!(
                    "{kind} {rows}x{cols} {:>10}: {ms:8.3} ms, {gbs:6.1} GB/s, {:6.1} ns/row",
                    "f32-x fma",
                    ms * 1e6 / rows as f64
                );
            }
        }
    }
}
