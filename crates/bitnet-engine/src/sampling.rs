//! Token sampling: repetition/presence/frequency penalties, then greedy or temperature sampling
//! with top-k, top-p and min-p filters, driven by a seedable generator so runs are reproducible.
//!
//! Order of operations (llama.cpp's default chain): penalties -> top-k -> softmax(logits / T) ->
//! top-p -> min-p -> draw. `temperature <= 0` is greedy (ties go to the lowest id).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Sampling settings. `Default` gives llama.cpp's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingOptions {
    /// Softmax temperature; 0 (or below) is greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens by this (1 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token already generated (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of generated tokens (OpenAI semantics).
    pub frequency_penalty: f32,
    /// Seed of the random generator; `None` draws one from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingOptions {
    /// Greedy decoding (what tests and reproducible runs use).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether any repetition, presence or frequency penalty is on (they need the whole row).
    fn penalties(&self) -> bool {
        (self.repeat_penalty != 1.0 && self.repeat_last_n > 0)
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }

    /// Rejects values that make no sense, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let finite = |name: &str, v: f32| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number"))
            }
        };
        finite("temperature", self.temperature)?;
        finite("top_p", self.top_p)?;
        finite("min_p", self.min_p)?;
        finite("repeat_penalty", self.repeat_penalty)?;
        finite("presence_penalty", self.presence_penalty)?;
        finite("frequency_penalty", self.frequency_penalty)?;
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(format!("top_p must be in [0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if self.repeat_penalty <= 0.0 {
            return Err(format!(
                "repeat_penalty must be positive, got {}",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// A sampler with its random state and reusable buffers.
pub struct Sampler {
    opts: SamplingOptions,
    rng: StdRng,
    work: Vec<f32>,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for `opts`, seeded from `opts.seed` or the OS.
    pub fn new(opts: SamplingOptions) -> Self {
        let rng = match opts.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self {
            opts,
            rng,
            work: Vec::new(),
            candidates: Vec::new(),
        }
    }

    /// The settings.
    pub fn options(&self) -> &SamplingOptions {
        &self.opts
    }

    /// Picks the next token from `logits`, given the tokens of the sequence so far (`history`,
    /// for the repetition penalty) and the generated ones (`generated`, for presence/frequency).
    pub fn sample(&mut self, logits: &[f32], history: &[u32], generated: &[u32]) -> u32 {
        let o = &self.opts;
        if o.temperature <= 0.0 && !o.penalties() {
            // Plain greedy: no need to copy the vocabulary-sized logits every token.
            return argmax(logits);
        }
        self.work.clear();
        self.work.extend_from_slice(logits);
        let w = &mut self.work;
        if o.repeat_penalty != 1.0 && o.repeat_last_n > 0 {
            let from = history.len().saturating_sub(o.repeat_last_n);
            let mut seen: Vec<u32> = history[from..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(l) = w.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / o.repeat_penalty
                    } else {
                        *l * o.repeat_penalty
                    };
                }
            }
        }
        if o.presence_penalty != 0.0 || o.frequency_penalty != 0.0 {
            let mut counts: Vec<u32> = generated.to_vec();
            counts.sort_unstable();
            let mut i = 0;
            while i < counts.len() {
                let t = counts[i];
                let n = counts[i..].iter().take_while(|&&x| x == t).count();
                if let Some(l) = w.get_mut(t as usize) {
                    *l -= o.presence_penalty + o.frequency_penalty * n as f32;
                }
                i += n;
            }
        }
        if o.temperature <= 0.0 {
            return argmax(w);
        }
        let mut c = std::mem::take(&mut self.candidates);
        let k = if o.top_k > 0 { o.top_k } else { w.len() };
        bitnet_core::ops::top_k(w, k, &mut c);
        let id = self.draw(&mut c);
        self.candidates = c;
        id
    }

    /// How many best candidates [`Sampler::sample_top`] needs to choose exactly as
    /// [`Sampler::sample`] would from the whole row: 1 for greedy, `top_k` when that is at most
    /// `max`; `None` when penalties are on (they need every logit) or the filter is wider.
    pub fn candidates_wanted(&self, max: usize) -> Option<usize> {
        let o = &self.opts;
        if o.penalties() {
            None
        } else if o.temperature <= 0.0 {
            Some(1)
        } else {
            (o.top_k > 0 && o.top_k <= max).then_some(o.top_k)
        }
    }

    /// Picks the next token from the row's best candidates (as [`bitnet_core::ops::top_k`]
    /// orders them; at least [`Sampler::candidates_wanted`] of them, or all there are): the
    /// same token, and the same use of the random generator, as [`Sampler::sample`] on the
    /// full row.
    pub fn sample_top(&mut self, candidates: &[(u32, f32)]) -> u32 {
        let o = &self.opts;
        let Some(&(best, _)) = candidates.iter().find(|c| !c.1.is_nan()) else {
            return 0;
        };
        if o.temperature <= 0.0 {
            return best;
        }
        let mut c = std::mem::take(&mut self.candidates);
        c.clear();
        c.extend(candidates.iter().filter(|x| !x.1.is_nan()));
        let id = self.draw(&mut c);
        self.candidates = c;
        id
    }

    /// The filters after top-k (temperature softmax, top-p, min-p) and the draw, over
    /// candidates sorted best first.
    fn draw(&mut self, c: &mut Vec<(u32, f32)>) -> u32 {
        let o = &self.opts;
        if c.is_empty() {
            return 0;
        }
        if o.top_k > 0 && o.top_k < c.len() {
            c.truncate(o.top_k);
        }
        let max = c[0].1;
        let mut sum = 0.0f64;
        for (_, l) in c.iter_mut() {
            *l = ((*l - max) / o.temperature).exp();
            sum += *l as f64;
        }
        for (_, p) in c.iter_mut() {
            *p = (*p as f64 / sum) as f32;
        }
        if o.top_p < 1.0 {
            let mut cum = 0.0f32;
            let mut keep = c.len();
            for (i, (_, p)) in c.iter().enumerate() {
                cum += p;
                if cum >= o.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        if o.min_p > 0.0 {
            let floor = c[0].1 * o.min_p;
            let keep = c.iter().take_while(|(_, p)| *p >= floor).count();
            c.truncate(keep.max(1));
        }
        let total: f32 = c.iter().map(|(_, p)| p).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &(id, p) in c.iter() {
            if r < p {
                return id;
            }
            r -= p;
        }
        c[c.len() - 1].0
    }
}

/// Index of the largest logit; the lowest index wins ties, NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_max_and_lowest_on_ties() {
        let mut s = Sampler::new(SamplingOptions::greedy());
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0], &[], &[]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32).collect();
        let opts = SamplingOptions {
            temperature: 1.0,
            top_k: 3,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(42),
            ..SamplingOptions::default()
        };
        let run = || {
            let mut s = Sampler::new(opts.clone());
            (0..50)
                .map(|_| s.sample(&logits, &[], &[]))
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        // The three largest logits are 6.0 at ids 6, 13, 20 (lowest ids win the sort ties).
        assert!(a.iter().all(|t| [6, 13, 20].contains(t)), "{a:?}");
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let logits = [10.0, 0.0, 0.0, 0.0];
        for opts in [
            SamplingOptions {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.5,
                min_p: 0.0,
                seed: Some(1),
                ..Default::default()
            },
            SamplingOptions {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.01,
                seed: Some(1),
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(opts);
            assert!((0..100).all(|_| s.sample(&logits, &[], &[]) == 0));
        }
    }

    #[test]
    fn repetition_penalty_can_change_the_choice() {
        let opts = SamplingOptions {
            repeat_penalty: 2.0,
            ..SamplingOptions::greedy()
        };
        let mut s = Sampler::new(opts);
        assert_eq!(s.sample(&[3.0, 2.0], &[0], &[]), 1);
        let opts = SamplingOptions {
            presence_penalty: 0.5,
            frequency_penalty: 0.3,
            ..SamplingOptions::greedy()
        };
        let mut s = Sampler::new(opts);
        assert_eq!(s.sample(&[3.0, 2.5], &[], &[0, 0]), 1);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = SamplingOptions {
            top_p: 2.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("top_p"));
    }
    #[test]
    fn sampling_from_the_best_candidates_equals_sampling_the_row() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 4000) as f32 / 500.0 - 4.0
        };
        let rows: Vec<Vec<f32>> = (0..40)
            .map(|_| (0..3000).map(|_| next()).collect())
            .collect();
        for opts in [
            SamplingOptions::greedy(),
            SamplingOptions {
                seed: Some(3),
                ..Default::default()
            },
            SamplingOptions {
                temperature: 1.5,
                top_k: 200,
                top_p: 1.0,
                min_p: 0.0,
                seed: Some(9),
                ..Default::default()
            },
        ] {
            let (mut a, mut b) = (Sampler::new(opts.clone()), Sampler::new(opts));
            let k = b.candidates_wanted(256).unwrap();
            let mut cands = Vec::new();
            for row in &rows {
                bitnet_core::ops::top_k(row, k, &mut cands);
                assert_eq!(a.sample(row, &[], &[]), b.sample_top(&cands));
            }
        }
    }

    #[test]
    fn candidates_are_not_enough_with_penalties_or_wide_filters() {
        let s = |o: SamplingOptions| Sampler::new(o).candidates_wanted(256);
        assert_eq!(s(SamplingOptions::greedy()), Some(1));
        assert_eq!(s(SamplingOptions::default()), Some(40));
        let wide = SamplingOptions {
            top_k: 0,
            ..Default::default()
        };
        assert_eq!(s(wide), None);
        let penalized = SamplingOptions {
            presence_penalty: 0.5,
            ..SamplingOptions::greedy()
        };
        assert_eq!(s(penalized), None);
    }
}
