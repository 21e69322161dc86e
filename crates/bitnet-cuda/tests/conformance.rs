//! Every CUDA ternary kernel against the scalar reference kernel on random shapes and batch sizes
//! 1..=64 (and longer batches that take several launches); the fused norm + quantizer against
//! the CPU's. Needs a GPU: without one each test prints SKIPPED and passes, unless
//! `BITNET_REQUIRE_GPU=1` (set by `scripts/gpu-check.sh`) makes that a failure.

use bitnet_core::{LinearKernel, QuantizedActivations, TernaryMatrix};
use bitnet_cuda::{Gpu, LinearPath, NormPath};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn gpu() -> Option<Gpu> {
    let found = bitnet_cuda::device_count().and_then(|n| {
        if n == 0 {
            Err(bitnet_cuda::CudaError::Unavailable("no CUDA device".into()))
        } else {
            Gpu::open(0)
        }
    });
    match found {
        Ok(g) => Some(g),
        Err(e) if std::env::var("BITNET_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("BITNET_REQUIRE_GPU=1 but: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED (no GPU): {e}");
            None
        }
    }
}

fn random_case(
    rng: &mut StdRng,
    rows: usize,
    cols: usize,
    batch: usize,
) -> (TernaryMatrix, QuantizedActivations) {
    let codes: Vec<i8> = (0..rows * cols).map(|_| rng.random_range(-1..=1)).collect();
    let w = TernaryMatrix::new(rows, cols, codes, rng.random_range(0.05f32..3.0)).unwrap();
    let x = QuantizedActivations {
        codes: (0..batch * cols)
            .map(|_| rng.random_range(-128i32..=127) as i8)
            .collect(),
        scales: (0..batch)
            .map(|_| rng.random_range(0.5f32..400.0))
            .collect(),
        cols,
    };
    (w, x)
}

fn scalar(w: &TernaryMatrix, x: &QuantizedActivations) -> Vec<f32> {
    let p = bitnet_core::scalar::ScalarKernel.prepare(w).unwrap();
    let mut out = vec![0f32; x.batch() * w.rows()];
    p.forward(x, &mut out, &mut Vec::new());
    out
}

#[test]
fn ternary_kernels_equal_the_scalar_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(0xb17);
    let mut cases: Vec<(usize, usize, usize)> = vec![
        (1, 1, 1),
        (16, 128, 1),
        (2560, 2560, 1),
        (640, 2560, 3),
        (2560, 6912, 16),
        (6912, 2560, 64),
        (300, 700, 130),
        (1024, 2560, 40),
    ];
    for b in 1..=64 {
        cases.push((rng.random_range(1..300), rng.random_range(1..700), b));
    }
    for (rows, cols, batch) in cases {
        let (w, x) = random_case(&mut rng, rows, cols, batch);
        let want = scalar(&w, &x);
        for path in [
            LinearPath::Auto,
            LinearPath::Dp4a,
            LinearPath::Mma,
            LinearPath::MmaDirect,
            LinearPath::MmaWide,
            LinearPath::MmaRing(1),
            LinearPath::MmaRing(2),
            LinearPath::MmaRing(4),
            LinearPath::MmaTile(0),
            LinearPath::MmaTile(1),
            LinearPath::MmaTile(3),
            LinearPath::MmaTile(8),
            LinearPath::Gemm(0),
            LinearPath::Gemm(1),
            LinearPath::Gemm(3),
            LinearPath::Gemm(8),
        ] {
            let (got, _) = bitnet_cuda::ternary_forward(&gpu, &w, &x, path, 0).unwrap();
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "{path:?} rows {rows} cols {cols} batch {batch}: output {i} is {} but the scalar kernel gives {}",
                    got[i], want[i]
                );
            }
            if rows % 16 == 0 {
                check_glu(&gpu, &w, &x, path, &want);
            }
            // Added to values already in the output (the residual stream's o and down).
            if batch % 4 == 1 || rows % 4 == 0 {
                let base: Vec<f32> = (0..want.len())
                    .map(|i| (i % 97) as f32 * 0.25 - 7.0)
                    .collect();
                let (got, _) =
                    bitnet_cuda::ternary_forward_onto(&gpu, &w, &x, path, 0, Some(&base)).unwrap();
                if let Some(i) = (0..want.len()).position(|i| got[i] != base[i] + want[i]) {
                    panic!(
                        "{path:?} rows {rows} cols {cols} batch {batch}, added: output {i} is {} but {} + {} is {}",
                        got[i],
                        base[i],
                        want[i],
                        base[i] + want[i]
                    );
                }
            }
        }
    }
}

/// `w`'s rows as interleaved gate/up (8 gate rows, then their 8 up rows): where `path` forms
/// act(gate) * up itself (the tensor-core kernels), it equals the same formed from the plain
/// outputs `plain` (relu² bit for bit, silu within 1e-5).
fn check_glu(
    gpu: &Gpu,
    w: &TernaryMatrix,
    x: &QuantizedActivations,
    path: LinearPath,
    plain: &[f32],
) {
    let rows = w.rows();
    for mode in [1, 2] {
        let (got, formed) = bitnet_cuda::ternary_forward(gpu, w, x, path, mode).unwrap();
        if !formed {
            continue;
        }
        for t in 0..x.batch() {
            for c in 0..rows / 2 {
                let g = plain[t * rows + c / 8 * 16 + c % 8];
                let u = plain[t * rows + c / 8 * 16 + 8 + c % 8];
                assert_glu(
                    mode,
                    got[t * rows + c],
                    g,
                    u,
                    &format!("{path:?} rows {rows} t {t} c {c}"),
                );
            }
        }
    }
}

/// `got` is act(g) * u for activation `mode` (1 relu², bit for bit; 2 silu, within 1e-5).
fn assert_glu(mode: i32, got: f32, g: f32, u: f32, what: &str) {
    if mode == 1 {
        let r = g.max(0.0);
        assert_eq!(got, r * r * u, "relu2 {what}");
    } else {
        let want = g / (1.0 + (-g).exp()) * u;
        let tol = 1e-5 * want.abs().max(1e-3);
        assert!((got - want).abs() <= tol, "silu {got} vs {want} {what}");
    }
}

#[test]
fn norm_quant_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(7);
    let mut flips = 0usize;
    let mut total = 0usize;
    // 7168 is the widest row of the register path; 9000 and 11000 take the strided loops (the
    // first with the row cached in shared memory, the second without).
    for (rows, cols) in [
        (1, 64),
        (5, 2560),
        (64, 6912),
        (3, 37),
        (9, 1000),
        (2, 7168),
        (2, 9000),
        (1, 11000),
    ] {
        let x: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-4.0f32..4.0))
            .collect();
        let w: Vec<f32> = (0..cols).map(|_| rng.random_range(0.5f32..1.5)).collect();
        let got = bitnet_cuda::norm_quant(&gpu, &x, rows, &w, 1e-5).unwrap();
        for r in 0..rows {
            let mut normed = vec![0f32; cols];
            bitnet_core::ops::rmsnorm(&x[r * cols..(r + 1) * cols], &w, 1e-5, &mut normed);
            let mut codes = vec![0i8; cols];
            let s = bitnet_core::quant::quantize_row(&normed, &mut codes);
            let gs = got.scales[r];
            assert!((gs - s).abs() <= 1e-5 * s, "scale {gs} vs {s}");
            for (a, b) in got.codes[r * cols..(r + 1) * cols].iter().zip(&codes) {
                // The sum of squares is reduced in another order; a code may move by one only
                // where the value sits on a rounding edge.
                assert!((*a as i32 - *b as i32).abs() <= 1, "code {a} vs {b}");
                flips += (a != b) as usize;
                total += 1;
            }
        }
    }
    assert!(flips * 1000 <= total, "{flips} of {total} codes differ");
}

#[test]
fn fused_decode_kernel_equals_norm_then_product() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(11);
    for (rows, cols, batch) in [
        (16, 128, 1),
        (2560, 2560, 1),
        (300, 6912, 4),
        (77, 1000, 3),
        (640, 7168, 2),
        // More strips than a wave (several per block), and wide strips.
        (13824, 2560, 1),
        (13824, 2560, 4),
        (2560, 6912, 1),
    ] {
        let (w, _) = random_case(&mut rng, rows, cols, 1);
        let x: Vec<f32> = (0..batch * cols)
            .map(|_| rng.random_range(-3.0f32..3.0))
            .collect();
        let norm: Vec<f32> = (0..cols).map(|_| rng.random_range(0.5f32..1.5)).collect();
        let run = |path| {
            bitnet_cuda::norm_linear_forward(&gpu, &w, &x, batch, &norm, 1e-5, path).unwrap()
        };
        let two = run(NormPath::Separate);
        for path in [NormPath::Fused, NormPath::Staged] {
            let one = run(path);
            assert_eq!(one, two, "{path:?}: rows {rows} cols {cols} batch {batch}");
        }
        if rows % 16 != 0 {
            continue;
        }
        // The rows as interleaved gate/up (8 gate rows, then their 8 up rows): the staged
        // kernel's act(gate) * up, against the same formed from the plain outputs.
        for mode in [1, 2] {
            let glu = run(NormPath::StagedGlu(mode));
            for t in 0..batch {
                for c in 0..rows / 2 {
                    let g = two[t * rows + c / 8 * 16 + c % 8];
                    let u = two[t * rows + c / 8 * 16 + 8 + c % 8];
                    let what = format!("staged rows {rows} cols {cols} t {t} c {c}");
                    assert_glu(mode, glu[t * rows + c], g, u, &what);
                }
            }
        }
    }
}

/// The top-k kernel chooses exactly the host's candidates (`ops::top_k`): same ids, same
/// values, same order, on rows with many ties, signed zeros, infinities and NaNs, for k from 1
/// to the kernel's maximum and vocabularies smaller and larger than a block.
/// `n` logits with what a selection must get right: NaN, both infinities, both zeros, and many
/// ties among the numbers.
fn awkward_logits(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.random_range(0..40) {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            2 => f32::INFINITY,
            3 => -0.0,
            4 => 0.0,
            5..=20 => rng.random_range(-8i32..8) as f32 * 0.5, // ties
            _ => rng.random_range(-20.0f32..20.0),
        })
        .collect()
}

/// The engine's greedy choice (`bitnet_engine::sampling::argmax`, which depends on this crate):
/// the first index of the largest logit, NaN never wins, 0 when nothing beats -inf.
fn host_argmax(row: &[f32]) -> u32 {
    let (mut best, mut best_v) = (0u32, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > best_v {
            (best, best_v) = (i as u32, v);
        }
    }
    best
}

#[test]
fn argmax_kernel_equals_the_host_choice() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(0xa59);
    // Widths that are and are not multiples of 4 (the kernel's 16-byte path and its scalar one).
    for (vocab, rows) in [
        (1, 3),
        (3, 2),
        (8, 3),
        (37, 4),
        (1000, 3),
        (4099, 2),
        (128_256, 5),
    ] {
        let mut logits = awkward_logits(&mut rng, vocab * rows);
        // A row of -inf and NaN only, a row of NaN only, and a row whose maximum comes last.
        if rows >= 3 {
            for (i, v) in logits[..vocab].iter_mut().enumerate() {
                *v = if i % 2 == 0 {
                    f32::NEG_INFINITY
                } else {
                    f32::NAN
                };
            }
            logits[vocab..2 * vocab].fill(f32::NAN);
            logits[3 * vocab - 1] = f32::INFINITY;
        }
        let want: Vec<u32> = logits.chunks_exact(vocab).map(host_argmax).collect();
        for cluster in [false, true] {
            match bitnet_cuda::argmax_rows(&gpu, &logits, vocab, cluster) {
                Ok(got) => assert_eq!(got, want, "vocab {vocab}, cluster {cluster}"),
                Err(bitnet_cuda::CudaError::Unavailable(why)) if cluster => eprintln!("{why}"),
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[test]
fn top_k_kernel_equals_the_host_selection() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(0x70b);
    for (vocab, rows) in [(1, 3), (7, 2), (300, 5), (1024, 2), (4099, 3), (128_256, 4)] {
        for k in [1usize, 2, 5, 40, 64, 255, 256] {
            if k > vocab {
                continue;
            }
            let logits = awkward_logits(&mut rng, vocab * rows);
            let got = bitnet_cuda::top_k_rows(&gpu, &logits, vocab, k).unwrap();
            let mut want = Vec::new();
            for (r, row) in logits.chunks_exact(vocab).enumerate() {
                bitnet_core::ops::top_k(row, k, &mut want);
                let g = &got[r * k..(r + 1) * k];
                // Where a row has fewer than k numbers the kernel fills in NaN entries.
                assert_eq!(
                    g[..want.len()]
                        .iter()
                        .map(|c| (c.0, c.1.to_bits()))
                        .collect::<Vec<_>>(),
                    want.iter()
                        .map(|c| (c.0, c.1.to_bits()))
                        .collect::<Vec<_>>(),
                    "vocab {vocab} k {k} row {r}"
                );
                assert!(g[want.len()..].iter().all(|c| c.1.is_nan()));
            }
        }
    }
}

/// The head tables the model stores: f16, bf16, and int8 (quantized per row on the device from
/// an f16 table), as (name, head type, storage) of the values `w`.
fn head_tables(
    w: &[f32],
) -> [(
    &'static str,
    bitnet_cuda::HeadType,
    bitnet_core::ops::FloatStorage,
); 3] {
    use bitnet_core::ops::FloatStorage;
    use bitnet_cuda::HeadType;
    use half::{bf16, f16};
    let f16s = || FloatStorage::F16(w.iter().map(|&v| f16::from_f32(v)).collect());
    [
        ("f16", HeadType::Native, f16s()),
        (
            "bf16",
            HeadType::Native,
            FloatStorage::BF16(w.iter().map(|&v| bf16::from_f32(v)).collect()),
        ),
        ("int8", HeadType::Int8, f16s()),
    ]
}

/// Both heads (the tensor-core one for batches, the CUDA-core one) against a double-precision
/// host product of the table as stored (f16, bf16, and int8 quantized per row from an f16
/// table), for row counts around the kernels' tiles (8 rows, 64 rows) and a vocabulary that is
/// not a multiple of the 256-row block (nor of the int8 head's 128).
#[test]
fn head_kernels_equal_a_double_precision_product() {
    use bitnet_core::ops::FloatMatrix;
    use bitnet_cuda::HeadType;
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(0x4ead);
    // 1,152 columns: nine of the warpgroup head's stages of 128, so its stages are reused.
    for (vocab, cols) in [(300, 128), (4099, 384), (1000, 1152)] {
        let w: Vec<f32> = (0..vocab * cols)
            .map(|_| rng.random_range(-0.08f32..0.08))
            .collect();
        for (name, head, storage) in head_tables(&w) {
            let table = FloatMatrix::new(vocab, cols, storage).unwrap();
            // The values the device holds, as f64 (int8: the per-row quantization the model does).
            let mut stored = vec![0f32; vocab * cols];
            for (r, row) in stored.chunks_exact_mut(cols).enumerate() {
                table.row_into(r, row);
                if head == HeadType::Int8 {
                    let max = row.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let s = if max > 0.0 { max / 127.0 } else { 1.0 };
                    for v in row.iter_mut() {
                        *v = (*v / s).round().clamp(-127.0, 127.0) * s;
                    }
                }
            }
            // Every count of 8-row tiles (1..=8) in the last 64-row block.
            for m in [1usize, 8, 9, 17, 25, 33, 41, 56, 57, 64, 65, 120, 130] {
                let mut x: Vec<f32> = (0..m * cols)
                    .map(|_| rng.random_range(-4.0f32..4.0))
                    .collect();
                if m == 17 {
                    // A row of zeros (the int8 head's row scale 0).
                    x[3 * cols..4 * cols].fill(0.0);
                }
                for tensor_cores in [true, false] {
                    let got =
                        bitnet_cuda::head_logits(&gpu, &table, head, &x, tensor_cores).unwrap();
                    for t in 0..m {
                        let xr = &x[t * cols..(t + 1) * cols];
                        for v in 0..vocab {
                            let wr = &stored[v * cols..(v + 1) * cols];
                            let want: f64 =
                                wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                            let mag: f64 = wr
                                .iter()
                                .zip(xr)
                                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                                .sum();
                            // The int8 table's tensor-core head takes x as 16-bit integers
                            // (`head_imma_i8`): each element off by at most half its row's
                            // step max|x| / 32767.
                            let rounding = if head == HeadType::Int8 && tensor_cores {
                                let step =
                                    xr.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 32767.0;
                                wr.iter().map(|&a| (a as f64).abs()).sum::<f64>() * step * 0.5001
                            } else {
                                0.0
                            };
                            let g = got[t * vocab + v] as f64;
                            assert!(
                                (g - want).abs() <= 1e-5 * mag + 1e-6 + rounding,
                                "{name} vocab {vocab} cols {cols} m {m} tensor cores {tensor_cores}: row {t} \\
                                 logit {v}: {g} vs {want} (magnitude {mag})"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Greedy decode steps of more than 32 rows take their tokens from inside the warpgroup head
/// (`wg_finish`, sm_90a): the same tokens as the argmax of that head's own logits (the first
/// index of the largest, NaN never chosen), on tables with many equal rows (ties within a block
/// of 128 table rows and across blocks), a row of x zero (every logit tied) and one NaN, for row
/// counts over one to three 64-row blocks and vocabularies not a multiple of 128.
#[test]
fn greedy_head_equals_the_argmax_of_its_logits() {
    use bitnet_core::ops::FloatMatrix;
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(0x9eed);
    for (vocab, cols, distinct) in [(1000, 128, 40), (4099, 384, 7), (20_000, 256, 0)] {
        // `distinct` rows repeated over the vocabulary (0: every row its own).
        let base: Vec<f32> = (0..vocab * cols)
            .map(|_| rng.random_range(-0.08f32..0.08))
            .collect();
        let w: Vec<f32> = (0..vocab)
            .flat_map(|v| {
                let r = if distinct == 0 {
                    v
                } else {
                    (v * 7919 + 13) % distinct
                };
                base[r * cols..(r + 1) * cols].to_vec()
            })
            .collect();
        for (name, head, storage) in head_tables(&w) {
            let table = FloatMatrix::new(vocab, cols, storage).unwrap();
            for m in [33usize, 40, 64, 65, 127, 130, 192] {
                let mut x: Vec<f32> = (0..m * cols)
                    .map(|_| rng.random_range(-4.0f32..4.0))
                    .collect();
                x[5 * cols..6 * cols].fill(0.0);
                x[7 * cols + 3] = f32::NAN;
                let got = match bitnet_cuda::head_greedy(&gpu, &table, head, &x) {
                    Ok(t) => t,
                    Err(bitnet_cuda::CudaError::Unavailable(why)) => {
                        eprintln!("skipped: {why}");
                        return;
                    }
                    Err(e) => panic!("{e}"),
                };
                let logits = bitnet_cuda::head_logits(&gpu, &table, head, &x, true).unwrap();
                let want: Vec<u32> = logits.chunks_exact(vocab).map(host_argmax).collect();
                assert_eq!(got, want, "{name} vocab {vocab} cols {cols} m {m}");
            }
        }
    }
}

/// A cache's keys or values as it holds them: rounded to f16, or q8 codes times their scale
/// (per position and kv head of `hd` elements).
fn as_stored(kv: bitnet_cuda::KvType, hd: usize, x: &[f32]) -> Vec<f64> {
    match kv {
        bitnet_cuda::KvType::Q8 => {
            let mut codes = vec![0i8; hd];
            x.chunks(hd)
                .flat_map(|head| {
                    let s = bitnet_model::quantize_q8(head, &mut codes);
                    codes
                        .iter()
                        .map(move |&c| c as f64 * s as f64)
                        .collect::<Vec<_>>()
                })
                .collect()
        }
        _ => x
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32() as f64)
            .collect(),
    }
}

/// Attention as a prefill pass runs it, in f64 from the cache as it holds keys and values: per
/// row and query head, the output, the largest |score| term sum (for the tolerance), and the
/// most a score moves where the query is rounded to 16-bit integers of its largest magnitude
/// / 32639 (the q8 tensor-core kernels' integer scores): sum |k| * max |q| / 65278, times the
/// scaling.
fn attention_reference(case: &bitnet_cuda::AttentionCase<'_>) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (hd, group) = (case.head_dim, case.n_heads / case.n_kv_heads);
    let kvd = case.n_kv_heads * hd;
    let scaling = (hd as f64).powf(-0.5);
    let stored: Vec<(Vec<f64>, Vec<f64>)> = case
        .caches
        .iter()
        .map(|(k, v)| (as_stored(case.kv, hd, k), as_stored(case.kv, hd, v)))
        .collect();
    let (mut out, mut scale, mut q_round) = (Vec::new(), Vec::new(), Vec::new());
    for (s, p, q) in case.rows {
        let (keys, values) = &stored[*s];
        for h in 0..case.n_heads {
            let kv = (h / group) * hd;
            let q = &q[h * hd..(h + 1) * hd];
            let q_max = q.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
            let (mut scores, mut magnitude, mut k_sum) = (Vec::new(), 0f64, 0f64);
            for i in 0..=*p {
                let k = &keys[i * kvd + kv..i * kvd + kv + hd];
                let terms = q.iter().zip(k).map(|(&a, &b)| a as f64 * b);
                scores.push(terms.clone().sum::<f64>() * scaling);
                magnitude = magnitude.max(terms.map(f64::abs).sum::<f64>() * scaling);
                k_sum = k_sum.max(k.iter().map(|x| x.abs()).sum::<f64>());
            }
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let l: f64 = w.iter().sum();
            for d in 0..hd {
                let o: f64 = (0..=*p).map(|i| w[i] * values[i * kvd + kv + d]).sum();
                out.push(o / l);
            }
            scale.push(magnitude);
            q_round.push(k_sum * q_max / 65278.0 * scaling);
        }
    }
    (out, scale, q_round)
}

/// The attention kernels (128-thread vector; tensor cores, the cluster kernel of small decode
/// steps and the split kernel of batched decode in each block shape, in 1, 3 and 16 splits, where the case and the
/// device allow), over f16 caches (cases 0-19) and q8 caches (20-39: the same shapes), against an f64
/// reference on random shapes: head
/// sizes 16..128, 1-4 or 8 query heads per key/value head, several sequences of up to 300
/// positions (several chunks: the merge; up to 1,000 in every fifth case: clusters of 9-16
/// chunks), rows anywhere in them, and queries scaled by 1e-3..1e3 (the tensor-core kernel
/// scales them by a power of two).
#[test]
fn attention_kernels_equal_a_double_precision_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(0xa77);
    use bitnet_cuda::AttentionKernel as K;
    use bitnet_cuda::SplitBlock as S;
    let (mut ran_mma, mut ran_cluster, mut ran_split) = (0, 0, 0);
    let (mut ran_q8, mut ran_q8_mma) = (0, 0);
    for case_no in 0..40 {
        let kv = [bitnet_cuda::KvType::F16, bitnet_cuda::KvType::Q8][(case_no / 20) % 2];
        let hd = [16, 32, 64, 128][case_no % 4];
        let group = [1, 2, 3, 4, 8][(case_no / 4) % 5];
        let n_kv = rng.random_range(1..=3);
        let kvd = n_kv * hd;
        let q_scale = [1.0f32, 1e-3, 1e3, 0.1][rng.random_range(0..4)];
        let caches: Vec<(Vec<f32>, Vec<f32>)> = (0..rng.random_range(1..=3))
            .map(|_| {
                // Every fifth case past 512 positions: clusters of 9-16 chunks.
                let len = if case_no % 5 == 4 {
                    rng.random_range(513..1000)
                } else {
                    rng.random_range(1..300)
                };
                let mut v = || {
                    (0..len * kvd)
                        .map(|_| rng.random_range(-1.0f32..1.0))
                        .collect()
                };
                (v(), v())
            })
            .collect();
        let rows: Vec<(usize, usize, Vec<f32>)> = (0..rng.random_range(1..=12))
            .map(|_| {
                let s = rng.random_range(0..caches.len());
                let len = caches[s].0.len() / kvd;
                // Chunk edges (63, 64) where the sequence reaches them.
                let pos = match rng.random_range(0..4) {
                    0 => len - 1,
                    1 => 63.min(len - 1),
                    2 => 64.min(len - 1),
                    _ => rng.random_range(0..len),
                };
                let q = (0..group * n_kv * hd)
                    .map(|_| rng.random_range(-2.0f32..2.0) * q_scale)
                    .collect();
                (s, pos, q)
            })
            .collect();
        let case = bitnet_cuda::AttentionCase {
            kv,
            n_heads: group * n_kv,
            n_kv_heads: n_kv,
            head_dim: hd,
            caches: &caches,
            rows: &rows,
        };
        let (want, magnitude, q_round) = attention_reference(&case);
        let kernels = [
            K::Vector,
            K::TensorCores,
            K::Cluster,
            K::Split {
                splits: 1,
                shape: S::Four,
            },
            K::Split {
                splits: 3,
                shape: S::Four,
            },
            K::Split {
                splits: 1,
                shape: S::FourAhead,
            },
            K::Split {
                splits: 3,
                shape: S::FourAhead,
            },
            K::Split {
                splits: 1,
                shape: S::Eight,
            },
            K::Split {
                splits: 16,
                shape: S::Eight,
            },
        ];
        for kernel in kernels {
            let got = match bitnet_cuda::attention_forward(&gpu, &case, kernel) {
                Ok(v) => v,
                // Head sizes 32-128, up to 4 query heads per kv head.
                Err(bitnet_cuda::CudaError::Unavailable(_))
                    if matches!(kernel, K::TensorCores | K::Split { .. })
                        && (hd == 16 || group > 4) =>
                {
                    continue;
                }
                // sm_90 only, 1, 2, 4 or 8 query heads per kv head.
                Err(bitnet_cuda::CudaError::Unavailable(_)) if kernel == K::Cluster => continue,
                Err(e) => panic!("{e}"),
            };
            ran_mma += (kernel == K::TensorCores) as usize;
            ran_cluster += (kernel == K::Cluster) as usize;
            ran_split += matches!(kernel, K::Split { .. }) as usize;
            ran_q8 += (kv == bitnet_cuda::KvType::Q8) as usize;
            ran_q8_mma += (kv == bitnet_cuda::KvType::Q8
                && matches!(kernel, K::Split { .. } | K::TensorCores))
                as usize;
            let mut worst = 0f64;
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                // f32 scores carry ~1e-7 of their terms' magnitude; outputs are averages of
                // values in [-1, 1].
                let mut tol = 1e-5 * (1.0 + magnitude[i / hd]);
                if kv == bitnet_cuda::KvType::Q8
                    && matches!(kernel, K::Split { .. } | K::TensorCores)
                {
                    // Scores off by at most e move each weight by a factor within e^(+-2e);
                    // the values are within [-1, 1].
                    tol += 2.2 * q_round[i / hd];
                }
                let err = (g as f64 - w).abs();
                worst = worst.max(err / tol);
                assert!(
                    err <= tol,
                    "case {case_no} ({kv:?}, hd {hd}, group {group}, kv heads {n_kv}, {kernel:?}): \
                     output {i} is {g} but the reference gives {w} (tolerance {tol:.2e})"
                );
            }
            eprintln!(
                "case {case_no}: {kv:?} hd {hd} group {group} kv {n_kv} rows {} {kernel:?}: worst error {worst:.3} of tolerance",
                rows.len()
            );
        }
    }
    assert!(ran_mma > 0, "the tensor-core kernel ran in no case");
    assert!(ran_split > 0, "the split kernel ran in no case");
    assert!(ran_q8_mma > 0, "no tensor-core kernel ran on a q8 cache");
    assert!(ran_q8 > 0, "no kernel ran on a q8 cache");
    if gpu
        .arch
        .trim_start_matches("sm_")
        .parse::<u32>()
        .unwrap_or(0)
        >= 90
    {
        assert!(ran_cluster > 0, "the cluster kernel ran in no case");
    } else {
        eprintln!("{}: no cluster attention before sm_90", gpu.arch);
    }
    // Arguments that do not fit are refused before anything runs.
    let caches = vec![(vec![0.5f32; 3 * 64], vec![0.5f32; 3 * 64])];
    for (pos, q_len) in [(3, 128), (0, 100)] {
        let rows = vec![(0, pos, vec![1.0f32; q_len])];
        let case = bitnet_cuda::AttentionCase {
            kv: bitnet_cuda::KvType::F16,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 64,
            caches: &caches,
            rows: &rows,
        };
        let got = bitnet_cuda::attention_forward(&gpu, &case, K::Vector);
        assert!(
            matches!(got, Err(bitnet_cuda::CudaError::Invalid(_))),
            "position {pos}, {q_len} query values: {got:?}"
        );
    }
}
