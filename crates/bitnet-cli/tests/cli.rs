//! The `bitnet` binary end to end, against the reference fixtures and against bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(rel: &str) -> String {
    root()
        .join("fixtures/models")
        .join(rel)
        .display()
        .to_string()
}

fn bitnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(args)
        .env_remove("BITNET_MODEL")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run bitnet")
}

fn ok(args: &[&str]) -> String {
    let out = bitnet(args);
    assert!(
        out.status.success(),
        "bitnet {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Fails with a one-line `error:` message, no panic.
fn fails(args: &[&str]) -> String {
    let out = bitnet(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "bitnet {args:?} should fail");
    assert!(err.contains("error:"), "no error line for {args:?}: {err}");
    assert!(!err.contains("panicked"), "bitnet {args:?} panicked: {err}");
    err
}

fn reference(model: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(
        root()
            .join("fixtures/models")
            .join(model)
            .join("reference.json"),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn greedy_json_matches_the_reference_in_every_format() {
    for model in ["tied-gqa2", "untied-gqa4", "hd128", "odd-mha"] {
        let r = reference(model);
        let want = ids(&r["greedy_ids"]);
        let dir = root().join("fixtures/models").join(model);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".gguf") || name.starts_with("hf-")) {
                continue;
            }
            let path = dir.join(&name).display().to_string();
            // The reference's own f32 KV cache: a 16-bit one moves tied-gqa2 off its tokens.
            let out = ok(&[
                "generate",
                "--model",
                &path,
                "--prompt",
                "The quick brown fox",
                "--temperature",
                "0",
                "-n",
                &want.len().to_string(),
                "--format",
                "json",
                "--kv",
                "f32",
            ]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(ids(&v["tokens"]), want, "{model}/{name}");
            assert_eq!(
                ids(&v["prompt_tokens"]),
                ids(&r["prompt_ids"]),
                "{model}/{name}"
            );
            assert_eq!(v["finish_reason"], "length");
        }
    }
}

#[test]
fn logits_are_the_reference_logits() {
    let r = reference("untied-gqa4");
    let st_bytes =
        std::fs::read(root().join("fixtures/models/untied-gqa4/reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let t = st.tensor("logits").unwrap();
    let vocab = t.shape()[1];
    let all: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let prompt = ids(&r["prompt_ids"]);
    let prompt_arg = prompt
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = ok(&[
        "generate",
        "--model",
        &fixture("untied-gqa4/model-tq1_0.gguf"),
        "--prompt-tokens",
        &prompt_arg,
        "--temperature",
        "0",
        "-n",
        "4",
        "--format",
        "json",
        "--logits",
        "--kv",
        "f32",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let logits = v["logits"].as_array().unwrap();
    assert_eq!(logits.len(), 4);
    for (step, row) in logits.iter().enumerate() {
        let row: Vec<f64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(row.len(), vocab);
        let base = (prompt.len() - 1 + step) * vocab;
        let d = row
            .iter()
            .zip(&all[base..base + vocab])
            .map(|(a, &b)| (a - b as f64).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-4, "step {step}: logits differ by {d}");
    }
}

#[test]
fn prompt_tokens_need_no_tokenizer_and_add_no_bos() {
    let out = ok(&[
        "generate",
        "--model",
        &fixture("hd128/model-i2_s.gguf"),
        "--prompt-tokens",
        "5,6,7",
        "-n",
        "3",
        "--temperature",
        "0",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ids(&v["prompt_tokens"]), [5, 6, 7]);
    assert_eq!(v["tokens"].as_array().unwrap().len(), 3);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let run = |seed: &str| {
        ok(&[
            "generate",
            "--model",
            &fixture("tied-gqa2/model-tq2_0.gguf"),
            "--prompt",
            "The quick",
            "-n",
            "16",
            "--temperature",
            "1.0",
            "--seed",
            seed,
            "--format",
            "json",
        ])
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

#[test]
fn text_mode_streams_the_same_text_as_json() {
    let args = |fmt: &'static str| -> Vec<String> {
        [
            "generate",
            "--model",
            &fixture("odd-mha/hf-packed"),
            "--prompt",
            "Hello world",
            "-n",
            "10",
            "--temperature",
            "0",
            "--format",
            fmt,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let j = args("json");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&j.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    let t = args("text");
    let text = ok(&t.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        text.strip_suffix('\n').unwrap(),
        v["text"].as_str().unwrap()
    );
}

#[test]
fn context_overflow_is_a_clear_error() {
    let err = fails(&[
        "generate",
        "--model",
        &fixture("tied-gqa2/model-i2_s.gguf"),
        "--prompt",
        "The quick brown fox",
        "--ctx",
        "4",
    ]);
    assert!(err.contains("context"), "{err}");
    // Generation that reaches the end of the context stops with finish_reason "length".
    let out = ok(&[
        "generate",
        "--model",
        &fixture("tied-gqa2/model-i2_s.gguf"),
        "--prompt-tokens",
        "1,2,3",
        "--ctx",
        "6",
        "-n",
        "100",
        "--temperature",
        "0",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(v["tokens"].as_array().unwrap().len(), 4);
}

#[test]
fn inspect_lists_architecture_tensors_and_tokenizer() {
    let out = ok(&["inspect", &fixture("tied-gqa2/model-i2_s.gguf")]);
    assert!(out.contains("bitnet-b1.58"), "{out}");
    assert!(
        out.contains("blk.0.attn_q.weight") && out.contains(" I2_S "),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "inspect",
        &fixture("untied-gqa4/hf-master"),
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(v["format"], "huggingface");
    assert_eq!(v["config"]["n_kv_heads"], 2);
    assert_eq!(v["config"]["tied_embeddings"], false);
    assert!(
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "lm_head.weight")
    );
}

fn tokenizer_cases() -> serde_json::Value {
    let text =
        std::fs::read_to_string(root().join("fixtures/tokenizer/fixture_tokenizer_cases.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn tokenize_matches_hf_tokenizers_and_works_on_a_vocab_only_gguf() {
    // A vocabulary-only GGUF: the fixture's metadata and no tensors.
    let src = bitnet_gguf::GgufFile::open(fixture("tied-gqa2/model-tq2_0.gguf")).unwrap();
    let mut w = bitnet_gguf::GgufWriter::new();
    for (k, v) in src.metadata() {
        if k.starts_with("tokenizer.") || k == "general.architecture" {
            w.add_metadata(k.clone(), v.clone()).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let vocab = dir.path().join("vocab.gguf");
    w.write_to(&vocab).unwrap();
    let vocab = vocab.display().to_string();

    let cases = tokenizer_cases();
    let cases = cases["cases"].as_array().expect("cases array");
    let mut checked = 0;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        if text.is_empty() {
            continue;
        }
        for (model, no_bos, key) in [
            (vocab.as_str(), true, "ids"),
            (vocab.as_str(), false, "ids_with_bos"),
        ] {
            let Some(want) = case.get(key) else { continue };
            let mut args = vec![
                "tokenize", "--model", model, "--prompt", text, "--format", "json",
            ];
            if no_bos {
                args.push("--no-bos");
            }
            let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
            assert_eq!(v["ids"], *want, "{key} of {text:?}");
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} cases checked");
    // The HF directory's tokenizer.json gives the same ids.
    let a = ok(&[
        "tokenize",
        "--model",
        &vocab,
        "--prompt",
        "The quick brown fox",
        "--format",
        "json",
    ]);
    let b = ok(&[
        "tokenize",
        "--model",
        &fixture("tied-gqa2/hf-packed"),
        "--prompt",
        "The quick brown fox",
        "--format",
        "json",
    ]);
    assert_eq!(a, b);
    let r = reference("tied-gqa2");
    let v: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(ids(&v["ids"]), ids(&r["prompt_ids"]));
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("tied-gqa2/model-i2_s.gguf")).unwrap();
    for cut in [0usize, 3, 4, 20, 100, 5000, good.len() / 2, good.len() - 1] {
        let p = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &good[..cut]).unwrap();
        fails(&[
            "generate",
            "--model",
            &p.display().to_string(),
            "--prompt-tokens",
            "1",
        ]);
    }
    let p = dir.path().join("junk.bin");
    std::fs::write(&p, b"not a model at all").unwrap();
    let err = fails(&["inspect", &p.display().to_string()]);
    assert!(err.contains("GGUF"), "{err}");
    let err = fails(&[
        "generate",
        "--model",
        &fixture("tied-gqa2/model-i2_s.gguf"),
        "--prompt-tokens",
        "99999",
    ]);
    assert!(err.contains("99999"), "{err}");
    let err = fails(&[
        "generate",
        "--model",
        "/nonexistent/model.gguf",
        "--prompt",
        "x",
    ]);
    assert!(
        err.contains("nonexistent") || err.contains("owner/name"),
        "{err}"
    );
    let err = fails(&[
        "generate",
        "--model",
        &fixture("tied-gqa2/model-i2_s.gguf"),
        "--prompt",
        "x",
        "--device",
        "tpu",
    ]);
    assert!(err.contains("tpu"), "{err}");
}

#[test]
fn hub_ids_resolve_from_a_hand_made_cache_offline() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--someone--tiny-bitnet");
    let snap = repo.join("snapshots/0123456789abcdef0123456789abcdef01234567");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(
        repo.join("refs/main"),
        "0123456789abcdef0123456789abcdef01234567",
    )
    .unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(
            root().join("fixtures/models/tied-gqa2/hf-packed").join(f),
            snap.join(f),
        )
        .unwrap();
    }
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_bitnet"))
            .args(args)
            .env("HF_HUB_CACHE", cache.path())
            .env_remove("BITNET_MODEL")
            .output()
            .unwrap()
    };
    let out = run(&[
        "generate",
        "--model",
        "someone/tiny-bitnet",
        "--offline",
        "--prompt",
        "The quick brown fox",
        "-n",
        "12",
        "--temperature",
        "0",
        "--format",
        "json",
        "--kv",
        "f32",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        ids(&v["tokens"]),
        ids(&reference("tied-gqa2")["greedy_ids"])
    );
    let out = run(&["pull", "someone/tiny-bitnet", "--offline"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("snapshots"));
    // A repo that is not cached: the error says what is missing.
    let out = run(&["pull", "someone/absent", "--offline"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("someone/absent"),
        "{err}"
    );
}

#[test]
fn chat_keeps_history_and_answers_each_turn() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args([
            "chat",
            "--model",
            &fixture("tied-gqa2/model-tq2_0.gguf"),
            "--temperature",
            "0",
            "-n",
            "5",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nhow are you\n\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("> ").count(),
        3,
        "two turns, then the empty line quits: {stderr}"
    );
    assert!(!out.stdout.is_empty());
}

#[test]
fn stop_strings_cut_the_output_before_them() {
    let model = fixture("hd128/model-tq2_0.gguf");
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "generate",
            "--model",
            &model,
            "--prompt",
            "The quick brown fox",
            "-n",
            "12",
            "--temperature",
            "0",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&ok(&args)).unwrap()
    };
    let full = run(&[]);
    let text = full["text"].as_str().unwrap().to_string();
    // A stop string taken from the middle of the greedy text (on a character boundary).
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "{text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let before = &text[..text.find(&stop).unwrap()];
    let cut = run(&["--stop", &stop]);
    assert_eq!(cut["text"].as_str().unwrap(), before);
    assert_eq!(cut["finish_reason"], "stop");
    assert!(cut["tokens"].as_array().unwrap().len() < 12);
}

#[test]
fn the_bundled_default_model_runs_without_model() {
    let args = [
        "generate",
        "--prompt",
        "ROMEO:",
        "-n",
        "12",
        "--temperature",
        "0",
        "--format",
        "json",
    ];
    let bundled: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let file = root()
        .join("models/default/model.gguf")
        .display()
        .to_string();
    let mut with_file = args.to_vec();
    with_file.extend(["--model", &file]);
    let from_file: serde_json::Value = serde_json::from_str(&ok(&with_file)).unwrap();
    assert_eq!(bundled["tokens"], from_file["tokens"]);
    assert_eq!(bundled["tokens"].as_array().unwrap().len(), 12);
    // BOS + the tokenizer's pieces of "ROMEO:".
    assert!(bundled["prompt_tokens"].as_array().unwrap().len() >= 2);
    let tok = ok(&["tokenize", "--prompt", "ROMEO:", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&tok).unwrap();
    assert_eq!(v["ids"], bundled["prompt_tokens"]);
}

/// `generate` of two tokens after a three-token prompt: the smallest run of `model`.
fn two_tokens_of(model: &str) -> [&str; 7] {
    [
        "generate",
        "-m",
        model,
        "--prompt-tokens",
        "1,2,3",
        "-n",
        "2",
    ]
}

/// Device choice: `auto` says in one stderr line where the model runs; `cuda` without a usable
/// GPU is a clear error, never a panic. (On a machine with a GPU the second half checks that the
/// model runs there instead.)
#[test]
fn device_selection_is_announced_and_cuda_without_gpu_is_a_clear_error() {
    let model = fixture("tied-gqa2/model-i2_s.gguf");
    let args = two_tokens_of(&model);
    let out = bitnet(&[&args[..], &["--temperature", "0"]].concat());
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("device: ")).collect();
    assert_eq!(lines.len(), 1, "one device line: {err}");
    if lines[0].starts_with("device: cpu") {
        assert!(lines[0].contains("no GPU used"), "{}", lines[0]);
        let err = fails(&[&args[..], &["--device", "cuda"]].concat());
        assert!(err.contains("cuda:0"), "{err}");
        let err = fails(&[&args[..], &["--device", "cuda:x"]].concat());
        assert!(err.contains("unknown device"), "{err}");
    } else {
        assert!(lines[0].starts_with("device: cuda:0"), "{}", lines[0]);
    }
    // An explicit CPU choice runs quietly.
    let out = bitnet(&[&args[..], &["--device", "cpu"]].concat());
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("device: "));
}

/// `--kv q8` runs on the CPU; with `--device cuda` it is not refused for its type (without a
/// GPU the error names the missing GPU, as for f16).
#[test]
fn kv_q8_runs_and_is_not_refused_for_a_gpu() {
    let model = fixture("tied-gqa2/model-i2_s.gguf");
    let args = two_tokens_of(&model);
    let run = |kv: &str| bitnet(&[&args[..], &["--kv", kv, "--device", "cuda"]].concat());
    let (q8, f16) = (run("q8"), run("f16"));
    assert_eq!(q8.status.success(), f16.status.success());
    if !q8.status.success() {
        let err = String::from_utf8_lossy(&q8.stderr);
        assert_eq!(err, String::from_utf8_lossy(&f16.stderr));
        assert!(!err.contains("q8") && !err.contains("panicked"), "{err}");
    }
    ok(&[&args[..], &["--kv", "q8", "--device", "cpu"]].concat());
    let err = fails(&[&args[..], &["--kv", "bf16"]].concat());
    assert!(err.contains("f32, f16, q8"), "{err}");
}

/// The bundled (trained) model greedy-decodes the same tokens with the f32 and the f16 cache
/// (and, on this prompt, with q8 too).
#[test]
fn the_bundled_model_decodes_the_same_tokens_with_f32_and_f16_caches() {
    let tokens = |kv: &str| {
        let out = ok(&[
            "generate",
            "--prompt",
            "ROMEO:",
            "-n",
            "24",
            "--temperature",
            "0",
            "--format",
            "json",
            "--device",
            "cpu",
            "--kv",
            kv,
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        ids(&v["tokens"])
    };
    let exact = tokens("f32");
    assert_eq!(exact.len(), 24);
    assert_eq!(tokens("f16"), exact, "f16");
    assert_eq!(tokens("q8"), exact, "q8");
}
