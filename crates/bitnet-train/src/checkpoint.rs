//! Training checkpoints: one safetensors file with the parameters (`param.<name>`), the AdamW
//! moments (`adam_m.<name>`, `adam_v.<name>`) and, in its metadata, the step count and the run
//! configuration. The data position needs nothing more: the batch of step `n` is a function of
//! the seed and `n` ([`crate::data::Dataset::train_batch`]).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Result, TrainError};
use crate::model::BitNetModel;
use crate::optim::AdamW;

/// What a checkpoint restores besides the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    /// Steps completed.
    pub step: usize,
    /// The run configuration as JSON (compared on resume).
    pub run: String,
}

fn bytes_of(t: &Tensor) -> Result<Vec<u8>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect())
}

/// Writes the checkpoint atomically (a temporary file renamed over `path`).
pub fn save(path: &Path, model: &BitNetModel, opt: &AdamW, meta: &CheckpointMeta) -> Result<()> {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for ((name, var), (m, v)) in model.params().iter().zip(opt.moments()) {
        let dims = var.as_tensor().dims().to_vec();
        data.push((
            format!("param.{name}"),
            dims.clone(),
            bytes_of(var.as_tensor())?,
        ));
        data.push((format!("adam_m.{name}"), dims.clone(), bytes_of(m)?));
        data.push((format!("adam_v.{name}"), dims, bytes_of(v)?));
    }
    let views = data
        .iter()
        .map(|(n, d, b)| {
            TensorView::new(Dtype::F32, d.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ck_err(path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let md: HashMap<String, String> = [
        ("step".to_string(), meta.step.to_string()),
        ("adam_t".to_string(), opt.t.to_string()),
        ("run".to_string(), meta.run.clone()),
    ]
    .into();
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, Some(md), &tmp).map_err(|e| ck_err(path, e))?;
    std::fs::rename(&tmp, path).map_err(TrainError::io(path))
}

fn ck_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Reads only the metadata of a checkpoint.
pub fn read_meta(path: &Path) -> Result<CheckpointMeta> {
    let bytes = std::fs::read(path).map_err(TrainError::io(path))?;
    let (_, md) = SafeTensors::read_metadata(&bytes).map_err(|e| ck_err(path, e))?;
    let md = md.metadata().clone().unwrap_or_default();
    let step = md
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ck_err(path, "no step in the metadata"))?;
    let run = md
        .get("run")
        .cloned()
        .ok_or_else(|| ck_err(path, "no run configuration in the metadata"))?;
    Ok(CheckpointMeta { step, run })
}

/// Restores parameters and optimizer state; returns the metadata.
pub fn load(path: &Path, model: &BitNetModel, opt: &mut AdamW) -> Result<CheckpointMeta> {
    let meta = read_meta(path)?;
    let bytes = std::fs::read(path).map_err(TrainError::io(path))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ck_err(path, e))?;
    let (_, md) = SafeTensors::read_metadata(&bytes).map_err(|e| ck_err(path, e))?;
    let adam_t = md
        .metadata()
        .as_ref()
        .and_then(|m| m.get("adam_t"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(meta.step);
    let dev = model.device().clone();
    let get = |name: &str| -> Result<Tensor> {
        let v = st
            .tensor(name)
            .map_err(|e| ck_err(path, format!("{name}: {e}")))?;
        if v.dtype() != Dtype::F32 {
            return Err(ck_err(
                path,
                format!("{name}: dtype {:?}, expected F32", v.dtype()),
            ));
        }
        let vals: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Tensor::from_vec(vals, v.shape(), &dev)?)
    };
    let mut params = HashMap::new();
    let mut moments = Vec::new();
    for (name, var) in model.params() {
        params.insert(name.clone(), get(&format!("param.{name}"))?);
        let (m, v) = (
            get(&format!("adam_m.{name}"))?,
            get(&format!("adam_v.{name}"))?,
        );
        if m.dims() != var.as_tensor().dims() || v.dims() != var.as_tensor().dims() {
            return Err(ck_err(
                path,
                format!("optimizer state of {name} has the wrong shape"),
            ));
        }
        moments.push((m, v));
    }
    model
        .load_params(|n| params.remove(n))
        .map_err(|e| ck_err(path, e))?;
    opt.set_moments(moments, adam_t);
    Ok(meta)
}
