//! AdamW with decoupled weight decay and gradient clipping by global norm. Its moments are
//! plain tensors so checkpoints can save and restore them.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;

/// AdamW state for a list of parameters.
pub struct AdamW {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// `(parameter, decays, first moment, second moment)`.
    state: Vec<(Var, bool, Tensor, Tensor)>,
    /// Steps taken (bias correction).
    pub t: usize,
}

impl AdamW {
    /// Zero-initialised moments for `params`; `decays(name)` says which get weight decay
    /// (matrices do, norms do not).
    pub fn new(
        params: &[(String, Var)],
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let mut state = Vec::with_capacity(params.len());
        for (_, v) in params {
            let decays = v.as_tensor().rank() >= 2;
            let z = v.as_tensor().zeros_like()?;
            state.push((v.clone(), decays, z.clone(), z));
        }
        Ok(AdamW {
            beta1,
            beta2,
            eps: 1e-8,
            weight_decay,
            state,
            t: 0,
        })
    }

    /// The moments, in parameter order: `(m, v)`.
    pub fn moments(&self) -> impl Iterator<Item = (&Tensor, &Tensor)> {
        self.state.iter().map(|(_, _, m, v)| (m, v))
    }

    /// Replaces the moments (from a checkpoint), in parameter order.
    pub fn set_moments(&mut self, moments: Vec<(Tensor, Tensor)>, t: usize) {
        for ((_, _, m, v), (nm, nv)) in self.state.iter_mut().zip(moments) {
            *m = nm;
            *v = nv;
        }
        self.t = t;
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (var, decays, m, v) in &mut self.state {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            *m = ((&*m * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            *v = ((&*v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let mhat = (&*m / bc1)?;
            let vhat = (&*v / bc2)?;
            let update = (mhat / (vhat.sqrt()? + self.eps)?)?;
            let mut w = var.as_tensor().clone();
            if *decays && self.weight_decay > 0.0 {
                w = (&w * (1.0 - lr * self.weight_decay))?;
            }
            var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Scales every gradient so their global L2 norm is at most `max_norm`; returns the norm
/// before clipping. `max_norm <= 0` only measures.
pub fn clip_grad_norm(
    params: &[(String, Var)],
    grads: &mut GradStore,
    max_norm: f64,
) -> Result<f64> {
    let mut total = 0.0f64;
    for (_, v) in params {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += f64::from(g.sqr()?.sum_all()?.to_vec0::<f32>()?);
        }
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for (_, v) in params {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = (g * scale)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr_against_its_gradient_sign() {
        let w = Var::from_vec(vec![1.0f32, -2.0, 3.0], (1, 3), &Device::Cpu).unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let mut opt = AdamW::new(&params, 0.9, 0.95, 0.0).unwrap();
        let loss = (w.as_tensor() * 2.0).unwrap().sum_all().unwrap();
        let mut g = loss.backward().unwrap();
        let norm = clip_grad_norm(&params, &mut g, 1.0).unwrap();
        assert!((norm - 12f64.sqrt()).abs() < 1e-5);
        opt.step(&g, 0.1).unwrap();
        let got = w.as_tensor().to_vec2::<f32>().unwrap();
        for (a, b) in got[0].iter().zip([0.9f32, -2.1, 2.9]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
