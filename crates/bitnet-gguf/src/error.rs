//! The one error type of this crate.
//!
//! Every variant carries what a user needs to act on it: the byte offset for a malformed header, the
//! metadata key or tensor name for a bad entry, the expected and actual sizes for a size mismatch.

use std::path::PathBuf;

/// Why a GGUF file (or a buffer handed to an encoder/decoder) could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The operating system refused to open, map, create or write a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },

    /// The first four bytes are not `GGUF`: the file is something else.
    #[error("not a GGUF file: it starts with bytes {found:02x?}, expected \"GGUF\" (47 47 55 46)")]
    BadMagic {
        /// The first four bytes of the file.
        found: [u8; 4],
    },

    /// The version field names a layout this reader does not implement.
    #[error("GGUF version {version} is not supported: {reason}")]
    UnsupportedVersion {
        /// The version field as read (little-endian).
        version: u32,
        /// Why (v1 layout, big-endian file, unknown version).
        reason: &'static str,
    },

    /// The file ends before a field it declares.
    #[error(
        "truncated GGUF: {what} at byte {offset} needs {needed} bytes, but only {available} remain"
    )]
    Truncated {
        /// The field being read.
        what: String,
        /// Absolute byte offset of the field.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file from `offset`.
        available: u64,
    },

    /// A structural value is impossible (a count no file of this size could hold, an unknown value
    /// type, invalid UTF-8, too many dimensions, ...).
    #[error("malformed GGUF at byte {offset}: {reason}")]
    Malformed {
        /// Absolute byte offset of the offending field.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// Reading or validating one metadata entry failed; `source` says how.
    #[error("metadata key {key:?}: {source}")]
    InMetadata {
        /// The key of the entry.
        key: String,
        /// The underlying failure.
        #[source]
        source: Box<GgufError>,
    },

    /// The same metadata key appears twice; GGUF keys are unique.
    #[error("metadata key {key:?} appears more than once")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },

    /// A required metadata key is absent.
    #[error("metadata key {key:?} is missing")]
    MissingKey {
        /// The key looked up.
        key: String,
    },

    /// A metadata key holds a value of another type (or out of the requested range).
    #[error("metadata key {key:?}: expected {expected}, found {found}")]
    WrongType {
        /// The key looked up.
        key: String,
        /// The type the caller asked for.
        expected: String,
        /// What the file holds.
        found: String,
    },

    /// A metadata value is of the right type but not allowed (e.g. an alignment that is not a
    /// power of two).
    #[error("metadata key {key:?}: {reason}")]
    BadMetadataValue {
        /// The key.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },

    /// Reading, validating or decoding one tensor failed; `source` says how.
    #[error("tensor {name:?}: {source}")]
    InTensor {
        /// The tensor name.
        name: String,
        /// The underlying failure.
        #[source]
        source: Box<GgufError>,
    },

    /// A tensor's header entry (shape, offset, size) is invalid.
    #[error("tensor {name:?}: {reason}")]
    BadTensor {
        /// The tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// Two tensors share a name; GGUF tensor names are unique.
    #[error("tensor name {name:?} appears more than once")]
    DuplicateTensor {
        /// The repeated name.
        name: String,
    },

    /// Two tensors' data ranges (relative to the data section) intersect.
    #[error(
        "tensors {first:?} (data bytes {first_start}..{first_end}) and {second:?} (starting at {second_start}) overlap"
    )]
    Overlap {
        /// The tensor that starts first.
        first: String,
        /// Its start offset.
        first_start: u64,
        /// Its end offset (exclusive).
        first_end: u64,
        /// The tensor that starts inside it.
        second: String,
        /// Its start offset.
        second_start: u64,
    },

    /// A tensor's ggml type id has no meaning (or no decoder) for this file's architecture.
    #[error(
        "tensor {name:?}: ggml type id {type_id}{label} is not supported for architecture {architecture:?}"
    )]
    UnsupportedType {
        /// The tensor name.
        name: String,
        /// The raw type id.
        type_id: u32,
        /// A human name for the id when one is known, e.g. " (TL1)".
        label: String,
        /// The architecture used to interpret the id.
        architecture: String,
    },

    /// A tensor name that this file does not contain (or a `TensorInfo` from another file).
    #[error("tensor {name:?} is not in this file")]
    MissingTensor {
        /// The name looked up.
        name: String,
    },

    /// Encoded tensor bytes are inconsistent with their format (wrong length, a code outside the
    /// format, per-block scales that differ, a non-finite scale, ...).
    #[error("{format} data: {reason}")]
    InvalidData {
        /// The format name (e.g. "TQ2_0").
        format: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// An encoder or the writer was given input it cannot represent exactly or safely.
    #[error("invalid input for {context}: {reason}")]
    InvalidInput {
        /// What was being encoded or written (e.g. "TQ1_0 encoder", "GGUF writer").
        context: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl GgufError {
    /// Wraps `self` with the tensor name it concerns (unless it already names that tensor).
    pub(crate) fn in_tensor(self, name: &str) -> GgufError {
        let named = match &self {
            GgufError::InTensor { name: n, .. }
            | GgufError::BadTensor { name: n, .. }
            | GgufError::UnsupportedType { name: n, .. } => n == name,
            _ => false,
        };
        if named {
            return self;
        }
        GgufError::InTensor {
            name: name.to_owned(),
            source: Box::new(self),
        }
    }

    /// Wraps `self` with the metadata key it concerns.
    pub(crate) fn in_metadata(self, key: &str) -> GgufError {
        GgufError::InMetadata {
            key: key.to_owned(),
            source: Box::new(self),
        }
    }

    /// Shorthand for [`GgufError::InvalidData`].
    pub(crate) fn data(format: &'static str, reason: impl Into<String>) -> GgufError {
        GgufError::InvalidData {
            format,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`GgufError::InvalidInput`].
    pub(crate) fn input(context: &'static str, reason: impl Into<String>) -> GgufError {
        GgufError::InvalidInput {
            context,
            reason: reason.into(),
        }
    }
}

/// `Result` with [`GgufError`] as the default error.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;
