//! Turning a user's model argument (a local path or a hub repo id) into a local path: a model
//! directory (config + safetensors + tokenizer files) or a single `.gguf` file.
//!
//! Downloads go through hf-hub's blocking API into the standard Hugging Face cache
//! (`<cache>/models--owner--name/{blobs,snapshots/<commit>,refs/<revision>}`), so files are
//! shared with Python's `huggingface_hub`. Offline mode reads that layout directly, never
//! touching the network, and says exactly what is missing.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::Progress;
use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::HfError;
use crate::model::{
    CONFIG_FILE, INDEX_FILE, SINGLE_FILE, is_plain_relative, parse_index, read_index,
};

/// Optional files fetched next to the weights when the repo has them.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
];

/// How long the first request (repo metadata) may take before we give up, so a machine
/// without network fails in seconds instead of hanging.
const METADATA_TIMEOUT: Duration = Duration::from_secs(20);

/// Options for [`resolve`].
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Use only the local cache; never open a connection.
    pub offline: bool,
    /// Branch, tag or commit; `main` when `None`.
    pub revision: Option<String>,
    /// Cache root (the directory holding `models--*`); the standard environment lookup when
    /// `None` (see [`default_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Draw an indicatif progress bar per downloaded file on stderr.
    pub progress: bool,
    /// Hub base URL (a mirror, or a local server in tests); `HF_ENDPOINT`, then
    /// `https://huggingface.co`, when `None`.
    pub endpoint: Option<String>,
}

impl HubOptions {
    /// Options with `offline` taken from `HF_HUB_OFFLINE` (`1`, `true`, `yes`, `on`), as
    /// `huggingface_hub` does; everything else default.
    pub fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        HubOptions {
            offline,
            ..HubOptions::default()
        }
    }
}

/// A parsed `owner/name[:file]` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// `owner/name`.
    pub repo_id: String,
    /// A file inside the repo chosen with `:file` (typically one `.gguf` of several).
    pub file: Option<String>,
}

fn valid_part(part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err("owner and name must both be non-empty".into());
    }
    if part.len() > 96 {
        return Err(format!("{part:?} is longer than 96 characters"));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "character {c:?} is not allowed (letters, digits, '-', '_', '.')"
        ));
    }
    if part.contains("..") || part.contains("--") {
        return Err(format!("{part:?} contains '..' or '--'"));
    }
    if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        return Err(format!("{part:?} starts or ends with '-' or '.'"));
    }
    Ok(())
}

/// Parses and validates `owner/name` or `owner/name:file` (hub naming rules: letters, digits,
/// `-`, `_`, `.`; no `..` or `--`; exactly one slash). The file must be a plain relative path.
pub fn parse_repo_spec(input: &str) -> Result<RepoSpec, HfError> {
    let err = |reason: String| HfError::RepoId {
        input: input.to_string(),
        reason,
    };
    let (repo, file) = match input.split_once(':') {
        Some((r, f)) => (r, Some(f)),
        None => (input, None),
    };
    if repo.starts_with('/') {
        return Err(err(
            "an absolute path that does not exist, not a repo id".into()
        ));
    }
    let mut parts = repo.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(err(if repo.contains('/') {
            "expected owner/name with exactly one '/'".into()
        } else {
            "expected owner/name".into()
        }));
    };
    valid_part(owner).map_err(err)?;
    valid_part(name).map_err(err)?;
    let file = match file {
        None => None,
        Some(f) if is_plain_relative(f) && !f.chars().any(char::is_whitespace) => {
            Some(f.to_string())
        }
        Some(f) => {
            return Err(err(format!(
                "file {f:?} after ':' must be a plain relative path"
            )));
        }
    };
    Ok(RepoSpec {
        repo_id: repo.to_string(),
        file,
    })
}

/// The cache root `huggingface_hub` would use: `HF_HUB_CACHE`, then the legacy
/// `HUGGINGFACE_HUB_CACHE`, then `$HF_HOME/hub`, then `$XDG_CACHE_HOME/huggingface/hub`, then
/// `~/.cache/huggingface/hub`. `None` only when no home directory can be found.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return Some(p);
    }
    if let Some(home) = var("HF_HOME") {
        return Some(home.join("hub"));
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return Some(xdg.join("huggingface").join("hub"));
    }
    std::env::home_dir().map(|h| h.join(".cache").join("huggingface").join("hub"))
}

/// Resolves a model argument to a local path.
///
/// - An existing local path is returned unchanged (a model directory or a `.gguf` file).
/// - Otherwise it must be `owner/name[:file]`. A repo with `config.json` resolves to its snapshot
///   directory holding `config.json`, `model.safetensors` (or the index and every shard) and
///   whichever of [`TOKENIZER_FILES`] the repo has. A repo with no `config.json` but `.gguf`
///   files resolves to the `.gguf` file: the only one, or the one named after `:`
///   (several and none named is an error listing them).
/// - Online, when the hub cannot be reached (or refuses the metadata request), a complete copy
///   in the cache is used instead, as `huggingface_hub` does; otherwise the error gives both
///   the network failure and what the cache lacks.
/// - With `offline`, only the cache is read: `refs/<revision>` gives the snapshot (a 40-hex
///   revision is used as the snapshot name directly), and any missing piece is an error naming
///   the repo, the cache directory and the files.
pub fn resolve(repo_or_path: &str, opts: &HubOptions) -> Result<PathBuf, HfError> {
    let local = Path::new(repo_or_path);
    if !repo_or_path.is_empty() && local.exists() {
        return Ok(local.to_path_buf());
    }
    let spec = parse_repo_spec(repo_or_path).map_err(|e| match e {
        HfError::RepoId { input, reason } => HfError::RepoId {
            input,
            reason: format!(
                "no local file or directory by that name, and not a hub repo id: {reason}"
            ),
        },
        other => other,
    })?;
    let revision = opts.revision.clone().unwrap_or_else(|| "main".to_string());
    if revision.is_empty()
        || !is_plain_relative(&revision)
        || revision.chars().any(char::is_whitespace)
    {
        return Err(HfError::RepoId {
            input: repo_or_path.to_string(),
            reason: format!("revision {revision:?} is not a valid branch, tag or commit"),
        });
    }
    let cache_dir = match &opts.cache_dir {
        Some(d) => d.clone(),
        None => default_cache_dir().ok_or_else(|| HfError::Hub {
            repo: spec.repo_id.clone(),
            message: "no Hugging Face cache directory: set HF_HOME or HF_HUB_CACHE".into(),
        })?,
    };
    if opts.offline {
        resolve_offline(&spec, &revision, &cache_dir)
    } else {
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .filter(|e| !e.trim().is_empty());
        resolve_online(&spec, &revision, &cache_dir, endpoint, opts.progress)
    }
}

/// `models--owner--name`, the cache folder of a model repo.
fn repo_folder(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn resolve_offline(spec: &RepoSpec, revision: &str, cache_dir: &Path) -> Result<PathBuf, HfError> {
    let missing = |what: Vec<String>, looked_in: Option<PathBuf>| HfError::OfflineMissing {
        repo: spec.repo_id.clone(),
        revision: revision.to_string(),
        cache_dir: cache_dir.to_path_buf(),
        missing: what,
        looked_in,
    };
    let repo_dir = cache_dir.join(repo_folder(&spec.repo_id));
    if !repo_dir.is_dir() {
        return Err(missing(
            vec![format!(
                "the whole repo ({} does not exist)",
                repo_dir.display()
            )],
            None,
        ));
    }
    let commit = if is_commit_hash(revision) && repo_dir.join("snapshots").join(revision).is_dir() {
        revision.to_string()
    } else {
        let ref_path = repo_dir.join("refs").join(revision);
        let Ok(text) = std::fs::read_to_string(&ref_path) else {
            return Err(missing(vec![format!("ref {}", ref_path.display())], None));
        };
        let commit = text.trim().to_string();
        if commit.is_empty() || !commit.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(missing(
                vec![format!(
                    "a valid commit hash in {} (found {commit:?})",
                    ref_path.display()
                )],
                None,
            ));
        }
        commit
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        return Err(missing(vec![format!("snapshot {commit}")], Some(snapshot)));
    }
    let have = |f: &str| snapshot.join(f).is_file();

    if let Some(file) = &spec.file {
        return if have(file) {
            Ok(snapshot.join(file))
        } else {
            Err(missing(vec![file.clone()], Some(snapshot)))
        };
    }
    if have(CONFIG_FILE) {
        if have(SINGLE_FILE) {
            return Ok(snapshot);
        }
        if !have(INDEX_FILE) {
            return Err(missing(
                vec![format!("{SINGLE_FILE} (or {INDEX_FILE})")],
                Some(snapshot),
            ));
        }
        let weight_map = read_index(&snapshot.join(INDEX_FILE))?;
        let mut absent: Vec<String> = weight_map.values().filter(|s| !have(s)).cloned().collect();
        absent.sort();
        absent.dedup();
        return if absent.is_empty() {
            Ok(snapshot)
        } else {
            Err(missing(absent, Some(snapshot)))
        };
    }
    let mut ggufs: Vec<String> = std::fs::read_dir(&snapshot)
        .map_err(|e| HfError::io(&snapshot, e))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".gguf"))
        .collect();
    ggufs.sort();
    match ggufs.as_slice() {
        [one] => Ok(snapshot.join(one)),
        [] => Err(missing(
            vec![format!("{CONFIG_FILE} (or a .gguf file)")],
            Some(snapshot),
        )),
        _ => Err(HfError::GgufChoice {
            repo: spec.repo_id.clone(),
            files: ggufs,
        }),
    }
}

/// Adapts an indicatif 0.18 bar to hf-hub's progress trait (hf-hub itself links indicatif 0.17).
struct FileBar(indicatif::ProgressBar);

impl Progress for FileBar {
    fn init(&mut self, size: usize, filename: &str) {
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:30} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
        ) {
            self.0.set_style(style);
        }
        self.0.set_length(size as u64);
        self.0.set_position(0);
        self.0.set_message(filename.to_string());
    }

    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }

    fn finish(&mut self) {
        self.0.finish();
    }
}

/// Runs an hf-hub call, turning its errors (and its internal `unwrap` panics on odd server
/// replies) into [`HfError::Hub`].
fn hub_call<T, E: std::fmt::Display>(
    repo: &str,
    what: &str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, HfError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(HfError::Hub {
            repo: repo.to_string(),
            message: format!("{what}: {e}"),
        }),
        Err(_) => Err(HfError::Hub {
            repo: repo.to_string(),
            message: format!("{what}: hf-hub panicked on an unexpected server reply"),
        }),
    }
}

struct Online<'a> {
    repo_id: &'a str,
    api: ApiRepo,
    snapshot: PathBuf,
    progress: bool,
}

impl Online<'_> {
    /// Downloads `file` into the pinned snapshot unless it is already there.
    fn fetch(&self, file: &str) -> Result<PathBuf, HfError> {
        if !is_plain_relative(file) {
            return Err(HfError::Hub {
                repo: self.repo_id.to_string(),
                message: format!("refusing remote file name {file:?}: not a plain relative path"),
            });
        }
        let local = self.snapshot.join(file);
        if local.is_file() {
            return Ok(local);
        }
        let what = format!("downloading {file}");
        if self.progress {
            let bar = FileBar(indicatif::ProgressBar::new(0));
            hub_call(self.repo_id, &what, || {
                self.api.download_with_progress(file, bar)
            })
        } else {
            hub_call(self.repo_id, &what, || {
                self.api.download_with_progress(file, ())
            })
        }
    }
}

fn resolve_online(
    spec: &RepoSpec,
    revision: &str,
    cache_dir: &Path,
    endpoint: Option<String>,
    progress: bool,
) -> Result<PathBuf, HfError> {
    let repo_id = spec.repo_id.as_str();
    let token = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    let mut builder = ApiBuilder::from_cache(Cache::new(cache_dir.to_path_buf()))
        .with_progress(false)
        .with_user_agent("bitnet-hf", env!("CARGO_PKG_VERSION"));
    if token.is_some() {
        builder = builder.with_token(token);
    }
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint.trim().trim_end_matches('/').to_string());
    }
    let api = hub_call(repo_id, "building the HTTP client", || builder.build())?;

    // Repo metadata first, with a timeout: it pins the commit and lists the files.
    let info_repo = api.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let fetched = hub_call(
        repo_id,
        &format!("fetching repo info (revision {revision})"),
        || {
            info_repo
                .info_request()
                .timeout(METADATA_TIMEOUT)
                .call()
                .map_err(|e| e.to_string())?
                .into_string()
                .map_err(|e| e.to_string())
        },
    );
    let body = match fetched {
        Ok(body) => body,
        // Like huggingface_hub: when the hub cannot be asked, a complete cached copy will do.
        Err(HfError::Hub { repo, message }) => {
            return resolve_offline(spec, revision, cache_dir).map_err(|offline| HfError::Hub {
                repo,
                message: format!(
                    "{message}; no complete copy in the local cache either ({offline}). \
                     Check the network, HF_ENDPOINT and HF_TOKEN, or run offline with a cache that has the files"
                ),
            });
        }
        Err(other) => return Err(other),
    };
    let info: hf_hub::api::RepoInfo = serde_json::from_str(&body).map_err(|e| HfError::Hub {
        repo: repo_id.to_string(),
        message: format!("unexpected repo info reply: {e}"),
    })?;
    if !is_commit_hash(&info.sha) {
        return Err(HfError::Hub {
            repo: repo_id.to_string(),
            message: format!("repo info gave an invalid commit {:?}", info.sha),
        });
    }
    let files: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let has = |f: &str| files.contains(&f);

    let online = Online {
        repo_id,
        api: api.repo(Repo::with_revision(
            repo_id.to_string(),
            RepoType::Model,
            info.sha.clone(),
        )),
        snapshot: cache_dir
            .join(repo_folder(repo_id))
            .join("snapshots")
            .join(&info.sha),
        progress,
    };
    let ggufs: Vec<String> = files
        .iter()
        .filter(|f| f.ends_with(".gguf"))
        .map(|f| f.to_string())
        .collect();

    let result = if let Some(file) = &spec.file {
        if !has(file) {
            return Err(HfError::Hub {
                repo: repo_id.to_string(),
                message: format!(
                    "revision {revision} has no file {file}{}",
                    if ggufs.is_empty() {
                        String::new()
                    } else {
                        format!("; .gguf files: {}", ggufs.join(", "))
                    }
                ),
            });
        }
        online.fetch(file)?
    } else if has(CONFIG_FILE) {
        online.fetch(CONFIG_FILE)?;
        if has(SINGLE_FILE) {
            online.fetch(SINGLE_FILE)?;
        } else if has(INDEX_FILE) {
            let index_path = online.fetch(INDEX_FILE)?;
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| HfError::io(&index_path, e))?;
            let weight_map = parse_index(&text, &index_path)?;
            let mut shards: Vec<&String> = weight_map.values().collect();
            shards.sort();
            shards.dedup();
            for shard in shards {
                online.fetch(shard)?;
            }
        } else {
            return Err(HfError::Hub {
                repo: repo_id.to_string(),
                message: format!(
                    "has {CONFIG_FILE} but neither {SINGLE_FILE} nor {INDEX_FILE} (pickle checkpoints are not supported)"
                ),
            });
        }
        for f in TOKENIZER_FILES.iter().filter(|f| has(f)) {
            online.fetch(f)?;
        }
        online.snapshot.clone()
    } else {
        match ggufs.as_slice() {
            [one] => online.fetch(one)?,
            [] => {
                return Err(HfError::Hub {
                    repo: repo_id.to_string(),
                    message: format!(
                        "revision {revision} has neither {CONFIG_FILE} nor any .gguf file"
                    ),
                });
            }
            _ => {
                return Err(HfError::GgufChoice {
                    repo: repo_id.to_string(),
                    files: ggufs,
                });
            }
        }
    };

    // Point refs/<revision> at the commit we pinned, so a later offline run finds this snapshot.
    if revision != info.sha {
        Cache::new(cache_dir.to_path_buf())
            .repo(Repo::with_revision(
                repo_id.to_string(),
                RepoType::Model,
                revision.to_string(),
            ))
            .create_ref(&info.sha)
            .map_err(|e| {
                HfError::io(
                    cache_dir
                        .join(repo_folder(repo_id))
                        .join("refs")
                        .join(revision),
                    e,
                )
            })?;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_spec_syntax() {
        let s = parse_repo_spec("microsoft/bitnet-b1.58-2B-4T").unwrap();
        assert_eq!(s.repo_id, "microsoft/bitnet-b1.58-2B-4T");
        assert_eq!(s.file, None);
        let s = parse_repo_spec("microsoft/bitnet-b1.58-2B-4T-gguf:ggml-model-i2_s.gguf").unwrap();
        assert_eq!(s.file.as_deref(), Some("ggml-model-i2_s.gguf"));
        for bad in [
            "",
            "noslash",
            "/abs/path",
            "a/b/c",
            "/a",
            "a/",
            "a//b",
            "../x",
            "a/..",
            "a/b..c",
            "a b/c",
            "a/b c",
            "a/b:",
            "a/b:../x.gguf",
            "a/b:/etc/x.gguf",
            "-a/b",
            "a/b.",
            "a--b/c",
        ] {
            assert!(parse_repo_spec(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn folder_name() {
        assert_eq!(repo_folder("microsoft/x"), "models--microsoft--x");
    }
}
