//! A kernel decorator that spreads any kernel's work over a thread pool. At `prepare` the matrix
//! is cut into row parts (each prepared by the inner kernel, so every backend keeps its own
//! layout); a multiply hands the parts to the pool's threads. Each part computes every activation
//! row, so the integer results are exactly the inner kernel's.

use std::cell::RefCell;
use std::sync::Arc;

use bitnet_core::pool::ThreadPool;
use bitnet_core::{CoreError, LinearKernel, PreparedLinear, TernaryMatrix};

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
            let codes = w.codes()[start * cols..(start + n) * cols].to_vec();
            parts.push(
                self.inner
                    .prepare(&TernaryMatrix::new(n, cols, codes, w.scale())?)?,
            );
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

thread_local! {
    /// Part-major results of a batched multiply, reused across calls on this thread.
    static STAGING: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
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
