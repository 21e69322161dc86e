//! The 2-bit weight layout shared by the SIMD kernels, parameterised by the vector width.
//!
//! Each row is cut into blocks of `4 * B` weights stored in `B` bytes (`B` = 32 for AVX2, 64 for
//! AVX-512). Byte `j` of a block holds the codes `u = t + 1` of the block's weights `j`, `j + B`,
//! `j + 2B` and `j + 3B` in bits 0-1, 2-3, 4-5 and 6-7. One `B`-byte load, shifted right by 0, 2,
//! 4, 6 and masked with 3, thus yields four vectors of `B` codes, each lining up with `B`
//! consecutive activations. Rows are padded to whole blocks with `u = 1` (`t = 0`); the kernels
//! also zero-pad the activations of the last partial block, so padding never contributes.

use bitnet_core::{CoreError, TernaryMatrix};

/// How far ahead the batched tiles' passes prefetch packed weights into L1, in bytes (once the
/// batch-1 loops' distance too: on the 2-core Zen 5 VM a fixed 2 groups of 4 rows, 4-5 KB ahead
/// on 2,560-wide rows, streamed 27-41% slower than ~8 KB; 16-24 KB no better than 8).
pub(crate) const PREFETCH_BYTES: usize = 8 << 10;

/// [`PREFETCH_BYTES`] in whole groups of 4 rows of `row_bytes` each (at least one): how many
/// groups ahead a batched tile's pass asks for its weights.
pub(crate) fn prefetch_groups(row_bytes: usize) -> usize {
    (PREFETCH_BYTES / (4 * row_bytes).max(1)).max(1)
}

/// How far ahead the batch-1 loops ask for their weights, into L2 only, one row at a time.
/// Measured on a 2-core Zen 4 VM (BENCHMARKS.md, session 44; `t1_stream_4layers`, batch 1):
/// rows four at a time with L1 prefetches [`PREFETCH_BYTES`] ahead streamed 8-10 GB/s on one
/// core, rows one at a time with L2 prefetches 4-64 KB ahead 15-18 GB/s (the L1 prefetches
/// took the few L1 miss slots that the loads need; four rows at once read four short streams
/// 512 bytes apart, which a plain read test also streams at half the speed of one).
pub(crate) const PREFETCH_L2_BYTES: usize = 16 << 10;

/// The batch-1 loop of every kernel: `out[r] = dot(row r)` for the weight rows in order (`nb`
/// blocks of `BB` bytes each, `nb >= 1`), each row's call preceded by a prefetch of the row
/// [`PREFETCH_L2_BYTES`] ahead into L2, so that the weights are read as one sequential stream.
#[inline(always)]
pub(crate) fn each_row<const BB: usize>(
    blocks: &[[u8; BB]],
    nb: usize,
    out: &mut [i32],
    mut dot: impl FnMut(&[[u8; BB]]) -> i32,
) {
    let ahead = PREFETCH_L2_BYTES / BB;
    for (r, (w, y)) in blocks.chunks_exact(nb).zip(out).enumerate() {
        prefetch_l2(blocks, r * nb + ahead, nb);
        *y = dot(w);
    }
}

/// Asks for the cache lines of `blocks[at..at + n]` (blocks of `BB` bytes, aligned to `BB`;
/// nothing past the end) into L2.
#[inline(always)]
fn prefetch_l2<const BB: usize>(blocks: &[[u8; BB]], at: usize, n: usize) {
    use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
    let step = (64 / BB).max(1);
    for line in blocks.get(at..at + n).unwrap_or(&[]).iter().step_by(step) {
        // SAFETY: prefetching is a hint (SSE, part of x86-64); the address is in `blocks`.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast()) };
    }
}

/// A ternary matrix in the blocked 2-bit layout.
#[derive(Clone, Debug)]
pub(crate) struct PackedTernary {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) scale: f32,
    /// Blocks per row, `ceil(cols / (4 * B))`.
    pub(crate) blocks_per_row: usize,
    /// `rows * blocks_per_row * B` packed bytes.
    data: AlignedBytes,
}

/// Alignment of the packed bytes: a cache line, so no 512-bit load ever splits two lines.
pub(crate) const ALIGN: usize = 64;

/// A zero-initialised byte buffer whose bytes start on an [`ALIGN`]-byte boundary (a `Vec<u8>`
/// with slack in front, since `Vec` itself only promises the alignment of `u8`).
#[derive(Clone, Debug)]
pub(crate) struct AlignedBytes {
    /// `len` bytes starting at `offset`, plus slack for the alignment.
    data: Vec<u8>,
    /// Where the aligned bytes start in `data`.
    offset: usize,
    /// Usable bytes.
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes, aligned.
    pub(crate) fn zeroed(len: usize) -> Self {
        let data = vec![0u8; len.saturating_add(ALIGN - 1)];
        // The Vec never grows after this, so the alignment found here holds for its lifetime.
        let offset = data.as_ptr().align_offset(ALIGN).min(ALIGN - 1);
        Self { data, offset, len }
    }

    /// The aligned bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.data
            .get(self.offset..self.offset + self.len)
            .unwrap_or(&[])
    }

    /// The aligned bytes, writable.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        self.data
            .get_mut(self.offset..self.offset + self.len)
            .unwrap_or(&mut [])
    }
}

impl PackedTernary {
    /// Repacks `m` with blocks of `block_bytes` bytes.
    pub(crate) fn pack(m: &TernaryMatrix, block_bytes: usize) -> Result<Self, CoreError> {
        let (rows, cols) = (m.rows(), m.cols());
        let per_block = 4 * block_bytes;
        let blocks_per_row = cols.div_ceil(per_block);
        let len = rows
            .checked_mul(blocks_per_row)
            .and_then(|n| n.checked_mul(block_bytes))
            .ok_or_else(|| CoreError::Length {
                what: format!("packed ternary {rows}x{cols}"),
                expected: usize::MAX,
                found: rows.saturating_mul(cols),
            })?;
        let mut data = AlignedBytes::zeroed(len);
        let packed = data.bytes_mut();
        // An empty row (cols == 0) has no chunks to cut.
        if !packed.is_empty() {
            for (r, packed_row) in packed
                .chunks_exact_mut(blocks_per_row * block_bytes)
                .enumerate()
            {
                let row = m.row(r);
                let full = cols / per_block;
                let (head, tail) = packed_row.split_at_mut(full * block_bytes);
                // Whole blocks without per-element bounds checks (vectorized: loading 2B4T
                // spent more than a second here).
                for (block, codes) in head
                    .chunks_exact_mut(block_bytes)
                    .zip(row.chunks_exact(per_block))
                {
                    let (q0, rest) = codes.split_at(block_bytes);
                    let (q1, rest) = rest.split_at(block_bytes);
                    let (q2, q3) = rest.split_at(block_bytes);
                    for ((((byte, &a), &b), &c), &d) in
                        block.iter_mut().zip(q0).zip(q1).zip(q2).zip(q3)
                    {
                        let u = |t: i8| (t + 1) as u8 & 3;
                        *byte = u(a) | u(b) << 2 | u(c) << 4 | u(d) << 6;
                    }
                }
                for (k, block) in tail.chunks_exact_mut(block_bytes).enumerate() {
                    let base = (full + k) * per_block;
                    for (j, byte) in block.iter_mut().enumerate() {
                        let mut v = 0u8;
                        for q in 0..4 {
                            // Codes are validated ternary by TernaryMatrix, so t + 1 is 0, 1 or 2.
                            let t = row.get(base + q * block_bytes + j).copied().unwrap_or(0);
                            v |= ((t + 1) as u8 & 3) << (2 * q);
                        }
                        *byte = v;
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
        check_lengths(self.rows, self.cols, x, batch, out);
    }
}

/// The slice lengths every `matmul_i32` promises its caller it will check, for a `rows x cols`
/// matrix (shared by the 2-bit and the 1.6-bit layouts).
pub(crate) fn check_lengths(rows: usize, cols: usize, x: &[i8], batch: usize, out: &[i32]) {
    assert_eq!(x.len(), batch * cols, "matmul_i32: activation length");
    assert_eq!(out.len(), batch * rows, "matmul_i32: output length");
}

/// One activation row cut into whole blocks of `W` codes, plus its zero-padded last block (on
/// the stack), and the row's sum (the `- sum(x)` of `dot(t, x) = dot(t + 1, x) - sum(x)`).
pub(crate) struct Act<'a, const W: usize> {
    pub(crate) full: &'a [[i8; W]],
    pub(crate) tail: Option<[i8; W]>,
    pub(crate) sum: i32,
}

/// Splits an activation row for the SIMD kernels.
#[inline(always)]
pub(crate) fn act<const W: usize>(x: &[i8]) -> Act<'_, W> {
    let (full, rest) = x.as_chunks::<W>();
    let tail = (!rest.is_empty()).then(|| {
        let mut t = [0i8; W];
        t[..rest.len()].copy_from_slice(rest);
        t
    });
    Act {
        full,
        tail,
        sum: act_sum(x),
    }
}

/// Sum of an activation row, wrapping like the SIMD accumulators do.
#[inline(always)]
pub(crate) fn act_sum(x: &[i8]) -> i32 {
    x.iter().fold(0i32, |s, &v| s.wrapping_add(v as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_by_hand() {
        // 1 row, 5 columns, block of 2 bytes = 8 weights: byte 0 holds weights 0,2,4,6 and byte 1
        // holds weights 1,3,5,7; missing weights 5..8 are padded with u = 1.
        let m = TernaryMatrix::new(1, 5, vec![-1, 0, 1, -1, 1], 1.0).unwrap();
        let p = PackedTernary::pack(&m, 2).unwrap();
        assert_eq!(p.blocks_per_row, 1);
        assert_eq!(p.packed().len(), 2);
        assert_eq!(p.packed().as_ptr() as usize % ALIGN, 0);
        // byte 0: w0=-1 -> 0, w2=1 -> 2, w4=1 -> 2, w6 pad -> 1
        assert_eq!(p.packed()[0], 0b01_10_10_00);
        // byte 1: w1=0 -> 1, w3=-1 -> 0, w5 pad -> 1, w7 pad -> 1
        assert_eq!(p.packed()[1], 0b01_01_00_01);
    }

    #[test]
    fn empty_shapes_pack() {
        let m = TernaryMatrix::new(3, 0, vec![], 1.0).unwrap();
        assert_eq!(PackedTernary::pack(&m, 32).unwrap().packed().len(), 0);
        let m = TernaryMatrix::new(0, 7, vec![], 1.0).unwrap();
        assert_eq!(PackedTernary::pack(&m, 64).unwrap().packed().len(), 0);
    }
}
