//! `bitnet perplexity`: perplexity of a model on a text file (llama-perplexity style).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use bitnet_engine::{EngineBuilder, PerplexityOptions, perplexity};
use clap::Args;

/// Options of `bitnet perplexity`.
#[derive(Args, Clone, Debug)]
pub struct PerplexityArgs {
    /// A GGUF file, a Hugging Face model directory, or a hub repo id.
    #[arg(short, long, env = "BITNET_MODEL")]
    model: String,
    /// The text file to score.
    #[arg(short, long)]
    file: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored (default: the model's context, at most 512).
    #[arg(long = "ctx", short = 'c')]
    ctx: Option<usize>,
    /// Score at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Linear kernel (auto, scalar, ...).
    #[arg(long, default_value = "auto")]
    kernel: String,
    /// Use only the local Hugging Face cache for hub ids.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    kv: crate::KvArgs,
}

/// Runs `bitnet perplexity`.
pub fn run(args: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let builder = EngineBuilder::new(&args.model)
        .kernel(&args.kernel)
        .offline(args.offline)
        .progress(true);
    let engine = args.kv.apply(builder)?.build()?;
    let ctx = args.ctx.unwrap_or_else(|| engine.context_length().min(512));
    let opts = PerplexityOptions {
        ctx,
        max_chunks: args.chunks,
    };
    let mut err = std::io::stderr();
    let live = err.is_terminal();
    let r = perplexity(&engine, &text, &opts, |done, total, ppl| {
        if live && (done == total || done % (total / 100).max(1) == 0) {
            let _ = write!(err, "\r[{done}/{total}] ppl {ppl:.4}");
            let _ = err.flush();
        }
    })?;
    if live {
        eprintln!();
    }
    println!(
        "PPL = {:.4} +/- {:.4}  ({} chunks of {} tokens, {} tokens scored, mean NLL {:.4} +/- {:.4})",
        r.ppl, r.ppl_stderr, r.chunks, r.ctx, r.scored_tokens, r.mean_nll, r.nll_stderr
    );
    Ok(())
}
