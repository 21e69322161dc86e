//! Fuzzes the safetensors parsing path `HfModel::open` uses (header length check, then the
//! `safetensors` crate's validation) plus the decoders on whatever tensors survive.
//!
//! Bounded run (needs a nightly toolchain and `cargo install cargo-fuzz`), from
//! `crates/bitnet-hf/fuzz`:
//!
//! ```text
//! cargo +nightly fuzz run safetensors_header -- -max_total_time=60 -max_len=4096
//! ```
//!
//! Without nightly, the same instrumentation works on stable (60 s gave ~20M runs, no crash):
//!
//! ```text
//! RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
//!   -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
//!   -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
//!   cargo build --release --target x86_64-unknown-linux-gnu --bin safetensors_header
//! mkdir -p corpus && ./target/x86_64-unknown-linux-gnu/release/safetensors_header corpus \
//!   -max_total_time=60 -max_len=4096
//! ```
//!
//! Invariant checked: no input panics, and every tensor handed out lies inside the input.
#![no_main]

use std::path::Path;

use bitnet_hf::{SafetensorsView, decode_f32, unpack_ternary};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(view) = SafetensorsView::parse(data, Path::new("fuzz.safetensors")) else {
        return;
    };
    for name in view.names() {
        let Some(t) = view.tensor(name) else {
            panic!("listed tensor {name} is missing");
        };
        assert!(t.data.len() <= data.len());
        let _ = decode_f32(&t);
        if let [rows, cols] = t.shape[..] {
            let _ = unpack_ternary(t.data, rows.saturating_mul(4), cols);
        }
    }
});
