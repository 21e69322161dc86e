//! LLaMA-3 conformance: ids identical to HF `tokenizers` (cross-checked against Meta's tiktoken
//! when the reference was generated) on a varied corpus — whitespace runs, digits, contractions,
//! accents, CJK, emoji, special tokens — through both loading paths: Meta's tiktoken
//! `tokenizer.model` directly, and the same vocabulary converted to GGUF metadata.
//!
//! The tokenizer file is under the Llama 3 Community License and is not in the repository:
//! `fixtures/tokenizer-llama3/fetch.sh DIR` downloads it and the CI script exports
//! `BITNET_LLAMA3_TOKENIZER`. The expected ids come from `fixtures/tokenizer-llama3/generate.py`.

use std::path::{Path, PathBuf};

use bitnet_tokenizer::{Tokenizer, llama3_special_tokens, tiktoken_to_gguf_vocab};
use serde_json::Value;

const ENV: &str = "BITNET_LLAMA3_TOKENIZER";

fn tokenizer_path() -> Option<PathBuf> {
    match std::env::var_os(ENV) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!(
                "skipped: set {ENV} (see fixtures/tokenizer-llama3/fetch.sh) to run the LLaMA-3 \
                 conformance test"
            );
            None
        }
    }
}

fn expected() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer-llama3/expected.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn ids(case: &Value, key: &str) -> Vec<u32> {
    case[key]
        .as_array()
        .unwrap_or_else(|| panic!("case {:?} lacks {key}", case["text"]))
        .iter()
        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()).expect("id"))
        .collect()
}

fn stream(t: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
    let mut dec = t.stream_decoder(skip_special);
    let mut out = String::new();
    for &id in ids {
        if let Some(piece) = dec.push(id).expect("known id") {
            out.push_str(&piece);
        }
    }
    if let Some(rest) = dec.finish() {
        out.push_str(&rest);
    }
    out
}

fn check(name: &str, t: &Tokenizer, exp: &Value) {
    let n = |k: &str| exp[k].as_u64().and_then(|v| u32::try_from(v).ok());
    assert_eq!(
        t.vocab_size() as u64,
        exp["vocab_size"].as_u64().unwrap_or(0),
        "{name}"
    );
    assert_eq!(t.bos_id(), n("bos_id"), "{name}");
    assert_eq!(t.eos_id(), n("eos_id"), "{name}");
    assert_eq!(t.eot_id(), n("eot_id"), "{name}");
    assert!(t.add_bos_default(), "{name}");
    for id in [n("eos_id"), n("eot_id")].into_iter().flatten() {
        assert!(t.is_eog(id), "{name}: {id} must end generation");
    }

    // Meta's own test vector (llama_models/llama3/tests/api/test_tokenizer.py).
    let mv = &exp["meta_test_vector"];
    let mut got = t
        .encode(mv["text"].as_str().unwrap_or(""), true, true)
        .expect("encode");
    got.extend(t.eos_id());
    assert_eq!(got, ids(mv, "ids_bos_eos"), "{name}: Meta test vector");

    let cases = exp["cases"].as_array().expect("cases");
    assert!(cases.len() >= 60, "corpus too small");
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        for (key, add, parse) in [
            ("ids_bos_special", true, true),
            ("ids_bos_plain", true, false),
            ("ids_special", false, true),
            ("ids_plain", false, false),
        ] {
            let want = ids(case, key);
            let got = t.encode(text, add, parse).expect("encode");
            if got != want {
                failures.push(format!("{text:?} {key}: got {got:?}, want {want:?}"));
            }
        }
        // Round trips: plain ids hold no control tokens, so both decode modes give the text.
        let plain = ids(case, "ids_plain");
        assert_eq!(t.decode(&plain, false).expect("decode"), text, "{name}");
        assert_eq!(t.decode(&plain, true).expect("decode"), text, "{name}");
        assert_eq!(stream(t, &plain, true), text, "{name}: stream");
        let with_bos = ids(case, "ids_bos_special");
        let full = t.decode(&with_bos, false).expect("decode");
        assert_eq!(full, format!("<|begin_of_text|>{text}"), "{name}");
        assert_eq!(stream(t, &with_bos, false), full, "{name}: stream");
    }
    assert!(
        failures.is_empty(),
        "{name}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn llama3_ids_match_hf_tokenizers() {
    let Some(path) = tokenizer_path() else {
        return;
    };
    let exp = expected();
    let specials = llama3_special_tokens();

    let tik = Tokenizer::from_tiktoken(&path, &specials).expect("load tiktoken");
    check("from_tiktoken", &tik, &exp);

    let vocab = tiktoken_to_gguf_vocab(&path, &specials).expect("convert to GGUF vocab");
    assert_eq!(vocab.model, "gpt2");
    assert_eq!(vocab.pre.as_deref(), Some("llama-bpe"));
    assert_eq!(vocab.tokens.len(), 128_256);
    // The first merge of LLaMA-3 is "Ġ Ġ" (two spaces, rank 256).
    assert_eq!(vocab.merges.first().map(String::as_str), Some("Ġ Ġ"));
    let gguf = Tokenizer::from_gguf_vocab(&vocab).expect("load GGUF vocab");
    check("from_gguf_vocab", &gguf, &exp);

    // Pieces as llama.cpp shows them.
    assert_eq!(gguf.token_piece(2028), Some("This"));
    assert_eq!(gguf.token_piece(374), Some("Ġis"));
    assert_eq!(gguf.token_bytes(374).as_deref(), Some(&b" is"[..]));
    assert_eq!(gguf.token_piece(128009), Some("<|eot_id|>"));
    assert_eq!(gguf.token_id("<|start_header_id|>"), Some(128006));
}
