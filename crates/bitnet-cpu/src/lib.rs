//! Fast CPU backends for BitNet linears and the registry that picks among them.
//!
//! Every kernel here implements [`bitnet_core::LinearKernel`] and returns exactly the scalar
//! reference's `i32` products (the conformance contract). The SIMD kernels exist only on x86-64
//! and are offered only when the running CPU has the instructions they need; on other targets
//! the registry offers the scalar kernel alone.
//!
//! All SIMD kernels use the same trick: weights are stored as unsigned codes `u = t + 1` in
//! {0, 1, 2}, two bits each, so `dot(t, x) = dot(u, x) - sum(x)` is an unsigned-by-signed byte
//! product that `maddubs` (AVX2) and `dpbusd` (AVX-512 VNNI) compute directly.
//!
//! `avx512vnni-t1` stores the same codes five to a byte (1.6 bits per weight, a base-3 code
//! decoded by register table lookups) to stream 20% fewer bytes. It is offered first, so `auto`
//! picks it where the CPU has AVX-512 VBMI: see `avx512_t1.rs` for the measurements.
#![deny(missing_docs)]

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_t1;
#[cfg(target_arch = "x86_64")]
mod pack;
#[cfg(target_arch = "x86_64")]
mod pack_t1;
#[cfg(target_arch = "x86_64")]
mod quads;
mod threaded;

use std::sync::Arc;

use bitnet_core::scalar::ScalarKernel;
use bitnet_core::{CoreError, LinearKernel};

#[cfg(target_arch = "x86_64")]
pub use avx2::Avx2Kernel;
#[cfg(target_arch = "x86_64")]
pub use avx512::Avx512Kernel;
#[cfg(target_arch = "x86_64")]
pub use avx512_t1::Avx512Tq1Kernel;
pub use threaded::Threaded;

/// Every kernel this CPU can run, best first (`avx512vnni-t1`, `avx512vnni`, `avx2`, then
/// `scalar`).
///
/// Callers that just want speed take the first entry; tests iterate all of them.
pub fn available_kernels() -> Vec<Arc<dyn LinearKernel>> {
    let mut all = simd_kernels();
    all.push(Arc::new(ScalarKernel));
    all
}

/// The SIMD kernels this x86-64 CPU supports, best first.
#[cfg(target_arch = "x86_64")]
fn simd_kernels() -> Vec<Arc<dyn LinearKernel>> {
    let mut all: Vec<Arc<dyn LinearKernel>> = Vec::with_capacity(4);
    // The 1.6-bit layout first: it reads 20% fewer weight bytes, which decode (memory-bound)
    // turns into speed, and prefill measured level with the 2-bit kernel (BENCHMARKS.md).
    if let Some(k) = Avx512Tq1Kernel::new() {
        all.push(Arc::new(k));
    }
    if let Some(k) = Avx512Kernel::new() {
        all.push(Arc::new(k));
    }
    if let Some(k) = Avx2Kernel::new() {
        all.push(Arc::new(k));
    }
    all
}

/// No SIMD kernels exist for this architecture yet.
#[cfg(not(target_arch = "x86_64"))]
fn simd_kernels() -> Vec<Arc<dyn LinearKernel>> {
    Vec::with_capacity(1)
}

/// Looks a kernel up by name; `auto` means the best available.
///
/// A name that exists but cannot run on this CPU is an error too, so a forced `--kernel avx2`
/// never silently falls back to something else.
pub fn kernel_by_name(name: &str) -> Result<Arc<dyn LinearKernel>, CoreError> {
    let all = available_kernels();
    if name == "auto" {
        return Ok(best(all));
    }
    all.iter()
        .find(|k| k.name() == name)
        .cloned()
        .ok_or_else(|| CoreError::UnknownKernel {
            name: name.to_string(),
            available: format!(
                "auto, {}",
                all.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            ),
        })
}

/// The kernel to use when nobody asked for one: `BITNET_KERNEL` if set (and not `auto`), else
/// the best available.
pub fn default_kernel() -> Result<Arc<dyn LinearKernel>, CoreError> {
    match std::env::var("BITNET_KERNEL") {
        Ok(name) if !name.is_empty() && name != "auto" => kernel_by_name(&name),
        _ => Ok(best(available_kernels())),
    }
}

/// `kernel` spread over `threads` threads (the kernel itself when `threads <= 1`).
pub fn with_threads(kernel: Arc<dyn LinearKernel>, threads: usize) -> Arc<dyn LinearKernel> {
    if threads <= 1 {
        return kernel;
    }
    Arc::new(Threaded::new(
        kernel,
        Arc::new(bitnet_core::pool::ThreadPool::new(threads)),
    ))
}

/// The first (best) kernel of a registry list, which always ends with the scalar kernel.
fn best(all: Vec<Arc<dyn LinearKernel>>) -> Arc<dyn LinearKernel> {
    all.into_iter()
        .next()
        .unwrap_or_else(|| Arc::new(ScalarKernel))
}

/// Asserts that `kernel` multiplies a patterned `rows x cols` matrix by `batch` activation rows
/// exactly as the scalar reference does (the kernels' own tests; the conformance suite covers
/// random shapes).
#[cfg(test)]
pub(crate) fn assert_matches_scalar(
    kernel: &dyn LinearKernel,
    rows: usize,
    cols: usize,
    batch: usize,
) {
    let w: Vec<i8> = (0..rows * cols)
        .map(|i| ((i * 5 + i / 7) % 3) as i8 - 1)
        .collect();
    let x: Vec<i8> = (0..batch * cols)
        .map(|i| (i * 37 % 256) as u8 as i8)
        .collect();
    let m = bitnet_core::TernaryMatrix::new(rows, cols, w, 1.0).unwrap();
    let (mut got, mut want) = (vec![i32::MIN; batch * rows], vec![0; batch * rows]);
    kernel.prepare(&m).unwrap().matmul_i32(&x, batch, &mut got);
    ScalarKernel
        .prepare(&m)
        .unwrap()
        .matmul_i32(&x, batch, &mut want);
    assert_eq!(got, want, "{} {rows}x{cols}, batch {batch}", kernel.name());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_is_always_last_and_auto_is_first() {
        let all = available_kernels();
        assert_eq!(all.last().map(|k| k.name()), Some("scalar"));
        assert_eq!(kernel_by_name("auto").unwrap().name(), all[0].name());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn order_follows_detection() {
        let names: Vec<_> = available_kernels().iter().map(|k| k.name()).collect();
        let mut want = Vec::new();
        if Avx512Tq1Kernel::new().is_some() {
            want.push("avx512vnni-t1");
        }
        if Avx512Kernel::new().is_some() {
            want.push("avx512vnni");
        }
        if Avx2Kernel::new().is_some() {
            want.push("avx2");
        }
        want.push("scalar");
        assert_eq!(names, want);
    }
}
