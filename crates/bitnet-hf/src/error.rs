//! The crate's single error type. Every variant carries the file, tensor or repo a user needs to
//! find the problem without a debugger.

use std::path::PathBuf;

/// Everything that can go wrong while reading a Hugging Face model directory or fetching one.
///
/// Variants name the file (and tensor, where there is one) so that a message such as
/// "tensor model.layers.0.mlp.up_proj.weight: expected shape [1728, 2560], found [6912, 2560]"
/// is enough to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HfError {
    /// Reading or mapping a file failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// `config.json` is not valid JSON or lacks a required key (serde names the key).
    #[error("{}: invalid config: {source}", path.display())]
    ConfigParse {
        /// The config file.
        path: PathBuf,
        /// The parse error, which names the missing or mistyped key.
        #[source]
        source: serde_json::Error,
    },

    /// `config.json` parsed but holds values the engine cannot accept.
    #[error("{}: {message}", path.display())]
    Config {
        /// The config file (or the directory that should hold it).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The 8-byte safetensors header length points past the end of the file.
    #[error(
        "{}: safetensors header claims {claimed} bytes but the file has only {file_len} bytes \
         (truncated download or not a safetensors file)",
        path.display()
    )]
    HeaderLength {
        /// The safetensors file.
        path: PathBuf,
        /// Header length as written in the first 8 bytes.
        claimed: u64,
        /// Actual file size.
        file_len: u64,
    },

    /// The safetensors header failed validation (bad JSON, overlapping offsets, size mismatch...).
    #[error("{}: invalid safetensors file: {source}", path.display())]
    Safetensors {
        /// The safetensors file.
        path: PathBuf,
        /// The validation error from the `safetensors` crate.
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// `model.safetensors.index.json` is malformed.
    #[error("{}: {message}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The sharded index maps a tensor to a file outside the model directory.
    #[error(
        "{}: tensor {tensor} is mapped to shard {shard:?}, which is not a plain relative path \
         inside the model directory",
        index.display()
    )]
    ShardEscape {
        /// The index file.
        index: PathBuf,
        /// The tensor whose entry is bad.
        tensor: String,
        /// The offending shard path as written in the index.
        shard: String,
    },

    /// A shard named by the index does not exist.
    #[error("{}: shard {} (holding tensor {tensor}) does not exist", index.display(), shard.display())]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The shard that is missing.
        shard: PathBuf,
        /// One tensor the index places in that shard.
        tensor: String,
    },

    /// The index places a tensor in a shard whose header does not list it.
    #[error("{}: tensor {tensor} is listed in the index but missing from its shard {}", index.display(), shard.display())]
    TensorNotInShard {
        /// The index file.
        index: PathBuf,
        /// The shard that should hold the tensor.
        shard: PathBuf,
        /// The missing tensor.
        tensor: String,
    },

    /// The directory has neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("{}: no model.safetensors or model.safetensors.index.json{hint}", dir.display())]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
        /// Extra advice (e.g. ".gguf files found here").
        hint: String,
    },

    /// A tensor the caller asked for is not in the checkpoint.
    #[error("tensor {name} not found in {}", dir.display())]
    TensorNotFound {
        /// The tensor name.
        name: String,
        /// The model directory.
        dir: PathBuf,
    },

    /// A tensor has a different shape than the model config implies.
    #[error("tensor {tensor}: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// The tensor name.
        tensor: String,
        /// What the config implies.
        expected: Vec<usize>,
        /// What the file holds.
        found: Vec<usize>,
    },

    /// A tensor has an element type this operation does not handle.
    #[error("tensor {tensor}: dtype {found} is not supported here (expected {expected})")]
    Dtype {
        /// The tensor name.
        tensor: String,
        /// The dtype found in the file.
        found: crate::DType,
        /// What would have been accepted.
        expected: &'static str,
    },

    /// A tensor's values are unusable (non-finite, bad 2-bit code, bad scale...).
    #[error("tensor {tensor}: {message}")]
    Tensor {
        /// The tensor name.
        tensor: String,
        /// What is wrong.
        message: String,
    },

    /// Packed ternary data or its dimensions are invalid (no tensor name is known at this level).
    #[error("ternary data: {0}")]
    Ternary(String),

    /// A repo id argument is not of the form `owner/name[:file.gguf]`.
    #[error("invalid Hugging Face repo id {input:?}: {reason}")]
    RepoId {
        /// The argument as given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },

    /// Offline mode and the local Hugging Face cache lacks files this repo needs.
    #[error(
        "offline: repo {repo} (revision {revision}) is not fully in the Hugging Face cache {}: missing {}{}",
        cache_dir.display(),
        missing.join(", "),
        match looked_in { Some(p) => format!(" (looked in {})", p.display()), None => String::new() }
    )]
    OfflineMissing {
        /// The repo id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The cache root that was searched.
        cache_dir: PathBuf,
        /// What is missing (files, or the revision ref itself).
        missing: Vec<String>,
        /// The snapshot directory that was searched, where one was found.
        looked_in: Option<PathBuf>,
    },

    /// A GGUF-only repo holds several `.gguf` files and none was chosen.
    #[error("repo {repo} holds several .gguf files; pick one as {repo}:<file>: {}", files.join(", "))]
    GgufChoice {
        /// The repo id.
        repo: String,
        /// The candidate files.
        files: Vec<String>,
    },

    /// Talking to the hub failed (network, HTTP status, unexpected reply).
    #[error("hub: {repo}: {message}")]
    Hub {
        /// The repo id.
        repo: String,
        /// What went wrong, including the underlying error text.
        message: String,
    },
}

impl HfError {
    /// Attaches a path to an I/O error.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HfError::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds a [`HfError::Tensor`].
    pub(crate) fn tensor(tensor: &str, message: impl Into<String>) -> Self {
        HfError::Tensor {
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }
}
