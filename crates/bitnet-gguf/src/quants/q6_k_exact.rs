//! Lossless Q6_K re-encoding: finds a representation `(d, scales, q)` that decodes exactly to a
//! block that Q6_K can represent (e.g. one that was decoded from Q6_K). "Exactly" is f32 equality:
//! every non-zero value bit for bit, zeros possibly with the other sign (ggml itself decodes an
//! all-zero block to -0.0, since its levels are stored as q + 32).
//!
//! ggml's reference quantizer is not idempotent: re-quantizing decoded Q6_K values re-derives
//! the scales and can lose information. The encoder therefore tries ggml's result first and
//! keeps it whenever it is exact; only when it is not, and the block passes the cheap
//! representability test below, is this search used.

use super::float::{f16_to_f32, f32_to_f16_bits};
use super::q6_k::{BLOCK_BYTES, QK_K, decode_into, pack_block};

/// The q in -32..=31 for which `c * q == v` in f32, if any.
fn level_for(c: f32, v: f32) -> Option<i8> {
    if v == 0.0 {
        return Some(0);
    }
    if c == 0.0 {
        return None;
    }
    let q = (f64::from(v) / f64::from(c)).round();
    if !(-32.0..=31.0).contains(&q) {
        return None;
    }
    let q = q as i8;
    (c * f32::from(q) == v).then_some(q)
}

/// Whether every value of a sub-block is `c * q` for some q.
fn fits(c: f32, xs: &[f32; 16]) -> bool {
    xs.iter().all(|&v| level_for(c, v).is_some())
}

/// Candidate multipliers `c` for a sub-block that is not all zero: the largest magnitude must be
/// `c * q` for some q, so `c` is within one f32 ulp of `vmax / q`.
fn candidates(xs: &[f32; 16]) -> Vec<f32> {
    let vmax = xs
        .iter()
        .copied()
        .fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    let mut out: Vec<f32> = Vec::new();
    for q in (-32i32..=31).filter(|&q| q != 0) {
        let c0 = (f64::from(vmax) / f64::from(q)) as f32;
        for c in [c0, c0.next_up(), c0.next_down()] {
            if c.is_finite() && c != 0.0 && !out.contains(&c) && fits(c, xs) {
                out.push(c);
            }
        }
    }
    out
}

/// Searches for bytes that decode exactly to `x`; `None` when the block is not representable.
pub(crate) fn exact_block(x: &[f32; QK_K]) -> Option<[u8; BLOCK_BYTES]> {
    let (subs, _) = x.as_chunks::<16>();
    // `None` marks an all-zero sub-block (any c = ±0 reproduces it).
    let mut cands: Vec<Option<Vec<f32>>> = Vec::with_capacity(16);
    for xs in subs {
        if xs.iter().all(|&v| v == 0.0) {
            cands.push(None);
            continue;
        }
        let c = candidates(xs);
        if c.is_empty() {
            return None;
        }
        cands.push(Some(c));
    }

    // Candidate d values from the sub-block with the fewest candidates (or +0 if all zero).
    let anchor = cands
        .iter()
        .filter_map(|c| c.as_ref())
        .min_by_key(|c| c.len());
    let mut ds: Vec<u16> = Vec::new();
    match anchor {
        None => ds.push(0),
        Some(list) => {
            for &c in list {
                for s in (-128i32..=127).filter(|&s| s != 0) {
                    let d_bits = f32_to_f16_bits((f64::from(c) / f64::from(s)) as f32);
                    let d = f16_to_f32(d_bits);
                    if d.is_finite() && d * s as f32 == c && !ds.contains(&d_bits) {
                        ds.push(d_bits);
                    }
                }
            }
        }
    }

    'd: for d_bits in ds {
        let d = f16_to_f32(d_bits);
        let mut scales = [0i8; 16];
        let mut levels = [0u8; QK_K];
        for (j, (xs, cand)) in subs.iter().zip(&cands).enumerate() {
            let (s, c) = match cand {
                None => (0i8, d * 0.0),
                Some(list) => {
                    let found = list.iter().find_map(|&c| {
                        let s = (f64::from(c) / f64::from(d)).round();
                        if !(-128.0..=127.0).contains(&s) || s == 0.0 {
                            return None;
                        }
                        let s = s as i8;
                        (d * f32::from(s) == c).then_some((s, c))
                    });
                    match found {
                        Some(sc) => sc,
                        None => continue 'd,
                    }
                }
            };
            scales[j] = s;
            for (i, &v) in xs.iter().enumerate() {
                let Some(q) = level_for(c, v) else {
                    continue 'd;
                };
                levels[16 * j + i] = (q + 32) as u8;
            }
        }
        let mut out = [0u8; BLOCK_BYTES];
        pack_block(&levels, &scales, d_bits, &mut out);
        let mut check = [0.0f32; QK_K];
        decode_into(&out, &mut check);
        if check.iter().zip(x).all(|(a, b)| a == b) {
            return Some(out);
        }
    }
    None
}
