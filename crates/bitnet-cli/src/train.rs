//! `bitnet train`: quantization-aware training of a small BitNet b1.58 model, then export.

use std::path::PathBuf;

use anyhow::{Result, bail};
use bitnet_train::{Preset, TrainOptions};
use clap::Args;

/// Options of `bitnet train`.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// Text file to train on (the last --val-fraction of it is held out for validation).
    #[arg(long)]
    data: PathBuf,
    /// Model size: tiny (tests, seconds) or small (the default model, a few million parameters).
    #[arg(long, default_value = "small")]
    preset: String,
    /// Output directory: checkpoint, tokenizer.json, log.jsonl, model.gguf, model-tq2_0.gguf, hf/.
    #[arg(long)]
    out: PathBuf,
    /// Optimizer steps (default: the preset's).
    #[arg(long)]
    steps: Option<usize>,
    /// Continue from OUT/checkpoint.safetensors (same preset, seed, batch size and --float).
    #[arg(long)]
    resume: bool,
    /// Peak learning rate (default: the preset's).
    #[arg(long)]
    lr: Option<f64>,
    /// Sequences per step (default: the preset's).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Warm-up steps (default: the preset's).
    #[arg(long)]
    warmup: Option<usize>,
    /// Seed for initialisation and batch sampling.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Evaluate and checkpoint every N steps (default: the preset's).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Validation tokens per evaluation (default: the preset's).
    #[arg(long)]
    eval_tokens: Option<usize>,
    /// Fraction of the data held out for validation.
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Vocabulary size of the trained BPE tokenizer (default: the preset's).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Use this tokenizer.json instead of training one.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Train the float (unquantized) baseline of the same shape instead; nothing is exported.
    #[arg(long)]
    float: bool,
    /// Stop after this many seconds (a speed measurement; checkpointed, not exported).
    #[arg(long)]
    time_limit: Option<f64>,
    /// CPU threads for the tensor library (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs `bitnet train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let Some(preset) = Preset::parse(&args.preset) else {
        bail!("unknown preset {:?}: use tiny or small", args.preset);
    };
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // candle sizes its CPU pool from this variable the first time it runs an operation,
        // which happens after this point; no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    let mut o = TrainOptions::new(&args.data, &args.out, preset);
    let h = &mut o.hyper;
    if let Some(v) = args.steps {
        h.steps = v;
        h.eval_every = h.eval_every.min(v.max(1));
    }
    if let Some(v) = args.lr {
        h.lr = v;
    }
    if let Some(v) = args.batch_size {
        h.batch_size = v;
    }
    if let Some(v) = args.warmup {
        h.warmup_steps = v;
    }
    if let Some(v) = args.eval_every {
        h.eval_every = v;
    }
    if let Some(v) = args.eval_tokens {
        h.eval_tokens = v;
    }
    if let Some(v) = args.val_fraction {
        h.val_fraction = v;
    }
    o.seed = args.seed;
    o.float = args.float;
    o.resume = args.resume;
    o.tokenizer = args.tokenizer;
    o.vocab_size = args.vocab_size;
    o.time_limit_s = args.time_limit;
    o.progress = true;
    let s = {
        let mut s = preset.shape();
        if let Some(v) = o.vocab_size {
            s.vocab_size = v;
        }
        s
    };
    eprintln!(
        "training {} {} model (~{:.2}M parameters): hidden {}, {} layers, heads {}/{}, ffn {}, ctx {}; {} steps x {} sequences, lr {}",
        if o.float {
            "float baseline"
        } else {
            "BitNet b1.58"
        },
        args.preset,
        s.n_params() as f64 / 1e6,
        s.hidden_size,
        s.n_layers,
        s.n_heads,
        s.n_kv_heads,
        s.intermediate_size,
        s.context_length,
        o.hyper.steps,
        o.hyper.batch_size,
        o.hyper.lr
    );
    let r = bitnet_train::train(&o)?;
    println!(
        "steps {}  train loss {:.4}  val loss {:.4}  val ppl {:.2}  {:.0} tokens/s",
        r.steps, r.train_loss, r.val_loss, r.val_ppl, r.tokens_per_s
    );
    for p in &r.exports {
        println!("wrote {}", p.display());
    }
    println!("summary: {}", args.out.join("summary.json").display());
    Ok(())
}
