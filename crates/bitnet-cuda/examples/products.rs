//! Microseconds per ternary product on the GPU for the 2B4T shapes (qkv, o, gate/up with its
//! relu² formed, down), at several batch sizes, for every tensor-core kernel the model can pick
//! and for the model's own choice (`auto`): the table behind a kernel choice. Each figure is the
//! product launched on enough copies of its weights to pass the L2 cache, in one captured graph
//! (`bitnet_cuda::ternary_timing`); the median of seven rounds.
//!
//! ```text
//! cargo run --release -p bitnet-cuda --example products -- [ROWS,ROWS,...] [PRODUCT] [KERNEL]
//! ```
//!
//! Rows default to 16,32,48,64,128; PRODUCT (qkv, o, gate/up, down) and KERNEL (a column's name)
//! keep one of each, e.g. to run one kernel under a profiler.

use bitnet_core::{QuantizedActivations, TernaryMatrix};
use bitnet_cuda::{Gpu, LinearPath};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn main() {
    let batches: Vec<usize> = match std::env::args().nth(1) {
        Some(a) => match a.split(',').map(str::parse).collect() {
            Ok(v) => v,
            Err(_) => {
                eprintln!("usage: products [ROWS,ROWS,...]   e.g. products 16,64");
                std::process::exit(2);
            }
        },
        None => vec![16, 32, 48, 64, 128],
    };
    let only = |i: usize| std::env::args().nth(i);
    let (only_product, only_kernel) = (only(2), only(3));
    let gpu = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("no GPU: {e}");
            std::process::exit(1);
        }
    };
    let paths = [
        ("auto", LinearPath::Auto),
        ("direct", LinearPath::MmaDirect),
        ("wide", LinearPath::MmaWide),
        ("ring1", LinearPath::MmaRing(1)),
        ("ring2", LinearPath::MmaRing(2)),
        ("ring4", LinearPath::MmaRing(4)),
        ("tile", LinearPath::MmaTile(0)),
        ("tile1", LinearPath::MmaTile(1)),
        ("tile2", LinearPath::MmaTile(2)),
        ("tile4", LinearPath::MmaTile(4)),
        ("tile8", LinearPath::MmaTile(8)),
        ("gemm", LinearPath::Gemm(0)),
        ("gemm1", LinearPath::Gemm(1)),
        ("gemm2", LinearPath::Gemm(2)),
        ("gemm4", LinearPath::Gemm(4)),
        ("gemm8", LinearPath::Gemm(8)),
    ];
    // (name, rows, cols, glu): the 2B4T shapes; gate/up as the model runs it (relu² formed).
    let shapes = [
        ("qkv", 3840, 2560, 0),
        ("o", 2560, 2560, 0),
        ("gate/up", 13824, 2560, 1),
        ("down", 2560, 6912, 0),
    ];
    let paths: Vec<_> = paths
        .into_iter()
        .filter(|(name, _)| only_kernel.as_deref().is_none_or(|k| k == *name))
        .collect();
    let mut rng = StdRng::seed_from_u64(7);
    print!("| product | rows |");
    for (name, _) in &paths {
        print!(" {name} |");
    }
    println!();
    println!("|---|---:|{}", "---:|".repeat(paths.len()));
    for &(name, rows, cols, glu) in &shapes {
        if only_product.as_deref().is_some_and(|p| p != name) {
            continue;
        }
        let codes: Vec<i8> = (0..rows * cols).map(|_| rng.random_range(-1..=1)).collect();
        let w = match TernaryMatrix::new(rows, cols, codes, 0.5) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("{name}: {e}");
                std::process::exit(1);
            }
        };
        // Enough copies that one round reads ~120 MB: more than the L2 cache of any GPU.
        let copies = (120usize << 20).div_ceil(rows * cols / 4).clamp(2, 64);
        for &t in &batches {
            let x = QuantizedActivations {
                codes: (0..t * cols)
                    .map(|_| rng.random_range(-127i32..=127) as i8)
                    .collect(),
                scales: vec![40.0; t],
                cols,
            };
            print!("| {name} | {t} |");
            let ps: Vec<LinearPath> = paths.iter().map(|p| p.1).collect();
            match bitnet_cuda::ternary_timing(&gpu, &w, &x, &ps, glu, (copies, 7)) {
                Ok(us) => us.iter().for_each(|m| print!(" {m:.1} |")),
                Err(e) => print!(" {e} |"),
            }
            println!();
        }
    }
}
