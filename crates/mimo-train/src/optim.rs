//! AdamW (decoupled weight decay, PyTorch semantics) with state that can be saved and restored exactly, and
//! global-norm gradient clipping.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::config::AdamWArgs;
use crate::error::{Result, TrainError};
use crate::model::Param;

/// AdamW moments per parameter and the step count.
#[derive(Debug)]
pub struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Optimizer steps taken.
    pub step: u64,
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(params: &[Param]) -> Self {
        let z = |p: &Param| p.tensor.zeros_like().detach();
        Self {
            m: params.iter().map(z).collect(),
            v: params.iter().map(z).collect(),
            step: 0,
        }
    }

    /// One update with learning rate `lr`: `p ← p·(1 − lr·wd)` (decayed params only), then the Adam step with
    /// bias correction. Parameters without a gradient are left alone; `o.grad_clip` is not applied here (see
    /// [`crate::step::train_step`]).
    pub fn step(&mut self, params: &[Param], lr: f64, o: &AdamWArgs) {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - o.beta1.powi(t);
        let bc2 = 1.0 - o.beta2.powi(t);
        tch::no_grad(|| {
            for ((p, m), v) in params.iter().zip(&mut self.m).zip(&mut self.v) {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let mut w = p.tensor.shallow_clone();
                if p.decay && o.weight_decay > 0.0 {
                    let _ = w.g_mul_scalar_(1.0 - lr * o.weight_decay);
                }
                let _ = m.lerp_(&g, 1.0 - o.beta1);
                let _ = v.g_mul_scalar_(o.beta2);
                let _ = v.g_add_(&(&g * &g * (1.0 - o.beta2)));
                let denom = v.sqrt() / bc2.sqrt() + o.eps;
                let _ = w.g_sub_(&(&*m / denom * (lr / bc1)));
            }
        });
    }

    /// Saves the moments (`exp_avg.NAME`, `exp_avg_sq.NAME`) as f32 safetensors.
    pub fn save(&self, path: &Path, params: &[Param]) -> Result<()> {
        let mut map = BTreeMap::new();
        for ((p, m), v) in params.iter().zip(&self.m).zip(&self.v) {
            map.insert(format!("exp_avg.{}", p.name), m.to_device(tch::Device::Cpu));
            map.insert(
                format!("exp_avg_sq.{}", p.name),
                v.to_device(tch::Device::Cpu),
            );
        }
        crate::io::write_safetensors_f32(path, &map)
    }

    /// Restores moments saved by [`AdamW::save`] for the same parameters.
    pub fn load(path: &Path, params: &[Param], step: u64) -> Result<Self> {
        let mut map = crate::io::read_safetensors_f32(path)?;
        let mut take = |key: String, like: &Tensor| -> Result<Tensor> {
            let t = map.remove(&key).ok_or_else(|| TrainError::Checkpoint {
                path: path.to_path_buf(),
                msg: format!("optimizer state `{key}` is missing"),
            })?;
            if t.size() != like.size() {
                return Err(TrainError::Checkpoint {
                    path: path.to_path_buf(),
                    msg: format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        t.size(),
                        like.size()
                    ),
                });
            }
            Ok(t.to_device(like.device()))
        };
        let mut m = vec![];
        let mut v = vec![];
        for p in params {
            m.push(take(format!("exp_avg.{}", p.name), &p.tensor)?);
            v.push(take(format!("exp_avg_sq.{}", p.name), &p.tensor)?);
        }
        Ok(Self { m, v, step })
    }
}

/// Global L2 norm of all gradients; scales them to `max_norm` when above it (PyTorch `clip_grad_norm_`).
/// Returns the norm before clipping.
pub fn clip_grad_norm(params: &[Param], max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.norm().to_kind(Kind::Float))
            .collect();
        let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
        if max_norm > 0.0 {
            let coef = max_norm / (total + 1e-6);
            if coef < 1.0 {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(coef);
                }
            }
        }
        total
    })
}
