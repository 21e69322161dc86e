//! Opening a GGUF file: parsing and validating the whole header (magic, version, metadata, tensor
//! infos, alignment, data ranges) before anything else, then serving metadata lookups and
//! zero-copy tensor bytes from the memory map.

use std::collections::HashMap;
use std::path::Path;

use crate::cursor::Cursor;
use crate::error::{GgufError, Result};
use crate::quants::{self, Ternary};
use crate::types::{TensorType, ggml_type_name};
use crate::value::{Array, MAX_ARRAY_DEPTH, Value, ValueType};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The metadata key naming the model architecture (and so the type-id table).
pub const ARCHITECTURE_KEY: &str = "general.architecture";
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;

/// Smallest possible metadata entry: empty key (8), value type (4), one-byte value (1).
const MIN_KV_BYTES: u64 = 13;
/// Smallest possible tensor info: empty name (8), n_dims (4), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 24;

/// One tensor's header entry, validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name (llama.cpp naming, e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// Shape in ggml order: `dims[0]` is the innermost (contiguous) dimension, i.e. the columns or
    /// `in_features` of a weight matrix. At most 4 entries; empty means a scalar.
    pub dims: Vec<u64>,
    /// The raw ggml type id as stored.
    pub type_id: u32,
    /// The type id interpreted for this file's architecture; `None` when unknown or unsupported.
    pub kind: Option<TensorType>,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Number of elements (product of `dims`).
    pub n_elements: u64,
    /// Exact size of the data in bytes; 0 when `kind` is `None` (the size is then unknown).
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Elements per row (`dims[0]`; 1 for a scalar).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (`n_elements / dims[0]`; 0 for an empty tensor).
    pub fn n_rows(&self) -> u64 {
        self.n_elements.checked_div(self.row_len()).unwrap_or(0)
    }
}

/// Where the file's bytes live.
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed, validated GGUF file. Tensor data stays in the memory map and is handed out as
/// slices; nothing is copied until a decoder runs.
pub struct GgufFile {
    storage: Storage,
    version: u32,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    architecture: String,
    alignment: u64,
    data_offset: u64,
    /// Per tensor: bytes from its start to the next tensor's start (or the end of the file).
    spans: Vec<u64>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("architecture", &self.architecture)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("file_size", &self.file_size())
            .finish()
    }
}

/// Everything parsed from the header.
struct Header {
    version: u32,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    architecture: String,
    alignment: u64,
    data_offset: u64,
    spans: Vec<u64>,
}

macro_rules! getters {
    ($( $(#[$doc:meta])* $get:ident, $opt:ident -> $t:ty, $expected:literal, |$v:ident| $conv:expr; )*) => {
        $(
            $(#[$doc])*
            pub fn $get(&self, key: &str) -> Result<$t> {
                self.$opt(key)?
                    .ok_or_else(|| GgufError::MissingKey { key: key.to_owned() })
            }

            #[doc = concat!("Like [`GgufFile::", stringify!($get), "`], but `Ok(None)` when the key is absent.")]
            pub fn $opt(&self, key: &str) -> Result<Option<$t>> {
                match self.get(key) {
                    None => Ok(None),
                    Some($v) => match $conv {
                        Some(x) => Ok(Some(x)),
                        None => Err(GgufError::WrongType {
                            key: key.to_owned(),
                            expected: $expected.to_owned(),
                            found: $v.describe(),
                        }),
                    },
                }
            }
        )*
    };
}

impl GgufFile {
    /// Maps `path` read-only and validates it. The map is shared with the OS page cache, so a
    /// multi-gigabyte model opens instantly; as with any memory map, the file must not be
    /// truncated by another process while it is open.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this value; the bytes are only read through
        // bounds-checked slices. The documented caveat of every file map applies: another process
        // truncating the file while it is mapped would fault on access.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_storage(Storage::Mapped(map))
    }

    /// Validates an in-memory GGUF image (tests, fuzzing, files fetched into memory).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(storage: Storage) -> Result<GgufFile> {
        let h = parse(storage.bytes())?;
        Ok(GgufFile {
            storage,
            version: h.version,
            metadata: h.metadata,
            key_index: h.key_index,
            tensors: h.tensors,
            tensor_index: h.tensor_index,
            architecture: h.architecture,
            alignment: h.alignment,
            data_offset: h.data_offset,
            spans: h.spans,
        })
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Total file size in bytes.
    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// Absolute offset of the data section (tensor offsets are relative to it).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Data alignment: `general.alignment`, or 32.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = *self.key_index.get(key)?;
        self.metadata.get(i).map(|(_, v)| v)
    }

    /// `general.architecture`; an error when absent (vocab-only files may omit it).
    pub fn architecture(&self) -> Result<&str> {
        self.get_str(ARCHITECTURE_KEY)
    }

    getters! {
        /// A non-negative integer of any width (counts, lengths, token ids).
        get_u64, opt_u64 -> u64, "a non-negative integer", |v| v.as_u64();
        /// A non-negative integer that fits in u32.
        get_u32, opt_u32 -> u32, "an integer in u32 range", |v| v.as_u64().and_then(|x| u32::try_from(x).ok());
        /// An integer of any width that fits in i64.
        get_i64, opt_i64 -> i64, "an integer", |v| v.as_i64();
        /// An f32, or an f64/integer that converts to f32 exactly.
        get_f32, opt_f32 -> f32, "f32", |v| v.as_f32();
        /// An f64, f32 or integer that converts to f64 exactly.
        get_f64, opt_f64 -> f64, "a number", |v| v.as_f64();
        /// A boolean.
        get_bool, opt_bool -> bool, "bool", |v| v.as_bool();
        /// A string.
        get_str, opt_str -> &str, "string", |v| v.as_str();
        /// An array of any element type.
        get_array, opt_array -> &Array, "array", |v| v.as_array();
        /// An array of strings (`tokenizer.ggml.tokens`, `tokenizer.ggml.merges`).
        get_string_array, opt_string_array -> &[String], "array of string", |v| v.as_string_array();
        /// An array of i32 (`tokenizer.ggml.token_type`).
        get_i32_array, opt_i32_array -> &[i32], "array of i32", |v| v.as_i32_array();
        /// An array of u32.
        get_u32_array, opt_u32_array -> &[u32], "array of u32", |v| v.as_u32_array();
        /// An array of f32 (`tokenizer.ggml.scores`).
        get_f32_array, opt_f32_array -> &[f32], "array of f32", |v| v.as_f32_array();
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor with this name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let i = *self.tensor_index.get(name)?;
        self.tensors.get(i)
    }

    /// The ggml name of a tensor's type for display ("I2_S", "Q4_K", "TL1"), or "type N".
    pub fn type_name(&self, info: &TensorInfo) -> String {
        match ggml_type_name(info.type_id, &self.architecture) {
            Some(name) => name.to_owned(),
            None => format!("type {}", info.type_id),
        }
    }

    /// Looks `info` up by name and checks it really describes this file's tensor, so a
    /// `TensorInfo` from another file can never address this map.
    fn own(&self, info: &TensorInfo) -> Result<(usize, &TensorInfo)> {
        let missing = || GgufError::MissingTensor {
            name: info.name.clone(),
        };
        let i = *self.tensor_index.get(&info.name).ok_or_else(missing)?;
        let own = self.tensors.get(i).ok_or_else(missing)?;
        if own != info {
            return Err(missing());
        }
        Ok((i, own))
    }

    /// Tells the OS that tensor `name`'s mapped bytes are no longer needed, so their pages leave
    /// this process's resident memory (for weights already repacked elsewhere). Reading them
    /// again still works: the pages come back from the file. A no-op for files held in memory,
    /// on non-Unix systems, and for unknown names.
    pub fn release_pages(&self, name: &str) {
        #[cfg(unix)]
        if let (Storage::Mapped(map), Some(info)) = (&self.storage, self.tensor(name))
            && let Ok(data) = self.tensor_data(info)
        {
            let offset = data.as_ptr() as usize - map.as_ptr() as usize;
            // SAFETY: the map is a read-only, private mapping of a file; MADV_DONTNEED only
            // drops its pages, which later reads fault back in from the file unchanged, so no
            // reference into the map ever sees different bytes.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, data.len())
            };
        }
        #[cfg(not(unix))]
        let _ = name;
    }

    /// The exact data bytes of a tensor (zero-copy). Refuses tensors whose type is unknown for
    /// this architecture (their size cannot be known), and I2_S tensors whose stored extent does
    /// not match `n/4 + 32` (bitnet.cpp's 2024 layout, which would be misread).
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8]> {
        let (i, t) = self.own(info)?;
        let kind = t.kind.ok_or_else(|| GgufError::UnsupportedType {
            name: t.name.clone(),
            type_id: t.type_id,
            label: ggml_type_name(t.type_id, &self.architecture)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            architecture: self.architecture.clone(),
        })?;
        if kind == TensorType::I2_S {
            let span = self.spans.get(i).copied().unwrap_or(0);
            let padded = align_up(t.n_bytes, self.alignment).unwrap_or(u64::MAX);
            if span > padded {
                return Err(GgufError::BadTensor {
                    name: t.name.clone(),
                    reason: format!(
                        "I2_S with {} elements must occupy n/4 + 32 = {} bytes, but {} bytes lie \
                         before the next tensor (or the end of the file). This looks like an I2_S \
                         file from bitnet.cpp's 2024 releases, whose layout differs; it is refused \
                         rather than misread. Re-convert the model with current bitnet.cpp.",
                        t.n_elements, t.n_bytes, span
                    ),
                });
            }
        }
        self.slice(t, t.n_bytes)
    }

    /// The raw bytes from a tensor's start to the next tensor's start (or the end of the file),
    /// whatever its type: for `inspect`-style dumps of tensors this crate cannot decode.
    pub fn tensor_region(&self, info: &TensorInfo) -> Result<&[u8]> {
        let (i, t) = self.own(info)?;
        self.slice(t, self.spans.get(i).copied().unwrap_or(0))
    }

    fn slice(&self, t: &TensorInfo, len: u64) -> Result<&[u8]> {
        let bad = || GgufError::BadTensor {
            name: t.name.clone(),
            reason: format!(
                "data range of {len} bytes at offset {} is outside the file",
                t.offset
            ),
        };
        let start = self.data_offset.checked_add(t.offset).ok_or_else(bad)?;
        let end = start.checked_add(len).ok_or_else(bad)?;
        let (start, end) = (
            usize::try_from(start).map_err(|_| bad())?,
            usize::try_from(end).map_err(|_| bad())?,
        );
        self.storage.bytes().get(start..end).ok_or_else(bad)
    }

    fn kind_and_len(&self, info: &TensorInfo) -> Result<(TensorType, &[u8], usize)> {
        let data = self.tensor_data(info)?;
        let kind = info.kind.ok_or_else(|| GgufError::MissingTensor {
            name: info.name.clone(),
        })?;
        let n = usize::try_from(info.n_elements).map_err(|_| GgufError::BadTensor {
            name: info.name.clone(),
            reason: format!("{} elements do not fit in memory", info.n_elements),
        })?;
        Ok((kind, data, n))
    }

    /// Dequantizes a whole tensor to f32 (see [`crate::decode_f32`]).
    pub fn decode_f32(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let (kind, data, n) = self.kind_and_len(info)?;
        quants::decode_f32(kind, data, n).map_err(|e| e.in_tensor(&info.name))
    }

    /// Decodes a ternary weight tensor (see [`crate::decode_ternary`]).
    pub fn decode_ternary(&self, info: &TensorInfo) -> Result<Ternary> {
        let (kind, data, n) = self.kind_and_len(info)?;
        quants::decode_ternary(kind, data, n).map_err(|e| e.in_tensor(&info.name))
    }

    /// Dequantizes rows `row_index..` of a tensor into `out` (a multiple of `dims[0]` values),
    /// without decoding the rest (see [`crate::decode_rows_f32`]).
    pub fn decode_rows_f32(
        &self,
        info: &TensorInfo,
        row_index: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let (kind, data, _) = self.kind_and_len(info)?;
        let row_len = usize::try_from(info.row_len()).map_err(|_| GgufError::BadTensor {
            name: info.name.clone(),
            reason: "row length does not fit in memory".to_owned(),
        })?;
        quants::decode_rows_f32(kind, data, row_len, row_index, out)
            .map_err(|e| e.in_tensor(&info.name))
    }
}

/// `x` rounded up to a multiple of the power of two `align`; `None` on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    x.checked_add(mask).map(|v| v & !mask)
}

fn parse(bytes: &[u8]) -> Result<Header> {
    let mut cur = Cursor::new(bytes);
    let magic: [u8; 4] = cur.array("magic")?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = cur.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(GgufError::UnsupportedVersion {
                version,
                reason: "GGUF v1 (32-bit counts) is obsolete; re-convert the model",
            });
        }
        v if matches!(v.swap_bytes(), 1..=3) => {
            return Err(GgufError::UnsupportedVersion {
                version,
                reason: "this is a big-endian GGUF file; only little-endian files are supported",
            });
        }
        _ => {
            return Err(GgufError::UnsupportedVersion {
                version,
                reason: "only versions 2 and 3 exist",
            });
        }
    }

    let tensor_count_at = cur.offset();
    let tensor_count = cur.u64("tensor count")?;
    let kv_count_at = cur.offset();
    let kv_count = cur.u64("metadata entry count")?;
    let remaining = cur.remaining();
    let too_many = |what: &str, count: u64, at: u64, min: u64, available: u64| {
        GgufError::Malformed {
            offset: at,
            reason: format!(
                "{what} is {count}, but the {available} bytes available for them can hold at most {}",
                available / min
            ),
        }
    };
    let kv_bytes = kv_count
        .checked_mul(MIN_KV_BYTES)
        .filter(|&b| b <= remaining)
        .ok_or_else(|| {
            too_many(
                "metadata entry count",
                kv_count,
                kv_count_at,
                MIN_KV_BYTES,
                remaining,
            )
        })?;
    let ti_fits = tensor_count
        .checked_mul(MIN_TENSOR_INFO_BYTES)
        .is_some_and(|b| b <= remaining - kv_bytes);
    if !ti_fits {
        return Err(too_many(
            "tensor count",
            tensor_count,
            tensor_count_at,
            MIN_TENSOR_INFO_BYTES,
            remaining - kv_bytes,
        ));
    }

    // Counts are now bounded by the file size; still reserve conservatively.
    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(kv_count.min(1024) as usize);
    let mut key_index = HashMap::with_capacity(kv_count.min(1024) as usize);
    for _ in 0..kv_count {
        let key = cur.string("metadata key")?;
        if key_index.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        let value = read_kv_value(&mut cur).map_err(|e| e.in_metadata(&key))?;
        key_index.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }
    let get = |k: &str| {
        key_index
            .get(k)
            .and_then(|&i| metadata.get(i))
            .map(|(_, v)| v)
    };

    let architecture = match get(ARCHITECTURE_KEY) {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(GgufError::WrongType {
                key: ARCHITECTURE_KEY.to_owned(),
                expected: "string".to_owned(),
                found: other.describe(),
            });
        }
    };
    let alignment = match get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let a = v.as_u64().ok_or_else(|| GgufError::WrongType {
                key: ALIGNMENT_KEY.to_owned(),
                expected: "u32".to_owned(),
                found: v.describe(),
            })?;
            if a == 0 || !a.is_power_of_two() || a > u64::from(u32::MAX) {
                return Err(GgufError::BadMetadataValue {
                    key: ALIGNMENT_KEY.to_owned(),
                    reason: format!("alignment {a} is not a non-zero power of two that fits u32"),
                });
            }
            a
        }
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count.min(1024) as usize);
    let mut tensor_index = HashMap::with_capacity(tensor_count.min(1024) as usize);
    for _ in 0..tensor_count {
        let name = cur.string("tensor name")?;
        let info = read_tensor_info(&mut cur, name.clone(), &architecture)
            .map_err(|e| e.in_tensor(&name))?;
        if tensor_index.contains_key(&name) {
            return Err(GgufError::DuplicateTensor { name });
        }
        tensor_index.insert(name, tensors.len());
        tensors.push(info);
    }

    let file_len = bytes.len() as u64;
    let data_offset = align_up(cur.offset(), alignment).ok_or_else(|| GgufError::Malformed {
        offset: cur.offset(),
        reason: "data section offset overflows".to_owned(),
    })?;
    if !tensors.is_empty() && data_offset > file_len {
        return Err(GgufError::Truncated {
            what: "padding before the tensor data section".to_owned(),
            offset: cur.offset(),
            needed: data_offset - cur.offset(),
            available: cur.remaining(),
        });
    }
    let spans = check_tensor_ranges(&tensors, alignment, file_len.saturating_sub(data_offset))?;

    Ok(Header {
        version,
        metadata,
        key_index,
        tensors,
        tensor_index,
        architecture,
        alignment,
        data_offset,
        spans,
    })
}

fn read_kv_value(cur: &mut Cursor<'_>) -> Result<Value> {
    let at = cur.offset();
    let type_id = cur.u32("value type")?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::Malformed {
        offset: at,
        reason: format!("unknown metadata value type id {type_id} (valid ids are 0..=12)"),
    })?;
    read_value(cur, ty, 0)
}

fn read_bool(cur: &mut Cursor<'_>) -> Result<bool> {
    let at = cur.offset();
    match cur.u8("bool")? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(GgufError::Malformed {
            offset: at,
            reason: format!("bool byte is {b}, neither 0 nor 1"),
        }),
    }
}

fn read_value(cur: &mut Cursor<'_>, ty: ValueType, depth: usize) -> Result<Value> {
    Ok(match ty {
        ValueType::U8 => Value::U8(cur.u8("u8 value")?),
        ValueType::I8 => Value::I8(cur.u8("i8 value")? as i8),
        ValueType::U16 => Value::U16(cur.u16("u16 value")?),
        ValueType::I16 => Value::I16(cur.u16("i16 value")? as i16),
        ValueType::U32 => Value::U32(cur.u32("u32 value")?),
        ValueType::I32 => Value::I32(cur.u32("i32 value")? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(cur.u32("f32 value")?)),
        ValueType::Bool => Value::Bool(read_bool(cur)?),
        ValueType::String => Value::String(cur.string("string value")?),
        ValueType::Array => Value::Array(read_array(cur, depth + 1)?),
        ValueType::U64 => Value::U64(cur.u64("u64 value")?),
        ValueType::I64 => Value::I64(cur.u64("i64 value")? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(cur.u64("f64 value")?)),
    })
}

/// Reads `count` fixed-size little-endian elements with one bounds check.
fn fixed<const N: usize, T>(
    cur: &mut Cursor<'_>,
    count: usize,
    what: &str,
    f: impl Fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    let bytes = cur.take((count as u64).saturating_mul(N as u64), what)?;
    let (chunks, _) = bytes.as_chunks::<N>();
    Ok(chunks.iter().map(|c| f(*c)).collect())
}

fn read_array(cur: &mut Cursor<'_>, depth: usize) -> Result<Array> {
    let at = cur.offset();
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::Malformed {
            offset: at,
            reason: format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
        });
    }
    let type_id = cur.u32("array element type")?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::Malformed {
        offset: at,
        reason: format!("unknown array element type id {type_id} (valid ids are 0..=12)"),
    })?;
    let n = cur.count(ty.min_encoded_size(), "array element count")?;
    const W: &str = "array elements";
    Ok(match ty {
        ValueType::U8 => Array::U8(cur.take(n as u64, W)?.to_vec()),
        ValueType::I8 => Array::I8(cur.take(n as u64, W)?.iter().map(|&b| b as i8).collect()),
        ValueType::U16 => Array::U16(fixed(cur, n, W, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(fixed(cur, n, W, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(fixed(cur, n, W, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(fixed(cur, n, W, i32::from_le_bytes)?),
        ValueType::F32 => Array::F32(fixed(cur, n, W, f32::from_le_bytes)?),
        ValueType::U64 => Array::U64(fixed(cur, n, W, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(fixed(cur, n, W, i64::from_le_bytes)?),
        ValueType::F64 => Array::F64(fixed(cur, n, W, f64::from_le_bytes)?),
        ValueType::Bool => Array::Bool((0..n).map(|_| read_bool(cur)).collect::<Result<_>>()?),
        ValueType::String => {
            // `n` is bounded by remaining / 8, so this reservation is proportional to the file.
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(cur.string("array string element")?);
            }
            Array::String(v)
        }
        ValueType::Array => {
            let mut v = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                v.push(read_array(cur, depth + 1)?);
            }
            Array::Array(v)
        }
    })
}

fn read_tensor_info(cur: &mut Cursor<'_>, name: String, architecture: &str) -> Result<TensorInfo> {
    let bad = |reason: String| GgufError::BadTensor {
        name: name.clone(),
        reason,
    };
    let n_dims = cur.u32("dimension count")?;
    if n_dims as usize > MAX_DIMS {
        return Err(bad(format!(
            "{n_dims} dimensions (ggml allows at most {MAX_DIMS})"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cur.u64("dimension")?);
    }
    let type_id = cur.u32("type id")?;
    let offset = cur.u64("data offset")?;

    let mut n_elements: u64 = 1;
    for &d in &dims {
        n_elements = n_elements
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad(format!("element count of shape {dims:?} overflows i64")))?;
    }
    let kind = TensorType::from_id(type_id, architecture);
    let n_bytes = match kind {
        None => 0,
        Some(k) => {
            let row = dims.first().copied().unwrap_or(1);
            if k != TensorType::I2_S && !row.is_multiple_of(k.block_size()) {
                return Err(bad(format!(
                    "{k} needs rows (dims[0] = {row}) that are a multiple of {} elements",
                    k.block_size()
                )));
            }
            k.n_bytes(n_elements).map_err(|e| bad(e.to_string()))?
        }
    };
    Ok(TensorInfo {
        name,
        dims,
        type_id,
        kind,
        offset,
        n_elements,
        n_bytes,
    })
}

/// Checks alignment, bounds and overlap of every tensor's data range, and returns each tensor's
/// span (bytes up to the next tensor's start or the end of the data section).
fn check_tensor_ranges(tensors: &[TensorInfo], alignment: u64, data_len: u64) -> Result<Vec<u64>> {
    for t in tensors {
        let bad = |reason: String| GgufError::BadTensor {
            name: t.name.clone(),
            reason,
        };
        if !t.offset.is_multiple_of(alignment) {
            return Err(bad(format!(
                "data offset {} is not a multiple of the alignment {alignment}",
                t.offset
            )));
        }
        if t.offset > data_len {
            return Err(bad(format!(
                "data offset {} is past the end of the {data_len}-byte data section",
                t.offset
            )));
        }
        let end = t.offset.checked_add(t.n_bytes);
        if end.is_none_or(|e| e > data_len) {
            return Err(bad(format!(
                "{} data of shape {:?} needs {} bytes at offset {}, but the data section has only \
                 {data_len} bytes",
                t.kind.map_or("unknown", TensorType::name),
                t.dims,
                t.n_bytes,
                t.offset
            )));
        }
    }

    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors.get(i).map_or(0, |t| t.offset));
    // Sweep in offset order, remembering the furthest end seen so far and who owns it.
    let mut furthest: Option<(usize, u64)> = None;
    for &i in &order {
        let Some(t) = tensors.get(i) else { continue };
        // A tensor of unknown type occupies at least one byte unless it has no elements.
        let size = if t.kind.is_some() {
            t.n_bytes
        } else {
            u64::from(t.n_elements > 0)
        };
        if size == 0 {
            continue;
        }
        if let Some((owner, end)) = furthest
            && t.offset < end
            && let Some(first) = tensors.get(owner)
        {
            return Err(GgufError::Overlap {
                first: first.name.clone(),
                first_start: first.offset,
                first_end: end,
                second: t.name.clone(),
                second_start: t.offset,
            });
        }
        let end = t.offset.saturating_add(size);
        if furthest.is_none_or(|(_, e)| end > e) {
            furthest = Some((i, end));
        }
    }

    // Walk backwards in offset order: each tensor's span ends at the nearest strictly greater
    // start (tensors of zero elements may share an offset), or at the end of the data section.
    let mut spans = vec![0u64; tensors.len()];
    let mut next_start = data_len;
    let mut last_offset: Option<u64> = None;
    for &i in order.iter().rev() {
        let Some(t) = tensors.get(i) else { continue };
        if let Some(last) = last_offset
            && t.offset < last
        {
            next_start = last;
        }
        last_offset = Some(t.offset);
        if let Some(s) = spans.get_mut(i) {
            *s = next_start.saturating_sub(t.offset);
        }
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<GgufFile>();
        assert_send_sync::<TensorInfo>();
    }

    #[test]
    fn align_up_handles_edges() {
        assert_eq!(align_up(0, 32), Some(0));
        assert_eq!(align_up(33, 32), Some(64));
        assert_eq!(align_up(u64::MAX, 32), None);
        assert_eq!(align_up(5, 1), Some(5));
        assert_eq!(align_up(5, 0), None);
    }
}
