//! The training run: tokenizer, data, model, optimizer, schedule, evaluation, checkpoints,
//! progress display and the final export, driven by [`TrainOptions`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointMeta};
use crate::config::{HyperParams, ModelShape, Preset};
use crate::data::Dataset;
use crate::error::{Result, TrainError};
use crate::export::{GgufTernary, export_gguf, export_hf};
use crate::model::BitNetModel;
use crate::optim::{AdamW, clip_grad_norm};
use crate::tokenizer::TrainTokenizer;

/// Everything a training run needs; [`TrainOptions::new`] fills in the preset's defaults.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The text corpus.
    pub data: PathBuf,
    /// Output directory: checkpoint, tokenizer, log, exports.
    pub out: PathBuf,
    /// Model shape preset.
    pub preset: Preset,
    /// Optimisation settings (from the preset unless overridden).
    pub hyper: HyperParams,
    /// Seed of initialisation and batch sampling.
    pub seed: u64,
    /// Train the unquantized float baseline instead of BitNet.
    pub float: bool,
    /// Continue from `out/checkpoint.safetensors`.
    pub resume: bool,
    /// Use this `tokenizer.json` instead of training one.
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size of a trained tokenizer (preset's by default).
    pub vocab_size: Option<usize>,
    /// Show a progress bar.
    pub progress: bool,
    /// Write GGUF and Hugging Face exports at the end (BitNet runs only).
    pub export: bool,
    /// Stop after this many seconds of training (a speed measurement); the run is saved as if
    /// it had ended normally, without the final export.
    pub time_limit_s: Option<f64>,
    /// Stop (checkpointed) after this step without finishing the schedule, so a run can be
    /// interrupted at a known point and resumed.
    pub stop_at: Option<usize>,
}

impl TrainOptions {
    /// Options with the preset's defaults.
    pub fn new(data: impl Into<PathBuf>, out: impl Into<PathBuf>, preset: Preset) -> Self {
        TrainOptions {
            data: data.into(),
            out: out.into(),
            preset,
            hyper: preset.hyper(),
            seed: 1234,
            float: false,
            resume: false,
            tokenizer: None,
            vocab_size: None,
            progress: false,
            export: true,
            time_limit_s: None,
            stop_at: None,
        }
    }
}

/// The part of the run a resumed run must agree with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunConfig {
    shape: ModelShape,
    float: bool,
    seed: u64,
    batch_size: usize,
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// Steps completed in total (including before a resume).
    pub steps: usize,
    /// Parameter count.
    pub n_params: usize,
    /// The model shape trained.
    pub shape: ModelShape,
    /// Whether this was the float baseline.
    pub float: bool,
    /// Training tokens / validation tokens in the corpus.
    pub train_tokens: usize,
    /// Validation tokens.
    pub val_tokens: usize,
    /// Mean training loss over the last (up to) 50 steps of this run.
    pub train_loss: f32,
    /// Validation loss at the end (on the exported embedding for BitNet runs).
    pub val_loss: f32,
    /// `exp(val_loss)`.
    pub val_ppl: f32,
    /// Training throughput of this run (target tokens per second).
    pub tokens_per_s: f64,
    /// Files written by the export (empty when not exported).
    pub exports: Vec<PathBuf>,
}

fn val_loss(model: &BitNetModel, data: &Dataset, h: &HyperParams) -> Result<f32> {
    let batches = data.val_batches(h.eval_tokens, h.batch_size, model.device())?;
    if batches.is_empty() {
        return Ok(f32::NAN);
    }
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (ids, tgt) in &batches {
        let count = tgt.elem_count();
        sum += f64::from(model.loss(ids, tgt)?.to_vec0::<f32>()?) * count as f64;
        n += count;
    }
    Ok((sum / n as f64) as f32)
}

fn append_log(path: &Path, v: serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(TrainError::io(path))?;
    writeln!(f, "{v}").map_err(TrainError::io(path))
}

/// Runs training as `opts` says; see the crate docs for the files written.
pub fn train(opts: &TrainOptions) -> Result<TrainReport> {
    let h = &opts.hyper;
    if h.steps == 0 || h.batch_size == 0 || h.eval_every == 0 {
        return Err(TrainError::Options(
            "steps, batch size and eval interval must be at least 1".into(),
        ));
    }
    std::fs::create_dir_all(&opts.out).map_err(TrainError::io(&opts.out))?;
    let text = std::fs::read_to_string(&opts.data).map_err(TrainError::io(&opts.data))?;
    let tok_path = opts.out.join("tokenizer.json");
    let ckpt_path = opts.out.join("checkpoint.safetensors");
    let mut shape = opts.preset.shape();
    let tok = if opts.resume && tok_path.is_file() {
        TrainTokenizer::load(&tok_path)?
    } else if let Some(p) = &opts.tokenizer {
        TrainTokenizer::load(p)?
    } else {
        TrainTokenizer::train(&text, opts.vocab_size.unwrap_or(shape.vocab_size))?
    };
    tok.save(&tok_path)?;
    shape.vocab_size = tok.vocab_size();
    let tokens = tok.encode(&text)?;
    let data = Dataset::new(tokens, tok.bos, shape.context_length, h.val_fraction)?;
    let model = BitNetModel::new(shape.clone(), opts.float, opts.seed)?;
    let mut opt = AdamW::new(model.params(), h.beta1, h.beta2, h.weight_decay)?;
    let run = serde_json::to_string(&RunConfig {
        shape: shape.clone(),
        float: opts.float,
        seed: opts.seed,
        batch_size: h.batch_size,
    })
    .map_err(|e| TrainError::Options(e.to_string()))?;
    let mut start = 0;
    if opts.resume {
        if !ckpt_path.is_file() {
            return Err(TrainError::Checkpoint {
                path: ckpt_path,
                msg: "--resume given but there is no checkpoint".into(),
            });
        }
        let found = checkpoint::read_meta(&ckpt_path)?;
        if found.run != run {
            return Err(TrainError::Checkpoint {
                path: ckpt_path,
                msg: format!(
                    "was written by a different run configuration: {} (now {run})",
                    found.run
                ),
            });
        }
        start = checkpoint::load(&ckpt_path, &model, &mut opt)?.step;
    }
    let log_path = opts.out.join("log.jsonl");
    let pb = if opts.progress {
        let pb = ProgressBar::new(h.steps as u64);
        pb.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_position(start as u64);
        pb
    } else {
        ProgressBar::hidden()
    };
    let t0 = Instant::now();
    let mut recent: Vec<f32> = Vec::new();
    let tokens_per_step = h.batch_size * shape.context_length;
    let mut step = start;
    let mut last_val = f32::NAN;
    let mut stopped_early = false;
    while step < h.steps {
        let lr = h.lr_at(step);
        let (ids, tgt) = data.train_batch(opts.seed, step, h.batch_size, model.device())?;
        let loss = model.loss(&ids, &tgt)?;
        let lv = loss.to_vec0::<f32>()?;
        if !lv.is_finite() {
            return Err(TrainError::Diverged { step, loss: lv });
        }
        let mut grads = loss.backward()?;
        let gnorm = clip_grad_norm(model.params(), &mut grads, h.grad_clip)?;
        opt.step(&grads, lr)?;
        step += 1;
        recent.push(lv);
        if recent.len() > 50 {
            recent.remove(0);
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let tps = ((step - start) * tokens_per_step) as f64 / elapsed.max(1e-9);
        pb.set_position(step as u64);
        pb.set_message(format!(
            "loss {lv:.3} | val {last_val:.3} | {tps:.0} tok/s | lr {lr:.2e}"
        ));
        let out_of_time = opts.time_limit_s.is_some_and(|l| elapsed >= l)
            || opts.stop_at.is_some_and(|s| step >= s && step < h.steps);
        if step.is_multiple_of(h.eval_every) || step == h.steps || out_of_time {
            last_val = val_loss(&model, &data, h)?;
            append_log(
                &log_path,
                serde_json::json!({"step": step, "train_loss": lv, "val_loss": last_val,
                                   "lr": lr, "grad_norm": gnorm, "tokens_per_s": tps}),
            )?;
            checkpoint::save(
                &ckpt_path,
                &model,
                &opt,
                &CheckpointMeta {
                    step,
                    run: run.clone(),
                },
            )?;
        }
        if out_of_time {
            stopped_early = true;
            break;
        }
    }
    pb.finish_and_clear();
    let tokens_per_s =
        ((step - start) * tokens_per_step) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    let mut exports = Vec::new();
    if !opts.float && opts.export && !stopped_early {
        // The exports store the embedding as f16; evaluate what they will compute.
        model.round_embedding_to_f16()?;
        last_val = val_loss(&model, &data, h)?;
        let name = format!(
            "bitnet-b1.58-{}",
            match opts.preset {
                Preset::Tiny => "tiny",
                Preset::Small => "small",
            }
        );
        let i2s = opts.out.join("model.gguf");
        export_gguf(&model, &tok, GgufTernary::I2S, &name, &i2s)?;
        let tq2 = opts.out.join("model-tq2_0.gguf");
        export_gguf(&model, &tok, GgufTernary::TQ2_0, &name, &tq2)?;
        let hf = opts.out.join("hf");
        export_hf(&model, &tok, &hf)?;
        exports = vec![i2s, tq2, hf];
    } else if last_val.is_nan() {
        last_val = val_loss(&model, &data, h)?;
    }
    let report = TrainReport {
        steps: step,
        n_params: shape.n_params(),
        shape,
        float: opts.float,
        train_tokens: data.n_train(),
        val_tokens: data.n_val(),
        train_loss: recent.iter().sum::<f32>() / recent.len().max(1) as f32,
        val_loss: last_val,
        val_ppl: last_val.exp(),
        tokens_per_s,
        exports,
    };
    let summary = opts.out.join("summary.json");
    std::fs::write(
        &summary,
        serde_json::to_string_pretty(&report).map_err(|e| TrainError::Options(e.to_string()))?
            + "\n",
    )
    .map_err(TrainError::io(&summary))?;
    Ok(report)
}
