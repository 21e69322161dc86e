//! Reading the fixtures' reference (written by `tools/fixtures/generate.py`) and checking a
//! model against it; shared by the CPU tests here and the GPU tests of `bitnet-cuda`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bitnet_core::QuantizedActivations;
use bitnet_model::{BatchEntry, Logits, Model, Scratch, TracePoint, Tracer};
use safetensors::SafeTensors;

/// How close a backend must come to the reference.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Logits, absolute.
    pub logits: f32,
    /// Layer outputs and the final norm, absolute.
    pub hidden: f32,
}

/// The file formats a fixture model was written in (`model-*.gguf`, `hf-*`), sorted.
pub fn formats(model: &str) -> Vec<String> {
    let mut formats: Vec<String> = std::fs::read_dir(fixtures().join(model))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".gguf") || n.starts_with("hf-"))
        .collect();
    formats.sort();
    assert!(!formats.is_empty(), "{model}: no fixture files");
    formats
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models")
}

pub struct Reference {
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub greedy: Vec<u32>,
    pub vocab: usize,
    pub logits: Vec<f32>,
    pub bytes: Vec<u8>,
}

impl Reference {
    pub fn load(model: &str) -> Reference {
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

    pub fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
}

pub fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn i32s(st: &SafeTensors, name: &str) -> Vec<i32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn i8s(st: &SafeTensors, name: &str) -> Vec<i8> {
    st.tensor(name)
        .unwrap()
        .data()
        .iter()
        .map(|&b| b as i8)
        .collect()
}

#[derive(Default)]
pub struct Capture {
    pub codes: Vec<(String, Vec<i8>, Vec<f32>)>,
    pub outputs: Vec<Vec<f32>>,
    pub final_norm: Vec<f32>,
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
            q.codes.to_vec(),
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

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Teacher-forced forward over all tokens: logits, int8 codes, scales and layer outputs.
/// Every token's logits of one forward pass over all of the reference's tokens.
pub fn teacher_forced(model: &Model, r: &Reference, tracer: Option<&mut dyn Tracer>) -> Vec<f32> {
    let mut cache = model.new_cache(r.tokens.len());
    let mut logits = Vec::new();
    model
        .forward(
            &r.tokens,
            &mut cache,
            Logits::All,
            &mut logits,
            &mut Scratch::default(),
            tracer,
        )
        .unwrap();
    logits
}

pub fn check_teacher_forced(model: &Model, r: &Reference, what: &str, tol: Tolerance) {
    let mut cap = Capture::default();
    let logits = teacher_forced(model, r, Some(&mut cap));
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
        assert!(d < tol.hidden, "{what}: layer {l} output differs by {d}");
    }
    let d = max_diff(&cap.final_norm, &f32s(&st, "final_norm"));
    assert!(d < tol.hidden, "{what}: final norm differs by {d}");
    let d = max_diff(&logits, &r.logits);
    assert!(
        d < tol.logits,
        "{what}: logits differ by {d} (tolerance {})",
        tol.logits
    );
}

/// Prefill the prompt, then greedy decode one token at a time through the KV cache.
pub fn check_greedy(model: &Model, r: &Reference, what: &str, tol: Tolerance) {
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
            d < tol.logits,
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

/// Decoding through the head's int8 screen (`Model::with_head_screen`): greedy steps give the
/// reference's tokens, and top-k steps the same candidates and logits as the full head's, at
/// every step of the reference's continuation.
pub fn check_screened(model: &Model, r: &Reference, what: &str) {
    if bitnet_core::screen::HeadScreen::accelerated() {
        assert!(
            model.head_screen_bytes() > 0,
            "{what}: no head screen was built"
        );
    }
    let n = r.tokens.len() + 1;
    let [mut greedy, mut top1, mut top5, mut full] = [0; 4].map(|_| model.new_cache(n));
    let mut s = Scratch::default();
    let (mut ids, mut got, mut want, mut logits) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    fn one<'a>(tokens: &'a [u32], cache: &'a mut bitnet_model::KvCache) -> [BatchEntry<'a>; 1] {
        [BatchEntry {
            tokens,
            cache,
            logits: Logits::Last,
        }]
    }
    let mut step: Vec<u32> = r.tokens[..r.prompt_len].to_vec();
    for (i, &expected) in r.greedy.iter().enumerate() {
        model
            .forward_batch_greedy(&mut one(&step, &mut greedy), &mut ids, &mut s)
            .unwrap();
        assert_eq!(ids, [expected], "{what}: screened greedy token {i}");
        model
            .forward(&step, &mut full, Logits::Last, &mut logits, &mut s, None)
            .unwrap();
        for (k, cache) in [(1, &mut top1), (5, &mut top5)] {
            model
                .forward_batch_top_k(&mut one(&step, cache), k, &mut got, &mut s)
                .unwrap();
            want.clear();
            bitnet_core::ops::top_k_rows(&logits, r.vocab, k, &mut want);
            assert_eq!(
                format!("{got:?}"),
                format!("{want:?}"),
                "{what}: top-{k}, step {i}"
            );
        }
        step = vec![expected];
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
