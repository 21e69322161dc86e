//! Writing GGUF v3 (or v2) files: metadata in insertion order, tensor infos, and tensor data
//! aligned to `general.alignment`, laid out the way llama.cpp and gguf-py lay them out
//! (contiguous tensors in insertion order, each padded to the alignment).
//!
//! Everything is validated when added and again when written (the architecture, which decides
//! what a type id means, may be set after a tensor is added), so a written file always reopens
//! with [`crate::GgufFile`].

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{GgufError, Result};
use crate::reader::{
    ALIGNMENT_KEY, ARCHITECTURE_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS, align_up,
};
use crate::types::TensorType;
use crate::value::{Array, MAX_ARRAY_DEPTH, Value};

/// llama.cpp's `GGML_MAX_NAME`: tensor names must be shorter (they are stored NUL-terminated).
pub const MAX_TENSOR_NAME_BYTES: usize = 63;

const CTX: &str = "GGUF writer";

/// Tensor bytes handed to the writer: owned, or borrowed (e.g. straight from another file's
/// memory map) so a converter can copy multi-gigabyte tensors without holding them twice.
#[derive(Debug, Clone)]
pub enum TensorBytes<'a> {
    /// Bytes owned by the writer.
    Owned(Vec<u8>),
    /// Bytes borrowed for the writer's lifetime.
    Borrowed(&'a [u8]),
}

impl TensorBytes<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            TensorBytes::Owned(v) => v,
            TensorBytes::Borrowed(s) => s,
        }
    }
}

impl From<Vec<u8>> for TensorBytes<'_> {
    fn from(v: Vec<u8>) -> Self {
        TensorBytes::Owned(v)
    }
}

impl<'a> From<&'a [u8]> for TensorBytes<'a> {
    fn from(s: &'a [u8]) -> Self {
        TensorBytes::Borrowed(s)
    }
}

#[derive(Debug)]
struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    data: TensorBytes<'a>,
}

/// Builds a GGUF file in memory (metadata, tensor list) and writes it in one pass.
#[derive(Debug)]
pub struct GgufWriter<'a> {
    version: u32,
    alignment: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor<'a>>,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> GgufWriter<'a> {
    /// A GGUF v3 writer with the default 32-byte alignment.
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT as u32,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// A writer for GGUF version 2 or 3 (same layout; 3 is what current tools write).
    pub fn with_version(version: u32) -> Result<Self> {
        if !matches!(version, 2 | 3) {
            return Err(GgufError::input(
                CTX,
                format!("version {version}: only GGUF v2 and v3 can be written"),
            ));
        }
        Ok(GgufWriter {
            version,
            ..Self::new()
        })
    }

    /// Sets the data alignment (a non-zero power of two). A value other than 32 is recorded as
    /// `general.alignment` (u32) so readers find the data.
    pub fn set_alignment(&mut self, alignment: u32) -> Result<()> {
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(GgufError::input(
                CTX,
                format!("alignment {alignment} is not a non-zero power of two"),
            ));
        }
        self.alignment = alignment;
        if let Some((_, v)) = self.metadata.iter_mut().find(|(k, _)| k == ALIGNMENT_KEY) {
            *v = Value::U32(alignment);
        }
        Ok(())
    }

    /// Appends a metadata entry. Keys must be unique and non-empty; nested arrays may not be
    /// deeper than [`MAX_ARRAY_DEPTH`]. `general.alignment` must be a u32 power of two and sets
    /// the alignment; `general.architecture` must be a string.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Result<()> {
        let key = key.into();
        let value = value.into();
        if key.is_empty() {
            return Err(GgufError::input(CTX, "metadata keys must not be empty"));
        }
        if self.metadata.iter().any(|(k, _)| *k == key) {
            return Err(GgufError::DuplicateKey { key });
        }
        if let Value::Array(a) = &value
            && a.depth() > MAX_ARRAY_DEPTH
        {
            return Err(GgufError::input(
                CTX,
                format!("key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
            ));
        }
        if key == ALIGNMENT_KEY {
            let Value::U32(a) = value else {
                return Err(GgufError::WrongType {
                    key,
                    expected: "u32".to_owned(),
                    found: value.describe(),
                });
            };
            self.set_alignment(a)?;
        }
        if key == ARCHITECTURE_KEY && !matches!(value, Value::String(_)) {
            return Err(GgufError::WrongType {
                key,
                expected: "string".to_owned(),
                found: value.describe(),
            });
        }
        self.metadata.push((key, value));
        Ok(())
    }

    fn architecture(&self) -> &str {
        self.metadata
            .iter()
            .find(|(k, _)| k == ARCHITECTURE_KEY)
            .and_then(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// Appends a tensor. `dims` is in ggml order (`dims[0]` innermost); `type_id` is interpreted
    /// with the `general.architecture` set so far (set it first for I2_S, id 36), and `data`
    /// must be exactly the size that type and shape need.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        type_id: u32,
        data: impl Into<TensorBytes<'a>>,
    ) -> Result<()> {
        let t = PendingTensor {
            name: name.into(),
            dims,
            type_id,
            data: data.into(),
        };
        if self.tensors.iter().any(|u| u.name == t.name) {
            return Err(GgufError::DuplicateTensor { name: t.name });
        }
        check_tensor(&t, self.architecture())?;
        self.tensors.push(t);
        Ok(())
    }

    /// Writes the file to `w`; returns the number of bytes written.
    pub fn write(&self, mut w: impl Write) -> Result<u64> {
        let arch = self.architecture();
        for t in &self.tensors {
            check_tensor(t, arch)?;
        }
        let io = |source| GgufError::Io {
            path: PathBuf::from("<GGUF output>"),
            source,
        };
        let align = u64::from(self.alignment);
        let extra_alignment_kv = self.alignment != DEFAULT_ALIGNMENT as u32
            && !self.metadata.iter().any(|(k, _)| k == ALIGNMENT_KEY);

        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&self.version.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        let n_kv = self.metadata.len() as u64 + u64::from(extra_alignment_kv);
        head.extend_from_slice(&n_kv.to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut head, k);
            put_value(&mut head, v);
        }
        if extra_alignment_kv {
            put_string(&mut head, ALIGNMENT_KEY);
            put_value(&mut head, &Value::U32(self.alignment));
        }
        let mut offset = 0u64;
        let overflow = || GgufError::input(CTX, "total data size overflows u64");
        for t in &self.tensors {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.type_id.to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            let len = t.data.as_slice().len() as u64;
            offset = offset
                .checked_add(len)
                .and_then(|o| align_up(o, align))
                .ok_or_else(overflow)?;
        }
        let head_len = head.len() as u64;
        let data_start = align_up(head_len, align).ok_or_else(overflow)?;
        w.write_all(&head).map_err(io)?;
        zeros(&mut w, data_start - head_len).map_err(io)?;

        let mut written = data_start;
        for t in &self.tensors {
            let data = t.data.as_slice();
            w.write_all(data).map_err(io)?;
            let len = data.len() as u64;
            let padded = align_up(len, align).ok_or_else(overflow)?;
            zeros(&mut w, padded - len).map_err(io)?;
            written += padded;
        }
        w.flush().map_err(io)?;
        Ok(written)
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write(&mut out)?;
        Ok(out)
    }

    /// Writes the file to `path` (created or truncated).
    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<u64> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let n = self.write(&mut w).map_err(|e| match e {
            GgufError::Io { source, .. } => io(source),
            other => other,
        })?;
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(n)
    }
}

/// Validates one tensor against the architecture's type table.
fn check_tensor(t: &PendingTensor<'_>, architecture: &str) -> Result<()> {
    let bad = |reason: String| GgufError::BadTensor {
        name: t.name.clone(),
        reason,
    };
    if t.name.is_empty() || t.name.len() > MAX_TENSOR_NAME_BYTES {
        return Err(bad(format!(
            "names must be 1..={MAX_TENSOR_NAME_BYTES} bytes (llama.cpp's limit), this one has {}",
            t.name.len()
        )));
    }
    if t.dims.len() > MAX_DIMS {
        return Err(bad(format!(
            "{} dimensions (at most {MAX_DIMS})",
            t.dims.len()
        )));
    }
    let n = t
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| {
            acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64)
        })
        .ok_or_else(|| bad(format!("element count of shape {:?} overflows i64", t.dims)))?;
    let kind = TensorType::from_id(t.type_id, architecture).ok_or_else(|| {
        bad(format!(
            "type id {} is not a supported type for architecture {architecture:?} \
             (I2_S, id 36, needs general.architecture bitnet-b1.58 or bitnet-25 set first)",
            t.type_id
        ))
    })?;
    let row = t.dims.first().copied().unwrap_or(1);
    if kind != TensorType::I2_S && !row.is_multiple_of(kind.block_size()) {
        return Err(bad(format!(
            "{kind} needs rows (dims[0] = {row}) that are a multiple of {} elements",
            kind.block_size()
        )));
    }
    let expected = kind.n_bytes(n).map_err(|e| bad(e.to_string()))?;
    let got = t.data.as_slice().len() as u64;
    if got != expected {
        return Err(bad(format!(
            "type {kind} with shape {:?} needs {expected} bytes, got {got}",
            t.dims
        )));
    }
    Ok(())
}

/// Writes `n` zero bytes without allocating `n` bytes (alignments can be large).
fn zeros(w: &mut impl Write, n: u64) -> std::io::Result<()> {
    std::io::copy(&mut std::io::Read::take(std::io::repeat(0), n), w).map(|_| ())
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value) {
    buf.extend_from_slice(&v.value_type().id().to_le_bytes());
    put_payload(buf, v);
}

fn put_payload(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.push(*x as u8),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(u8::from(*x)),
        Value::String(s) => put_string(buf, s),
        Value::Array(a) => put_array(buf, a),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(buf: &mut Vec<u8>, a: &Array) {
    buf.extend_from_slice(&a.element_type().id().to_le_bytes());
    buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
    fn each<T, const N: usize>(buf: &mut Vec<u8>, v: &[T], f: impl Fn(&T) -> [u8; N]) {
        for x in v {
            buf.extend_from_slice(&f(x));
        }
    }
    match a {
        Array::U8(v) => buf.extend_from_slice(v),
        Array::I8(v) => buf.extend(v.iter().map(|&x| x as u8)),
        Array::U16(v) => each(buf, v, |x| x.to_le_bytes()),
        Array::I16(v) => each(buf, v, |x| x.to_le_bytes()),
        Array::U32(v) => each(buf, v, |x| x.to_le_bytes()),
        Array::I32(v) => each(buf, v, |x| x.to_le_bytes()),
        Array::F32(v) => each(buf, v, |x| x.to_le_bytes()),
        Array::U64(v) => each(buf, v, |x| x.to_le_bytes()),
        Array::I64(v) => each(buf, v, |x| x.to_le_bytes()),
        Array::F64(v) => each(buf, v, |x| x.to_le_bytes()),
        Array::Bool(v) => buf.extend(v.iter().map(|&x| u8::from(x))),
        Array::String(v) => v.iter().for_each(|s| put_string(buf, s)),
        Array::Array(v) => v.iter().for_each(|inner| put_array(buf, inner)),
    }
}
