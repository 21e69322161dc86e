//! Fixture builders shared by the integration tests: tiny configs and safetensors files
//! written with the safetensors crate's own serializer.
#![allow(dead_code)]

use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::{Value, json};

/// A small but complete BitNet config (hidden 8, intermediate 16, 2 heads, 1 kv head).
pub fn config(quant: Option<Value>) -> Value {
    let mut c = json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 32,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "hidden_act": "relu2",
        "tie_word_embeddings": true,
        "bos_token_id": 1,
        "eos_token_id": [2, 3]
    });
    if let Some(q) = quant {
        c["quantization_config"] = q;
    }
    c
}

pub fn autobit_offline() -> Option<Value> {
    Some(
        json!({"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}),
    )
}

pub fn autobit_online() -> Option<Value> {
    Some(
        json!({"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}),
    )
}

pub fn bitlinear() -> Option<Value> {
    Some(json!({"quant_method": "bitnet", "linear_class": "bitlinear"}))
}

/// One tensor to write: name, dtype, shape, raw little-endian bytes.
pub type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

pub fn entry(name: &str, dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> Entry {
    (name.to_string(), dtype, shape.to_vec(), bytes)
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

pub fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

pub fn safetensors_bytes(entries: &[Entry]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                TensorView::new(*d, s.clone(), b).expect("valid test tensor"),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

pub fn write_safetensors(path: &Path, entries: &[Entry]) {
    std::fs::write(path, safetensors_bytes(entries)).expect("write safetensors");
}

pub fn write_config(dir: &Path, config: &Value) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
}

/// Deterministic pseudo-random ternary codes (xorshift), no external RNG needed.
pub fn ternary_codes(n: usize, seed: u64) -> Vec<i8> {
    let mut x = seed.max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 3) as i8 - 1
        })
        .collect()
}

/// transformers' `pack_weights`, transcribed loop for loop (uint8 [out/4, in]: slice i of the
/// rows is OR-ed in at bit 2i), as an independent oracle for the crate's packer.
pub fn reference_pack(codes: &[i8], out: usize, inp: usize) -> Vec<u8> {
    let row_dim = out.div_ceil(4);
    let mut packed = vec![0u8; row_dim * inp];
    let it = 4.min(out / row_dim + 1);
    for i in 0..it {
        let start = i * row_dim;
        let end = (start + row_dim).min(out);
        for r in 0..(end - start) {
            for c in 0..inp {
                packed[r * inp + c] |= ((codes[(start + r) * inp + c] + 1) as u8) << (2 * i);
            }
        }
    }
    packed
}
