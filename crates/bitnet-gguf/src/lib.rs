//! GGUF reader and writer with BitNet ternary packings (I2_S, TQ1_0, TQ2_0) and ggml block types.
//!
//! This crate is the bottom of the engine: it turns a `.gguf` file into validated metadata and
//! zero-copy tensor bytes, and turns tensor bytes into numbers. It depends on no other bitnet
//! crate.
//!
//! # Reading
//!
//! [`GgufFile::open`] maps the file read-only and validates the whole header before returning:
//! magic, version (2 or 3), every count and length against the bytes that remain (so a header
//! claiming 2^60 entries fails at once instead of allocating), value types, UTF-8, dimensions
//! (at most 4, element count within i64), alignment, and each tensor's data range (aligned,
//! inside the file, not overlapping another). Duplicate keys and tensor names are refused.
//!
//! Type ids are interpreted per architecture ([`TensorType::from_id`]): id 36 is I2_S only in
//! files whose `general.architecture` is `bitnet-b1.58` or `bitnet-25` (bitnet.cpp's fork);
//! upstream reuses those ids. A tensor whose type is unknown still opens, so tools can list it,
//! but its data is refused with an error naming the tensor and the id.
//!
//! ```no_run
//! use bitnet_gguf::GgufFile;
//! # fn main() -> Result<(), bitnet_gguf::GgufError> {
//! let file = GgufFile::open("ggml-model-i2_s.gguf")?;
//! let arch = file.architecture()?;
//! let layers = file.get_u64(&format!("{arch}.block_count"))?;
//! let q = file.tensor("blk.0.attn_q.weight").expect("present");
//! let weights = file.decode_ternary(q)?; // codes in {-1, 0, 1} and one f32 scale
//! # let _ = (layers, weights);
//! # Ok(())
//! # }
//! ```
//!
//! # Decoding and encoding
//!
//! The codecs in [`quants`] are pure functions over byte slices. Float formats and
//! Q8_0/Q6_K/Q4_K/Q4_0 dequantize value for value as ggml does; [`decode_ternary`] recovers
//! `t * scale` from TQ1_0, TQ2_0, I2_S or float tensors and refuses anything that is not one
//! per-tensor ternary tensor. The encoders reproduce ggml / gguf-py / bitnet.cpp bytes (checked
//! against gguf-py golden vectors in `tests/data`, and for Q4_K, which gguf-py cannot quantize,
//! against ggml's own C quantizer).
//!
//! # Writing
//!
//! [`GgufWriter`] writes v3 (or v2) files with any power-of-two alignment, validating every
//! tensor's size against its type; its files open with gguf-py's `GGUFReader` and with this
//! crate's reader.
#![deny(missing_docs)]

mod cursor;
pub mod error;
pub mod quants;
pub mod reader;
pub mod types;
pub mod value;
pub mod writer;

pub use error::{GgufError, Result};
pub use quants::{
    Ternary, decode_f32, decode_rows_f32, decode_ternary, encode_bf16, encode_f16, encode_f32,
    encode_i2_s, encode_q4_0, encode_q4_k, encode_q6_k, encode_q8_0, encode_tq1_0, encode_tq2_0,
    ternarize_f32,
};
pub use reader::{GgufFile, TensorInfo};
pub use types::{TensorType, ggml_type_name, uses_bitnet_fork_ids};
pub use value::{Array, Value, ValueType};
pub use writer::{GgufWriter, TensorBytes};
