//! The 1.6-bit ternary layout (`t1`): five weights per byte, decoded by register table lookups.
//!
//! At 2 bits per weight (the [`crate::pack`] layout) a byte holds four weights; but three ternary
//! values fit five to a byte (3^5 = 243 <= 256), so a layout of five per byte streams 20% fewer
//! bytes per decode step, which is what bounds batch-1 decoding.
//!
//! ## The byte code
//!
//! A byte holds five codes `u = t + 1` in {0, 1, 2}, its *digits* 0 to 4. GGUF's TQ1_0 stores them
//! in base 3 (`q = ceil(v * 256 / 243)`) and recovers digit `k` as `((q * 3^k) mod 256) * 3 >> 8`.
//! x86 has no byte multiply, so that costs about four AVX-512 instructions per digit (two byte
//! adds for the `* 3` step, a shift and a lookup). This code is designed around the lookups
//! instead: `vpermb` maps each byte of a vector through a 64-entry table held in a register,
//! reading only bits 0-5 of the index byte, and `vpermi2b` does the same with a 128-entry table in
//! two registers, reading bits 0-6. Each digit is a function of one *view* of the byte:
//!
//! - digits 0 and 1: of bits 0-5 (the byte itself indexes `vpermb`: no work);
//! - digits 2 and 3: of bits 2-7 (`byte >> 2`: one 16-bit shift does all 64 bytes, and the two
//!   bits it drags in from the neighbouring byte land in bits 6-7, which `vpermb` ignores);
//! - digit 4: of bits 0-6 of `byte ^ (byte >> 1)` (a second 16-bit shift and an xor; bit `i` of
//!   the view is `b_i ^ b_(i+1)`, so bits 0-6 come from the byte alone), through the 128-entry
//!   table. The view depends on all eight bits (bytes and their complements share it), which is
//!   what lets it tell apart bytes that the other two views cannot.
//!
//! 64 bytes thus decode into five vectors of 64 codes with three cheap index operations and five
//! lookups (versus four masks for 2-bit codes): see [`crate::avx512_t1`]. Until session 44 the
//! third view was `|byte as i8|` (`vpabsb`), which on Zen 4 costs a whole `vpdpbusd` issue slot
//! (BENCHMARKS.md, session 44); the shift and xor cost about a fifth of one each.
//!
//! Why three views: if every digit ignored bit `i` or bit `j` (as with the byte and one shift:
//! bits 0-6 ignore bit 7, bits 1-7 ignore bit 0), then for each of the 64 values of the other six
//! bits, the four bytes that differ in bits `i` and `j` would decode to at most 2 x 2 combinations
//! of the digits that ignore `j` and those that ignore `i`. With `a` digits in the first group,
//! each of its 3^a tuples must meet all 3^(5-a) tuples of the other, which needs at least
//! 3^a * ceil(3^(5-a) / 2) and 3^(5-a) * ceil(3^a / 2) of the 64 * 2 = 128 slots; one of the two
//! exceeds 128 for every `a` (27 * 5 = 135 for a = 2 or 3). The third view breaks this: it
//! depends on all eight bits.
//! The tables below were found by a search (`scripts/t1-tables.c`: simulated annealing over
//! their 384 entries to maximise the number of distinct tuples the 256 bytes decode to); any
//! tables that reach all 243 tuples work, and [`ENCODE`] is built from them at compile time, so
//! tables that miss a tuple do not compile.
//!
//! ## The layout
//!
//! Each row is cut into blocks of [`W`] = 320 weights stored in [`B`] = 64 bytes. Byte `j` of a
//! block holds, as digit `i`, the code of the block's weight `j + 64 i`: one 64-byte load decodes
//! into five vectors that line up with activations `0..64`, ..., `256..320` of the block. Rows are
//! padded to whole blocks with `t = 0`; the kernel also zero-pads the activations of the last
//! partial block, so padding never contributes. The bytes streamed per multiply are
//! `rows * ceil(cols / 320) * 64`, 1.6 bits per weight plus the padding of the last block.

use bitnet_core::{CoreError, TernaryMatrix};

use crate::pack::AlignedBytes;

/// Packed bytes per block (one 512-bit load).
pub(crate) const B: usize = 64;
/// Digits (weights) per byte.
pub(crate) const DIGITS: usize = 5;
/// Weights per block.
pub(crate) const W: usize = DIGITS * B;
/// Distinct digit tuples, `3^DIGITS`.
const TUPLES: usize = 243;

/// A table written as a string of digits `0`-`2`, one per entry.
const fn table<const N: usize>(digits: &[u8; N]) -> [u8; N] {
    let mut t = [0u8; N];
    let mut i = 0;
    while i < N {
        assert!(
            matches!(digits[i], b'0'..=b'2'),
            "table entries are 0, 1 or 2"
        );
        t[i] = digits[i] - b'0';
        i += 1;
    }
    t
}

/// Digits 0 and 1 of a byte, indexed by its bits 0-5.
pub(crate) const LO: [[u8; 64]; 2] = [
    table(b"2021020101220221100221001200221002121212112000102211011210021102"),
    table(b"2200001022120220021000122201202102111110121020010210221120112121"),
];

/// Digits 2 and 3 of a byte, indexed by its bits 2-7 (`byte >> 2`).
pub(crate) const HI: [[u8; 64]; 2] = [
    table(b"0021101200121222200210120122200012101112120212100222100012110101"),
    table(b"1100210010102211122110222002002112200111221120020022020111122002"),
];

/// Digit 4 of a byte, indexed by bits 0-6 of `byte ^ (byte >> 1)`: bit 6 picks the half (as it
/// picks the register in `vpermi2b`), bits 0-5 the entry.
pub(crate) const MID: [[u8; 64]; 2] = [
    table(b"0020100100210202002212011210122000210220211211001210002212110111"),
    table(b"2212002211121122112201012120020002200022010211211211002221111020"),
];

/// The five digits (codes `u = t + 1`) a byte decodes to, exactly as the SIMD kernel computes them.
pub(crate) const fn decode(byte: u8) -> [u8; DIGITS] {
    let lo = (byte & 63) as usize;
    let hi = (byte >> 2) as usize;
    let mid = ((byte ^ (byte >> 1)) & 127) as usize;
    [
        LO[0][lo],
        LO[1][lo],
        HI[0][hi],
        HI[1][hi],
        MID[mid >> 6][mid & 63],
    ]
}

/// The tuple's rank, digit 0 least significant.
const fn rank(u: [u8; DIGITS]) -> usize {
    u[0] as usize + 3 * u[1] as usize + 9 * u[2] as usize + 27 * u[3] as usize + 81 * u[4] as usize
}

/// The smallest byte that decodes to each tuple, by rank. Built at compile time from the decode
/// tables, and a compile error if some tuple has no byte.
pub(crate) const ENCODE: [u8; TUPLES] = {
    let mut enc = [0u8; TUPLES];
    let mut seen = [false; TUPLES];
    let mut b = 0;
    while b < 256 {
        let r = rank(decode(b as u8));
        if !seen[r] {
            seen[r] = true;
            enc[r] = b as u8;
        }
        b += 1;
    }
    let mut r = 0;
    while r < TUPLES {
        assert!(
            seen[r],
            "the t1 decode tables must reach every 5-digit tuple"
        );
        r += 1;
    }
    enc
};

/// The byte holding five codes `u` in {0, 1, 2}.
#[inline]
pub(crate) fn encode(u: [u8; DIGITS]) -> u8 {
    ENCODE[rank(u)]
}

/// A ternary matrix in the `t1` layout.
#[derive(Clone, Debug)]
pub(crate) struct PackedTrits {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) scale: f32,
    /// Blocks per row, `ceil(cols / W)`.
    pub(crate) blocks_per_row: usize,
    /// `rows * blocks_per_row * B` packed bytes.
    data: AlignedBytes,
}

impl PackedTrits {
    /// Repacks `m`.
    pub(crate) fn pack(m: &TernaryMatrix) -> Result<Self, CoreError> {
        let (rows, cols) = (m.rows(), m.cols());
        let blocks_per_row = cols.div_ceil(W);
        let len = rows
            .checked_mul(blocks_per_row)
            .and_then(|n| n.checked_mul(B))
            .ok_or_else(|| CoreError::Length {
                what: format!("packed ternary {rows}x{cols}"),
                expected: usize::MAX,
                found: rows.saturating_mul(cols),
            })?;
        let mut data = AlignedBytes::zeroed(len);
        let packed = data.bytes_mut();
        // An empty row (cols == 0) has no chunks to cut.
        if !packed.is_empty() {
            for (r, packed_row) in packed.chunks_exact_mut(blocks_per_row * B).enumerate() {
                let row = m.row(r);
                let full = cols / W;
                let (head, tail) = packed_row.split_at_mut(full * B);
                // Whole blocks without per-element bounds checks (loading 2B4T spent most of
                // its time in this loop's general form below). Codes are validated ternary by
                // TernaryMatrix, so t + 1 is 0, 1 or 2.
                for (block, codes) in head.chunks_exact_mut(B).zip(row.chunks_exact(W)) {
                    let (d0, rest) = codes.split_at(B);
                    let (d1, rest) = rest.split_at(B);
                    let (d2, rest) = rest.split_at(B);
                    let (d3, d4) = rest.split_at(B);
                    let digits = d0.iter().zip(d1).zip(d2).zip(d3).zip(d4);
                    for (byte, ((((&a, &b), &c), &d), &e)) in block.iter_mut().zip(digits) {
                        let u = |t: i8| (t + 1) as u8;
                        *byte = encode([u(a), u(b), u(c), u(d), u(e)]);
                    }
                }
                for (k, block) in tail.chunks_exact_mut(B).enumerate() {
                    let k = full + k;
                    for (j, byte) in block.iter_mut().enumerate() {
                        // Columns past the row's end are padding, t = 0.
                        let u = std::array::from_fn(|i| {
                            (row.get(k * W + i * B + j).copied().unwrap_or(0) + 1) as u8
                        });
                        *byte = encode(u);
                    }
                }
            }
        }
        Ok(Self {
            rows,
            cols,
            scale: m.scale(),
            blocks_per_row,
            data,
        })
    }

    /// The packed bytes, 64-byte aligned, row after row.
    pub(crate) fn packed(&self) -> &[u8] {
        self.data.bytes()
    }

    /// Checks the slice lengths every `matmul_i32` promises its caller it will check.
    pub(crate) fn check(&self, x: &[i8], batch: usize, out: &[i32]) {
        crate::pack::check_lengths(self.rows, self.cols, x, batch, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tuple_round_trips() {
        for r in 0..TUPLES {
            let u: [u8; DIGITS] = std::array::from_fn(|i| (r / 3usize.pow(i as u32) % 3) as u8);
            assert_eq!(decode(encode(u)), u, "tuple {u:?}");
        }
    }

    #[test]
    fn layout_by_hand() {
        // 2 rows of 330 columns: 2 blocks per row, the second holding columns 320..330 in digit
        // 0 of its bytes 0..10 and padding (u = 1) everywhere else.
        let w: Vec<i8> = (0..660).map(|i| (i * 7 % 3) as i8 - 1).collect();
        let m = TernaryMatrix::new(2, 330, w.clone(), 1.0).unwrap();
        let p = PackedTrits::pack(&m).unwrap();
        assert_eq!(p.blocks_per_row, 2);
        assert_eq!(p.packed().len(), 2 * 2 * B);
        assert_eq!(p.packed().as_ptr() as usize % crate::pack::ALIGN, 0);
        let u = |r: usize, c: usize| {
            w.get(r * 330 + c)
                .filter(|_| c < 330)
                .map_or(1, |t| (t + 1) as u8)
        };
        for r in 0..2 {
            for k in 0..2 {
                for j in 0..B {
                    let want: [u8; DIGITS] = std::array::from_fn(|i| u(r, k * W + i * B + j));
                    assert_eq!(
                        decode(p.packed()[(r * 2 + k) * B + j]),
                        want,
                        "row {r} block {k} byte {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn empty_shapes_pack() {
        let m = TernaryMatrix::new(3, 0, vec![], 1.0).unwrap();
        assert_eq!(PackedTrits::pack(&m).unwrap().packed().len(), 0);
        let m = TernaryMatrix::new(0, 7, vec![], 1.0).unwrap();
        assert_eq!(PackedTrits::pack(&m).unwrap().packed().len(), 0);
    }
}
