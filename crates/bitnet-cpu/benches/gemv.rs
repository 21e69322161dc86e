//! GEMV/GEMM throughput of every available kernel on the BitNet b1.58 2B4T linear shapes, at
//! batch 1 (decode) and 8 (small prefill). Throughput is reported in bytes of 2-bit packed
//! weights streamed per call (rows * cols / 4), whatever layout a kernel really uses, so kernels
//! compare on the same scale; GOP/s = bytes/s * 4 * 2 * batch / 1e9.
//!
//! The `t1_*` groups put the 1.6-bit `avx512vnni-t1` kernel next to the 2-bit `avx512vnni` one
//! on all four 2B4T linear shapes, at batch 1 and 16, on 1 and 2 threads. They report GOP/s
//! (criterion's "elem/s", one multiply-add = 2 ops); each kernel's real streamed bytes per call
//! are printed once per shape, so GB/s = bytes / time.
//!
//! Activations live in 64-byte-aligned buffers, as in the engine (`bitnet_core::aligned`): a
//! `Vec<i8>` placed off a cache line splits every 64-byte load.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bitnet_core::aligned::AlignedVec;
use bitnet_core::pool::ThreadPool;
use bitnet_core::{LinearKernel, TernaryMatrix};
use bitnet_cpu::Threaded;
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
            let x: AlignedVec<i8> = (0..batch * cols)
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
    let x: AlignedVec<i8> = (0..cols).map(|_| lcg(&mut seed) as u8 as i8).collect();
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

/// The 2-bit and 1.6-bit AVX-512 kernels, when this CPU runs both.
fn t1_kernels() -> Vec<Arc<dyn LinearKernel>> {
    bitnet_cpu::available_kernels()
        .into_iter()
        .filter(|k| matches!(k.name(), "avx512vnni" | "avx512vnni-t1"))
        .collect()
}

/// `kernel` alone (1 thread) or over `pool`.
fn on_threads(kernel: &Arc<dyn LinearKernel>, pool: &Arc<ThreadPool>) -> Arc<dyn LinearKernel> {
    if pool.threads() <= 1 {
        kernel.clone()
    } else {
        Arc::new(Threaded::new(kernel.clone(), pool.clone()))
    }
}

/// 2-bit vs 1.6-bit on each 2B4T linear shape (fused qkv, o, fused gate+up, down); one matrix
/// at a time, so the smaller ones stay in the last-level cache.
fn t1_shapes(c: &mut Criterion) {
    let shapes = [
        (2560usize, 2560usize),
        (3840, 2560),
        (13824, 2560),
        (2560, 6912),
    ];
    let pools = [1usize, 2].map(|t| Arc::new(ThreadPool::new(t)));
    let mut seed = 11u64;
    for (rows, cols) in shapes {
        let codes: Vec<i8> = (0..rows * cols)
            .map(|_| (lcg(&mut seed) % 3) as i8 - 1)
            .collect();
        let m = TernaryMatrix::new(rows, cols, codes, 1.0).expect("valid ternary matrix");
        let mut group = c.benchmark_group(format!("t1_{rows}x{cols}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for pool in &pools {
            let threads = pool.threads();
            let prepared: Vec<_> = t1_kernels()
                .iter()
                .map(|k| {
                    let p = on_threads(k, pool).prepare(&m).expect("prepare");
                    if threads == 1 {
                        println!(
                            "{rows}x{cols} {}: {} weight bytes",
                            k.name(),
                            p.weight_bytes()
                        );
                    }
                    (k.name(), p)
                })
                .collect();
            for batch in [1usize, 16] {
                let x: AlignedVec<i8> = (0..batch * cols)
                    .map(|_| lcg(&mut seed) as u8 as i8)
                    .collect();
                let mut out = vec![0i32; batch * rows];
                group.throughput(Throughput::Elements((2 * rows * cols * batch) as u64));
                for (name, p) in &prepared {
                    group.bench_function(
                        BenchmarkId::new(*name, format!("b{batch}_t{threads}")),
                        |bench| {
                            bench.iter(|| p.matmul_i32(black_box(&x), batch, black_box(&mut out)))
                        },
                    );
                }
            }
        }
        group.finish();
    }
}

/// 2-bit vs 1.6-bit over four whole 2B4T layers (qkv, o, gate+up, down: ~70 MB at 2 bits, more
/// than the last-level cache), each matrix separately allocated: the weights stream from DRAM
/// as in real decoding.
fn t1_layers(c: &mut Criterion) {
    let shapes = [
        (3840usize, 2560usize),
        (2560, 2560),
        (13824, 2560),
        (2560, 6912),
    ];
    let layers = 4;
    let pools = [1usize, 2].map(|t| Arc::new(ThreadPool::new(t)));
    let mut seed = 13u64;
    let matrices: Vec<TernaryMatrix> = shapes
        .iter()
        .map(|&(rows, cols)| {
            let codes = (0..rows * cols)
                .map(|_| (lcg(&mut seed) % 3) as i8 - 1)
                .collect();
            TernaryMatrix::new(rows, cols, codes, 1.0).expect("valid ternary matrix")
        })
        .collect();
    let weights: usize = layers * shapes.iter().map(|(r, c)| r * c).sum::<usize>();
    let mut group = c.benchmark_group(format!("t1_stream_{layers}layers"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for pool in &pools {
        let threads = pool.threads();
        for k in t1_kernels() {
            let kt = on_threads(&k, pool);
            let ps: Vec<_> = (0..layers)
                .flat_map(|_| matrices.iter().map(|m| kt.prepare(m).expect("prepare")))
                .collect();
            if threads == 1 {
                let bytes: usize = ps.iter().map(|p| p.weight_bytes()).sum();
                println!("{layers} layers {}: {bytes} weight bytes", k.name());
            }
            for batch in [1usize, 16] {
                let xs: Vec<AlignedVec<i8>> = shapes
                    .iter()
                    .map(|&(_, cols)| {
                        (0..batch * cols)
                            .map(|_| lcg(&mut seed) as u8 as i8)
                            .collect()
                    })
                    .collect();
                let mut outs: Vec<Vec<i32>> = shapes
                    .iter()
                    .map(|&(rows, _)| vec![0; batch * rows])
                    .collect();
                group.throughput(Throughput::Elements((2 * weights * batch) as u64));
                group.bench_function(
                    BenchmarkId::new(k.name(), format!("b{batch}_t{threads}")),
                    |bench| {
                        bench.iter(|| {
                            for (i, p) in ps.iter().enumerate() {
                                let s = i % shapes.len();
                                p.matmul_i32(black_box(&xs[s]), batch, black_box(&mut outs[s]));
                            }
                        })
                    },
                );
            }
        }
    }
    group.finish();
}

criterion_group!(benches, gemv, gemv_stream, t1_shapes, t1_layers);
criterion_main!(benches);
