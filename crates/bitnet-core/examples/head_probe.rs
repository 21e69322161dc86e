//! Times the batched f16 head (`FloatMatrix::matmul_rows`) on one thread: rows x cols f16
//! against m vectors, best of N passes, in multiply-adds per nanosecond.
//! `cargo run --release -p bitnet-core --example head_probe -- [rows] [cols] [m] [passes]`
use bitnet_core::ops::{FloatMatrix, FloatStorage};
use half::f16;
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("number"))
        .collect();
    let rows = a.first().copied().unwrap_or(16384);
    let cols = a.get(1).copied().unwrap_or(2560);
    let m = a.get(2).copied().unwrap_or(16);
    let passes = a.get(3).copied().unwrap_or(7);
    let mut s = 0x1234_5678u32;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s as f32 / u32::MAX as f32) - 0.5
    };
    let w: Vec<f16> = (0..rows * cols).map(|_| f16::from_f32(rnd())).collect();
    let xs: Vec<f32> = (0..m * cols).map(|_| rnd()).collect();
    let mat = FloatMatrix::new(rows, cols, FloatStorage::F16(w)).expect("matrix");
    let mut out = vec![0f32; rows * m];
    let mut best = f64::MAX;
    for _ in 0..passes {
        let t = Instant::now();
        mat.matmul_rows(&xs, m, 0, &mut out);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let check: f64 = out.iter().map(|&v| v as f64).sum();
    let mac = (rows * cols * m) as f64;
    println!(
        "{rows} x {cols} x {m}: best {:.2} ms, {:.1} MAC/ns (checksum {check:.6})",
        best * 1e3,
        mac / best / 1e9
    );
}
