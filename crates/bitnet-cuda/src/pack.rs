//! Host-side layouts the kernels read (see the header of `kernels.cu`).
//!
//! Ternary weights go into tiles of 16 rows x 128 columns, one `u32` per lane and 32-column
//! k-block, holding the four int8x4 registers of an `mma.m16n8k32` A fragment as 2-bit codes
//! `w + 1`: register `j` of lane `(g, t)` is `(word >> 2j) & 0x03030303`, covering row
//! `g + 8 (j & 1)` and columns `kb*32 + 16 (j >> 1) + 4t .. +3`. A lane's four k-block words of one
//! 128-column group are adjacent, so it loads them as one 16-byte vector.
//!
//! Int8 activations are permuted inside each 128-column group so that lane `t` reads the 32 bytes
//! it needs in two 16-byte loads: see [`perm_col`].

/// Columns per tile group.
pub const KGROUP: usize = 128;
/// Rows per tile strip.
pub const STRIP: usize = 16;

/// `n` rounded up to a multiple of `m`.
pub fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// Where column `c` of an activation row sits in the permuted layout.
pub fn perm_col(c: usize) -> usize {
    let w = c & 127;
    (c & !127) + ((w >> 2) & 3) * 32 + (w >> 5) * 8 + ((w >> 4) & 1) * 4 + (w & 3)
}

/// Ternary codes (`-1, 0, 1`, row-major `rows x cols`) in the tile layout; padding weighs 0.
pub fn pack_ternary(codes: &[i8], rows: usize, cols: usize) -> Vec<u32> {
    assert_eq!(codes.len(), rows * cols, "pack_ternary: shape mismatch");
    let strips = rows.div_ceil(STRIP);
    let groups = cols.div_ceil(KGROUP);
    let mut out = vec![0u32; strips * groups * 32 * 4];
    for s in 0..strips {
        for q in 0..groups {
            for lane in 0..32 {
                let (g, t) = (lane / 4, lane % 4);
                for kb in 0..4 {
                    let mut word = 0u32;
                    for j in 0..4 {
                        let row = s * STRIP + g + 8 * (j & 1);
                        for b in 0..4 {
                            let col = q * KGROUP + kb * 32 + 16 * (j >> 1) + 4 * t + b;
                            let code = if row < rows && col < cols {
                                (codes[row * cols + col] + 1) as u32
                            } else {
                                1
                            };
                            word |= code << (8 * b + 2 * j);
                        }
                    }
                    out[((s * groups + q) * 32 + lane) * 4 + kb] = word;
                }
            }
        }
    }
    out
}

/// Activation codes (`batch x cols`) into the permuted, padded layout (`batch x kpad`).
pub fn permute_codes(codes: &[i8], batch: usize, cols: usize) -> Vec<i8> {
    let kpad = round_up(cols, KGROUP);
    let mut out = vec![0i8; batch * kpad];
    for b in 0..batch {
        for c in 0..cols {
            out[b * kpad + perm_col(c)] = codes[b * cols + c];
        }
    }
    out
}

/// The inverse of [`permute_codes`].
pub fn unpermute_codes(perm: &[i8], batch: usize, cols: usize) -> Vec<i8> {
    let kpad = round_up(cols, KGROUP);
    let mut out = vec![0i8; batch * cols];
    for b in 0..batch {
        for c in 0..cols {
            out[b * cols + c] = perm[b * kpad + perm_col(c)];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perm_is_a_bijection_per_group() {
        let mut seen = [false; 256];
        for c in 0..256 {
            let p = perm_col(c);
            assert!(p / 128 == c / 128 && !seen[p]);
            seen[p] = true;
        }
    }

    #[test]
    fn permute_roundtrip_with_padding() {
        let codes: Vec<i8> = (0..3 * 200).map(|i| (i % 251) as i8).collect();
        let p = permute_codes(&codes, 3, 200);
        assert_eq!(p.len(), 3 * 256);
        assert_eq!(unpermute_codes(&p, 3, 200), codes);
    }

    /// Decodes the tile layout back with the kernel's register formula.
    #[test]
    fn pack_matches_fragment_formula() {
        let (rows, cols) = (37, 300);
        let codes: Vec<i8> = (0..rows * cols)
            .map(|i| ((i * 7 + i / 5) % 3) as i8 - 1)
            .collect();
        let w = pack_ternary(&codes, rows, cols);
        let groups = cols.div_ceil(KGROUP);
        for s in 0..rows.div_ceil(STRIP) {
            for q in 0..groups {
                for lane in 0..32 {
                    let (g, t) = (lane / 4, lane % 4);
                    for kb in 0..4 {
                        let word = w[((s * groups + q) * 32 + lane) * 4 + kb];
                        for j in 0..4 {
                            let reg = (word >> (2 * j)) & 0x0303_0303;
                            for b in 0..4 {
                                let row = s * 16 + g + 8 * (j & 1);
                                let col = q * 128 + kb * 32 + 16 * (j >> 1) + 4 * t + b;
                                let v = ((reg >> (8 * b)) & 0xff) as i8 - 1;
                                let want = if row < rows && col < cols {
                                    codes[row * cols + col]
                                } else {
                                    0
                                };
                                assert_eq!(v, want, "row {row} col {col}");
                            }
                        }
                    }
                }
            }
        }
    }
}
