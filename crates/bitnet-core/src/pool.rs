//! A persistent thread pool for the per-token path: workers spin briefly waiting for work, then
//! park; a job is a function of a task index, and tasks are handed out through one atomic
//! counter, so a call costs a few atomic operations when the workers are awake and no heap
//! allocation or lock ever.
//!
//! The caller's thread works too: a pool of `n` threads starts `n - 1` workers.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle, Thread};

/// How many times a worker polls for new work before parking.
const SPINS: usize = 1 << 14;

type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Incremented once per job; workers wait for it to change.
    generation: AtomicUsize,
    /// The current job, a `*const Job` valid while `pending > 0`.
    job: AtomicPtr<()>,
    next: AtomicUsize,
    n_tasks: AtomicUsize,
    /// Workers that have not yet finished the current generation.
    pending: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Set while a caller owns the workers; a second caller runs its job on its own thread.
    busy: AtomicBool,
}

/// A fixed set of worker threads that run indexed tasks.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<(Thread, JoinHandle<()>)>,
    threads: usize,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThreadPool({} threads)", self.threads)
    }
}

impl ThreadPool {
    /// A pool of `threads` threads in all (the caller counts as one); at least 1.
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            next: AtomicUsize::new(0),
            n_tasks: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            busy: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|i| {
                let s = shared.clone();
                let handle = thread::Builder::new()
                    .name(format!("bitnet-worker-{i}"))
                    .spawn(move || worker(&s))
                    .expect("spawning a worker thread");
                (handle.thread().clone(), handle)
            })
            .collect();
        Self {
            shared,
            workers,
            threads,
        }
    }

    /// Threads in the pool, the caller's included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(0..n_tasks)` across the pool and returns when every task is done. Safe to call
    /// from several threads at once: while one caller owns the workers, another runs its tasks
    /// on its own thread (no lock, no waiting on each other).
    ///
    /// # Panics
    /// If a task panicked (re-raised on the caller's thread after all threads stopped).
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if self.workers.is_empty()
            || n_tasks <= 1
            || s.busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            (0..n_tasks).for_each(f);
            return;
        }
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _owner = Release(&s.busy);
        let job: Job<'_> = f;
        s.n_tasks.store(n_tasks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.pending.store(self.workers.len(), Ordering::Relaxed);
        s.job.store(
            (&job as *const Job<'_>).cast_mut().cast(),
            Ordering::Relaxed,
        );
        // Publishes the fields above to workers that see the new generation.
        s.generation.fetch_add(1, Ordering::Release);
        for (t, _) in &self.workers {
            t.unpark();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| take_tasks(s, job)));
        // `job` borrows this stack frame: wait until no worker can still touch it.
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        s.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        if mine.is_err() || s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a thread-pool task panicked");
        }
    }
}

impl ThreadPool {
    /// Splits `data` into chunks of `chunk` elements (the last may be shorter) and runs
    /// `f(chunk_index, chunk)` for each across the pool.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let chunk = chunk.max(1);
        let len = data.len();
        let base = SendPtr(data.as_mut_ptr());
        self.run(len.div_ceil(chunk), &|i| {
            let start = i * chunk;
            let n = chunk.min(len - start);
            let p = &base;
            // SAFETY: chunk `i` covers `start..start + n`, inside `data` and disjoint from every
            // other chunk; `data` is exclusively borrowed for the duration of `run`.
            let part = unsafe { std::slice::from_raw_parts_mut(p.0.add(start), n) };
            f(i, part);
        });
    }
}

/// A pointer that may cross threads because its users touch disjoint ranges only.
struct SendPtr<T>(*mut T);
// SAFETY: see `for_each_chunk_mut`: every thread gets a disjoint range of an exclusively
// borrowed slice whose elements are `Send`.
unsafe impl<T: Send> Sync for SendPtr<T> {}

fn take_tasks(s: &Shared, job: Job<'_>) {
    let n = s.n_tasks.load(Ordering::Relaxed);
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            return;
        }
        job(i);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0;
        let generation = loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen || s.shutdown.load(Ordering::Acquire) {
                break g;
            }
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
            } else {
                thread::park();
            }
        };
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen = generation;
        // SAFETY: the caller stored a valid `*const Job` before bumping the generation (Release,
        // paired with the Acquire above) and keeps it alive until `pending` reaches zero, which
        // happens only after this worker's decrement below.
        let job: Job<'_> = unsafe { *(s.job.load(Ordering::Relaxed) as *const Job<'_>) };
        if catch_unwind(AssertUnwindSafe(|| take_tasks(s, job))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for (t, _) in &self.workers {
            t.unpark();
        }
        for (_, h) in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Physical cores of this machine (logical CPUs halved when SMT siblings are reported), the
/// default thread count: decode is memory-bound and SMT siblings add little.
pub fn physical_cores() -> usize {
    let logical = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let siblings =
        std::fs::read_to_string("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
            .ok()
            .map(|s| s.trim().split([',', '-']).count())
            .unwrap_or(1)
            .max(1);
    (logical / siblings).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_once() {
        for threads in [1, 2, 3, 8] {
            let pool = ThreadPool::new(threads);
            for n in [0usize, 1, 2, 7, 100] {
                let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn concurrent_callers_each_get_every_task_once() {
        let pool = Arc::new(ThreadPool::new(3));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let pool = pool.clone();
                thread::spawn(move || {
                    for round in 0..300 {
                        let hits: Vec<AtomicU64> = (0..17).map(|_| AtomicU64::new(0)).collect();
                        pool.run(17, &|i| {
                            hits[i].fetch_add((t * 1000 + round) as u64, Ordering::Relaxed);
                        });
                        assert!(
                            hits.iter()
                                .all(|h| h.load(Ordering::Relaxed) == (t * 1000 + round) as u64)
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn chunks_are_disjoint_and_complete() {
        let pool = ThreadPool::new(3);
        let mut v = vec![0usize; 1001];
        pool.for_each_chunk_mut(&mut v, 100, &|i, c| {
            for (j, x) in c.iter_mut().enumerate() {
                *x += i * 100 + j;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i));
    }

    #[test]
    fn many_small_jobs_and_a_sleeping_pool() {
        let pool = ThreadPool::new(2);
        let sum = AtomicU64::new(0);
        for _ in 0..2000 {
            pool.run(4, &|i| {
                sum.fetch_add(i as u64, Ordering::Relaxed);
            });
        }
        assert_eq!(sum.load(Ordering::Relaxed), 2000 * 6);
        std::thread::sleep(std::time::Duration::from_millis(50)); // workers park
        pool.run(3, &|i| {
            sum.fetch_add(i as u64, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 2000 * 6 + 3);
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(8, &|i| assert!(i != 5))));
        assert!(r.is_err());
        let n = AtomicU64::new(0);
        pool.run(8, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }
}
