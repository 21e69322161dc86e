//! A kernel decorator that spreads any kernel's work over a thread pool. At `prepare` the matrix
//! is cut into row parts (each prepared by the inner kernel, so every backend keeps its own
//! layout); a multiply hands the parts to the pool's threads. Each part computes every activation
//! row, so the integer results are exactly the inner kernel's.

use std::cell::RefCell;
use std::sync::Arc;

use bitnet_core::kernel::{check_segments, scale_into};
use bitnet_core::pool::ThreadPool;
use bitnet_core::{CoreError, LinearKernel, PreparedLinear, QuantizedActivations, TernaryMatrix};

/// Rows per part are a multiple of this (the kernels work on groups of four rows).
const ROW_ALIGN: usize = 16;
/// Parts per thread, so that uneven threads balance. Two, not more: a decode multiply lasts
/// microseconds and every part costs a cold start (the first rows' weights are not prefetched,
/// and each part is its own allocation, so the hardware streams restart); on 2B4T shapes at
/// batch 1, 2 parts per thread streamed ~3-12% faster than 4 in the same process (BENCHMARKS.md),
/// and a second part still lets one thread take over when the other is late.
const PARTS_PER_THREAD: usize = 2;
/// Parts never get smaller than this many rows (tiny matrices stay whole).
const MIN_PART_ROWS: usize = 64;

/// `inner`, multi-threaded on `pool`.
pub struct Threaded {
    inner: Arc<dyn LinearKernel>,
    pool: Arc<ThreadPool>,
}

impl Threaded {
    /// Wraps `inner` so its multiplies run on `pool`.
    pub fn new(inner: Arc<dyn LinearKernel>, pool: Arc<ThreadPool>) -> Self {
        Self { inner, pool }
    }
}

impl LinearKernel for Threaded {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn prepare(&self, w: &TernaryMatrix) -> Result<Box<dyn PreparedLinear>, CoreError> {
        let (rows, cols) = (w.rows(), w.cols());
        let want = rows.div_ceil(self.pool.threads() * PARTS_PER_THREAD);
        let part_rows = want
            .max(MIN_PART_ROWS)
            .next_multiple_of(ROW_ALIGN)
            .min(rows.max(1));
        let mut parts = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = part_rows.min(rows - start);
            parts.push(self.inner.prepare(&w.rows_range(start, n))?);
            start += n;
        }
        Ok(Box::new(ThreadedLinear {
            parts,
            part_rows,
            rows,
            cols,
            scale: w.scale(),
            pool: self.pool.clone(),
        }))
    }

    fn thread_pool(&self) -> Option<Arc<ThreadPool>> {
        Some(self.pool.clone())
    }
}

struct ThreadedLinear {
    parts: Vec<Box<dyn PreparedLinear>>,
    part_rows: usize,
    rows: usize,
    cols: usize,
    scale: f32,
    pool: Arc<ThreadPool>,
}

/// An output's base pointer, shared by the tasks that write its disjoint row ranges.
struct SendPtr(*mut f32);
// SAFETY: the tasks of one `forward_segments` call write disjoint ranges of an exclusively
// borrowed output (`scale_part`); f32 is Send. Between calls the pointers kept in `OUTS` are
// never read.
unsafe impl Sync for SendPtr {}

/// Scales one part's integer results (`chunk`: one row of `rows.len()` values per activation
/// row, for weight rows `rows`) into the outputs of `forward_segments`.
fn scale_part(
    chunk: &[i32],
    rows: std::ops::Range<usize>,
    scales: &[f32],
    segments: &[(usize, f32)],
    outs: &[(SendPtr, usize)],
) {
    for (b, (ints, &s_x)) in chunk.chunks_exact(rows.len()).zip(scales).enumerate() {
        let mut seg_start = 0;
        for (&(seg_rows, s_w), (out, len)) in segments.iter().zip(outs) {
            // This part's rows inside the segment, in segment coordinates.
            let lo = rows.start.max(seg_start);
            let hi = rows.end.min(seg_start + seg_rows);
            if lo < hi {
                let at = b * seg_rows + lo - seg_start;
                assert!(at + hi - lo <= *len, "forward: output range");
                // SAFETY: rows lo..hi of activation row b are this part's alone (the parts cover
                // disjoint row ranges), the range lies inside the output (checked above), and the
                // outputs stay exclusively borrowed until `for_each_chunk_mut` returns.
                let y = unsafe { std::slice::from_raw_parts_mut(out.0.add(at), hi - lo) };
                scale_into(&ints[lo - rows.start..hi - rows.start], s_x, s_w, y);
            }
            seg_start += seg_rows;
        }
    }
}

thread_local! {
    /// Part-major results of a batched multiply, reused across calls on this thread.
    static STAGING: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    /// The outputs of a `forward_segments` call as (base, length), reused across calls (no
    /// allocation per multiply).
    static OUTS: RefCell<Vec<(SendPtr, usize)>> = const { RefCell::new(Vec::new()) };
}

impl PreparedLinear for ThreadedLinear {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn scale(&self) -> f32 {
        self.scale
    }

    fn weight_bytes(&self) -> usize {
        self.parts.iter().map(|p| p.weight_bytes()).sum()
    }

    fn forward_segments(
        &self,
        x: &QuantizedActivations,
        segments: &[(usize, f32)],
        outs: &mut [&mut [f32]],
        _scratch: &mut Vec<i32>,
    ) {
        let batch = x.batch();
        check_segments(x, self.cols, self.rows, segments, outs);
        // Each part scales its own rows into the outputs, on its own thread: no serial
        // epilogue and no copy out of the part-major staging (perf: ~5% of a batch-16 step
        // ran on the caller's thread alone while the workers waited).
        OUTS.with_borrow_mut(|ptrs| {
            ptrs.clear();
            ptrs.extend(outs.iter_mut().map(|o| (SendPtr(o.as_mut_ptr()), o.len())));
            STAGING.with_borrow_mut(|staged| {
                staged.resize(batch * self.rows, 0);
                self.pool
                    .for_each_chunk_mut(staged, batch * self.part_rows, &|p, chunk| {
                        let part = &self.parts[p];
                        part.matmul_i32(&x.codes, batch, chunk);
                        let rows = p * self.part_rows..p * self.part_rows + part.rows();
                        scale_part(chunk, rows, &x.scales, segments, ptrs);
                    });
            });
        });
    }

    fn matmul_i32(&self, x: &[i8], batch: usize, out: &mut [i32]) {
        assert_eq!(x.len(), batch * self.cols, "matmul_i32: activation length");
        assert_eq!(out.len(), batch * self.rows, "matmul_i32: output length");
        let run = |staged: &mut [i32]| {
            // Part p's results land at staged[p * batch * part_rows..], `batch x rows_of_p`.
            self.pool
                .for_each_chunk_mut(staged, batch * self.part_rows, &|p, chunk| {
                    self.parts[p].matmul_i32(x, batch, chunk);
                });
        };
        if batch == 1 {
            // One activation row: part-major is the output layout itself.
            run(out);
            return;
        }
        STAGING.with_borrow_mut(|staged| {
            staged.resize(batch * self.rows, 0);
            run(staged);
            for (p, part) in self.parts.iter().enumerate() {
                let (start, n) = (p * self.part_rows, part.rows());
                let base = p * batch * self.part_rows;
                for b in 0..batch {
                    out[b * self.rows + start..b * self.rows + start + n]
                        .copy_from_slice(&staged[base + b * n..base + (b + 1) * n]);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_core::scalar::ScalarKernel;

    #[test]
    fn threaded_segments_equal_the_plain_forward_bit_for_bit() {
        // 300 rows in parts of 64 on a 3-thread pool; segments that start and end inside parts.
        let (rows, cols) = (300usize, 70usize);
        let codes: Vec<i8> = (0..rows * cols)
            .map(|i| ((i * 7 + i / 11) % 3) as i8 - 1)
            .collect();
        let m = TernaryMatrix::new(rows, cols, codes, 0.7).unwrap();
        let segments = [(100usize, 0.5f32), (37, 1.25), (163, 0.031)];
        let pool = Arc::new(ThreadPool::new(3));
        let threaded = Threaded::new(Arc::new(ScalarKernel), pool)
            .prepare(&m)
            .unwrap();
        let plain = ScalarKernel.prepare(&m).unwrap();
        for batch in [1usize, 2, 5] {
            let x: Vec<f32> = (0..batch * cols)
                .map(|i| (i as f32 * 0.37).sin() * 3.0)
                .collect();
            let mut qa = QuantizedActivations::default();
            qa.quantize(&x, batch, cols);
            let run = |p: &dyn PreparedLinear| {
                let mut got: Vec<Vec<f32>> = segments
                    .iter()
                    .map(|s| vec![f32::NAN; batch * s.0])
                    .collect();
                let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|v| &mut v[..]).collect();
                p.forward_segments(&qa, &segments, &mut outs, &mut Vec::new());
                got
            };
            let (a, b) = (run(&*threaded), run(&*plain));
            for (a, b) in a.iter().zip(&b) {
                assert!(
                    a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "batch {batch}"
                );
            }
            let (mut y1, mut y2) = (vec![0.0; batch * rows], vec![0.0; batch * rows]);
            threaded.forward(&qa, &mut y1, &mut Vec::new());
            plain.forward(&qa, &mut y2, &mut Vec::new());
            assert!(y1.iter().zip(&y2).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}
