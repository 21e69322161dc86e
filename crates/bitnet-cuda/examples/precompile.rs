//! Compiles the CUDA kernels for one GPU architecture into the kernel cache, on any machine with
//! libnvrtc (no GPU needed), so that the first run on a GPU of that architecture loads them at
//! once instead of compiling them:
//!
//! ```text
//! BITNET_CACHE_DIR=DIR cargo run --release -p bitnet-cuda --example precompile -- sm_90
//! ```
//!
//! The GPU machine then runs with the same `BITNET_CACHE_DIR` (or the default cache directory,
//! `~/.cache/bitnet-rs`, where the variable was not set here either).

fn main() {
    let arch = std::env::args().nth(1).unwrap_or_else(|| "sm_90".into());
    if !arch.starts_with("sm_") {
        eprintln!("usage: precompile [sm_XY]   (a real architecture, e.g. sm_90 for H100/H200)");
        std::process::exit(2);
    }
    if !bitnet_cuda::nvrtc_present() {
        eprintln!("error: libnvrtc not found (scripts/nvrtc-env.sh fetches it)");
        std::process::exit(1);
    }
    let started = std::time::Instant::now();
    match bitnet_cuda::fill_cache(&arch) {
        Ok((dir, n)) => println!(
            "{n} of {} parts compiled for {arch} in {:.1} s, kept in {}",
            bitnet_cuda::PARTS,
            started.elapsed().as_secs_f64(),
            dir.display()
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
