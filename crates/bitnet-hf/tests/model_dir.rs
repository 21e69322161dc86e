//! End-to-end tests of model directories built in a tempdir: every weight layout `load_linear`
//! accepts, the sharded index, and every malformed-input error.

mod common;

use std::path::Path;

use bitnet_hf::{HfError, HfModel, absmean_ternarize, load_float, load_linear};
use common::*;
use safetensors::Dtype;
use serde_json::json;

const OUT: usize = 16;
const IN: usize = 8;
const PREFIX: &str = "model.layers.0.mlp.up_proj";

fn model_with(quant: Option<serde_json::Value>, entries: &[Entry]) -> (tempfile::TempDir, HfModel) {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(quant));
    write_safetensors(&dir.path().join("model.safetensors"), entries);
    let model = HfModel::open(dir.path()).unwrap();
    (dir, model)
}

fn open_err(dir: &Path) -> HfError {
    HfModel::open(dir).expect_err("open should fail")
}

fn packed_entries(codes: &[i8], scale: Entry) -> Vec<Entry> {
    vec![
        entry(
            &format!("{PREFIX}.weight"),
            Dtype::U8,
            &[OUT / 4, IN],
            reference_pack(codes, OUT, IN),
        ),
        scale,
        entry(
            "model.norm.weight",
            Dtype::BF16,
            &[IN],
            bf16_bytes(&[1.0; IN]),
        ),
    ]
}

#[test]
fn packed_autobitlinear_multiplies() {
    let codes = ternary_codes(OUT * IN, 7);
    let scale = entry(
        &format!("{PREFIX}.weight_scale"),
        Dtype::BF16,
        &[1],
        bf16_bytes(&[1.5]),
    );
    let (_d, m) = model_with(autobit_offline(), &packed_entries(&codes, scale));
    let w = load_linear(&m, PREFIX, OUT, IN).unwrap();
    assert_eq!(w.codes, codes);
    assert_eq!(w.scale, 1.5);
}

#[test]
fn packed_bitlinear_stores_reciprocal() {
    let codes = ternary_codes(OUT * IN, 11);
    // Scalar shape [] and f32 dtype, explicit linear_class.
    let scale = entry(
        &format!("{PREFIX}.weight_scale"),
        Dtype::F32,
        &[],
        f32_bytes(&[4.0]),
    );
    let (_d, m) = model_with(bitlinear(), &packed_entries(&codes, scale.clone()));
    let w = load_linear(&m, PREFIX, OUT, IN).unwrap();
    assert_eq!(w.codes, codes);
    assert_eq!(w.scale, 0.25);

    // linear_class absent: transformers' BitNetQuantConfig default is bitlinear.
    let q = Some(json!({"quant_method": "bitnet"}));
    let (_d, m) = model_with(q, &packed_entries(&codes, scale));
    assert_eq!(load_linear(&m, PREFIX, OUT, IN).unwrap().scale, 0.25);
}

#[test]
fn packed_needs_scale_and_quant_config() {
    let codes = ternary_codes(OUT * IN, 3);
    let mut entries = packed_entries(
        &codes,
        entry("unrelated", Dtype::F32, &[1], f32_bytes(&[1.0])),
    );
    let (_d, m) = model_with(autobit_offline(), &entries);
    let e = load_linear(&m, PREFIX, OUT, IN).unwrap_err().to_string();
    assert!(e.contains("weight_scale") && e.contains(PREFIX), "{e}");

    entries[1] = entry(
        &format!("{PREFIX}.weight_scale"),
        Dtype::F32,
        &[1],
        f32_bytes(&[2.0]),
    );
    let (_d, m) = model_with(None, &entries);
    let e = load_linear(&m, PREFIX, OUT, IN).unwrap_err().to_string();
    assert!(e.contains("quantization_config"), "{e}");

    for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        entries[1] = entry(
            &format!("{PREFIX}.weight_scale"),
            Dtype::F32,
            &[1],
            f32_bytes(&[bad]),
        );
        let (_d, m) = model_with(autobit_offline(), &entries);
        let e = load_linear(&m, PREFIX, OUT, IN).unwrap_err().to_string();
        assert!(e.contains("weight_scale"), "{bad}: {e}");
    }
    entries[1] = entry(
        &format!("{PREFIX}.weight_scale"),
        Dtype::F32,
        &[2],
        f32_bytes(&[1.0, 1.0]),
    );
    let (_d, m) = model_with(autobit_offline(), &entries);
    assert!(matches!(
        load_linear(&m, PREFIX, OUT, IN),
        Err(HfError::Shape { .. })
    ));

    let q = Some(json!({"quant_method": "bitsandbytes"}));
    let (_d, m) = model_with(
        q,
        &packed_entries(&codes, entry("x", Dtype::F32, &[1], f32_bytes(&[1.0]))),
    );
    assert!(
        load_linear(&m, PREFIX, OUT, IN)
            .unwrap_err()
            .to_string()
            .contains("bitsandbytes")
    );
}

#[test]
fn packed_code3_names_tensor() {
    let mut packed = reference_pack(&ternary_codes(OUT * IN, 5), OUT, IN);
    packed[IN + 2] |= 0b1100_0000; // row 3R + 1 = 13, column 2
    let entries = vec![
        entry(
            &format!("{PREFIX}.weight"),
            Dtype::U8,
            &[OUT / 4, IN],
            packed,
        ),
        entry(
            &format!("{PREFIX}.weight_scale"),
            Dtype::BF16,
            &[1],
            bf16_bytes(&[1.0]),
        ),
    ];
    let (_d, m) = model_with(autobit_offline(), &entries);
    let e = load_linear(&m, PREFIX, OUT, IN).unwrap_err().to_string();
    assert!(
        e.contains(PREFIX)
            && e.contains("code 3")
            && e.contains("row 13")
            && e.contains("column 2"),
        "{e}"
    );
}

#[test]
fn wrong_shapes_name_tensor_expected_and_found() {
    let codes = ternary_codes(OUT * IN, 9);
    let scale = entry(
        &format!("{PREFIX}.weight_scale"),
        Dtype::BF16,
        &[1],
        bf16_bytes(&[1.0]),
    );
    let (_d, m) = model_with(autobit_offline(), &packed_entries(&codes, scale));
    // Caller expects [32, 8]: packed must be [8, 8] but the file has [4, 8].
    match load_linear(&m, PREFIX, 32, IN).unwrap_err() {
        HfError::Shape {
            tensor,
            expected,
            found,
        } => {
            assert_eq!(tensor, format!("{PREFIX}.weight"));
            assert_eq!(expected, vec![8, IN]);
            assert_eq!(found, vec![4, IN]);
        }
        e => panic!("unexpected {e}"),
    }
    let msg = load_linear(&m, PREFIX, 32, IN).unwrap_err().to_string();
    assert!(msg.contains("[8, 8]") && msg.contains("[4, 8]"), "{msg}");
    assert!(
        load_linear(&m, PREFIX, 18, IN)
            .unwrap_err()
            .to_string()
            .contains("multiple of 4")
    );
    assert!(matches!(
        load_linear(&m, "model.layers.9.nope", OUT, IN),
        Err(HfError::TensorNotFound { .. })
    ));

    // Float master with the wrong shape; load_float shape check.
    let master = entry(
        &format!("{PREFIX}.weight"),
        Dtype::F32,
        &[IN, OUT],
        f32_bytes(&[0.5; OUT * IN]),
    );
    let (_d, m) = model_with(autobit_online(), &[master]);
    let e = load_linear(&m, PREFIX, OUT, IN).unwrap_err().to_string();
    assert!(e.contains("expected shape [16, 8], found [8, 16]"), "{e}");
    let e = load_float(&m, &format!("{PREFIX}.weight"), &[OUT * IN])
        .unwrap_err()
        .to_string();
    assert!(e.contains(PREFIX) && e.contains("[128]"), "{e}");
    assert_eq!(
        load_float(&m, &format!("{PREFIX}.weight"), &[IN, OUT]).unwrap(),
        vec![0.5; OUT * IN]
    );

    // Integer types are neither packed nor float.
    let odd = entry(
        &format!("{PREFIX}.weight"),
        Dtype::I32,
        &[OUT, IN],
        vec![0; OUT * IN * 4],
    );
    let (_d, m) = model_with(autobit_online(), &[odd]);
    assert!(matches!(
        load_linear(&m, PREFIX, OUT, IN),
        Err(HfError::Dtype { .. })
    ));
}

/// The master layout model.md recommends for fixtures: `2 * s * t` with exactly half the
/// entries non-zero, so `mean |W| = s` and transformers' online quantizer returns exactly t, s.
fn half_nonzero_master(s: f32) -> (Vec<i8>, Vec<f32>) {
    let codes: Vec<i8> = (0..OUT * IN)
        .map(|i| {
            if i % 2 == 0 {
                0
            } else if i % 4 == 1 {
                1
            } else {
                -1
            }
        })
        .collect();
    let master = codes.iter().map(|&t| 2.0 * s * f32::from(t)).collect();
    (codes, master)
}

#[test]
fn online_masters_use_absmean_in_every_float_dtype() {
    let s = 1.25f32; // exact in bf16, f16, f32
    let (codes, master) = half_nonzero_master(s);
    for (dtype, bytes) in [
        (Dtype::BF16, bf16_bytes(&master)),
        (Dtype::F16, f16_bytes(&master)),
        (Dtype::F32, f32_bytes(&master)),
    ] {
        let e = entry(&format!("{PREFIX}.weight"), dtype, &[OUT, IN], bytes);
        let (_d, m) = model_with(autobit_online(), &[e]);
        let w = load_linear(&m, PREFIX, OUT, IN).unwrap();
        assert_eq!(w.codes, codes, "{dtype:?}");
        // transformers: scale = 1/mean = 0.8 (f32), effective 1/0.8 in f32.
        assert_eq!(w.scale, 1.0f32 / (1.0f32 / s), "{dtype:?}");
    }
}

#[test]
fn absmean_many_magnitudes_hand_computed() {
    // mean |W| = (0.2+0.25+0.75+1+0.3+0.5 + 0.5+0.5) / 8 = 0.5 -> scale_inv 2.
    // 0.25*2 = 0.5 rounds half to even -> 0; 0.75*2 = 1.5 -> 2 -> clamp 1; 0.3*2 = 0.6 -> 1.
    let w = [0.2f32, 0.25, 0.75, -1.0, 0.3, -0.5, 0.5, -0.5];
    let want: Vec<i8> = vec![0, 0, 1, -1, 1, -1, 1, -1];
    for (dtype, bytes) in [
        (Dtype::F32, f32_bytes(&w)),
        (Dtype::BF16, bf16_bytes(&w)),
        (Dtype::F16, f16_bytes(&w)),
    ] {
        // bf16/f16 round 0.2 and 0.3: still well inside their code intervals; mean shifts slightly.
        let e = entry("l.weight", dtype, &[4, 2], bytes);
        let (_d, m) = model_with(autobit_online(), &[e]);
        let got = load_linear(&m, "l", 4, 2).unwrap();
        let decoded = load_float(&m, "l.weight", &[4, 2]).unwrap();
        assert_eq!(got, absmean_ternarize(&decoded), "{dtype:?}");
        if dtype == Dtype::F32 {
            assert_eq!(got.codes, want);
            assert_eq!(got.scale, 0.5);
        }
    }
    // Same masters with no quantization_config (1bitLLM fp16 layout): several magnitudes, so
    // absmean as well.
    let e = entry("l.weight", Dtype::F16, &[4, 2], f16_bytes(&w));
    let (_d, m) = model_with(None, &[e]);
    let decoded = load_float(&m, "l.weight", &[4, 2]).unwrap();
    assert_eq!(
        load_linear(&m, "l", 4, 2).unwrap(),
        absmean_ternarize(&decoded)
    );
}

#[test]
fn float_t_times_s_is_recovered_exactly_without_online_config() {
    let s = 0.123_456_78f32; // not exact in bf16/f16: stored as F32
    let codes = ternary_codes(OUT * IN, 21);
    let w: Vec<f32> = codes.iter().map(|&t| f32::from(t) * s).collect();
    let e = entry(
        &format!("{PREFIX}.weight"),
        Dtype::F32,
        &[OUT, IN],
        f32_bytes(&w),
    );
    let (_d, m) = model_with(None, std::slice::from_ref(&e));
    let got = load_linear(&m, PREFIX, OUT, IN).unwrap();
    assert_eq!(got.codes, codes);
    assert_eq!(got.scale, s);

    // Under an online config the same tensor follows transformers' absmean instead: the codes
    // agree, the scale is mean |W| = s * (non-zero fraction).
    let (_d, m) = model_with(autobit_online(), &[e]);
    let online = load_linear(&m, PREFIX, OUT, IN).unwrap();
    assert_eq!(online.codes, codes);
    assert_eq!(online, absmean_ternarize(&w));
    assert!(online.scale < s);
}

#[test]
fn offline_unpacked_float_codes_with_scale() {
    let codes = ternary_codes(OUT * IN, 13);
    let as_float: Vec<f32> = codes.iter().map(|&t| f32::from(t)).collect();
    let entries = vec![
        entry(
            &format!("{PREFIX}.weight"),
            Dtype::BF16,
            &[OUT, IN],
            bf16_bytes(&as_float),
        ),
        entry(
            &format!("{PREFIX}.weight_scale"),
            Dtype::BF16,
            &[1],
            bf16_bytes(&[2.5]),
        ),
    ];
    let (_d, m) = model_with(autobit_offline(), &entries);
    let w = load_linear(&m, PREFIX, OUT, IN).unwrap();
    assert_eq!(w.codes, codes);
    assert_eq!(w.scale, 2.5);

    let mut not_ternary = as_float.clone();
    not_ternary[5] = 0.75;
    let entries = vec![
        entry(
            &format!("{PREFIX}.weight"),
            Dtype::F32,
            &[OUT, IN],
            f32_bytes(&not_ternary),
        ),
        entry(
            &format!("{PREFIX}.weight_scale"),
            Dtype::BF16,
            &[1],
            bf16_bytes(&[2.5]),
        ),
    ];
    let (_d, m) = model_with(autobit_offline(), &entries);
    let e = load_linear(&m, PREFIX, OUT, IN).unwrap_err().to_string();
    assert!(e.contains("element 5") && e.contains("0.75"), "{e}");
}

#[test]
fn non_finite_master_is_refused() {
    let mut w = vec![0.5f32; OUT * IN];
    w[17] = f32::NAN;
    let e = entry(
        &format!("{PREFIX}.weight"),
        Dtype::F32,
        &[OUT, IN],
        f32_bytes(&w),
    );
    let (_d, m) = model_with(autobit_online(), &[e]);
    let msg = load_linear(&m, PREFIX, OUT, IN).unwrap_err().to_string();
    assert!(msg.contains("element 17") && msg.contains(PREFIX), "{msg}");
}

#[test]
fn side_files_and_config_are_exposed() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(autobit_offline()));
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[entry(
            "model.embed_tokens.weight",
            Dtype::BF16,
            &[32, 8],
            bf16_bytes(&[0.25; 256]),
        )],
    );
    let m = HfModel::open(dir.path()).unwrap();
    assert!(m.tokenizer_json_path().is_none());
    std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), "{}").unwrap();
    std::fs::write(dir.path().join("generation_config.json"), "{}").unwrap();
    let m = HfModel::open(dir.path()).unwrap();
    assert_eq!(
        m.tokenizer_json_path(),
        Some(dir.path().join("tokenizer.json").as_path())
    );
    assert_eq!(
        m.tokenizer_config_path(),
        Some(dir.path().join("tokenizer_config.json").as_path())
    );
    assert!(m.generation_config_path().is_some());
    assert_eq!(m.config().eos_token_ids, vec![2, 3]);
    assert_eq!(
        m.tensor_names().collect::<Vec<_>>(),
        ["model.embed_tokens.weight"]
    );
    let t = m.tensor("model.embed_tokens.weight").unwrap();
    assert_eq!(t.dtype, bitnet_hf::DType::BF16);
    assert_eq!(t.shape, vec![32, 8]);
    assert_eq!(t.data.len(), 512);
    assert_eq!(
        load_float(&m, "model.embed_tokens.weight", &[32, 8]).unwrap(),
        vec![0.25; 256]
    );
    assert!(!m.contains("lm_head.weight"));
}

fn write_sharded(dir: &Path, weight_map: serde_json::Value) {
    write_config(dir, &config(autobit_offline()));
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn sharded_index_spans_files() {
    let dir = tempfile::tempdir().unwrap();
    let codes = ternary_codes(OUT * IN, 17);
    write_safetensors(
        &dir.path().join("model-00001-of-00002.safetensors"),
        &[
            entry(
                &format!("{PREFIX}.weight"),
                Dtype::U8,
                &[OUT / 4, IN],
                reference_pack(&codes, OUT, IN),
            ),
            entry(
                "model.norm.weight",
                Dtype::F32,
                &[IN],
                f32_bytes(&[2.0; IN]),
            ),
        ],
    );
    write_safetensors(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &[entry(
            &format!("{PREFIX}.weight_scale"),
            Dtype::BF16,
            &[1],
            bf16_bytes(&[1.75]),
        )],
    );
    write_sharded(
        dir.path(),
        json!({
            format!("{PREFIX}.weight"): "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00001-of-00002.safetensors",
            format!("{PREFIX}.weight_scale"): "model-00002-of-00002.safetensors",
        }),
    );
    let m = HfModel::open(dir.path()).unwrap();
    assert_eq!(m.shard_paths().count(), 2);
    assert_eq!(m.tensor_names().count(), 3);
    let w = load_linear(&m, PREFIX, OUT, IN).unwrap();
    assert_eq!((w.codes, w.scale), (codes, 1.75));
    assert_eq!(
        load_float(&m, "model.norm.weight", &[IN]).unwrap(),
        vec![2.0; IN]
    );

    // model.safetensors wins over the index when both exist (transformers' order).
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[entry("only.single", Dtype::F32, &[1], f32_bytes(&[1.0]))],
    );
    let m = HfModel::open(dir.path()).unwrap();
    assert_eq!(m.tensor_names().collect::<Vec<_>>(), ["only.single"]);
}

#[test]
fn sharded_index_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(
        &dir.path().join("a.safetensors"),
        &[entry("x", Dtype::F32, &[1], f32_bytes(&[1.0]))],
    );

    write_sharded(
        dir.path(),
        json!({"x": "a.safetensors", "y": "b.safetensors"}),
    );
    let e = open_err(dir.path());
    assert!(matches!(e, HfError::MissingShard { .. }), "{e}");
    assert!(
        e.to_string().contains("b.safetensors") && e.to_string().contains("y"),
        "{e}"
    );

    write_sharded(
        dir.path(),
        json!({"x": "a.safetensors", "z": "a.safetensors"}),
    );
    let e = open_err(dir.path());
    assert!(
        matches!(e, HfError::TensorNotInShard { ref tensor, .. } if tensor == "z"),
        "{e}"
    );

    for escape in [
        "../a.safetensors",
        "/etc/a.safetensors",
        "sub/../../a.safetensors",
        "..\\a.safetensors",
        "",
    ] {
        write_sharded(dir.path(), json!({"x": escape}));
        let e = open_err(dir.path());
        assert!(matches!(e, HfError::ShardEscape { .. }), "{escape}: {e}");
        assert!(e.to_string().contains("index.json"), "{e}");
    }

    write_sharded(dir.path(), json!({}));
    assert!(
        open_err(dir.path())
            .to_string()
            .contains("weight_map is empty")
    );
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        "{\"metadata\": {}}",
    )
    .unwrap();
    assert!(open_err(dir.path()).to_string().contains("weight_map"));
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        "{\"weight_map\": {\"x\": 3}}",
    )
    .unwrap();
    assert!(matches!(open_err(dir.path()), HfError::Index { .. }));
}

#[test]
fn broken_safetensors_files() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(None));
    let good = safetensors_bytes(&[entry(
        "x",
        Dtype::F32,
        &[4],
        f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
    )]);
    let path = dir.path().join("model.safetensors");

    // Truncated inside the header.
    std::fs::write(&path, &good[..20]).unwrap();
    let e = open_err(dir.path());
    assert!(
        matches!(e, HfError::HeaderLength { file_len: 20, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // Shorter than the 8-byte length prefix.
    std::fs::write(&path, &good[..3]).unwrap();
    assert!(matches!(
        open_err(dir.path()),
        HfError::HeaderLength { file_len: 3, .. }
    ));
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        open_err(dir.path()),
        HfError::HeaderLength { file_len: 0, .. }
    ));

    // Header length far larger than the file (would be a huge allocation if trusted).
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&path, &huge).unwrap();
    let e = open_err(dir.path());
    assert!(
        matches!(e, HfError::HeaderLength { claimed, .. } if claimed == 1 << 40),
        "{e}"
    );
    assert!(e.to_string().contains("1099511627776"), "{e}");

    // Truncated data section: the header is intact but does not cover the file.
    std::fs::write(&path, &good[..good.len() - 2]).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, HfError::Safetensors { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // Garbage JSON in the header.
    let mut bad_json = good.clone();
    bad_json[8] = b'!';
    std::fs::write(&path, &bad_json).unwrap();
    assert!(matches!(open_err(dir.path()), HfError::Safetensors { .. }));

    // Offsets inconsistent with dtype x shape.
    let header = br#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
    let mut lying = (header.len() as u64).to_le_bytes().to_vec();
    lying.extend_from_slice(header);
    lying.extend_from_slice(&[0u8; 8]);
    std::fs::write(&path, &lying).unwrap();
    assert!(matches!(open_err(dir.path()), HfError::Safetensors { .. }));
}

#[test]
fn directory_level_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_err(dir.path()).to_string();
    assert!(e.contains("no config.json"), "{e}");

    write_config(dir.path(), &config(None));
    std::fs::write(dir.path().join("ggml-model-i2_s.gguf"), b"GGUF").unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, HfError::NoWeights { .. }));
    assert!(e.to_string().contains("ggml-model-i2_s.gguf"), "{e}");

    let mut c = config(None);
    c.as_object_mut().unwrap().remove("intermediate_size");
    write_config(dir.path(), &c);
    let e = open_err(dir.path()).to_string();
    assert!(
        e.contains("intermediate_size") && e.contains("config.json"),
        "{e}"
    );

    let mut c = config(None);
    c["num_hidden_layers"] = json!("thirty");
    write_config(dir.path(), &c);
    let e = open_err(dir.path()).to_string();
    assert!(e.contains("num_hidden_layers"), "{e}");

    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(open_err(dir.path()), HfError::ConfigParse { .. }));
}
