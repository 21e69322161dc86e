//! The engine against the reference: every format of every fixture model (written by
//! `tools/fixtures/generate.py` from transformers' `BitNetForCausalLM`) must give logits within
//! 1e-4 of the reference, identical int8 activation codes at every BitLinear input of every
//! layer, and identical greedy tokens when decoding with the KV cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnet_core::{LinearKernel, QuantizedActivations};
use bitnet_model::{Logits, Model, Scratch, TracePoint, Tracer};
use safetensors::SafeTensors;

const LOGIT_TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models")
}

struct Reference {
    tokens: Vec<u32>,
    prompt_len: usize,
    greedy: Vec<u32>,
    vocab: usize,
    logits: Vec<f32>,
    bytes: Vec<u8>,
}

impl Reference {
    fn load(model: &str) -> Reference {
        let dir = fixtures().join(model);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let ids = |k: &str| -> Vec<u32> {
            json[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let prompt = ids("prompt_ids");
        let greedy = ids("greedy_ids");
        let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tokens: Vec<u32> = i32s(&st, "tokens").into_iter().map(|t| t as u32).collect();
        assert_eq!(tokens, [prompt.clone(), greedy.clone()].concat());
        let l = st.tensor("logits").unwrap();
        let vocab = l.shape()[1];
        let logits = f32s(&st, "logits");
        Reference {
            tokens,
            prompt_len: prompt.len(),
            greedy,
            vocab,
            logits,
            bytes,
        }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn i32s(st: &SafeTensors, name: &str) -> Vec<i32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn i8s(st: &SafeTensors, name: &str) -> Vec<i8> {
    st.tensor(name)
        .unwrap()
        .data()
        .iter()
        .map(|&b| b as i8)
        .collect()
}

#[derive(Default)]
struct Capture {
    codes: Vec<(String, Vec<i8>, Vec<f32>)>,
    outputs: Vec<Vec<f32>>,
    final_norm: Vec<f32>,
}

impl Tracer for Capture {
    fn activation(&mut self, layer: usize, point: TracePoint, q: &QuantizedActivations) {
        let name = match point {
            TracePoint::AttnIn => "attn_in",
            TracePoint::OIn => "o_in",
            TracePoint::FfnIn => "ffn_in",
            TracePoint::DownIn => "down_in",
        };
        self.codes.push((
            format!("layers.{layer}.{name}"),
            q.codes.clone(),
            q.scales.clone(),
        ));
    }
    fn layer_output(&mut self, _layer: usize, h: &[f32]) {
        self.outputs.push(h.to_vec());
    }
    fn final_norm(&mut self, x: &[f32]) {
        self.final_norm = x.to_vec();
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn load(model: &str, format: &str, kernel: &dyn LinearKernel) -> Model {
    let path = fixtures().join(model).join(format);
    if format.ends_with(".gguf") {
        let file = bitnet_gguf::GgufFile::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bitnet_model::load_gguf(Arc::new(file), kernel)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    } else {
        let hf =
            bitnet_hf::HfModel::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bitnet_model::load_hf(&hf, kernel).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

/// Teacher-forced forward over all tokens: logits, int8 codes, scales and layer outputs.
fn check_teacher_forced(model: &Model, r: &Reference, what: &str) {
    let mut cache = model.new_cache(r.tokens.len());
    let mut logits = Vec::new();
    let mut cap = Capture::default();
    model
        .forward(
            &r.tokens,
            &mut cache,
            Logits::All,
            &mut logits,
            &mut Scratch::default(),
            Some(&mut cap),
        )
        .unwrap();
    let st = r.st();
    for (name, codes, scales) in &cap.codes {
        let want = i8s(&st, &format!("{name}_codes"));
        if let Some(i) = codes.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{what}: {name} int8 code {i} is {} but the reference has {}",
                codes[i], want[i]
            );
        }
        assert_eq!(codes.len(), want.len(), "{what}: {name} length");
        let want_s = f32s(&st, &format!("{name}_scale"));
        for (a, b) in scales.iter().zip(&want_s) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs(),
                "{what}: {name} scale {a} vs {b}"
            );
        }
    }
    assert_eq!(cap.codes.len(), 4 * cap.outputs.len());
    for (l, out) in cap.outputs.iter().enumerate() {
        let want = f32s(&st, &format!("layers.{l}.out"));
        let d = max_diff(out, &want);
        assert!(d < 1e-4, "{what}: layer {l} output differs by {d}");
    }
    let d = max_diff(&cap.final_norm, &f32s(&st, "final_norm"));
    assert!(d < 1e-4, "{what}: final norm differs by {d}");
    let d = max_diff(&logits, &r.logits);
    assert!(
        d < LOGIT_TOL,
        "{what}: logits differ by {d} (tolerance {LOGIT_TOL})"
    );
}

/// Prefill the prompt, then greedy decode one token at a time through the KV cache.
fn check_greedy(model: &Model, r: &Reference, what: &str) {
    let mut cache = model.new_cache(r.tokens.len() + 1);
    let mut scratch = Scratch::default();
    let mut logits = Vec::new();
    model
        .forward(
            &r.tokens[..r.prompt_len],
            &mut cache,
            Logits::Last,
            &mut logits,
            &mut scratch,
            None,
        )
        .unwrap();
    for (step, &want) in r.greedy.iter().enumerate() {
        let row = r.prompt_len - 1 + step;
        let d = max_diff(&logits, &r.logits[row * r.vocab..(row + 1) * r.vocab]);
        assert!(
            d < LOGIT_TOL,
            "{what}: decode step {step} logits differ by {d}"
        );
        let got = argmax(&logits);
        assert_eq!(got, want, "{what}: greedy token {step}");
        model
            .forward(
                &[got],
                &mut cache,
                Logits::Last,
                &mut logits,
                &mut scratch,
                None,
            )
            .unwrap();
    }
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn check_model(model_name: &str) {
    let r = Reference::load(model_name);
    let dir = fixtures().join(model_name);
    let mut formats: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".gguf") || n.starts_with("hf-"))
        .collect();
    formats.sort();
    assert!(!formats.is_empty());
    let mut kernels = bitnet_cpu::available_kernels();
    kernels.push(bitnet_cpu::with_threads(kernels[0].clone(), 3));
    for kernel in kernels {
        for format in &formats {
            let what = format!("{model_name}/{format} [{}]", kernel.name());
            let model = load(model_name, format, kernel.as_ref());
            check_teacher_forced(&model, &r, &what);
            check_greedy(&model, &r, &what);
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
