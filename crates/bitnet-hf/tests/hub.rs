//! `hub::resolve`: offline lookups in a hand-made Hugging Face cache, the online path against a
//! tiny local HTTP server that speaks the hub's protocol, fast failure when the hub is
//! unreachable, and (ignored) the real hub.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bitnet_hf::hub::{HubOptions, resolve};
use bitnet_hf::{HfError, HfModel};
use common::*;
use safetensors::Dtype;

const HASH: &str = "0123456789abcdef0123456789abcdef01234567";

fn offline(cache: &Path) -> HubOptions {
    HubOptions {
        offline: true,
        cache_dir: Some(cache.to_path_buf()),
        ..HubOptions::default()
    }
}

fn tiny_weights() -> Vec<u8> {
    safetensors_bytes(&[entry(
        "model.norm.weight",
        Dtype::F32,
        &[8],
        f32_bytes(&[1.0; 8]),
    )])
}

/// Builds `<cache>/models--o--n/{refs/main, snapshots/HASH/<files>}`.
fn snapshot(cache: &Path, repo_folder: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let repo = cache.join(repo_folder);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), format!("{HASH}\n")).unwrap();
    let snap = repo.join("snapshots").join(HASH);
    std::fs::create_dir_all(&snap).unwrap();
    for (name, bytes) in files {
        std::fs::write(snap.join(name), bytes).unwrap();
    }
    snap
}

fn config_bytes() -> Vec<u8> {
    serde_json::to_vec(&config(autobit_offline())).unwrap()
}

#[test]
fn offline_model_dir_from_cache() {
    let cache = tempfile::tempdir().unwrap();
    let snap = snapshot(
        cache.path(),
        "models--microsoft--bitnet-b1.58-2B-4T",
        &[
            ("config.json", config_bytes()),
            ("model.safetensors", tiny_weights()),
            ("tokenizer.json", b"{}".to_vec()),
        ],
    );
    let got = resolve("microsoft/bitnet-b1.58-2B-4T", &offline(cache.path())).unwrap();
    assert_eq!(got, snap);
    let m = HfModel::open(&got).unwrap();
    assert!(m.tokenizer_json_path().is_some());

    // A commit hash as the revision names the snapshot directly, with no ref needed.
    std::fs::remove_file(
        cache
            .path()
            .join("models--microsoft--bitnet-b1.58-2B-4T/refs/main"),
    )
    .unwrap();
    let opts = HubOptions {
        revision: Some(HASH.to_string()),
        ..offline(cache.path())
    };
    assert_eq!(
        resolve("microsoft/bitnet-b1.58-2B-4T", &opts).unwrap(),
        snap
    );

    // Without the ref, `main` cannot be resolved: the error names the ref file.
    let e = resolve("microsoft/bitnet-b1.58-2B-4T", &offline(cache.path())).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, HfError::OfflineMissing { .. }));
    assert!(
        msg.contains("refs")
            && msg.contains("main")
            && msg.contains("microsoft/bitnet-b1.58-2B-4T"),
        "{msg}"
    );
}

#[test]
fn offline_missing_files_are_listed() {
    let cache = tempfile::tempdir().unwrap();
    let cache_str = cache.path().display().to_string();

    // Repo never downloaded.
    let msg = resolve("o/n", &offline(cache.path()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("o/n") && msg.contains(&cache_str) && msg.contains("models--o--n"),
        "{msg}"
    );

    // Config but no weights.
    let snap = snapshot(
        cache.path(),
        "models--o--n",
        &[("config.json", config_bytes())],
    );
    match resolve("o/n", &offline(cache.path())).unwrap_err() {
        HfError::OfflineMissing {
            repo,
            revision,
            cache_dir,
            missing,
            looked_in,
        } => {
            assert_eq!(repo, "o/n");
            assert_eq!(revision, "main");
            assert_eq!(cache_dir, cache.path());
            assert_eq!(
                missing,
                vec!["model.safetensors (or model.safetensors.index.json)".to_string()]
            );
            assert_eq!(looked_in, Some(snap.clone()));
        }
        e => panic!("unexpected {e}"),
    }

    // Sharded, one shard absent: exactly that shard is reported.
    let index = serde_json::json!({"weight_map": {
        "a": "model-00001-of-00002.safetensors",
        "b": "model-00002-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}});
    std::fs::write(snap.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(
        snap.join("model-00001-of-00002.safetensors"),
        tiny_weights(),
    )
    .unwrap();
    let e = resolve("o/n", &offline(cache.path())).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, HfError::OfflineMissing { missing, .. } if missing == &["model-00002-of-00002.safetensors"]),
        "{msg}"
    );
    assert!(
        msg.contains(&cache_str) && msg.contains(&snap.display().to_string()),
        "{msg}"
    );
    std::fs::write(
        snap.join("model-00002-of-00002.safetensors"),
        tiny_weights(),
    )
    .unwrap();
    assert_eq!(resolve("o/n", &offline(cache.path())).unwrap(), snap);

    // Another revision that was never fetched.
    let opts = HubOptions {
        revision: Some("v2".into()),
        ..offline(cache.path())
    };
    let msg = resolve("o/n", &opts).unwrap_err().to_string();
    assert!(msg.contains("v2") && msg.contains("refs"), "{msg}");

    // A corrupt ref is reported, not followed.
    std::fs::write(cache.path().join("models--o--n/refs/main"), "../../../etc").unwrap();
    assert!(
        resolve("o/n", &offline(cache.path()))
            .unwrap_err()
            .to_string()
            .contains("valid commit hash")
    );
}

#[test]
fn offline_gguf_repos() {
    let cache = tempfile::tempdir().unwrap();
    let snap = snapshot(
        cache.path(),
        "models--o--one-gguf",
        &[("model-i2_s.gguf", b"GGUF".to_vec())],
    );
    assert_eq!(
        resolve("o/one-gguf", &offline(cache.path())).unwrap(),
        snap.join("model-i2_s.gguf")
    );

    let snap = snapshot(
        cache.path(),
        "models--o--two-gguf",
        &[
            ("b-tq2_0.gguf", b"GGUF".to_vec()),
            ("a-tq1_0.gguf", b"GGUF".to_vec()),
        ],
    );
    match resolve("o/two-gguf", &offline(cache.path())).unwrap_err() {
        HfError::GgufChoice { repo, files } => {
            assert_eq!(repo, "o/two-gguf");
            assert_eq!(
                files,
                vec!["a-tq1_0.gguf".to_string(), "b-tq2_0.gguf".to_string()]
            );
        }
        e => panic!("unexpected {e}"),
    }
    assert_eq!(
        resolve("o/two-gguf:b-tq2_0.gguf", &offline(cache.path())).unwrap(),
        snap.join("b-tq2_0.gguf")
    );
    let msg = resolve("o/two-gguf:c.gguf", &offline(cache.path()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("c.gguf"), "{msg}");

    snapshot(
        cache.path(),
        "models--o--empty",
        &[("README.md", b"hi".to_vec())],
    );
    let msg = resolve("o/empty", &offline(cache.path()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("config.json (or a .gguf file)"), "{msg}");
}

#[test]
fn local_paths_and_bad_ids() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_str().unwrap();
    assert_eq!(resolve(p, &HubOptions::default()).unwrap(), dir.path());
    let f = dir.path().join("m.gguf");
    std::fs::write(&f, b"GGUF").unwrap();
    assert_eq!(
        resolve(f.to_str().unwrap(), &HubOptions::default()).unwrap(),
        f
    );

    for bad in [
        "",
        "./missing-dir",
        "/no/such/path",
        "a/b/c",
        "a b/c",
        "owner/",
        "../x",
        "o/n:../../x",
    ] {
        let e = resolve(bad, &HubOptions::default()).unwrap_err();
        assert!(matches!(e, HfError::RepoId { .. }), "{bad:?}: {e}");
    }
    let opts = HubOptions {
        revision: Some("../../x".into()),
        ..offline(dir.path())
    };
    assert!(matches!(resolve("o/n", &opts), Err(HfError::RepoId { .. })));
}

/// A minimal hub: `/api/models/o/n/revision/<rev>` returns the commit and file list;
/// `/o/n/resolve/<commit>/<file>` answers ranged GETs with the headers hf-hub reads
/// (`x-repo-commit`, `etag`, `content-range`). Returns the base URL.
fn serve_hub(files: Vec<(&'static str, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut range_start: Option<usize> = None;
            let mut range_end: Option<usize> = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap_or((v.trim(), ""));
                    range_start = a.parse().ok();
                    range_end = b.parse().ok();
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
            let (status, headers, body): (&str, Vec<String>, Vec<u8>) =
                if path.starts_with("/api/models/o/n/revision/") {
                    let siblings: Vec<_> = files
                        .iter()
                        .map(|(n, _)| serde_json::json!({"rfilename": n}))
                        .collect();
                    let body = serde_json::json!({"sha": HASH, "siblings": siblings})
                        .to_string()
                        .into_bytes();
                    (
                        "200 OK",
                        vec!["Content-Type: application/json".into()],
                        body,
                    )
                } else if let Some((i, (_, data))) = files
                    .iter()
                    .enumerate()
                    .find(|(_, (n, _))| path == format!("/o/n/resolve/{HASH}/{n}"))
                {
                    let start = range_start.unwrap_or(0).min(data.len());
                    let end = range_end
                        .map(|e| e + 1)
                        .unwrap_or(data.len())
                        .min(data.len());
                    let headers = vec![
                        format!("x-repo-commit: {HASH}"),
                        format!("etag: \"etag{i:04}\""),
                        format!(
                            "content-range: bytes {start}-{}/{}",
                            end.saturating_sub(1),
                            data.len()
                        ),
                    ];
                    ("206 Partial Content", headers, data[start..end].to_vec())
                } else {
                    ("404 Not Found", vec![], b"not found".to_vec())
                };
            let mut reply = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for h in headers {
                reply.push_str(&h);
                reply.push_str("\r\n");
            }
            reply.push_str("\r\n");
            let _ = stream.write_all(reply.as_bytes());
            let _ = stream.write_all(&body);
            let _ = stream.flush();
            let _ = reader.read(&mut [0u8; 0]);
        }
    });
    base
}

#[test]
fn online_download_into_standard_cache_then_offline() {
    let index = serde_json::json!({"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}});
    let base = serve_hub(vec![
        ("config.json", config_bytes()),
        (
            "model.safetensors.index.json",
            index.to_string().into_bytes(),
        ),
        ("model-00001-of-00001.safetensors", tiny_weights()),
        ("tokenizer.json", b"{\"model\": {}}".to_vec()),
        ("README.md", b"not downloaded".to_vec()),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let opts = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        endpoint: Some(base),
        ..HubOptions::default()
    };
    let dir = resolve("o/n", &opts).unwrap();
    assert_eq!(dir, cache.path().join("models--o--n/snapshots").join(HASH));
    let m = HfModel::open(&dir).unwrap();
    assert_eq!(
        bitnet_hf::load_float(&m, "model.norm.weight", &[8]).unwrap(),
        vec![1.0; 8]
    );
    assert!(m.tokenizer_json_path().is_some());
    assert!(!dir.join("README.md").exists());
    assert_eq!(
        std::fs::read_to_string(cache.path().join("models--o--n/refs/main"))
            .unwrap()
            .trim(),
        HASH
    );

    // The cache written online satisfies an offline resolve.
    assert_eq!(resolve("o/n", &offline(cache.path())).unwrap(), dir);
}

#[test]
fn online_gguf_choice_and_missing_file() {
    let base = serve_hub(vec![
        ("x-tq1_0.gguf", b"GGUF1".to_vec()),
        ("x-tq2_0.gguf", b"GGUF2".to_vec()),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let opts = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        endpoint: Some(base),
        progress: true, // exercises the indicatif adapter (hidden when stderr is not a terminal)
        ..HubOptions::default()
    };
    let e = resolve("o/n", &opts).unwrap_err();
    assert!(
        matches!(&e, HfError::GgufChoice { files, .. } if files.len() == 2),
        "{e}"
    );
    let p = resolve("o/n:x-tq2_0.gguf", &opts).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"GGUF2");
    let msg = resolve("o/n:nope.gguf", &opts).unwrap_err().to_string();
    assert!(
        msg.contains("nope.gguf") && msg.contains("x-tq1_0.gguf"),
        "{msg}"
    );
}

#[test]
fn unreachable_hub_fails_fast_and_clearly() {
    // A port that was just free: connection refused immediately.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let opts = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..HubOptions::default()
    };
    let start = Instant::now();
    let e = resolve("microsoft/bitnet-b1.58-2B-4T", &opts).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    let msg = e.to_string();
    assert!(matches!(e, HfError::Hub { .. }), "{msg}");
    assert!(
        msg.contains("microsoft/bitnet-b1.58-2B-4T") && msg.contains("repo info"),
        "{msg}"
    );
    assert!(
        msg.contains("local cache") && msg.contains(&cache.path().display().to_string()),
        "{msg}"
    );

    // With a complete cached copy, the unreachable hub is not an error.
    let snap = snapshot(
        cache.path(),
        "models--microsoft--bitnet-b1.58-2B-4T",
        &[
            ("config.json", config_bytes()),
            ("model.safetensors", tiny_weights()),
        ],
    );
    assert_eq!(
        resolve("microsoft/bitnet-b1.58-2B-4T", &opts).unwrap(),
        snap
    );
}

#[test]
#[ignore = "needs network access to huggingface.co (about 1.2 GB download)"]
fn real_hub_2b4t() {
    let dir = resolve(
        "microsoft/bitnet-b1.58-2B-4T",
        &HubOptions {
            progress: true,
            ..HubOptions::default()
        },
    )
    .unwrap();
    let m = HfModel::open(&dir).unwrap();
    let c = m.config();
    assert_eq!(c.hidden_size, 2560);
    let q = bitnet_hf::load_linear(&m, "model.layers.0.self_attn.q_proj", 2560, 2560).unwrap();
    assert!(q.scale > 0.5 && q.scale < 4.0, "weight_scale {}", q.scale);
}
