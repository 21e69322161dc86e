//! GGUF files whose output head (or tied token embedding) is Q4_0 or Q4_K: they load, the head
//! computes from its blocks what its decoded values give (within the int8 activation rounding),
//! and malformed heads are refused with the tensor's name.

use std::path::Path;
use std::sync::Arc;

use bitnet_core::scalar::ScalarKernel;
use bitnet_gguf::quants::dot::{QuantizedActs, error_bound};
use bitnet_gguf::{
    GgufFile, GgufWriter, TensorType, decode_f32, encode_f32, encode_q4_0, encode_q4_k,
};
use bitnet_model::{Logits, Model, Scratch, load_gguf};

fn fixture(model: &str) -> GgufFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(model)
        .join("model-f16.gguf");
    GgufFile::open(path).unwrap()
}

/// `src` with tensor `name` replaced by `dims`, `type_id` and `data` (an error when the writer
/// refuses that tensor).
fn try_replace(
    src: &GgufFile,
    name: &str,
    dims: &[u64],
    type_id: u32,
    data: &[u8],
) -> bitnet_gguf::Result<Vec<u8>> {
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        w.add_metadata(k.clone(), v.clone()).unwrap();
    }
    for t in src.tensors() {
        if t.name == name {
            w.add_tensor(name, dims.to_vec(), type_id, data)?;
        } else {
            let bytes = src.tensor_data(t).unwrap();
            w.add_tensor(t.name.clone(), t.dims.clone(), t.type_id, bytes)
                .unwrap();
        }
    }
    w.to_bytes()
}

fn replace(src: &GgufFile, name: &str, dims: &[u64], type_id: u32, data: &[u8]) -> Vec<u8> {
    try_replace(src, name, dims, type_id, data).unwrap()
}

fn load(bytes: Vec<u8>) -> Result<Model, bitnet_model::ModelError> {
    load_gguf(Arc::new(GgufFile::from_bytes(bytes)?), &ScalarKernel)
}

/// The error a malformed file is refused with.
fn load_err(bytes: Vec<u8>) -> String {
    match load(bytes) {
        Ok(_) => panic!("the file loaded"),
        Err(e) => {
            eprintln!("refused: {e}");
            e.to_string()
        }
    }
}

fn encode(kind: TensorType, values: &[f32]) -> Vec<u8> {
    match kind {
        TensorType::Q4_0 => encode_q4_0(values).unwrap(),
        _ => encode_q4_k(values).unwrap(),
    }
}

/// The fixture with `name` stored as `kind`, and with it stored as F32 holding the decoded
/// values (the same matrix, computed in f32).
fn quantized_and_decoded(kind: TensorType, model: &str, name: &str) -> (Model, Model) {
    let src = fixture(model);
    let t = src.tensor(name).unwrap();
    let values = src.decode_f32(t).unwrap();
    let q4 = encode(kind, &values);
    let decoded = decode_f32(kind, &q4, values.len()).unwrap();
    let a = load(replace(&src, name, &t.dims, kind.id(), &q4)).unwrap();
    let b = load(replace(
        &src,
        name,
        &t.dims,
        TensorType::F32.id(),
        &encode_f32(&decoded),
    ))
    .unwrap();
    (a, b)
}

/// Pseudo-random hidden states with an outlier channel.
fn hidden(m: usize, cols: usize) -> Vec<f32> {
    (0..m * cols)
        .map(|i| {
            let v = ((i * 7919 % 1009) as f32 / 504.5 - 1.0) * 2.0;
            if i % cols == 17 { v * 20.0 } else { v }
        })
        .collect()
}

#[test]
fn four_bit_heads_and_embeddings_load_and_match_their_decoded_values() {
    for (kind, model, name) in [
        (TensorType::Q4_0, "untied-gqa4", "output.weight"),
        (TensorType::Q4_0, "tied-gqa2", "token_embd.weight"),
        (TensorType::Q4_K, "untied-gqa4", "output.weight"),
        (TensorType::Q4_K, "tied-gqa2", "token_embd.weight"),
    ] {
        let (q4, f32_model) = quantized_and_decoded(kind, model, name);
        assert_eq!(q4.head_type(), kind.name(), "{model}");
        let (head, exact) = (q4.output_head(), f32_model.output_head());
        let (rows, cols) = (head.rows(), head.cols());
        // Rows read back exactly; an embedding lookup gives the decoded values.
        let (mut a, mut b) = (vec![0.0f32; cols], vec![0.0f32; cols]);
        for r in [0, 1, rows / 2, rows - 1] {
            head.row_into(r, &mut a);
            exact.row_into(r, &mut b);
            assert_eq!(a, b, "{model} row {r}");
        }
        // Products from the blocks stay within the activation-rounding bound.
        let m = 3;
        let xs = hidden(m, cols);
        let (mut got, mut want) = (vec![0.0f32; rows * m], vec![0.0f32; rows * m]);
        head.matmul_rows(&xs, m, 0, &mut got);
        exact.matmul_rows(&xs, m, 0, &mut want);
        let mut acts = QuantizedActs::new();
        acts.quantize(&xs, m).unwrap();
        for r in 0..rows {
            exact.row_into(r, &mut b);
            for j in 0..m {
                let mag: f32 = b
                    .iter()
                    .zip(&xs[j * cols..])
                    .map(|(w, x)| (w * x).abs())
                    .sum();
                let bound = error_bound(&b, &acts, j) + 1e-5 * f64::from(mag);
                let err = f64::from((got[r * m + j] - want[r * m + j]).abs());
                assert!(err <= bound, "{model} ({r}, {j}): {err} > {bound}");
            }
        }
        // A whole forward pass runs and stays close to the f32 head's.
        let tokens = [1u32, 5, 9, 200, 31];
        let mut logits = [Vec::new(), Vec::new()];
        for (model, out) in [&q4, &f32_model].into_iter().zip(&mut logits) {
            let mut cache = model.new_cache(8);
            model
                .forward(
                    &tokens,
                    &mut cache,
                    Logits::All,
                    out,
                    &mut Scratch::default(),
                    None,
                )
                .unwrap();
        }
        let scale = logits[1].iter().fold(0.0f32, |s, v| s.max(v.abs()));
        let diff = logits[0]
            .iter()
            .zip(&logits[1])
            .fold(0.0f32, |s, (a, b)| s.max((a - b).abs()));
        eprintln!("{kind} {model}: max |logit difference| {diff:.3e}, max |logit| {scale:.3}");
        assert!(
            diff <= 0.02 * scale,
            "{model}: {diff} vs max |logit| {scale}"
        );
    }
}

#[test]
fn malformed_four_bit_heads_are_refused_with_the_tensor_name() {
    for kind in [TensorType::Q4_0, TensorType::Q4_K] {
        malformed_head_is_refused(kind);
    }
}

fn malformed_head_is_refused(kind: TensorType) {
    let src = fixture("untied-gqa4");
    let t = src.tensor("output.weight").unwrap();
    let (cols, rows) = (t.dims[0], t.dims[1]);
    let values = src.decode_f32(t).unwrap();
    let q4 = encode(kind, &values);
    // One row short: the shape no longer matches the vocabulary.
    let short = kind.n_bytes(cols * (rows - 1)).unwrap() as usize;
    let err = load_err(replace(
        &src,
        "output.weight",
        &[cols, rows - 1],
        kind.id(),
        &q4[..short],
    ));
    assert!(
        err.contains("output.weight") && err.contains("dims"),
        "{err}"
    );
    // Rows and columns swapped (same element count): refused, not misread (for Q4_K, whose
    // 384-value rows are not whole super-blocks, already by the writer; the reader applies the
    // same check, see bitnet-gguf's tests).
    let err = match try_replace(&src, "output.weight", &[rows, cols], kind.id(), &q4) {
        Ok(bytes) => load_err(bytes),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("output.weight"), "{err}");
    // Truncated data: the file ends inside the head.
    let mut bytes = replace(&src, "output.weight", &t.dims, kind.id(), &q4);
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    let head = f.tensor("output.weight").unwrap();
    let end = (f.data_offset() + head.offset + head.n_bytes) as usize;
    bytes.truncate(end - 1);
    let err = load_err(bytes);
    assert!(err.contains("output.weight"), "{err}");
}
