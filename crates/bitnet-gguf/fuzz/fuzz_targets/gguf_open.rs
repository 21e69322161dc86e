//! Fuzz target: any byte string handed to the GGUF reader and to every decoder must produce a
//! value or an error, never a panic, a hang or an allocation out of proportion to the input.
//!
//! Run it bounded (needs a nightly toolchain and `cargo install cargo-fuzz`), from
//! `crates/bitnet-gguf`:
//!
//! ```text
//! cargo +nightly fuzz run gguf_open -- -max_total_time=60 -rss_limit_mb=1024 -max_len=65536
//! ```
//!
//! A good seed corpus is the crate's test data: `mkdir -p fuzz/corpus/gguf_open &&
//! cp tests/data/*.gguf fuzz/corpus/gguf_open/`.
#![no_main]

use bitnet_gguf::{GgufFile, TensorType, decode_f32, decode_ternary, encode_q6_k};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 1. The whole-file path: open, then read every tensor every way.
    if let Ok(file) = GgufFile::from_bytes(data.to_vec()) {
        for t in file.tensors() {
            let _ = file.tensor_region(t);
            let _ = file.decode_f32(t);
            let _ = file.decode_ternary(t);
            let row_len = t.row_len();
            if row_len > 0 && row_len <= 1 << 16 {
                let mut row = vec![0.0f32; row_len as usize];
                let _ = file.decode_rows_f32(t, 0, &mut row);
                let _ = file.decode_rows_f32(t, t.n_rows().saturating_sub(1) as usize, &mut row);
            }
        }
        let _ = file.architecture();
        for (key, _) in file.metadata() {
            let _ = file.get_u64(key);
            let _ = file.get_f32(key);
            let _ = file.get_string_array(key);
        }
    }

    // 2. The codecs on raw bytes: the largest whole number of blocks of each type.
    for kind in TensorType::ALL {
        let per_block = kind.type_size() as usize;
        let blocks = if kind == TensorType::I2_S {
            data.len().saturating_sub(32) / per_block
        } else {
            data.len() / per_block
        };
        let n = blocks * kind.block_size() as usize;
        let Ok(len) = kind.n_bytes(n as u64) else {
            continue;
        };
        if let Some(bytes) = data.get(..len as usize) {
            let _ = decode_f32(kind, bytes, n);
            let _ = decode_ternary(kind, bytes, n);
        }
    }

    // 3. The Q6_K encoder (including its lossless search) on arbitrary f32 bit patterns.
    let floats: Vec<f32> = data
        .chunks_exact(4)
        .take(1024)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let whole = floats.len() / 256 * 256;
    if let Some(x) = floats.get(..whole) {
        let _ = encode_q6_k(x);
    }
});
