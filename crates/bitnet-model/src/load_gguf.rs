//! Binding a GGUF file's tensors (llama.cpp names) to the model.

use std::sync::Arc;

use bitnet_core::ops::{F16Source, FloatMatrix, FloatStorage, RowDecoder, decoded_dot_rows};
use bitnet_core::{LinearKernel, TernaryMatrix};
use bitnet_gguf::{GgufFile, TensorInfo, TensorType};

use crate::ModelError;
use crate::config::{Activation, ModelConfig};
use crate::model::Model;
use crate::source::{Norm, Proj, WeightSource, common_width, stacked_matrix};

fn tensor_err(name: &str, msg: impl Into<String>) -> ModelError {
    ModelError::Tensor {
        name: name.to_string(),
        msg: msg.into(),
    }
}

/// Reads the hyper-parameters from GGUF metadata; missing or contradictory keys are errors.
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig, ModelError> {
    let arch = file.architecture()?.to_string();
    let activation = match arch.as_str() {
        "bitnet-b1.58" | "bitnet-25" => Activation::Relu2,
        "bitnet" => match file.opt_str("bitnet.hidden_activation")? {
            None => Activation::Silu,
            Some(a) => Activation::parse(a).ok_or_else(|| {
                ModelError::Config(format!("bitnet.hidden_activation = '{a}' is not supported"))
            })?,
        },
        other => return Err(ModelError::Architecture(other.to_string())),
    };
    let key = |k: &str| format!("{arch}.{k}");
    let req = |k: &str| -> Result<usize, ModelError> { to_usize(&key(k), file.get_u64(&key(k))?) };
    let opt = |k: &str| -> Result<Option<usize>, ModelError> {
        file.opt_u64(&key(k))?
            .map(|v| to_usize(&key(k), v))
            .transpose()
    };
    let hidden_size = req("embedding_length")?;
    let n_heads = req("attention.head_count")?;
    let n_kv_heads = opt("attention.head_count_kv")?.unwrap_or(n_heads);
    if n_heads == 0 || hidden_size % n_heads != 0 {
        return Err(ModelError::Config(format!(
            "{} = {hidden_size} is not a multiple of {} = {n_heads}",
            key("embedding_length"),
            key("attention.head_count")
        )));
    }
    let head_dim = opt("attention.key_length")?.unwrap_or(hidden_size / n_heads);
    if let Some(rot) = opt("rope.dimension_count")?
        && rot != head_dim
    {
        return Err(ModelError::Config(format!(
            "{} = {rot} contradicts the head size {head_dim}; partial rotary embeddings are not supported",
            key("rope.dimension_count")
        )));
    }
    let embd = file
        .tensor("token_embd.weight")
        .ok_or_else(|| tensor_err("token_embd.weight", "missing"))?;
    let vocab_from_tensor = embd.dims.get(1).copied().unwrap_or(0) as usize;
    let vocab_size = match opt("vocab_size")? {
        Some(v) if v != vocab_from_tensor => {
            return Err(ModelError::Config(format!(
                "{} = {v} contradicts token_embd.weight's {vocab_from_tensor} rows",
                key("vocab_size")
            )));
        }
        _ => vocab_from_tensor,
    };
    let config = ModelConfig {
        architecture: arch.clone(),
        activation,
        hidden_size,
        intermediate_size: req("feed_forward_length")?,
        n_layers: req("block_count")?,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size,
        rope_theta: file.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
        rms_norm_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
        context_length: req("context_length")?,
        tied_embeddings: file.tensor("output.weight").is_none(),
    };
    config.validate()?;
    Ok(config)
}

fn to_usize(key: &str, v: u64) -> Result<usize, ModelError> {
    usize::try_from(v)
        .map_err(|_| ModelError::Config(format!("{key} = {v} does not fit this machine")))
}

/// A GGUF file as a [`WeightSource`] (llama.cpp tensor names).
pub struct GgufSource {
    file: Arc<GgufFile>,
    config: ModelConfig,
    zero_copy: bool,
}

impl GgufSource {
    /// Reads the hyper-parameters; tensors are decoded on demand.
    pub fn new(file: Arc<GgufFile>) -> Result<Self, ModelError> {
        let config = config_from_gguf(&file)?;
        Ok(Self {
            file,
            config,
            zero_copy: true,
        })
    }

    /// Whether f16 embeddings and heads are read in place from the mapped file (the default:
    /// resident memory stays near the file size) or copied into process memory (which the
    /// kernel may back with huge pages; llama.cpp's `--no-mmap`).
    pub fn zero_copy(mut self, on: bool) -> Self {
        self.zero_copy = on;
        self
    }

    /// The file.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// A BitLinear's decoded codes and scale, checked against its shape; its mapped pages are
    /// released afterwards.
    fn codes(&self, layer: usize, proj: Proj) -> Result<(Vec<i8>, f32), ModelError> {
        let (rows, cols) = proj.shape(&self.config);
        let prefix = format!("blk.{layer}.{}", proj.gguf_name());
        let m = linear_codes(&self.file, &prefix, rows, cols)?;
        // The caller repacks the codes into its own layout: the mapped bytes are done with, so
        // they stop counting against resident memory (a second read faults them back in).
        self.file.release_pages(&format!("{prefix}.weight"));
        Ok(m)
    }
}

impl WeightSource for GgufSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn ternary(&self, layer: usize, proj: Proj) -> Result<TernaryMatrix, ModelError> {
        let (rows, cols) = proj.shape(&self.config);
        let (codes, scale) = self.codes(layer, proj)?;
        TernaryMatrix::new(rows, cols, codes, scale).map_err(|e| {
            tensor_err(
                &format!("blk.{layer}.{}.weight", proj.gguf_name()),
                e.to_string(),
            )
        })
    }

    /// Appends the later projections' codes to the first one's buffer: stacking copies only
    /// them, and the codes are checked once.
    fn ternary_stacked(
        &self,
        layer: usize,
        projs: &[Proj],
    ) -> Result<(TernaryMatrix, Vec<(usize, f32)>), ModelError> {
        let cols = common_width(projs.iter().map(|p| p.shape(&self.config).1))?;
        let mut all = Vec::new();
        let mut segments = Vec::with_capacity(projs.len());
        for &p in projs {
            let (codes, scale) = self.codes(layer, p)?;
            segments.push((p.shape(&self.config).0, scale));
            if all.is_empty() {
                all = codes;
            } else {
                all.extend_from_slice(&codes);
            }
        }
        stacked_matrix(cols, all, segments).map_err(|e| {
            let names: Vec<_> = projs.iter().map(|p| p.gguf_name()).collect();
            tensor_err(&format!("blk.{layer}.{}", names.join("+")), e.to_string())
        })
    }

    fn norm(&self, layer: usize, norm: Norm) -> Result<Vec<f32>, ModelError> {
        let name = format!("blk.{layer}.{}.weight", norm.gguf_name());
        vector(&self.file, &name, norm.len(&self.config))
    }

    fn output_norm(&self) -> Result<Vec<f32>, ModelError> {
        vector(&self.file, "output_norm.weight", self.config.hidden_size)
    }

    fn embedding(&self) -> Result<FloatMatrix, ModelError> {
        float_matrix(
            &self.file,
            "token_embd.weight",
            self.config.vocab_size,
            self.config.hidden_size,
            self.zero_copy,
        )
    }

    fn head(&self) -> Result<Option<FloatMatrix>, ModelError> {
        if self.config.tied_embeddings {
            return Ok(None);
        }
        float_matrix(
            &self.file,
            "output.weight",
            self.config.vocab_size,
            self.config.hidden_size,
            self.zero_copy,
        )
        .map(Some)
    }
}

/// Loads a GGUF model, preparing every ternary linear with `kernel` (f16 heads stay in the
/// mapped file; see [`GgufSource::zero_copy`]).
pub fn load_gguf(file: Arc<GgufFile>, kernel: &dyn LinearKernel) -> Result<Model, ModelError> {
    Model::from_source(&GgufSource::new(file)?, kernel)
}

fn find<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.tensor(name)
        .ok_or_else(|| tensor_err(name, "missing from the file"))
}

fn kind(t: &TensorInfo) -> Result<TensorType, ModelError> {
    t.kind.ok_or_else(|| {
        tensor_err(
            &t.name,
            format!("unknown tensor type id {} for this architecture", t.type_id),
        )
    })
}

fn check_dims(t: &TensorInfo, want: &[usize]) -> Result<(), ModelError> {
    let got: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    // GGUF lists the innermost dimension first; trailing 1s are allowed.
    let trimmed: Vec<usize> = {
        let mut g = got.clone();
        while g.len() > want.len() && g.last() == Some(&1) {
            g.pop();
        }
        g
    };
    if trimmed != want {
        return Err(tensor_err(
            &t.name,
            format!("dims {got:?}, expected {want:?} (ggml order)"),
        ));
    }
    Ok(())
}

fn vector(file: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let t = find(file, name)?;
    check_dims(t, &[n])?;
    kind(t)?;
    Ok(file.decode_f32(t)?)
}

/// A Q8_0/Q6_K/Q4_K/Q4_0 (or other block-quantized) matrix decoded one row at a time from the
/// mapped file.
struct GgufRows {
    file: Arc<GgufFile>,
    index: usize,
    name: &'static str,
}

impl RowDecoder for GgufRows {
    fn decode_row(&self, r: usize, out: &mut [f32]) {
        let t = &self.file.tensors()[self.index];
        // The tensor's type, size and row width were checked at load (its last row was decoded
        // once), so a failure here is a bug, not bad input.
        if let Err(e) = self.file.decode_rows_f32(t, r, out) {
            panic!("decoding row {r} of {}: {e}", t.name);
        }
    }

    fn type_name(&self) -> &'static str {
        self.name
    }

    fn storage_bytes(&self) -> usize {
        self.file.tensors()[self.index].n_bytes as usize
    }

    /// Q8_0, Q6_K, Q4_K and Q4_0 rows are multiplied block by block (SIMD, activations
    /// quantized to int8 per 32 values, as ggml does); other formats decode rows.
    fn dot_rows(&self, first: usize, xs: &[f32], m: usize, out: &mut [f32]) {
        let t = &self.file.tensors()[self.index];
        let kind = t.kind.filter(|&k| bitnet_gguf::quants::supports_dot(k));
        let (Some(kind), Ok(row_len)) = (kind, usize::try_from(t.row_len())) else {
            return decoded_dot_rows(self, first, xs, m, out);
        };
        // As in `decode_row`: the type, size and row width were checked at load.
        let result = self.file.tensor_data(t).and_then(|data| {
            bitnet_gguf::quants::dot_rows_f32(kind, data, row_len, first, xs, m, out)
        });
        if let Err(e) = result {
            panic!("dot products of rows {first}.. of {}: {e}", t.name);
        }
    }
}

/// An F16 tensor viewed in place in the mapped file.
struct MappedF16 {
    file: Arc<GgufFile>,
    index: usize,
}

impl MappedF16 {
    /// `None` when the data cannot be viewed as f16 in place (misaligned), so the caller copies.
    fn new(file: Arc<GgufFile>, t: &TensorInfo) -> Option<Self> {
        let index = file.tensors().iter().position(|x| x.name == t.name)?;
        let view = Self { file, index };
        let ok = view.slice().is_some();
        ok.then_some(view)
    }

    fn slice(&self) -> Option<&[half::f16]> {
        let t = &self.file.tensors()[self.index];
        let bytes = self.file.tensor_data(t).ok()?;
        bytemuck::try_cast_slice(bytes).ok()
    }
}

impl F16Source for MappedF16 {
    fn f16s(&self) -> &[half::f16] {
        // Checked in `new`; the map is immutable, so the view cannot fail later.
        self.slice().unwrap_or_default()
    }
}

fn float_matrix(
    file: &Arc<GgufFile>,
    name: &str,
    rows: usize,
    cols: usize,
    zero_copy: bool,
) -> Result<FloatMatrix, ModelError> {
    let t = find(file, name)?;
    check_dims(t, &[cols, rows])?;
    let k = kind(t)?;
    let storage = match k {
        // f16/bf16 values convert to f32 and back exactly.
        TensorType::F32 => FloatStorage::F32(file.decode_f32(t)?),
        TensorType::F16 => match MappedF16::new(file.clone(), t).filter(|_| zero_copy) {
            // Zero-copy: the head is read straight from the mapped file.
            Some(m) => FloatStorage::F16Mapped(Box::new(m)),
            // A copy, straight from the bytes (no f32 detour, twice the size); the mapped pages
            // are released once copied.
            None => {
                let v = file
                    .tensor_data(t)?
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                    .collect();
                file.release_pages(name);
                FloatStorage::F16(v)
            }
        },
        TensorType::BF16 => {
            let v = file
                .tensor_data(t)?
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]))
                .collect();
            file.release_pages(name);
            FloatStorage::BF16(v)
        }
        TensorType::Q4_0 | TensorType::Q8_0 | TensorType::Q4_K | TensorType::Q6_K => {
            if !(cols as u64).is_multiple_of(k.block_size()) {
                return Err(tensor_err(
                    name,
                    format!("row width {cols} is not a multiple of the {k:?} block"),
                ));
            }
            let index = file
                .tensors()
                .iter()
                .position(|x| x.name == name)
                .ok_or_else(|| tensor_err(name, "missing"))?;
            let mut last = vec![0.0f32; cols];
            file.decode_rows_f32(t, rows - 1, &mut last)?;
            FloatStorage::Rows(Box::new(GgufRows {
                file: file.clone(),
                index,
                name: k.name(),
            }))
        }
        other => {
            return Err(tensor_err(
                name,
                format!("type {other:?} is not supported for embeddings or heads"),
            ));
        }
    };
    Ok(FloatMatrix::new(rows, cols, storage)?)
}

fn linear_codes(
    file: &GgufFile,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<(Vec<i8>, f32), ModelError> {
    let wname = format!("{name}.weight");
    let t = find(file, &wname)?;
    check_dims(t, &[cols, rows])?;
    kind(t)?;
    let tern = file.decode_ternary(t)?;
    let mut scale = tern.scale;
    // llama.cpp's converters may store the per-tensor scale separately (`<name>.scale`, shape
    // {1}); it multiplies the matmul output.
    let sname = format!("{name}.scale");
    if let Some(st) = file.tensor(&sname) {
        kind(st)?;
        match file.decode_f32(st)?.as_slice() {
            [s] => scale *= s,
            other => {
                return Err(tensor_err(
                    &sname,
                    format!("{} values, expected one scale", other.len()),
                ));
            }
        }
    }
    Ok((tern.codes, scale))
}
