//! The engine against the reference: every format of every fixture model (written by
//! `tools/fixtures/generate.py` from transformers' `BitNetForCausalLM`) must give logits within
//! 1e-4 of the reference, identical int8 activation codes at every BitLinear input of every
//! layer, and identical greedy tokens when decoding with the KV cache (also through the head's
//! int8 screen).

use std::sync::Arc;

use bitnet_core::LinearKernel;
use bitnet_model::{KvType, Model, Scratch};

mod support;
use support::*;

const TOL: Tolerance = Tolerance {
    logits: 1e-4,
    hidden: 1e-4,
};

/// A fixture model with an f32 KV cache: the reference keeps its cache in f32, and the 1e-4
/// tolerance leaves no room for a 16-bit one (tests/kv.rs bounds those).
fn load(model: &str, format: &str, kernel: &dyn LinearKernel) -> Model {
    let path = fixtures().join(model).join(format);
    let model = if format.ends_with(".gguf") {
        let file = bitnet_gguf::GgufFile::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bitnet_model::load_gguf(Arc::new(file), kernel)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    } else {
        let hf =
            bitnet_hf::HfModel::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bitnet_model::load_hf(&hf, kernel).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    model.with_kv_type(KvType::F32)
}

fn check_model(model_name: &str) {
    let r = Reference::load(model_name);
    let formats = formats(model_name);
    let mut kernels = bitnet_cpu::available_kernels();
    kernels.push(bitnet_cpu::with_threads(kernels[0].clone(), 3));
    for kernel in kernels {
        for format in &formats {
            let what = format!("{model_name}/{format} [{}]", kernel.name());
            let model = load(model_name, format, kernel.as_ref());
            check_teacher_forced(&model, &r, &what, TOL);
            check_greedy(&model, &r, &what, TOL);
            check_screened(&model.with_head_screen(true), &r, &what);
        }
    }
}

#[test]
fn tied_gqa2() {
    check_model("tied-gqa2");
}

#[test]
fn untied_gqa4() {
    check_model("untied-gqa4");
}

#[test]
fn odd_mha() {
    check_model("odd-mha");
}

#[test]
fn hd128() {
    check_model("hd128");
}

#[test]
fn silu_bitnet() {
    check_model("silu-bitnet");
}

/// Each operator on its own, fed the reference's inputs (teacher forcing): every layer starts
/// from the reference's residual stream of the layer before, and the head from the reference's
/// final norm, so an error cannot hide behind (or be blamed on) an earlier one.
#[test]
fn every_layer_and_the_head_alone_from_reference_inputs() {
    for name in [
        "tied-gqa2",
        "untied-gqa4",
        "odd-mha",
        "hd128",
        "silu-bitnet",
    ] {
        let r = Reference::load(name);
        let st = r.st();
        let format = if name == "odd-mha" {
            "hf-packed"
        } else if name == "silu-bitnet" {
            "model-tq2_0.gguf"
        } else {
            "model-i2_s.gguf"
        };
        let model = load(name, format, &bitnet_core::scalar::ScalarKernel);
        let c = model.config().clone();
        let n = r.tokens.len();
        let mut input = vec![0.0f32; n * c.hidden_size];
        for (t, &id) in r.tokens.iter().enumerate() {
            model.embedding().row_into(
                id as usize,
                &mut input[t * c.hidden_size..(t + 1) * c.hidden_size],
            );
        }
        for l in 0..c.n_layers {
            let mut cache = model.new_cache(n);
            let mut scratch = Scratch::default();
            scratch.set_hidden(&input);
            let mut cap = Capture::default();
            model.run_layer(l, 0, n, &mut cache, &mut scratch, Some(&mut cap));
            for (point, codes, _) in &cap.codes {
                assert_eq!(
                    *codes,
                    i8s(&st, &format!("{point}_codes")),
                    "{name}: {point} alone"
                );
            }
            let want = f32s(&st, &format!("layers.{l}.out"));
            let d = max_diff(scratch.hidden(), &want);
            assert!(d < 5e-5, "{name}: layer {l} alone differs by {d}");
            input = want;
        }
        let normed = f32s(&st, "final_norm");
        let mut row = vec![0.0f32; r.vocab];
        for t in 0..n {
            model.output_head().matvec(
                &normed[t * c.hidden_size..(t + 1) * c.hidden_size],
                &mut row,
            );
            let d = max_diff(&row, &r.logits[t * r.vocab..(t + 1) * r.vocab]);
            assert!(d < 5e-5, "{name}: head alone at token {t} differs by {d}");
        }
    }
}
