//! Perplexity of a model on a text, the way llama.cpp's `llama-perplexity` measures it: the text
//! is tokenized once, cut into chunks of `ctx` tokens (the first token of each chunk replaced by
//! BOS when the tokenizer adds one), each chunk is evaluated from an empty cache, and only the
//! predictions of the second half of each chunk are scored, so every scored token has at least
//! `ctx/2` tokens of context. The result is `exp(mean NLL)` with the standard error of the mean
//! carried through the exponential.

use bitnet_model::{Logits, Scratch};

use crate::{Engine, EngineError};

/// How to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerplexityOptions {
    /// Tokens per chunk (at least 2, at most the engine's context length).
    pub ctx: usize,
    /// Evaluate at most this many chunks (all when `None`).
    pub max_chunks: Option<usize>,
}

/// The measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    /// `exp(mean_nll)`.
    pub ppl: f64,
    /// Standard error of `ppl` (`ppl * nll_stderr`).
    pub ppl_stderr: f64,
    /// Mean negative log-likelihood per scored token, in nats.
    pub mean_nll: f64,
    /// Standard error of `mean_nll`.
    pub nll_stderr: f64,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens scored.
    pub scored_tokens: usize,
    /// Tokens in the whole text.
    pub text_tokens: usize,
    /// Chunk length used.
    pub ctx: usize,
}

/// Measures the perplexity of `engine`'s model on `text`; `on_chunk(done, total, ppl_so_far)`
/// is called after every chunk (for progress display).
pub fn perplexity(
    engine: &Engine,
    text: &str,
    opts: &PerplexityOptions,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<PerplexityReport, EngineError> {
    let tok = engine.tokenizer().ok_or(EngineError::NoTokenizer)?;
    let ctx = opts.ctx;
    if ctx < 2 || ctx > engine.context_length() {
        return Err(EngineError::Options(format!(
            "perplexity context {ctx} must be between 2 and the model's context length {}",
            engine.context_length()
        )));
    }
    let tokens = tok.encode(text, false, false)?;
    let mut n_chunks = tokens.len() / ctx;
    if let Some(m) = opts.max_chunks {
        n_chunks = n_chunks.min(m);
    }
    if n_chunks == 0 {
        return Err(EngineError::Options(format!(
            "the text has {} tokens, fewer than one chunk of {ctx}; use a longer text or a smaller --ctx",
            tokens.len()
        )));
    }
    let bos = tok.bos_id().filter(|_| tok.add_bos_default());
    let model = engine.model();
    let vocab = model.config().vocab_size;
    let first = ctx / 2;
    let (mut sum, mut sum2, mut n) = (0.0f64, 0.0f64, 0usize);
    let mut logits = Vec::new();
    let mut scratch = Scratch::default();
    let mut cache = model.new_cache(ctx);
    let mut chunk = Vec::with_capacity(ctx);
    for c in 0..n_chunks {
        chunk.clear();
        chunk.extend_from_slice(&tokens[c * ctx..(c + 1) * ctx]);
        if let (Some(b), Some(t0)) = (bos, chunk.first_mut()) {
            *t0 = b;
        }
        cache.truncate(0);
        model.forward(
            &chunk,
            &mut cache,
            Logits::All,
            &mut logits,
            &mut scratch,
            None,
        )?;
        for i in first..ctx - 1 {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let target = tokens[c * ctx + i + 1] as usize;
            let nll = nll_of(row, target);
            sum += nll;
            sum2 += nll * nll;
            n += 1;
        }
        on_chunk(c + 1, n_chunks, (sum / n as f64).exp());
    }
    let mean = sum / n as f64;
    let var = if n > 1 {
        ((sum2 / n as f64 - mean * mean) * n as f64 / (n - 1) as f64).max(0.0)
    } else {
        0.0
    };
    let nll_stderr = (var / n as f64).sqrt();
    let ppl = mean.exp();
    Ok(PerplexityReport {
        ppl,
        ppl_stderr: ppl * nll_stderr,
        mean_nll: mean,
        nll_stderr,
        chunks: n_chunks,
        scored_tokens: n,
        text_tokens: tokens.len(),
        ctx,
    })
}

/// `-log softmax(row)[target]`, in f64.
fn nll_of(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    lse - row
        .get(target)
        .copied()
        .map_or(f64::NEG_INFINITY, f64::from)
}

#[cfg(test)]
mod tests {
    use super::nll_of;

    #[test]
    fn nll_is_the_negative_log_softmax() {
        let row = [1.0f32, 2.0, 3.0];
        let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        assert!((nll_of(&row, 2) - (z.ln() - 3.0)).abs() < 1e-12);
        let uniform = [0.5f32; 4];
        assert!((nll_of(&uniform, 1) - 4f64.ln()).abs() < 1e-12);
    }
}
