//! The token stream of a text corpus, split into a training part and a held-out validation part
//! (the last `val_fraction` of the tokens), with reproducible batch sampling: the batch of step
//! `n` depends only on the seed and `n`, so a resumed run sees exactly the data it would have.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Result, TrainError};

/// Tokenized corpus with its split.
pub struct Dataset {
    train: Vec<u32>,
    val: Vec<u32>,
    bos: u32,
    ctx: usize,
}

impl Dataset {
    /// Splits `tokens` (no BOS inside) at `1 - val_fraction`. Every sequence the model sees is
    /// `[BOS] + ctx-1 tokens`, predicting those tokens and the next one, which is how the engine
    /// runs prompts (the tokenizer adds BOS).
    pub fn new(tokens: Vec<u32>, bos: u32, ctx: usize, val_fraction: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(TrainError::Options(format!(
                "validation fraction {val_fraction} must be in [0, 1)"
            )));
        }
        let n_val = (tokens.len() as f64 * val_fraction) as usize;
        let split = tokens.len() - n_val;
        let (train, val) = tokens.split_at(split);
        if train.len() <= ctx + 1 {
            return Err(TrainError::Data(format!(
                "{} training tokens; need more than the context ({ctx}) + 1",
                train.len()
            )));
        }
        if val_fraction > 0.0 && val.len() < ctx {
            return Err(TrainError::Data(format!(
                "{} validation tokens; need at least one context ({ctx}); use more data or a larger validation fraction",
                val.len()
            )));
        }
        Ok(Dataset {
            train: train.to_vec(),
            val: val.to_vec(),
            bos,
            ctx,
        })
    }

    /// Training tokens.
    pub fn n_train(&self) -> usize {
        self.train.len()
    }

    /// Validation tokens.
    pub fn n_val(&self) -> usize {
        self.val.len()
    }

    fn window(&self, src: &[u32], off: usize, ids: &mut Vec<u32>, tgt: &mut Vec<u32>) {
        ids.push(self.bos);
        ids.extend_from_slice(&src[off..off + self.ctx - 1]);
        tgt.extend_from_slice(&src[off..off + self.ctx]);
    }

    /// The training batch of `step`: `(ids, targets)`, both `[batch, ctx]` u32.
    pub fn train_batch(
        &self,
        seed: u64,
        step: usize,
        batch: usize,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let mut rng =
            StdRng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (mut ids, mut tgt) = (Vec::new(), Vec::new());
        for _ in 0..batch {
            let off = rng.random_range(0..self.train.len() - self.ctx);
            self.window(&self.train, off, &mut ids, &mut tgt);
        }
        Ok((
            Tensor::from_vec(ids, (batch, self.ctx), dev)?,
            Tensor::from_vec(tgt, (batch, self.ctx), dev)?,
        ))
    }

    /// Consecutive non-overlapping validation windows covering at most `max_tokens` targets,
    /// grouped into batches of `batch`.
    pub fn val_batches(
        &self,
        max_tokens: usize,
        batch: usize,
        dev: &Device,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let n_windows =
            (self.val.len().saturating_sub(1) / self.ctx).min(max_tokens.div_ceil(self.ctx));
        let mut out = Vec::new();
        let offs: Vec<usize> = (0..n_windows).map(|w| w * self.ctx).collect();
        for chunk in offs.chunks(batch.max(1)) {
            let (mut ids, mut tgt) = (Vec::new(), Vec::new());
            for &off in chunk {
                self.window(&self.val, off, &mut ids, &mut tgt);
            }
            out.push((
                Tensor::from_vec(ids, (chunk.len(), self.ctx), dev)?,
                Tensor::from_vec(tgt, (chunk.len(), self.ctx), dev)?,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bos_prefixed_shifted_windows_and_reproducible() {
        let toks: Vec<u32> = (0..100).collect();
        let d = Dataset::new(toks, 999, 8, 0.2).unwrap();
        assert_eq!((d.n_train(), d.n_val()), (80, 20));
        let (i, t) = d.train_batch(1, 5, 3, &Device::Cpu).unwrap();
        let (i2, _) = d.train_batch(1, 5, 3, &Device::Cpu).unwrap();
        let (i, t, i2) = (
            i.to_vec2::<u32>().unwrap(),
            t.to_vec2::<u32>().unwrap(),
            i2.to_vec2::<u32>().unwrap(),
        );
        assert_eq!(i, i2);
        for (row, trow) in i.iter().zip(&t) {
            assert_eq!(row[0], 999);
            assert_eq!(&row[1..], &trow[..7]);
            assert!(trow[7] < 80, "training batches stay in the training split");
        }
        let v = d.val_batches(1000, 4, &Device::Cpu).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].1.to_vec2::<u32>().unwrap()[0][0], 80);
    }
}
