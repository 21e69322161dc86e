//! What a forward step brings back for sampling. When every sampler of the step can choose
//! exactly from a row's best candidates (greedy, or top-k without penalties,
//! [`Sampler::candidates_wanted`]), the model returns only those `k` pairs per row: on a device
//! it picks them there (copying 128k logits per token costs more than choosing), on the CPU
//! its head screen finds them from int8 products and a few exact rows
//! (`bitnet_core::screen`). Otherwise, and on a CPU model without a screen, samplers read
//! whole logit rows.

use bitnet_model::{BatchEntry, Model, ModelError, Scratch};

use crate::sampling::Sampler;

/// The widest top-k chosen on the device (the kernel's limit); wider filters copy logits.
pub(crate) const DEVICE_TOP_K: usize = bitnet_cuda::TOPK_MAX;

/// How one step returns its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StepOut {
    /// Every wanted row's logits.
    Logits,
    /// Each row's `k` best candidates (`k == 1`: the greedy token).
    Top(usize),
}

impl StepOut {
    /// The mode for a step whose rows are sampled by `samplers` (with whether that row's caller
    /// asked for its logits).
    pub(crate) fn choose<'a>(
        model: &Model,
        samplers: impl IntoIterator<Item = (&'a Sampler, bool)>,
    ) -> StepOut {
        if model.device().is_none() && model.head_screen_bytes() == 0 {
            return StepOut::Logits;
        }
        let mut k = 0;
        for (s, wants_logits) in samplers {
            match s.candidates_wanted(DEVICE_TOP_K) {
                Some(n) if !wants_logits => k = k.max(n),
                _ => return StepOut::Logits,
            }
        }
        if k == 0 {
            StepOut::Logits
        } else {
            StepOut::Top(k)
        }
    }

    /// Candidates per row (0 in logits mode).
    fn width(self) -> usize {
        match self {
            StepOut::Logits => 0,
            StepOut::Top(k) => k,
        }
    }
}

/// One step's results, in buffers kept across steps.
#[derive(Default)]
pub(crate) struct StepRows {
    mode: Option<StepOut>,
    logits: Vec<f32>,
    top: Vec<(u32, f32)>,
    ids: Vec<u32>,
}

/// One row of a step, as the sampler reads it.
pub(crate) enum Row<'a> {
    /// The whole logit row.
    Logits(&'a [f32]),
    /// Its best candidates, best first.
    Top(&'a [(u32, f32)]),
}

impl StepRows {
    /// Runs one batched step in `mode` (every entry's last row is returned). `then`: the caller
    /// expects to continue every sequence by the token it picks here, so a greedy step may have
    /// its successor launched ahead ([`Model::forward_batch_greedy_ahead`]).
    pub(crate) fn forward(
        &mut self,
        mode: StepOut,
        model: &Model,
        batch: &mut [BatchEntry<'_>],
        scratch: &mut Scratch,
        then: bool,
    ) -> Result<(), ModelError> {
        self.mode = Some(mode);
        match mode {
            StepOut::Logits => model.forward_batch(batch, &mut self.logits, scratch, None),
            StepOut::Top(1) => {
                // The argmax kernel; a greedy sampler needs no value.
                match then {
                    true => model.forward_batch_greedy_ahead(batch, &mut self.ids, scratch)?,
                    false => model.forward_batch_greedy(batch, &mut self.ids, scratch)?,
                }
                self.top.clear();
                self.top.extend(self.ids.iter().map(|&id| (id, 0.0)));
                Ok(())
            }
            StepOut::Top(k) => model.forward_batch_top_k(batch, k, &mut self.top, scratch),
        }
    }

    /// Row `r` of the last step (`None` past its end).
    pub(crate) fn row(&self, r: usize, vocab: usize) -> Option<Row<'_>> {
        match self.mode? {
            StepOut::Logits => self.logits.get(r * vocab..(r + 1) * vocab).map(Row::Logits),
            m => {
                let k = m.width();
                self.top.get(r * k..(r + 1) * k).map(Row::Top)
            }
        }
    }
}

impl Sampler {
    /// Picks the next token from a step's row (see [`Sampler::sample`] and
    /// [`Sampler::sample_top`]).
    pub(crate) fn pick(&mut self, row: Row<'_>, history: &[u32], generated: &[u32]) -> u32 {
        match row {
            Row::Logits(l) => self.sample(l, history, generated),
            Row::Top(c) => self.sample_top(c),
        }
    }
}
