//! `convert` round trips: every weight type written from every kind of source reads back with
//! exactly the source's ternary codes, scales, norms and float tensors, and runs to the
//! reference's greedy tokens; synthetic models have the shape they claim.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnet_engine::convert::{self, ConvertOptions, FloatType, WeightType};
use bitnet_engine::{Engine, EngineBuilder, GenerateOptions, KvType, Prompt};
use bitnet_gguf::GgufFile;
use bitnet_model::{GgufSource, HfSource, Norm, Proj, WeightSource};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(rel)
}

fn greedy_ids(model: &str) -> Vec<u32> {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(model).join("reference.json")).unwrap(),
    )
    .unwrap();
    r["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn same_weights(a: &dyn WeightSource, b: &dyn WeightSource) {
    let c = a.config();
    let strip = |c: &bitnet_model::ModelConfig| bitnet_model::ModelConfig {
        architecture: String::new(),
        ..c.clone()
    };
    assert_eq!(strip(c), strip(b.config()));
    for l in 0..c.n_layers {
        for p in Proj::ALL {
            assert_eq!(
                a.ternary(l, p).unwrap(),
                b.ternary(l, p).unwrap(),
                "layer {l} {p:?}"
            );
        }
        for n in Norm::ALL {
            assert_eq!(
                a.norm(l, n).unwrap(),
                b.norm(l, n).unwrap(),
                "layer {l} {n:?}"
            );
        }
    }
    assert_eq!(a.output_norm().unwrap(), b.output_norm().unwrap());
    let rows = |m: bitnet_core::ops::FloatMatrix| {
        let mut v = vec![0.0f32; m.rows() * m.cols()];
        for (r, row) in v.chunks_exact_mut(m.cols()).enumerate() {
            m.row_into(r, row);
        }
        v
    };
    assert_eq!(rows(a.embedding().unwrap()), rows(b.embedding().unwrap()));
    assert_eq!(a.head().unwrap().map(rows), b.head().unwrap().map(rows));
}

fn greedy(path: &Path, n: usize) -> Vec<u32> {
    greedy_with(path, n, KvType::default())
}

/// Greedy tokens with a chosen KV cache: f32 (the reference's own) where the reference's
/// tokens must come back exactly, since a 16-bit cache may move these random-weight models off
/// them (bitnet-model's tests/kv.rs bounds by how much).
fn greedy_with(path: &Path, n: usize, kv: KvType) -> Vec<u32> {
    let e = EngineBuilder::new(path.to_str().unwrap())
        .kv(kv)
        .build()
        .unwrap();
    let g = e
        .generate(
            Prompt::Text("The quick brown fox".into()),
            GenerateOptions::greedy(n),
        )
        .unwrap();
    g.map(|t| t.unwrap().id).collect()
}

#[test]
fn every_weight_type_round_trips_exactly_from_gguf_and_hf() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["untied-gqa4", "hd128"] {
        let want = greedy_ids(model);
        let hf = bitnet_hf::HfModel::open(&fixture(model).join("hf-packed")).unwrap();
        let hf_src = HfSource::new(&hf).unwrap();
        for (src_name, src_path) in [
            ("hf", fixture(model).join("hf-packed")),
            ("gguf", fixture(model).join("model-tq1_0.gguf")),
        ] {
            for weights in [
                WeightType::I2S,
                WeightType::TQ2_0,
                WeightType::TQ1_0,
                WeightType::F16,
            ] {
                let out = dir
                    .path()
                    .join(format!("{model}-{src_name}-{weights:?}.gguf"));
                let opts = ConvertOptions {
                    weights,
                    ..ConvertOptions::default()
                };
                convert::convert(src_path.to_str().unwrap(), &out, &opts, true).unwrap();
                let back = GgufSource::new(Arc::new(GgufFile::open(&out).unwrap())).unwrap();
                same_weights(&hf_src, &back);
                assert_eq!(
                    greedy_with(&out, want.len(), KvType::F32),
                    want,
                    "{model} from {src_name} as {weights:?}"
                );
            }
        }
    }
}

#[test]
fn compact_heads_load_and_stay_close() {
    let dir = tempfile::tempdir().unwrap();
    let want = greedy_ids("untied-gqa4");
    for head in [FloatType::Q8_0, FloatType::Q6K, FloatType::F32] {
        let out = dir.path().join(format!("{head:?}.gguf"));
        let opts = ConvertOptions {
            head,
            ..ConvertOptions::default()
        };
        convert::convert(
            fixture("untied-gqa4/hf-packed").to_str().unwrap(),
            &out,
            &opts,
            true,
        )
        .unwrap();
        let file = GgufFile::open(&out).unwrap();
        let kind = file.tensor("output.weight").unwrap().kind.unwrap();
        assert_eq!(
            kind.name(),
            match head {
                FloatType::Q8_0 => "Q8_0",
                FloatType::Q6K => "Q6_K",
                _ => "F32",
            }
        );
        let got = greedy_with(&out, want.len(), KvType::F32);
        // Quantized heads may change late tokens; the first ones hold the reference's margins.
        assert_eq!(got[..3], want[..3], "{head:?}");
        if head == FloatType::F32 {
            assert_eq!(got, want);
        }
    }
}

/// `--head q4_0` / `--head q4_k` write exactly the bytes of an independent quantizer for the same
/// values (goldens written by `tests/data/gen_compact_heads.py` from the fixtures' F16 files:
/// llama.cpp's gguf-py for Q4_0, ggml's own C `quantize_row_q4_K_ref` for Q4_K, which gguf-py
/// lacks), for a separate head and for a tied embedding, from HF and from GGUF sources; the files
/// run, and rows that are not whole blocks are refused.
#[test]
fn four_bit_heads_match_independent_quantizers_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(FloatType, &str, &str, &[u8]); 4] = [
        (
            FloatType::Q4_0,
            "untied-gqa4",
            "output.weight",
            include_bytes!("data/untied-gqa4-output.q4_0"),
        ),
        (
            FloatType::Q4_0,
            "tied-gqa2",
            "token_embd.weight",
            include_bytes!("data/tied-gqa2-token_embd.q4_0"),
        ),
        (
            FloatType::Q4K,
            "untied-gqa4",
            "output.weight",
            include_bytes!("data/untied-gqa4-output.q4_k"),
        ),
        (
            FloatType::Q4K,
            "tied-gqa2",
            "token_embd.weight",
            include_bytes!("data/tied-gqa2-token_embd.q4_k"),
        ),
    ];
    for (head, model, tensor, golden) in cases {
        let want = greedy_ids(model);
        let opts = ConvertOptions {
            head,
            ..ConvertOptions::default()
        };
        let type_name = if head == FloatType::Q4_0 {
            "Q4_0"
        } else {
            "Q4_K"
        };
        for src in ["hf-packed", "model-tq2_0.gguf"] {
            let out = dir.path().join(format!("{model}-{src}-{head:?}.gguf"));
            let src_path = fixture(model).join(src);
            convert::convert(src_path.to_str().unwrap(), &out, &opts, true).unwrap();
            let file = GgufFile::open(&out).unwrap();
            let t = file.tensor(tensor).unwrap();
            assert_eq!(t.kind.map(|k| k.name()), Some(type_name), "{model} {src}");
            assert!(
                file.tensor_data(t).unwrap() == golden,
                "{model} from {src}: {tensor} differs from the independent {type_name} bytes"
            );
            let got = greedy(&out, want.len());
            assert_eq!(got.len(), want.len());
            // With only the head at 4 bits, the first token (reference margin 14.3) holds; a
            // tied model's embedding changes too, so its tokens may all move.
            if tensor == "output.weight" {
                assert_eq!(got[0], want[0], "{model} from {src} as {type_name}");
            }
        }
        // Rows that are not whole blocks (odd-mha's 80 columns) are refused, naming the tensor
        // and the type.
        let err = convert::convert(
            fixture("odd-mha/hf-packed").to_str().unwrap(),
            &dir.path().join("odd.gguf"),
            &opts,
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(type_name) && err.contains("token_embd"),
            "{err}"
        );
    }
}

#[test]
fn odd_widths_refuse_block_types_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ConvertOptions {
        weights: WeightType::TQ2_0,
        ..ConvertOptions::default()
    };
    let err = convert::convert(
        fixture("odd-mha/hf-packed").to_str().unwrap(),
        &dir.path().join("x.gguf"),
        &opts,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("TQ2_0") && err.contains("blk.0.attn_q"),
        "{err}"
    );
}

#[test]
fn synthetic_models_have_the_claimed_shape_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.gguf");
    let report = convert::synthetic("tiny", 1, &out, &ConvertOptions::default(), None).unwrap();
    assert_eq!(report.tensors, 2 + 2 * 11);
    let e = Engine::load(out.to_str().unwrap()).unwrap();
    let c = e.model().config();
    assert_eq!(
        (
            c.hidden_size,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.vocab_size
        ),
        (256, 2, 4, 2, 1024)
    );
    assert!(e.tokenizer().is_none());
    let g = e
        .generate(Prompt::Tokens(vec![1, 2, 3]), GenerateOptions::greedy(4))
        .unwrap();
    assert_eq!(g.count(), 4);
    // Same seed, same bytes; the 2B4T preset has the real shape.
    let again = dir.path().join("again.gguf");
    convert::synthetic("tiny", 1, &again, &ConvertOptions::default(), None).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    // Borrowing a tokenizer makes text prompts work.
    let with_vocab = dir.path().join("vocab.gguf");
    let fixture_model = fixture("tied-gqa2/model-tq2_0.gguf");
    convert::synthetic(
        "tiny",
        1,
        &with_vocab,
        &ConvertOptions::default(),
        Some(fixture_model.to_str().unwrap()),
    )
    .unwrap();
    let e = Engine::load(with_vocab.to_str().unwrap()).unwrap();
    // The fixture's 384 tokens, padded with unused placeholders to the model's 1024 rows (as
    // llama.cpp requires: it sizes the vocabulary by the token list).
    let tok = e.tokenizer().unwrap();
    assert_eq!(tok.vocab_size(), 1024);
    assert_eq!(tok.token_piece(1000), Some("<|bitnet_rs_unused_1000|>"));
    assert_eq!(
        e.generate("The quick", GenerateOptions::greedy(3))
            .unwrap()
            .count(),
        3
    );
    let silu = convert::synthetic_config("2b4t-silu").unwrap();
    assert_eq!(silu.architecture, "bitnet");
    let c = convert::synthetic_config("2b4t").unwrap();
    assert_eq!(
        (
            c.hidden_size,
            c.n_layers,
            c.intermediate_size,
            c.n_heads,
            c.n_kv_heads,
            c.vocab_size
        ),
        (2560, 30, 6912, 20, 5, 128256)
    );
}
