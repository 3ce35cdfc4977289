//! AdamW, global-norm gradient clipping and an EMA of the weights, over the named parameters of a
//! [`VarMap`], with state that can be checkpointed.
//!
//! candle_nn's `AdamW` keeps its moments private, so a training run with it cannot be stopped and
//! resumed exactly. [`AdamW`] here is the same algorithm with its state in the open, written to
//! follow `torch.optim.AdamW` (torch 2.x, the single-tensor CPU path) operation by operation, so a
//! recipe tuned in PyTorch means the same thing here (golden test: `tests/adamw_golden.rs`):
//!
//! * decoupled weight decay (Loshchilov & Hutter 2019): θ ← θ·(1 − lr·λ), before the Adam step;
//! * m ← m + (1 − β₁)(g − m), v ← β₂·v + (1 − β₂)·g²;
//! * θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε) — ε added to the bias-corrected √v̂,
//!   as torch does, not to √v (the Adam paper's Algorithm 1 differs from torch in this detail).
//!
//! Like torch, a parameter without a gradient in a step is skipped entirely (no decay, no moment
//! update) and its own step count does not advance, so each parameter carries its own `t`.
//!
//! Parameters are kept sorted by name: the order of the `VarMap`'s hash map is random per process,
//! and a fixed order makes the gradient norm's summation, and therefore a resumed run, bit-stable.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, TensorContext};

/// The parameters of `varmap` as (name, variable), sorted by name.
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// AdamW's hyper-parameters other than the learning rate (which changes per step).
/// The default is `torch.optim.AdamW`'s: β = (0.9, 0.999), ε = 1e-8, λ = 0.01.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay λ: each step multiplies θ by (1 − lr·λ).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// One-line errors for values torch would also reject (or that make no sense).
    pub fn validate(&self) -> Result<()> {
        for (key, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::invalid(
                    format!("AdamW `{key}` = {b}"),
                    "expected 0 ≤ β < 1",
                ));
            }
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(Error::invalid(
                format!("AdamW `eps` = {}", self.eps),
                "expected a finite ε ≥ 0",
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::invalid(
                format!("AdamW `weight_decay` = {}", self.weight_decay),
                "expected a finite λ ≥ 0",
            ));
        }
        Ok(())
    }
}

/// AdamW with checkpointable state; see the module documentation for the exact update.
pub struct AdamW {
    vars: Vec<(String, Var)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Per-parameter step count t (torch's `state[p]["step"]`).
    steps: Vec<u64>,
    config: AdamWConfig,
}

impl AdamW {
    /// An optimiser over `vars` (sorted by name here; duplicate names are an error), with zero
    /// moments.
    pub fn new(mut vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = vars.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::invalid(
                format!("AdamW parameter `{}`", w[0].0),
                "listed twice; parameter names must be unique",
            ));
        }
        let zeros = |v: &Var| v.as_tensor().zeros_like().ctx("allocating AdamW moments");
        let exp_avg = vars.iter().map(|(_, v)| zeros(v)).collect::<Result<_>>()?;
        let exp_avg_sq = vars.iter().map(|(_, v)| zeros(v)).collect::<Result<_>>()?;
        let steps = vec![0; vars.len()];
        Ok(Self {
            vars,
            exp_avg,
            exp_avg_sq,
            steps,
            config,
        })
    }

    /// An optimiser over every parameter of `varmap`.
    pub fn from_varmap(varmap: &VarMap, config: AdamWConfig) -> Result<Self> {
        Self::new(named_vars(varmap), config)
    }

    /// The parameters, sorted by name.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    pub fn config(&self) -> AdamWConfig {
        self.config
    }

    /// The largest per-parameter step count (the number of optimiser steps for a network whose
    /// parameters all receive gradients).
    pub fn step_count(&self) -> u64 {
        self.steps.iter().copied().max().unwrap_or(0)
    }

    /// One AdamW step at learning rate `lr` with the gradients in `grads` (as from
    /// `loss.backward()`, possibly clipped by [`clip_grad_norm`]).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        for (k, (name, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            self.steps[k] += 1;
            let t = self.steps[k];
            let ctx = || format!("AdamW step of `{name}`");
            let (m, v) = (|| -> candle_core::Result<(Tensor, Tensor)> {
                let mut theta = var.as_tensor().detach();
                if weight_decay != 0.0 {
                    // torch: param.mul_(1 - lr * weight_decay)
                    theta = theta.affine(1.0 - lr * weight_decay, 0.0)?;
                }
                // torch: exp_avg.lerp_(grad, 1 - beta1), whose CPU kernel is m + w·(g − m) for w < ½.
                let m = (&self.exp_avg[k] + (g - &self.exp_avg[k])?.affine(1.0 - beta1, 0.0)?)?;
                // torch: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                let v = (self.exp_avg_sq[k].affine(beta2, 0.0)?
                    + g.affine(1.0 - beta2, 0.0)?.mul(g)?)?;
                let bias_correction1 = 1.0 - beta1.powf(t as f64);
                let bias_correction2 = 1.0 - beta2.powf(t as f64);
                let step_size = lr / bias_correction1;
                // torch: denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                let denom = v.sqrt()?.affine(1.0 / bias_correction2.sqrt(), eps)?;
                // torch: param.addcdiv_(exp_avg, denom, value=-step_size)
                let theta = (theta - m.affine(step_size, 0.0)?.div(&denom)?)?;
                var.set(&theta)?;
                Ok((m, v))
            })()
            .ctx(&ctx())?;
            self.exp_avg[k] = m;
            self.exp_avg_sq[k] = v;
        }
        Ok(())
    }

    /// The optimiser state as named tensors, torch's `state_dict` names under an `adamw/` prefix:
    /// `adamw/exp_avg/<param>`, `adamw/exp_avg_sq/<param>`, `adamw/step/<param>` (i64 scalar).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(3 * self.vars.len());
        for (k, (name, _)) in self.vars.iter().enumerate() {
            out.push((format!("adamw/exp_avg/{name}"), self.exp_avg[k].clone()));
            out.push((
                format!("adamw/exp_avg_sq/{name}"),
                self.exp_avg_sq[k].clone(),
            ));
            let step = i64::try_from(self.steps[k]).unwrap_or(i64::MAX);
            out.push((
                format!("adamw/step/{name}"),
                Tensor::new(step, &Device::Cpu).ctx("AdamW step count")?,
            ));
        }
        Ok(out)
    }

    /// Restore the state written by [`AdamW::state`] from `tensors` (read from `source`, named in
    /// errors). Every parameter's moments must be present with the parameter's shape and dtype.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
        for (k, (name, var)) in self.vars.iter().enumerate() {
            let like = var.as_tensor();
            let m = expect_like(tensors, &format!("adamw/exp_avg/{name}"), like, source)?;
            let v = expect_like(tensors, &format!("adamw/exp_avg_sq/{name}"), like, source)?;
            let key = format!("adamw/step/{name}");
            let step = expect_tensor(tensors, &key, source, "an i64 scalar")?;
            let step = match step.dtype() {
                DType::I64 if step.rank() == 0 => step.to_scalar::<i64>().ctx(&key)?,
                _ => return Err(mismatch(source, &key, step, "an i64 scalar")),
            };
            self.exp_avg[k] = m.to_device(like.device()).ctx(&key)?;
            self.exp_avg_sq[k] = v.to_device(like.device()).ctx(&key)?;
            self.steps[k] = u64::try_from(step).map_err(|_| Error::Checkpoint {
                path: source.to_path_buf(),
                tensor: key.clone(),
                reason: format!("is {step}, expected a step count ≥ 0"),
            })?;
        }
        Ok(())
    }
}

/// The total L2 norm of the gradients of `vars` present in `grads` (parameters without a gradient
/// are left out, as torch does): √(Σ_p ‖g_p‖²), each ‖g_p‖² in the gradient's dtype, their sum in
/// f64 on the gradients' device (one transfer per step, not one per parameter).
pub fn grad_norm(vars: &[(String, Var)], grads: &GradStore) -> Result<f64> {
    let mut squares = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            let ss = (|| g.sqr()?.sum_all()?.to_dtype(DType::F64)?.reshape(1))()
                .ctx(&format!("gradient norm of `{name}`"))?;
            squares.push(ss);
        }
    }
    if squares.is_empty() {
        return Ok(0.0);
    }
    let total = (|| Tensor::cat(&squares, 0)?.sum_all()?.to_scalar::<f64>())()
        .ctx("total gradient norm")?;
    Ok(total.sqrt())
}

/// `torch.nn.utils.clip_grad_norm_`: if the total norm N of the gradients exceeds `max_norm`,
/// scale every gradient by max_norm / (N + 1e-6) in place. Returns N, the norm before clipping.
/// A non-finite N is returned as is, with the gradients left alone (the trainer reports it).
pub fn clip_grad_norm(vars: &[(String, Var)], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(vars, grads)?;
    // torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1 (so a no-op unless < 1).
    let coef = max_norm / (norm + 1e-6);
    if norm.is_finite() && coef < 1.0 {
        for (name, var) in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = g
                    .affine(coef, 0.0)
                    .ctx(&format!("clipping the gradient of `{name}`"))?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// An exponential moving average of the weights, θ_ema ← d·θ_ema + (1 − d)·θ after each
/// optimiser step, kept as separate tensors (the network keeps training its own weights).
///
/// Diffusion models are evaluated with EMA weights (Ho et al. 2020 use d = 0.9999); sampling with
/// the raw weights of the last steps gives visibly worse samples. For the first `start_after`
/// updates the average is a copy of the weights (the early weights are far from the final ones and
/// would otherwise linger in the average for ~1/(1 − d) steps). With `start_after = 1` this is
/// `torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d))` with
/// `update_parameters` called after every step (it copies on its first call), which the golden
/// test checks. The update is computed as torch's `lerp`, θ_ema + (1 − d)(θ − θ_ema).
pub struct Ema {
    vars: Vec<(String, Var)>,
    shadow: Vec<Tensor>,
    decay: f64,
    start_after: u64,
    updates: u64,
}

impl Ema {
    /// An average over `vars` (sorted by name here), initialised to their current values.
    pub fn new(mut vars: Vec<(String, Var)>, decay: f64, start_after: u64) -> Result<Self> {
        if !(0.0..=1.0).contains(&decay) {
            return Err(Error::invalid(
                format!("EMA decay {decay}"),
                "expected 0 ≤ d ≤ 1",
            ));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let shadow = vars
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()
            .ctx("copying the weights into the EMA")?;
        Ok(Self {
            vars,
            shadow,
            decay,
            start_after,
            updates: 0,
        })
    }

    /// Fold the current weights into the average (call once after every optimiser step).
    pub fn update(&mut self) -> Result<()> {
        self.updates += 1;
        let copy = self.updates <= self.start_after;
        for ((name, var), s) in self.vars.iter().zip(self.shadow.iter_mut()) {
            let theta = var.as_tensor();
            // Detached: θ is a trainable variable, so without it every shadow tensor would keep
            // the previous one (and its intermediates) alive through the autograd graph — a
            // leak of three parameter-sized tensors per step (12 MB/step for the mini UNet).
            *s = if copy {
                theta.copy()
            } else {
                (|| &*s + (theta - &*s)?.affine(1.0 - self.decay, 0.0)?)()
            }
            .ctx(&format!("EMA update of `{name}`"))?
            .detach();
        }
        Ok(())
    }

    /// How many updates have been folded in.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The averaged weights as (parameter name, tensor), sorted by name.
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .map(|(n, _)| n.clone())
            .zip(self.shadow.iter().cloned())
            .collect()
    }

    /// The state as named tensors: `ema/<param>` and the update count `ema-updates` (i64 scalar).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> = self
            .weights()
            .into_iter()
            .map(|(n, t)| (format!("ema/{n}"), t))
            .collect();
        let updates = i64::try_from(self.updates).unwrap_or(i64::MAX);
        out.push((
            "ema-updates".into(),
            Tensor::new(updates, &Device::Cpu).ctx("EMA update count")?,
        ));
        Ok(out)
    }

    /// Restore the state written by [`Ema::state`] from `tensors` (read from `source`).
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
        for ((name, var), s) in self.vars.iter().zip(self.shadow.iter_mut()) {
            let key = format!("ema/{name}");
            let t = expect_like(tensors, &key, var.as_tensor(), source)?;
            *s = t.to_device(var.device()).ctx(&key)?;
        }
        let key = "ema-updates";
        let t = expect_tensor(tensors, key, source, "an i64 scalar")?;
        self.updates = match t.dtype() {
            DType::I64 if t.rank() == 0 => {
                u64::try_from(t.to_scalar::<i64>().ctx(key)?).unwrap_or(0)
            }
            _ => return Err(mismatch(source, key, t, "an i64 scalar")),
        };
        Ok(())
    }
}

/// The tensor `key` of a loaded file, or a one-line error naming the file, the tensor and `what`
/// was expected.
pub(crate) fn expect_tensor<'a>(
    tensors: &'a HashMap<String, Tensor>,
    key: &str,
    source: &Path,
    what: &str,
) -> Result<&'a Tensor> {
    tensors.get(key).ok_or_else(|| Error::Checkpoint {
        path: source.to_path_buf(),
        tensor: key.to_string(),
        reason: format!("missing (expected {what})"),
    })
}

/// The tensor `key`, which must have the shape and dtype of `like`.
pub(crate) fn expect_like(
    tensors: &HashMap<String, Tensor>,
    key: &str,
    like: &Tensor,
    source: &Path,
) -> Result<Tensor> {
    let what = describe(like);
    let t = expect_tensor(tensors, key, source, &what)?;
    if t.dims() != like.dims() || t.dtype() != like.dtype() {
        return Err(mismatch(source, key, t, &what));
    }
    Ok(t.clone())
}

fn describe(t: &Tensor) -> String {
    format!("shape {:?} {:?}", t.dims(), t.dtype())
}

fn mismatch(source: &Path, key: &str, got: &Tensor, expected: &str) -> Error {
    Error::Checkpoint {
        path: source.to_path_buf(),
        tensor: key.to_string(),
        reason: format!("has {}, expected {expected}", describe(got)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::Init;

    fn varmap(values: &[(&str, &[f32])]) -> VarMap {
        let vm = VarMap::new();
        for (name, v) in values {
            vm.get(v.len(), name, Init::Const(0.0), DType::F32, &Device::Cpu)
                .unwrap();
            vm.data().lock().unwrap()[*name]
                .set(&Tensor::new(*v, &Device::Cpu).unwrap())
                .unwrap();
        }
        vm
    }

    fn values(var: &Var) -> Vec<f32> {
        var.as_tensor().to_vec1().unwrap()
    }

    #[test]
    fn first_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        // Expected (from the update rule): at t = 1, m̂ = g and √v̂ = |g|, so with ε = 0 and no
        // decay θ ← θ − lr·sign(g); decoupled decay first multiplies θ by (1 − lr·λ).
        let vm = varmap(&[("a", &[1.0, -2.0]), ("b", &[3.0])]);
        let vars = named_vars(&vm);
        assert_eq!(vars[0].0, "a");
        let loss = (vars[0]
            .1
            .as_tensor()
            .affine(3.0, 0.0)
            .unwrap()
            .sum_all()
            .unwrap()
            - vars[1].1.as_tensor().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let cfg = AdamWConfig {
            eps: 0.0,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = AdamW::new(vars.clone(), cfg).unwrap();
        opt.step(&grads, 0.1).unwrap();
        let a = values(&vars[0].1);
        approx::assert_abs_diff_eq!(a[0], 1.0 * 0.95 - 0.1, epsilon = 1e-6);
        approx::assert_abs_diff_eq!(a[1], -2.0 * 0.95 - 0.1, epsilon = 1e-6);
        approx::assert_abs_diff_eq!(values(&vars[1].1)[0], 3.0 * 0.95 + 0.1, epsilon = 1e-6);
        assert_eq!(opt.step_count(), 1);
    }

    #[test]
    fn parameters_without_gradients_are_not_touched() {
        // Expected: torch skips parameters whose .grad is None — no decay, no step count.
        let vm = varmap(&[("used", &[1.0]), ("unused", &[5.0])]);
        let vars = named_vars(&vm);
        let used = vars.iter().find(|v| v.0 == "used").unwrap().1.clone();
        let grads = used
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut opt = AdamW::from_varmap(&vm, AdamWConfig::default()).unwrap();
        opt.step(&grads, 0.1).unwrap();
        let unused = vars.iter().find(|v| v.0 == "unused").unwrap();
        assert_eq!(values(&unused.1), [5.0]);
        let state: HashMap<_, _> = opt.state().unwrap().into_iter().collect();
        assert_eq!(
            state["adamw/step/unused"].to_scalar::<i64>().unwrap(),
            0,
            "skipped parameter's step"
        );
        assert_eq!(state["adamw/step/used"].to_scalar::<i64>().unwrap(), 1);
    }

    #[test]
    fn clipping_scales_to_max_norm_and_returns_the_norm_before() {
        // Expected: gradients (3, 4) have norm 5 (3-4-5 triangle); clipping to 1 scales by
        // 1/(5 + 1e-6), as torch.nn.utils.clip_grad_norm_; a max_norm above 5 leaves them alone.
        let vm = varmap(&[("a", &[0.0]), ("b", &[0.0])]);
        let vars = named_vars(&vm);
        let grads = || {
            let a = vars[0].1.as_tensor().affine(3.0, 0.0).unwrap();
            let b = vars[1].1.as_tensor().affine(4.0, 0.0).unwrap();
            (a + b).unwrap().sum_all().unwrap().backward().unwrap()
        };
        let mut g = grads();
        let n = clip_grad_norm(&vars, &mut g, 1.0).unwrap();
        approx::assert_abs_diff_eq!(n, 5.0, epsilon = 1e-12);
        let ga: Vec<f32> = g.get(vars[0].1.as_tensor()).unwrap().to_vec1().unwrap();
        approx::assert_relative_eq!(ga[0], (3.0 / (5.0 + 1e-6)) as f32, max_relative = 1e-7);
        approx::assert_abs_diff_eq!(grad_norm(&vars, &g).unwrap(), 1.0, epsilon = 1e-6);
        let mut g = grads();
        clip_grad_norm(&vars, &mut g, 10.0).unwrap();
        let ga: Vec<f32> = g.get(vars[0].1.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(ga, [3.0]);
    }

    #[test]
    fn ema_copies_for_start_after_updates_then_averages() {
        // Expected (from the definition): with d = 0.5 and start_after = 1, the first update copies
        // θ₁ = 2, the second gives 0.5·2 + 0.5·4 = 3.
        let vm = varmap(&[("w", &[0.0])]);
        let vars = named_vars(&vm);
        let mut ema = Ema::new(vars.clone(), 0.5, 1).unwrap();
        vars[0]
            .1
            .set(&Tensor::new(&[2f32], &Device::Cpu).unwrap())
            .unwrap();
        ema.update().unwrap();
        assert_eq!(ema.weights()[0].1.to_vec1::<f32>().unwrap(), [2.0]);
        vars[0]
            .1
            .set(&Tensor::new(&[4f32], &Device::Cpu).unwrap())
            .unwrap();
        ema.update().unwrap();
        assert_eq!(ema.weights()[0].1.to_vec1::<f32>().unwrap(), [3.0]);
        // The average holds no autograd history of the variables: otherwise every update would
        // keep the previous average alive (a leak of parameter-sized tensors per step).
        assert!(ema.weights().iter().all(|(_, t)| !t.track_op()));
        // The average is a separate tensor: training the weights does not move it.
        vars[0]
            .1
            .set(&Tensor::new(&[9f32], &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(ema.weights()[0].1.to_vec1::<f32>().unwrap(), [3.0]);
    }

    #[test]
    fn state_round_trips_and_names_missing_or_misshaped_tensors() {
        // Expected: a restored optimiser continues exactly like the original (same bits); a
        // missing or wrongly shaped moment is a one-line error naming the file and tensor.
        let make = || varmap(&[("w", &[1.0, 2.0, 3.0])]);
        let step = |opt: &mut AdamW, ema: &mut Ema| {
            let w = opt.vars()[0].1.clone();
            let g = w
                .as_tensor()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            opt.step(&g, 0.01).unwrap();
            ema.update().unwrap();
        };
        let (vm1, vm2) = (make(), make());
        let mut o1 = AdamW::from_varmap(&vm1, AdamWConfig::default()).unwrap();
        let mut e1 = Ema::new(named_vars(&vm1), 0.9, 0).unwrap();
        for _ in 0..3 {
            step(&mut o1, &mut e1);
        }
        let mut saved: HashMap<String, Tensor> = o1.state().unwrap().into_iter().collect();
        saved.extend(e1.state().unwrap());
        vm2.data().lock().unwrap()["w"]
            .set(o1.vars()[0].1.as_tensor())
            .unwrap();
        let mut o2 = AdamW::from_varmap(&vm2, AdamWConfig::default()).unwrap();
        let mut e2 = Ema::new(named_vars(&vm2), 0.9, 0).unwrap();
        let src = Path::new("ckpt.safetensors");
        o2.load_state(&saved, src).unwrap();
        e2.load_state(&saved, src).unwrap();
        assert_eq!(e2.updates(), 3);
        step(&mut o1, &mut e1);
        step(&mut o2, &mut e2);
        let bits = |v: &Var| values(v).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&o1.vars()[0].1), bits(&o2.vars()[0].1));
        assert_eq!(
            e1.weights()[0].1.to_vec1::<f32>().unwrap(),
            e2.weights()[0].1.to_vec1::<f32>().unwrap()
        );

        let mut missing = saved.clone();
        missing.remove("adamw/exp_avg_sq/w");
        let e = o2.load_state(&missing, src).unwrap_err().to_string();
        assert_eq!(
            e,
            "ckpt.safetensors: tensor `adamw/exp_avg_sq/w` missing (expected shape [3] F32)"
        );
        let mut bad = saved.clone();
        bad.insert(
            "ema/w".into(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        );
        let e = e2.load_state(&bad, src).unwrap_err().to_string();
        assert_eq!(
            e,
            "ckpt.safetensors: tensor `ema/w` has shape [2] F32, expected shape [3] F32"
        );
    }
}
