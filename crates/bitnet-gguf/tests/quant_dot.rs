//! Quantized dot products (Q8_0 / Q6_K / Q4_K / Q4_0 rows against int8-quantized activations):
//! every kernel against the scalar one, the fast path against exact f64 products of the decoded
//! rows (within the activation-rounding bound), and greedy-token agreement on a head-sized random
//! case.

use bitnet_gguf::quants::dot::{
    DotKernel, QuantizedActs, dot_rows_f32, dot_rows_quantized, error_bound,
};
use bitnet_gguf::{TensorType, decode_f32, encode_q4_0, encode_q4_k, encode_q6_k, encode_q8_0};

/// splitmix64 with Box-Muller normals: deterministic test data without dependencies.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// Head-like weights: N(0, 0.02^2), with a few rows scaled up (frequent tokens).
fn weights(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    let mut w = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let row_scale = if r % 97 == 5 { 3.0 } else { 1.0 };
        w.extend((0..cols).map(|_| 0.02 * row_scale * rng.normal()));
    }
    w
}

/// Final-norm-like hidden states: N(0, 1) with a few large outlier channels, as real models
/// have (outliers are the hard case for per-block int8 quantization).
fn hidden(rng: &mut Rng, m: usize, cols: usize) -> Vec<f32> {
    let mut x = plain(rng, m, cols);
    for j in 0..m {
        for c in [3usize, 700, 1111, 2047] {
            if c < cols {
                x[j * cols + c] *= 25.0;
            }
        }
    }
    x
}

/// Hidden states without outliers: N(0, 1).
fn plain(rng: &mut Rng, m: usize, cols: usize) -> Vec<f32> {
    (0..m * cols).map(|_| rng.normal()).collect()
}

fn encode(kind: TensorType, w: &[f32]) -> Vec<u8> {
    match kind {
        TensorType::Q8_0 => encode_q8_0(w).unwrap(),
        TensorType::Q4_0 => encode_q4_0(w).unwrap(),
        TensorType::Q4_K => encode_q4_k(w).unwrap(),
        _ => encode_q6_k(w).unwrap(),
    }
}

/// Exact products of the decoded rows, in f64, and `sum |w_i x_i|` per product.
fn exact(decoded: &[f32], xs: &[f32], cols: usize, m: usize) -> (Vec<f64>, Vec<f64>) {
    let mut dots = Vec::new();
    let mut mags = Vec::new();
    for row in decoded.chunks_exact(cols) {
        for x in xs.chunks_exact(cols).take(m) {
            let p = row
                .iter()
                .zip(x)
                .map(|(&a, &b)| f64::from(a) * f64::from(b));
            dots.push(p.clone().sum());
            mags.push(p.map(f64::abs).sum());
        }
    }
    (dots, mags)
}

#[test]
fn every_kernel_matches_the_scalar_one() {
    let mut rng = Rng(1);
    for (kind, cols) in [
        (TensorType::Q8_0, 32),
        (TensorType::Q8_0, 96), // odd block count: the AVX-512 tail
        (TensorType::Q8_0, 2560),
        (TensorType::Q6_K, 256),
        (TensorType::Q6_K, 2560),
        (TensorType::Q4_0, 32),
        (TensorType::Q4_0, 64),
        (TensorType::Q4_0, 96), // odd block counts: the AVX-512 and AVX2 tails
        (TensorType::Q4_0, 160),
        (TensorType::Q4_0, 2560),
        (TensorType::Q4_K, 256),
        (TensorType::Q4_K, 768),
        (TensorType::Q4_K, 2560),
    ] {
        let (rows, m) = (9, 3);
        let w = weights(&mut rng, rows, cols);
        let data = encode(kind, &w);
        let xs = hidden(&mut rng, m, cols);
        let mut acts = QuantizedActs::new();
        acts.quantize(&xs, m).unwrap();
        let mut want = vec![0.0f32; rows * m];
        dot_rows_quantized(DotKernel::Scalar, kind, &data, cols, 0, &acts, &mut want).unwrap();
        let decoded = decode_f32(kind, &data, rows * cols).unwrap();
        let (_, mags) = exact(&decoded, &xs, cols, m);
        for kernel in DotKernel::available() {
            let mut got = vec![f32::NAN; rows * m];
            dot_rows_quantized(kernel, kind, &data, cols, 0, &acts, &mut got).unwrap();
            for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                // Same integer sums; only the f32 summation order differs.
                let tol = 1e-5 * mags[i] + 1e-6;
                assert!(
                    (f64::from(g) - f64::from(s)).abs() <= tol,
                    "{kind} cols {cols} {}: product {i}: {g} vs scalar {s}",
                    kernel.name()
                );
            }
            // A sub-range of rows gives the same products (row split never changes a logit).
            let mut part = vec![f32::NAN; 4 * m];
            dot_rows_quantized(kernel, kind, &data, cols, 3, &acts, &mut part).unwrap();
            assert_eq!(part, got[3 * m..7 * m], "{kind} {}", kernel.name());
        }
    }
}

/// Arbitrary block bytes (every code value, not just what the encoders write) against
/// activations at the ends of the int8 range: the SIMD integer paths must neither saturate nor
/// wrap, so every kernel still agrees with the scalar one.
#[test]
fn extreme_codes_never_saturate() {
    let mut rng = Rng(5);
    for (kind, cols) in [
        (TensorType::Q4_0, 160),
        (TensorType::Q8_0, 160),
        (TensorType::Q6_K, 512),
        (TensorType::Q4_K, 512),
    ] {
        let rows = 7;
        let (block, scale_at) = match kind {
            TensorType::Q4_0 => (18, 0),
            TensorType::Q8_0 => (34, 0),
            TensorType::Q4_K => (144, 0),
            _ => (210, 208),
        };
        let mut data: Vec<u8> = (0..rows * cols / kind.block_size() as usize * block)
            .map(|_| rng.next_u64() as u8)
            .collect();
        for b in data.chunks_exact_mut(block) {
            let d = half::f16::from_f32(0.01 + 0.01 * rng.uniform() as f32);
            b[scale_at..scale_at + 2].copy_from_slice(&d.to_bits().to_le_bytes());
        }
        if kind == TensorType::Q4_K {
            // Sane dmin too; rows 0 and 1 at the lowest and highest levels with the largest
            // 6-bit scales and mins.
            for b in data.chunks_exact_mut(block) {
                b[2..4].copy_from_slice(&half::f16::from_f32(0.02).to_bits().to_le_bytes());
            }
            for (r, fill) in [(0usize, 0x00u8), (1, 0xFF)] {
                for b in data[r * 2 * block..(r + 1) * 2 * block].chunks_exact_mut(block) {
                    b[4..16].fill(0xFF);
                    b[16..].fill(fill);
                }
            }
        }
        // Row 0 all at the lowest code, row 1 all at the highest (Q4_0 / Q8_0).
        if kind == TensorType::Q4_0 || kind == TensorType::Q8_0 {
            let per_row = cols / 32 * block;
            for (r, fill) in [(0usize, 0x00u8), (1, 0xFF)] {
                for b in data[r * per_row..(r + 1) * per_row].chunks_exact_mut(block) {
                    let fill = if kind == TensorType::Q8_0 && fill == 0 {
                        0x80
                    } else {
                        fill
                    };
                    b[2..].fill(fill);
                }
            }
        }
        // Vector 0: +-max everywhere (codes +-127); vector 1: all +max.
        let m = 2;
        let mut xs: Vec<f32> = (0..cols)
            .map(|i| if i % 3 == 0 { -4.0 } else { 4.0 })
            .collect();
        xs.extend(std::iter::repeat_n(4.0f32, cols));
        let mut acts = QuantizedActs::new();
        acts.quantize(&xs, m).unwrap();
        let decoded = decode_f32(kind, &data, rows * cols).unwrap();
        let (want, mags) = exact(&decoded, &xs, cols, m);
        let mut scalar = vec![0.0f32; rows * m];
        dot_rows_quantized(DotKernel::Scalar, kind, &data, cols, 0, &acts, &mut scalar).unwrap();
        for kernel in DotKernel::available() {
            let mut got = vec![f32::NAN; rows * m];
            dot_rows_quantized(kernel, kind, &data, cols, 0, &acts, &mut got).unwrap();
            for i in 0..rows * m {
                // These activations quantize exactly, so all paths equal the exact product.
                let tol = 1e-5 * mags[i] + 1e-6;
                for (name, v) in [("scalar", scalar[i]), (kernel.name(), got[i])] {
                    assert!(
                        (f64::from(v) - want[i]).abs() <= tol,
                        "{kind} {name} product {i}: {v} vs exact {}",
                        want[i]
                    );
                }
            }
        }
    }
}

#[test]
fn batching_never_changes_a_product() {
    let mut rng = Rng(2);
    for kind in [
        TensorType::Q8_0,
        TensorType::Q6_K,
        TensorType::Q4_K,
        TensorType::Q4_0,
    ] {
        let (rows, cols, m) = (100, 512, 9);
        let data = encode(kind, &weights(&mut rng, rows, cols));
        let xs = hidden(&mut rng, m, cols);
        let mut all = vec![0.0f32; rows * m];
        dot_rows_f32(kind, &data, cols, 0, &xs, m, &mut all).unwrap();
        for j in 0..m {
            let mut one = vec![0.0f32; rows];
            dot_rows_f32(
                kind,
                &data,
                cols,
                0,
                &xs[j * cols..(j + 1) * cols],
                1,
                &mut one,
            )
            .unwrap();
            for r in 0..rows {
                assert_eq!(
                    one[r].to_bits(),
                    all[r * m + j].to_bits(),
                    "{kind} ({r}, {j})"
                );
            }
        }
    }
}

/// The measured error of the fast path against exact f64 products of the decoded rows, on a
/// 2B4T-width head slice, for plain N(0, 1) hidden states and for ones with 25x outlier
/// channels (the hard case for per-block int8: an outlier coarsens its whole block).
///
/// Every product must lie within the rigorous activation-rounding bound ([`error_bound`] plus
/// f32 summation slack; measured errors reach under 13% of it). As a relative tolerance: the
/// error must stay below 2e-3 of `sum |w_i x_i|` (measured max 1.4e-3), 4e-3 for the 4-bit
/// formats (measured up to 2.4e-3, depending on the random draw). Against the error the format
/// itself already makes (exact products of decoded vs original f32 weights), the RMS error must
/// stay below 1.25x for plain states and 2x for outlier states. Measured ratios (printed):
/// Q4_0 0.06-0.07 plain / 0.10-0.12 outliers; Q4_K 0.08 / 0.15; Q6_K 0.30 / 0.48; Q8_0 0.99 /
/// 1.67 - for Q8_0 activations and weights get the same 8-bit per-32 rounding, so comparable
/// errors are expected.
#[test]
fn fast_dots_stay_within_the_activation_rounding_bound() {
    let mut rng = Rng(3);
    let (rows, cols, m) = (1024, 2560, 2);
    for (kind, outliers) in [
        (TensorType::Q8_0, false),
        (TensorType::Q8_0, true),
        (TensorType::Q6_K, false),
        (TensorType::Q6_K, true),
        (TensorType::Q4_K, false),
        (TensorType::Q4_K, true),
        (TensorType::Q4_0, false),
        (TensorType::Q4_0, true),
    ] {
        let w = weights(&mut rng, rows, cols);
        let data = encode(kind, &w);
        let decoded = decode_f32(kind, &data, rows * cols).unwrap();
        let xs = if outliers {
            hidden(&mut rng, m, cols)
        } else {
            plain(&mut rng, m, cols)
        };
        let mut acts = QuantizedActs::new();
        acts.quantize(&xs, m).unwrap();
        let mut got = vec![0.0f32; rows * m];
        dot_rows_f32(kind, &data, cols, 0, &xs, m, &mut got).unwrap();
        let (want, mags) = exact(&decoded, &xs, cols, m);
        let (orig, _) = exact(&w, &xs, cols, m);
        let rms = |v: &mut dyn Iterator<Item = f64>| {
            let (s, n) = v.fold((0.0, 0usize), |(s, n), e| (s + e * e, n + 1));
            (s / n as f64).sqrt()
        };
        let logit_rms = rms(&mut want.iter().copied());
        let fast_rms = rms(&mut got.iter().zip(&want).map(|(&g, &e)| f64::from(g) - e));
        let weight_rms = rms(&mut want.iter().zip(&orig).map(|(&e, &o)| e - o));
        // 4-bit levels (about a tenth of the weights round to the level nearest 0) make
        // sum |w_i x_i| a looser yardstick; the rigorous bound above is the same for all.
        let four_bit = matches!(kind, TensorType::Q4_0 | TensorType::Q4_K);
        let rel_limit = if four_bit { 4e-3 } else { 2e-3 };
        let (mut max_abs, mut max_rel, mut max_of_bound) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..rows * m {
            let (r, j) = (i / m, i % m);
            let err = (f64::from(got[i]) - want[i]).abs();
            let bound = error_bound(&decoded[r * cols..(r + 1) * cols], &acts, j);
            assert!(
                err <= bound + 1e-5 * mags[i],
                "{kind} row {r} vector {j}: |{} - {}| = {err} > bound {bound}",
                got[i],
                want[i]
            );
            assert!(
                err <= rel_limit * mags[i],
                "{kind} ({r}, {j}): {err} vs {}",
                mags[i]
            );
            max_abs = max_abs.max(err);
            max_rel = max_rel.max(err / mags[i]);
            max_of_bound = max_of_bound.max(err / bound);
        }
        eprintln!(
            "{kind} (outliers: {outliers}): logit RMS {logit_rms:.4}; fast vs exact: max |err| {max_abs:.3e} \
             ({:.2}% of logit RMS), RMS err {fast_rms:.3e}, max |err| / sum|w x| {max_rel:.3e}, \
             max err / bound {max_of_bound:.3}; weight quantization alone: RMS err {weight_rms:.3e} (ratio {:.2})",
            100.0 * max_abs / logit_rms,
            fast_rms / weight_rms
        );
        let limit = if outliers { 2.0 } else { 1.25 };
        assert!(
            fast_rms < limit * weight_rms,
            "{kind}: {fast_rms} vs {weight_rms}"
        );
    }
}

/// Greedy decoding picks the same token through the fast path as through exact products, on a
/// vocabulary-sized random case (8192 rows of 2560; vectors with outlier channels).
#[test]
fn greedy_token_agrees_with_exact_products() {
    let mut rng = Rng(4);
    let (rows, cols, m) = (8192, 2560, 4);
    for kind in [
        TensorType::Q8_0,
        TensorType::Q6_K,
        TensorType::Q4_K,
        TensorType::Q4_0,
    ] {
        let data = encode(kind, &weights(&mut rng, rows, cols));
        let decoded = decode_f32(kind, &data, rows * cols).unwrap();
        let xs = hidden(&mut rng, m, cols);
        let mut got = vec![0.0f32; rows * m];
        dot_rows_f32(kind, &data, cols, 0, &xs, m, &mut got).unwrap();
        let (want, _) = exact(&decoded, &xs, cols, m);
        for j in 0..m {
            let argmax = |v: &dyn Fn(usize) -> f64| {
                (0..rows).fold(0, |b, r| if v(r) > v(b) { r } else { b })
            };
            let fast = argmax(&|r| f64::from(got[r * m + j]));
            let slow = argmax(&|r| want[r * m + j]);
            let mut sorted: Vec<f64> = (0..rows).map(|r| want[r * m + j]).collect();
            sorted.sort_by(|a, b| b.total_cmp(a));
            eprintln!(
                "{kind} vector {j}: token {fast} (exact {slow}), exact top-2 gap {:.4}",
                sorted[0] - sorted[1]
            );
            assert_eq!(fast, slow, "{kind} vector {j}");
        }
    }
}
