//! Finding and loading a model: a GGUF file, a Hugging Face directory, or a hub repo id resolved
//! through the standard Hugging Face cache; plus its tokenizer and chat template.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnet_core::LinearKernel;
use bitnet_gguf::GgufFile;
use bitnet_hf::HfModel;
use bitnet_hf::hub::{self, HubOptions};
use bitnet_model::KvType;
use bitnet_tokenizer::{ChatTemplate, GgufVocab, Tokenizer};

use crate::{Engine, EngineError, Inner};

/// Where the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The first CUDA GPU when one and its libraries are present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU by index.
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    format!("unknown device '{s}' (expected auto, cpu, cuda or cuda:N)")
                }),
        }
    }
}

/// The kind of file a model came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// A GGUF file.
    Gguf,
    /// A Hugging Face directory (config.json + safetensors).
    HuggingFace,
}

/// What was loaded, for reports.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The resolved local path.
    pub path: PathBuf,
    /// Its format.
    pub format: ModelFormat,
    /// The linear kernel in use.
    pub kernel: String,
    /// Threads the kernels run on.
    pub threads: usize,
    /// The device in words (`cpu`, `cuda:0 (NVIDIA H100 ..., sm_90)`).
    pub device: String,
    /// Why `auto` chose the CPU, when it did.
    pub device_note: Option<String>,
}

/// Options for loading a model; `build` loads it.
#[derive(Clone, Debug)]
pub struct EngineBuilder {
    model: String,
    kernel: Option<String>,
    threads: Option<usize>,
    context_length: Option<usize>,
    max_kv_bytes: Option<usize>,
    device: Device,
    gpu_head: bitnet_cuda::HeadType,
    kv: KvType,
    offline: bool,
    revision: Option<String>,
    progress: bool,
    mmap: bool,
    head_screen: bool,
    bytes: Option<&'static [u8]>,
}

impl EngineBuilder {
    /// Starts from a model argument: a GGUF file, a Hugging Face directory or a hub repo id
    /// (`owner/name`, or `owner/name:file.gguf` to pick one GGUF of a repo).
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            kernel: None,
            threads: None,
            context_length: None,
            max_kv_bytes: None,
            device: Device::Auto,
            gpu_head: Default::default(),
            kv: KvType::default(),
            offline: false,
            revision: None,
            progress: false,
            mmap: true,
            head_screen: true,
            bytes: None,
        }
    }

    /// A GGUF model held in memory (the one bundled into a binary); `name` is what reports show
    /// as its path.
    pub fn from_gguf_bytes(name: impl Into<String>, bytes: &'static [u8]) -> Self {
        Self {
            bytes: Some(bytes),
            ..Self::new(name)
        }
    }

    /// Forces a linear kernel by name (`scalar`, ...; default: `BITNET_KERNEL` or the best).
    pub fn kernel(mut self, name: impl Into<String>) -> Self {
        self.kernel = Some(name.into());
        self
    }

    /// Threads for the kernels and the head (default: the machine's physical cores).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Caps the context (prompt + output) below the model's trained length.
    pub fn context_length(mut self, n: usize) -> Self {
        self.context_length = Some(n);
        self
    }

    /// Caps the KV cache memory of one generation; the context shrinks to fit.
    pub fn max_kv_bytes(mut self, bytes: usize) -> Self {
        self.max_kv_bytes = Some(bytes);
        self
    }

    /// Chooses the device.
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// How the head is stored on a GPU (default: as in the file).
    pub fn gpu_head(mut self, head: bitnet_cuda::HeadType) -> Self {
        self.gpu_head = head;
        self
    }

    /// How the KV cache stores keys and values (default: f16, as llama.cpp). On a GPU each maps
    /// onto the backend's own type of the same name (q8: the same codes and scales as the CPU's).
    pub fn kv(mut self, kv: KvType) -> Self {
        self.kv = kv;
        self
    }

    /// Uses only the local Hugging Face cache for hub ids.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// A hub revision (branch, tag or commit) for hub ids.
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = Some(revision.into());
        self
    }

    /// Reads f16 heads in place from the memory-mapped file (default) instead of copying them
    /// into process memory.
    pub fn mmap(mut self, on: bool) -> Self {
        self.mmap = on;
        self
    }

    /// Keeps an int8 screen of the head on the CPU (default: on) so that greedy and top-k
    /// decoding read about half of the head's bytes, with the same tokens
    /// ([`bitnet_model::Model::with_head_screen`]; it costs `vocab x hidden` bytes of memory).
    pub fn head_screen(mut self, on: bool) -> Self {
        self.head_screen = on;
        self
    }

    /// Shows download progress bars on stderr, and says there when GPU kernels are compiled
    /// (their first use on a GPU architecture).
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Resolves the model argument to a local path (downloading if needed).
    pub fn resolve(&self) -> Result<PathBuf, EngineError> {
        let env = HubOptions::from_env();
        let opts = HubOptions {
            offline: self.offline || env.offline,
            revision: self.revision.clone(),
            progress: self.progress,
            ..env
        };
        Ok(hub::resolve(&self.model, &opts)?)
    }

    /// Loads the model, its tokenizer and chat template.
    pub fn build(self) -> Result<Engine, EngineError> {
        let (gpu, device_note) = self.pick_device()?;
        // The GPU and its KV element type.
        let gpu = gpu.map(|o| (o, gpu_kv(self.kv)));
        let kernel: Arc<dyn LinearKernel> = match &self.kernel {
            Some(name) => {
                bitnet_cpu::kernel_by_name(name).map_err(bitnet_model::ModelError::from)?
            }
            None => bitnet_cpu::default_kernel().map_err(bitnet_model::ModelError::from)?,
        };
        let threads = self
            .threads
            .unwrap_or_else(bitnet_core::pool::physical_cores);
        if threads == 0 {
            return Err(EngineError::Options("threads must be at least 1".into()));
        }
        let kernel = bitnet_cpu::with_threads(kernel, threads);
        // A model in memory is a GGUF image; anything else is found on disk (or the hub).
        let (path, source) = match self.bytes {
            Some(_) => (
                PathBuf::from(&self.model),
                Source::Gguf(PathBuf::from(&self.model)),
            ),
            None => {
                let path = self.resolve()?;
                let source = detect(&path)?;
                (path, source)
            }
        };
        let place =
            |src: &dyn bitnet_model::WeightSource| -> Result<bitnet_model::Model, EngineError> {
                match gpu {
                    None => Ok(bitnet_model::Model::from_source(src, kernel.as_ref())?
                        .with_kv_type(self.kv)
                        .with_head_screen(self.head_screen)),
                    Some((ordinal, kv)) => {
                        let mut max_context = src.config().context_length;
                        if let Some(n) = self.context_length {
                            max_context = max_context.min(n.max(1));
                        }
                        let opts = bitnet_cuda::CudaOptions {
                            ordinal,
                            kv,
                            head: self.gpu_head,
                            max_context,
                            progress: self.progress,
                        };
                        let cuda = bitnet_cuda::CudaModel::load(src, opts)?;
                        Ok(bitnet_model::Model::on_device(
                            src.config().clone(),
                            src.embedding()?,
                            Box::new(cuda),
                        )?
                        .with_kv_type(self.kv))
                    }
                }
            };
        let (model, tokenizer, template, format) = match source {
            Source::Gguf(file) => {
                let gguf = Arc::new(match self.bytes {
                    Some(b) => GgufFile::from_bytes(b.to_vec())?,
                    None => GgufFile::open(&file)?,
                });
                let source = bitnet_model::GgufSource::new(gguf.clone())?.zero_copy(self.mmap);
                let model = place(&source)?;
                let vocab = gguf_vocab(&gguf)?;
                let tokenizer = vocab.as_ref().map(Tokenizer::from_gguf_vocab).transpose()?;
                let template = vocab.and_then(|v| v.chat_template);
                (model, tokenizer, template, ModelFormat::Gguf)
            }
            Source::Hf(dir) => {
                let hf = HfModel::open(&dir)?;
                let model = place(&bitnet_model::HfSource::new(&hf)?)?;
                let tokenizer = crate::inspect::load_hf_tokenizer(&hf)?;
                let template = tokenizer
                    .as_ref()
                    .and_then(|t| t.chat_template().map(str::to_string));
                (model, tokenizer, template, ModelFormat::HuggingFace)
            }
        };
        let chat_template = match template {
            Some(src) => Some(ChatTemplate::new(&src)?),
            None if tokenizer.is_some() => Some(ChatTemplate::builtin_bitnet_2b4t()),
            None => None,
        };
        let mut context_length = model.config().context_length;
        if let Some(n) = self.context_length {
            if n == 0 {
                return Err(EngineError::Options(
                    "context length must be at least 1".into(),
                ));
            }
            context_length = context_length.min(n);
        }
        if let Some(limit) = self.max_kv_bytes {
            let per_pos = model.kv_bytes_per_position();
            let fit = limit / per_pos.max(1);
            if fit < 2 {
                return Err(EngineError::Options(format!(
                    "a KV budget of {limit} bytes holds fewer than 2 positions ({per_pos} bytes each)"
                )));
            }
            context_length = context_length.min(fit);
        }
        let info = ModelInfo {
            path,
            format,
            kernel: model.kernel_name().to_string(),
            threads,
            device: model.device().unwrap_or_else(|| "cpu".into()),
            device_note,
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                chat_template,
                context_length,
                info,
            }),
        })
    }
}

/// The GPU backend's KV element type for `kv`.
fn gpu_kv(kv: KvType) -> bitnet_cuda::KvType {
    match kv {
        KvType::F32 => bitnet_cuda::KvType::F32,
        KvType::F16 => bitnet_cuda::KvType::F16,
        KvType::Q8 => bitnet_cuda::KvType::Q8,
    }
}

impl EngineBuilder {
    /// The GPU to load onto (`None`: the CPU) and, for `auto` falling back, why.
    fn pick_device(&self) -> Result<(Option<usize>, Option<String>), EngineError> {
        match self.device {
            Device::Cpu => Ok((None, None)),
            Device::Cuda(n) => {
                let count = bitnet_cuda::device_count()
                    .map_err(|e| EngineError::Device(format!("cuda:{n}: {e}")))?;
                if n >= count {
                    return Err(EngineError::Device(format!(
                        "cuda:{n} requested, but {count} CUDA device(s) are present"
                    )));
                }
                Ok((Some(n), None))
            }
            Device::Auto => match bitnet_cuda::device_count() {
                Ok(n) if n > 0 => Ok((Some(0), None)),
                Ok(_) => Ok((None, Some("no CUDA device found".into()))),
                Err(e) => Ok((None, Some(e.to_string()))),
            },
        }
    }
}

pub(crate) enum Source {
    Gguf(PathBuf),
    Hf(PathBuf),
}

/// GGUF files start with this magic.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

pub(crate) fn detect(path: &Path) -> Result<Source, EngineError> {
    let io = |source| EngineError::Io {
        path: path.display().to_string(),
        source,
    };
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(Source::Hf(path.to_path_buf()));
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
        return match ggufs.as_slice() {
            [one] => Ok(Source::Gguf(one.clone())),
            [] => Err(EngineError::Source(format!(
                "{}: neither a config.json (Hugging Face model) nor a .gguf file is in this directory",
                path.display()
            ))),
            many => Err(EngineError::Source(format!(
                "{}: several .gguf files, pick one: {}",
                path.display(),
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        };
    }
    let mut magic = [0u8; 4];
    use std::io::Read;
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(io)?;
    if n == 4 && &magic == GGUF_MAGIC {
        Ok(Source::Gguf(path.to_path_buf()))
    } else if path.file_name().is_some_and(|n| n == "config.json") {
        Ok(Source::Hf(
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        ))
    } else {
        Err(EngineError::Source(format!(
            "{}: not a GGUF file (no GGUF magic) and not a Hugging Face model directory",
            path.display()
        )))
    }
}

/// Reads the tokenizer metadata of a GGUF file, if it has any.
pub fn gguf_vocab(file: &GgufFile) -> Result<Option<GgufVocab>, EngineError> {
    let Some(model) = file.opt_str("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    let id = |key: &str| -> Result<Option<u32>, EngineError> {
        Ok(match file.opt_u64(key)? {
            Some(v) => Some(
                u32::try_from(v)
                    .map_err(|_| EngineError::Source(format!("{key} = {v} is not a token id")))?,
            ),
            None => None,
        })
    };
    Ok(Some(GgufVocab {
        model: model.to_string(),
        pre: file.opt_str("tokenizer.ggml.pre")?.map(str::to_string),
        tokens: file.get_string_array("tokenizer.ggml.tokens")?.to_vec(),
        token_types: file
            .opt_i32_array("tokenizer.ggml.token_type")?
            .map(<[i32]>::to_vec),
        merges: file
            .opt_string_array("tokenizer.ggml.merges")?
            .map(<[String]>::to_vec)
            .unwrap_or_default(),
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        eot: id("tokenizer.ggml.eot_token_id")?,
        add_bos: file.opt_bool("tokenizer.ggml.add_bos_token")?,
        add_eos: file.opt_bool("tokenizer.ggml.add_eos_token")?,
        chat_template: file.opt_str("tokenizer.chat_template")?.map(str::to_string),
    }))
}
