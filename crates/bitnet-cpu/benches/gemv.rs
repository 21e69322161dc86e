//! GEMV/GEMM throughput of every available kernel on the BitNet b1.58 2B4T linear shapes, at
//! batch 1 (decode) and 8 (small prefill). Throughput is reported in bytes of 2-bit packed
//! weights streamed per call (rows * cols / 4), whatever layout a kernel really uses, so kernels
//! compare on the same scale; GOP/s = bytes/s * 4 * 2 * batch / 1e9.

use std::hint::black_box;

use bitnet_core::TernaryMatrix;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// A small deterministic generator so the bench needs no RNG crate.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

fn gemv(c: &mut Criterion) {
    let shapes = [(2560usize, 2560usize), (6912, 2560), (2560, 6912)];
    let mut seed = 42u64;
    for (rows, cols) in shapes {
        let codes: Vec<i8> = (0..rows * cols)
            .map(|_| (lcg(&mut seed) % 3) as i8 - 1)
            .collect();
        let m = TernaryMatrix::new(rows, cols, codes, 1.0).expect("valid ternary matrix");
        let mut group = c.benchmark_group(format!("gemv_{rows}x{cols}"));
        for batch in [1usize, 8] {
            let x: Vec<i8> = (0..batch * cols)
                .map(|_| lcg(&mut seed) as u8 as i8)
                .collect();
            let mut out = vec![0i32; batch * rows];
            group.throughput(Throughput::Bytes((rows * cols / 4) as u64));
            for k in bitnet_cpu::available_kernels() {
                let p = k.prepare(&m).expect("prepare");
                group.bench_with_input(
                    BenchmarkId::new(k.name(), format!("b{batch}")),
                    &batch,
                    |bench, &batch| {
                        bench.iter(|| p.matmul_i32(black_box(&x), batch, black_box(&mut out)))
                    },
                );
            }
        }
        group.finish();
    }
}

/// Batch-1 GEMV over 16 separately allocated 6912x2560 matrices (~71 MB of packed weights, more
/// than the last-level cache), so the figure reflects streaming from DRAM as in real decoding
/// rather than re-reading a matrix that stays hot in cache.
fn gemv_stream(c: &mut Criterion) {
    let (rows, cols, copies) = (6912usize, 2560usize, 16usize);
    let mut seed = 7u64;
    let codes: Vec<i8> = (0..rows * cols)
        .map(|_| (lcg(&mut seed) % 3) as i8 - 1)
        .collect();
    let m = TernaryMatrix::new(rows, cols, codes, 1.0).expect("valid ternary matrix");
    let x: Vec<i8> = (0..cols).map(|_| lcg(&mut seed) as u8 as i8).collect();
    let mut out = vec![0i32; rows];
    let mut group = c.benchmark_group(format!("stream_{copies}x_{rows}x{cols}"));
    group.throughput(Throughput::Bytes((copies * rows * cols / 4) as u64));
    for k in bitnet_cpu::available_kernels() {
        let ps: Vec<_> = (0..copies)
            .map(|_| k.prepare(&m).expect("prepare"))
            .collect();
        group.bench_function(BenchmarkId::new(k.name(), "b1"), |bench| {
            bench.iter(|| {
                for p in &ps {
                    p.matmul_i32(black_box(&x), 1, black_box(&mut out));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, gemv, gemv_stream);
criterion_main!(benches);
