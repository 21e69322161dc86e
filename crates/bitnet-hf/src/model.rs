//! A Hugging Face model directory: `config.json`, one `model.safetensors` or a sharded
//! `model.safetensors.index.json`, and the tokenizer side files.
//!
//! Every safetensors file is memory-mapped and its header validated against the file size
//! before anything is allocated from it; tensors are handed out as zero-copy byte slices.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, SafeTensors};
use serde::Deserialize;

use crate::{HfConfig, HfError};

/// File name of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of a sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// File name of the model config.
pub const CONFIG_FILE: &str = "config.json";

/// Element type of a stored tensor, as safetensors declares it.
///
/// Our own enum so callers do not depend on the `safetensors` crate version; types this crate
/// does not know yet map to [`DType::Other`] rather than being misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// Boolean (one byte).
    Bool,
    /// Unsigned byte (packed ternary weights use this).
    U8,
    /// Signed byte.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// FP8 E4M3.
    F8E4M3,
    /// FP8 E5M2.
    F8E5M2,
    /// Any other safetensors type (sub-byte floats, complex, FNUZ variants, future additions).
    Other,
}

impl DType {
    fn from_safetensors(d: safetensors::Dtype) -> DType {
        use safetensors::Dtype as S;
        match d {
            S::BOOL => DType::Bool,
            S::U8 => DType::U8,
            S::I8 => DType::I8,
            S::I16 => DType::I16,
            S::U16 => DType::U16,
            S::I32 => DType::I32,
            S::U32 => DType::U32,
            S::I64 => DType::I64,
            S::U64 => DType::U64,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::F32 => DType::F32,
            S::F64 => DType::F64,
            S::F8_E4M3 => DType::F8E4M3,
            S::F8_E5M2 => DType::F8E5M2,
            _ => DType::Other,
        }
    }

    /// Bytes per element, `None` for sub-byte or unknown types.
    pub fn size_in_bytes(self) -> Option<usize> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 | DType::F8E4M3 | DType::F8E5M2 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 => 8,
            DType::Other => return None,
        })
    }

    /// True for the float types [`crate::decode_f32`] converts.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::I64 => "I64",
            DType::U64 => "U64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::Other => "unsupported safetensors dtype",
        };
        f.write_str(s)
    }
}

/// A borrowed view of one stored tensor: its bytes stay in the memory map.
#[derive(Debug, Clone)]
pub struct TensorRef<'a> {
    /// The tensor's name in the checkpoint (used in error messages).
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Raw little-endian bytes, exactly `numel * dtype size` long (validated at open).
    pub data: &'a [u8],
}

impl TensorRef<'_> {
    /// Number of elements (product of the shape; validated not to overflow at open).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A validated safetensors header plus where the tensor data starts.
#[derive(Debug)]
struct Header {
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    metadata: Metadata,
}

/// Validates a safetensors buffer: header length against the buffer, then the `safetensors`
/// crate's own checks (JSON, contiguous offsets, dtype * shape == byte range, buffer fully
/// covered). `path` only labels errors.
fn parse_header(bytes: &[u8], path: &Path) -> Result<Header, HfError> {
    let file_len = bytes.len() as u64;
    let Some(len_bytes) = bytes.first_chunk::<8>() else {
        return Err(HfError::HeaderLength {
            path: path.to_path_buf(),
            claimed: 8,
            file_len,
        });
    };
    let claimed = u64::from_le_bytes(*len_bytes);
    if claimed > file_len - 8 {
        return Err(HfError::HeaderLength {
            path: path.to_path_buf(),
            claimed,
            file_len,
        });
    }
    let (n, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|source| HfError::Safetensors {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Header {
        data_start: 8 + n,
        metadata,
    })
}

fn tensor_in<'a>(bytes: &'a [u8], header: &'a Header, name: &'a str) -> Option<TensorRef<'a>> {
    let info = header.metadata.info(name)?;
    let (s, e) = info.data_offsets;
    // Offsets were validated against the buffer by read_metadata; `get` keeps this panic-free
    // even so.
    let data = bytes.get(header.data_start.checked_add(s)?..header.data_start.checked_add(e)?)?;
    Some(TensorRef {
        name,
        dtype: DType::from_safetensors(info.dtype),
        shape: info.shape.clone(),
        data,
    })
}

/// A validated safetensors file held in memory (or a map), for callers that have bytes rather
/// than a model directory; also the entry point of the `safetensors_header` fuzz target.
#[derive(Debug)]
pub struct SafetensorsView<'a> {
    bytes: &'a [u8],
    header: Header,
    names: Vec<String>,
}

impl<'a> SafetensorsView<'a> {
    /// Validates `bytes` as a complete safetensors file; `label` names it in errors.
    pub fn parse(bytes: &'a [u8], label: &Path) -> Result<Self, HfError> {
        let header = parse_header(bytes, label)?;
        let names = header.metadata.offset_keys();
        Ok(SafetensorsView {
            bytes,
            header,
            names,
        })
    }

    /// Tensor names in file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The tensor called `name`, if present.
    pub fn tensor<'s>(&'s self, name: &'s str) -> Option<TensorRef<'s>> {
        tensor_in(self.bytes, &self.header, name)
    }
}

struct Shard {
    path: PathBuf,
    map: Mmap,
    header: Header,
}

impl Shard {
    fn open(path: &Path) -> Result<Shard, HfError> {
        let file = File::open(path).map_err(|e| HfError::io(path, e))?;
        let len = file.metadata().map_err(|e| HfError::io(path, e))?.len();
        if len < 8 {
            return Err(HfError::HeaderLength {
                path: path.to_path_buf(),
                claimed: 8,
                file_len: len,
            });
        }
        // SAFETY: the map is read-only and private to this process. Like every mmap-based model
        // loader we assume the file is not truncated or rewritten while the model is open; doing
        // so would be undefined behaviour (typically SIGBUS), which is the documented
        // trade-off for zero-copy loading.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| HfError::io(path, e))?;
        let header = parse_header(&map, path)?;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            header,
        })
    }
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

/// Reads `model.safetensors.index.json` and checks every shard name is a plain relative path.
/// Returns tensor name -> shard file name.
pub(crate) fn read_index(path: &Path) -> Result<BTreeMap<String, String>, HfError> {
    let text = std::fs::read_to_string(path).map_err(|e| HfError::io(path, e))?;
    parse_index(&text, path)
}

pub(crate) fn parse_index(text: &str, path: &Path) -> Result<BTreeMap<String, String>, HfError> {
    let index: IndexFile = serde_json::from_str(text).map_err(|e| HfError::Index {
        path: path.to_path_buf(),
        message: format!("invalid index: {e}"),
    })?;
    if index.weight_map.is_empty() {
        return Err(HfError::Index {
            path: path.to_path_buf(),
            message: "weight_map is empty".into(),
        });
    }
    for (tensor, shard) in &index.weight_map {
        if !is_plain_relative(shard) {
            return Err(HfError::ShardEscape {
                index: path.to_path_buf(),
                tensor: tensor.clone(),
                shard: shard.clone(),
            });
        }
    }
    Ok(index.weight_map)
}

/// True for a non-empty relative path made only of normal components (no `..`, `.`, root,
/// drive prefix or backslash). Symlinks are not resolved on purpose: the hub cache's snapshot
/// files are symlinks into `blobs/`.
pub(crate) fn is_plain_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\\')
        && !p.contains('\0')
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !p.starts_with('/')
}

/// An opened Hugging Face model directory.
pub struct HfModel {
    dir: PathBuf,
    config: HfConfig,
    shards: Vec<Shard>,
    /// Tensor name -> index into `shards`; sorted for stable listings.
    tensors: BTreeMap<String, usize>,
    tokenizer_json: Option<PathBuf>,
    tokenizer_config: Option<PathBuf>,
    generation_config: Option<PathBuf>,
}

impl fmt::Debug for HfModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HfModel")
            .field("dir", &self.dir)
            .field(
                "shards",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

fn existing_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let p = dir.join(name);
    p.is_file().then_some(p)
}

impl HfModel {
    /// Opens `dir`: parses `config.json`, maps `model.safetensors` (preferred, as transformers
    /// does) or every shard of `model.safetensors.index.json`, and checks that each indexed
    /// tensor really is in its shard.
    pub fn open(dir: &Path) -> Result<HfModel, HfError> {
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            let hint = if dir.is_dir() {
                ""
            } else {
                " (the path is not a directory)"
            };
            return Err(HfError::Config {
                path: dir.to_path_buf(),
                message: format!("no {CONFIG_FILE} in this model directory{hint}"),
            });
        }
        let config = HfConfig::from_file(&config_path)?;

        let mut shards = Vec::new();
        let mut tensors = BTreeMap::new();
        let single = dir.join(SINGLE_FILE);
        let index_path = dir.join(INDEX_FILE);
        if single.is_file() {
            let shard = Shard::open(&single)?;
            for name in shard.header.metadata.offset_keys() {
                tensors.insert(name, 0);
            }
            shards.push(shard);
        } else if index_path.is_file() {
            let weight_map = read_index(&index_path)?;
            let mut shard_ids: HashMap<&str, usize> = HashMap::new();
            for (tensor, shard_name) in &weight_map {
                let id = match shard_ids.get(shard_name.as_str()) {
                    Some(&id) => id,
                    None => {
                        let shard_path = dir.join(shard_name);
                        if !shard_path.is_file() {
                            return Err(HfError::MissingShard {
                                index: index_path,
                                shard: shard_path,
                                tensor: tensor.clone(),
                            });
                        }
                        shards.push(Shard::open(&shard_path)?);
                        let id = shards.len() - 1;
                        shard_ids.insert(shard_name, id);
                        id
                    }
                };
                let shard = &shards[id];
                if shard.header.metadata.info(tensor).is_none() {
                    return Err(HfError::TensorNotInShard {
                        index: index_path,
                        shard: shard.path.clone(),
                        tensor: tensor.clone(),
                    });
                }
                tensors.insert(tensor.clone(), id);
            }
        } else {
            let mut hint = String::new();
            if let Ok(entries) = std::fs::read_dir(dir) {
                let ggufs: Vec<String> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".gguf"))
                    .collect();
                if !ggufs.is_empty() {
                    hint = format!(
                        "; found GGUF file(s) {}: pass the .gguf path instead",
                        ggufs.join(", ")
                    );
                } else if dir.join("pytorch_model.bin").exists() {
                    hint = "; pytorch_model.bin (pickle) checkpoints are not supported: convert to safetensors".into();
                }
            }
            return Err(HfError::NoWeights {
                dir: dir.to_path_buf(),
                hint,
            });
        }

        Ok(HfModel {
            dir: dir.to_path_buf(),
            config,
            shards,
            tensors,
            tokenizer_json: existing_file(dir, "tokenizer.json"),
            tokenizer_config: existing_file(dir, "tokenizer_config.json"),
            generation_config: existing_file(dir, "generation_config.json"),
        })
    }

    /// The model directory as given to [`HfModel::open`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &HfConfig {
        &self.config
    }

    /// All tensor names, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// True when the checkpoint holds `name` (e.g. to detect an untied `lm_head.weight`).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor called `name`, zero-copy.
    pub fn tensor<'s>(&'s self, name: &str) -> Result<TensorRef<'s>, HfError> {
        let not_found = || HfError::TensorNotFound {
            name: name.to_string(),
            dir: self.dir.clone(),
        };
        let (key, &id) = self.tensors.get_key_value(name).ok_or_else(not_found)?;
        let shard = self.shards.get(id).ok_or_else(not_found)?;
        tensor_in(&shard.map, &shard.header, key).ok_or_else(not_found)
    }

    /// The safetensors files backing this model.
    pub fn shard_paths(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    /// `tokenizer.json`, if the directory has one.
    pub fn tokenizer_json_path(&self) -> Option<&Path> {
        self.tokenizer_json.as_deref()
    }

    /// `tokenizer_config.json` (chat template, special-token flags), if present.
    pub fn tokenizer_config_path(&self) -> Option<&Path> {
        self.tokenizer_config.as_deref()
    }

    /// `generation_config.json` (default sampling, extra eos ids), if present.
    pub fn generation_config_path(&self) -> Option<&Path> {
        self.generation_config.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_file() -> Vec<u8> {
        let data: Vec<u8> = (0..8u8).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![2, 4], &data)
            .unwrap();
        safetensors::serialize([("w", view)], None).unwrap()
    }

    #[test]
    fn view_parses_and_slices() {
        let bytes = tiny_file();
        let v = SafetensorsView::parse(&bytes, Path::new("mem")).unwrap();
        assert_eq!(v.names(), ["w".to_string()]);
        let t = v.tensor("w").unwrap();
        assert_eq!(t.dtype, DType::U8);
        assert_eq!(t.shape, vec![2, 4]);
        assert_eq!(t.data, &(0..8u8).collect::<Vec<_>>()[..]);
        assert!(v.tensor("nope").is_none());
    }

    #[test]
    fn header_length_checks() {
        let bytes = tiny_file();
        let e = SafetensorsView::parse(&bytes[..5], Path::new("x.safetensors")).unwrap_err();
        assert!(
            matches!(e, HfError::HeaderLength { file_len: 5, .. }),
            "{e}"
        );
        let mut big = bytes.clone();
        big[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = SafetensorsView::parse(&big, Path::new("x.safetensors")).unwrap_err();
        assert!(e.to_string().contains("x.safetensors"), "{e}");
        assert!(matches!(
            e,
            HfError::HeaderLength {
                claimed: u64::MAX,
                ..
            }
        ));
        // Truncated data section: header fine, tensor bytes missing.
        let e = SafetensorsView::parse(&bytes[..bytes.len() - 1], Path::new("x.safetensors"))
            .unwrap_err();
        assert!(matches!(e, HfError::Safetensors { .. }), "{e}");
    }

    #[test]
    fn plain_relative_paths() {
        for ok in [
            "a.safetensors",
            "sub/a.safetensors",
            "model-00001-of-00002.safetensors",
        ] {
            assert!(is_plain_relative(ok), "{ok}");
        }
        for bad in [
            "",
            "../a",
            "a/../../b",
            "/etc/passwd",
            "./a",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(!is_plain_relative(bad), "{bad}");
        }
    }

    #[test]
    fn dtype_sizes() {
        assert_eq!(DType::BF16.size_in_bytes(), Some(2));
        assert_eq!(DType::Other.size_in_bytes(), None);
        assert_eq!(
            DType::from_safetensors(safetensors::Dtype::F4),
            DType::Other
        );
        assert_eq!(DType::BF16.to_string(), "BF16");
    }
}
