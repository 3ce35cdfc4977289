//! AU — pixel-wise aleatoric uncertainty (De Vita & Belagiannis, WACV 2025, Alg. 1, Eq. 8).
//!
//! At sampling step t, given x_t and the sampler's own ε = ε_θ(x_t, t):
//!
//!   x̂₀     = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t                                    (Alg. 1, line 2)
//!   x̂_t^m  = √ᾱ_t x̂₀ + √(1−ᾱ_t) ξ_m,   ξ_m ~ N(0, I) fresh, m = 1…M     (line 4, Eq. 2)
//!   ε_m    = ε_θ(x̂_t^m, t)                                                 (line 5)
//!   U_t    = diag((E − Ē)ᵀ(E − Ē)) = Σ_m (ε_m − ε̄)²   per pixel            (Eq. 8)
//!
//! The M perturbed inputs go through the denoiser as **one batched call** (M·B rows), so an
//! uncertainty step costs 1 + M network evaluations per sample, counted in one extra call.
//! The ξ_m come from the seed streams (purpose `au-renoise`, index = sample, step = sampler step),
//! M·D numbers per sample, so U does not depend on batching.
//!
//! Conventions (config keys): `ddof` is the divisor of the sum of squared deviations about the
//! mean: `"none"` (the default) is Eq. 8 as printed, no divisor at all; an integer d divides by
//! M − d (1 = the unbiased `Var` of Alg. 1 line 7 and `torch.var`, 0 = population variance). The
//! divisor is one constant for every pixel, step and image, so it cannot move a ranking — the
//! filtering score (Table 1), the pixel order of a sparsification curve (Table 2) — but it scales
//! U_t and ∂U/∂ε, hence guidance's effective strength λ (Alg. 2) and the y-axis of Fig. 3.
//! `compat = "au-release"` reproduces the released code (docs/released-code.md §1.3):
//! x̂₀ is clipped to [−c, c] when `clip_sample` is set, and U = (1/M) Σ_m (ε_m − ε)², centred on
//! the original prediction ε rather than on the mean of the ε_m, divided by M.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, TensorContext};
use crate::model::Denoiser;
use crate::sampler::{Observer, StepView};
use crate::schedule::NoiseSchedule;
use crate::seed::Purpose;

/// The divisor of Eq. 8's sum of squared deviations (config key `au.ddof`): `"none"` or an
/// integer d (divide by M − d).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DdofRepr", into = "DdofRepr")]
pub enum Ddof {
    /// Eq. 8 as printed: Σ_m (ε_m − ε̄)², no divisor.
    NoDivisor,
    /// Divide by M − d.
    Minus(usize),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum DdofRepr {
    Count(usize),
    Word(String),
}

impl TryFrom<DdofRepr> for Ddof {
    type Error = String;
    fn try_from(r: DdofRepr) -> std::result::Result<Self, String> {
        match r {
            DdofRepr::Count(d) => Ok(Ddof::Minus(d)),
            DdofRepr::Word(w) if w == "none" => Ok(Ddof::NoDivisor),
            DdofRepr::Word(w) => Err(format!(
                "expected \"none\" (Eq. 8: no divisor) or an integer d (divide by M − d), got {w:?}"
            )),
        }
    }
}

impl From<Ddof> for DdofRepr {
    fn from(d: Ddof) -> Self {
        match d {
            Ddof::NoDivisor => DdofRepr::Word("none".into()),
            Ddof::Minus(d) => DdofRepr::Count(d),
        }
    }
}

impl Ddof {
    /// The divisor for M draws.
    pub fn divisor(self, m: usize) -> f64 {
        match self {
            Ddof::NoDivisor => 1.0,
            Ddof::Minus(d) => m.saturating_sub(d) as f64,
        }
    }

    /// A one-line error naming `key` unless the divisor is positive for M = `m`.
    pub fn check(self, key: &str, m: usize) -> Result<()> {
        match self {
            Ddof::Minus(d) if d >= m => Err(Error::invalid(
                key,
                format!("must be \"none\" or < M = {m}, got {d}"),
            )),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Ddof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ddof::NoDivisor => write!(f, "none"),
            Ddof::Minus(d) => write!(f, "{d}"),
        }
    }
}

/// Which definition of U_t.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuCompat {
    /// Alg. 1 / Eq. 8 as printed: squared deviations about the mean of the ε_m over the divisor
    /// of `ddof`, no clipping.
    Paper,
    /// The authors' released `uncertainty_centered` scheduler.
    AuRelease,
}

/// Settings of Alg. 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuSpec {
    /// Number of re-noisings M (≥ 2).
    pub m: usize,
    /// Divisor of the paper's sum of squared deviations.
    pub ddof: Ddof,
    pub compat: AuCompat,
    /// Clip x̂₀ to [−c, c] before re-noising (only under `AuRelease`, as the released code does
    /// when the scheduler has `clip_sample = True`).
    pub clip_sample: Option<f64>,
}

impl AuSpec {
    pub fn validate(&self) -> Result<()> {
        if self.m < 2 {
            return Err(Error::invalid(
                "au.m",
                format!("must be ≥ 2 (a variance needs two draws), got {}", self.m),
            ));
        }
        self.ddof.check("au.ddof", self.m)
    }
}

/// U_t for the batch `x_t` (B, …) with the sampler's ε at model time `t` and sampler step `step`;
/// `indices` are the B samples' indices (they key the re-noising streams). Returns U with the
/// shape of `x_t`.
#[allow(clippy::too_many_arguments)]
pub fn uncertainty(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    x_t: &Tensor,
    eps: &Tensor,
    t: f64,
    step: u32,
    indices: &[u64],
    purpose: &Purpose,
    spec: &AuSpec,
) -> Result<Tensor> {
    spec.validate()?;
    let xi = renoising(x_t, step, indices, purpose, spec.m)?;
    uncertainty_with(denoiser, schedule.alpha_bar_at(t), x_t, eps, t, &xi, spec)
        .ctx("AU uncertainty (Alg. 1)")
}

/// The M re-noising draws ξ for the batch, (M, B, F) in x_t's dtype: sample b's M·F numbers come
/// from its own stream at `step`, so U does not depend on how samples are batched.
pub fn renoising(
    x_t: &Tensor,
    step: u32,
    indices: &[u64],
    purpose: &Purpose,
    m: usize,
) -> Result<Tensor> {
    let dims = x_t.dims();
    let b = dims[0];
    if indices.len() != b {
        return Err(Error::invalid(
            "au indices",
            format!("{} indices for a batch of {b}", indices.len()),
        ));
    }
    let f: usize = dims[1..].iter().product();
    let device: &Device = x_t.device();
    (|| {
        Tensor::from_vec(
            purpose.normals(indices, Some(step), m * f),
            (b, m, f),
            device,
        )?
        .to_dtype(x_t.dtype())?
        .transpose(0, 1)?
        .contiguous()
    })()
    .ctx("AU re-noising draws")
}

/// Alg. 1 lines 2–7 given the draws `xi` (M, B, F) and ᾱ_t, in candle ops only: when `eps` is a
/// [`candle_core::Var`], U is differentiable in ε (used by guidance, Alg. 2).
pub(crate) fn uncertainty_with(
    denoiser: &dyn Denoiser,
    ab: f64,
    x_t: &Tensor,
    eps: &Tensor,
    t: f64,
    xi: &Tensor,
    spec: &AuSpec,
) -> candle_core::Result<Tensor> {
    let dims = x_t.dims().to_vec();
    let (m, b, f) = xi.dims3()?;
    let mut x0 = ((x_t - (eps * (1.0 - ab).sqrt())?)? / ab.sqrt())?;
    if let (AuCompat::AuRelease, Some(c)) = (spec.compat, spec.clip_sample) {
        x0 = x0.clamp(-c, c)?;
    }
    let x0 = x0.reshape((1, b, f))?;
    let perturbed = if fusable(&[&x0, xi]) {
        // Same bits as the candle expression below, in one parallel pass (no graph to record).
        (x0 * ab.sqrt())?
            .reshape(b * f)?
            .apply_op2_no_bwd(
                &xi.reshape(m * b * f)?,
                &Renoise {
                    s: (1.0 - ab).sqrt(),
                },
            )?
            .reshape((m, b, f))?
    } else {
        (x0 * ab.sqrt())?.broadcast_add(&(xi * (1.0 - ab).sqrt())?)?
    };
    let mut batch_dims = vec![m * b];
    batch_dims.extend_from_slice(&dims[1..]);
    let eps_m = denoiser
        .eps(&perturbed.reshape(batch_dims)?, t)?
        .reshape((m, b, f))?;
    let u = match spec.compat {
        AuCompat::Paper if fusable(&[&eps_m]) => eps_m.apply_op1_no_bwd(&SqDev {
            m,
            inv_m: 1.0 / m as f64,
            inv_div: 1.0 / spec.ddof.divisor(m),
        })?,
        AuCompat::AuRelease if fusable(&[&eps_m, eps]) => eps_m.apply_op2_no_bwd(
            &eps.reshape((b, f))?,
            &SqDev {
                m,
                inv_m: 1.0 / m as f64,
                inv_div: 1.0 / m as f64,
            },
        )?,
        AuCompat::Paper => {
            let mean = eps_m.mean_keepdim(0)?;
            (eps_m.broadcast_sub(&mean)?.sqr()?.sum(0)? / spec.ddof.divisor(m))?
        }
        AuCompat::AuRelease => {
            (eps_m
                .broadcast_sub(&eps.reshape((1, b, f))?)?
                .sqr()?
                .sum(0)?
                / m as f64)?
        }
    };
    u.reshape(dims)
}

/// Whether the fused CPU passes of `diffuq_linalg::members` can stand in for the candle
/// expressions of [`uncertainty_with`]: CPU tensors of f32/f64 with no autograd graph to record
/// (guidance differentiates U in ε and keeps the candle ops; the values are the same bits).
fn fusable(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| {
        t.device().is_cpu()
            && matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
            && !t.track_op()
    })
}

fn cpu_slice<'a, T>(
    s: &'a [T],
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    crate::model::contiguous_slice(s, l, "AU", what)
}

/// x̂_t^m = √ᾱ x̂₀ + √(1−ᾱ) ξ_m over (√ᾱ x̂₀ (B·F), ξ (M·B·F)) → (M·B·F) (Alg. 1 line 4).
struct Renoise {
    s: f64,
}

impl candle_core::CustomOp2 for Renoise {
    fn name(&self) -> &'static str {
        "diffuq-au-renoise"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let n = l2.shape().elem_count();
        let out = match (s1, s2) {
            (S::F32(a), S::F32(x)) => {
                let mut o = vec![0f32; n];
                diffuq_linalg::members::renoise_f32(
                    cpu_slice(a, l1, "x0")?,
                    cpu_slice(x, l2, "xi")?,
                    self.s as f32,
                    &mut o,
                );
                S::F32(o)
            }
            (S::F64(a), S::F64(x)) => {
                let mut o = vec![0f64; n];
                diffuq_linalg::members::renoise_f64(
                    cpu_slice(a, l1, "x0")?,
                    cpu_slice(x, l2, "xi")?,
                    self.s,
                    &mut o,
                );
                S::F64(o)
            }
            _ => candle_core::bail!("AU re-noising: x0 and xi must both be f32 or both f64"),
        };
        Ok((out, candle_core::Shape::from(n)))
    }
}

/// Eq. 8 over (M, B, F) ε_m → (B, F): Σ_m (ε_m − c)² / divisor, with c the members' mean (one
/// input) or the given centre (two inputs: the released code's ε).
struct SqDev {
    m: usize,
    inv_m: f64,
    inv_div: f64,
}

/// The signature of `member_sq_dev_f32` / `_f64`.
type SqDevKernel<T> = fn(&[T], usize, Option<&[T]>, T, T, &mut [T]);

impl SqDev {
    /// One dtype's call: the slices checked, the output allocated, the kernel run.
    fn typed<T: candle_core::WithDType>(
        &self,
        kernel: SqDevKernel<T>,
        (e, le): (&[T], &candle_core::Layout),
        c: Option<(&[T], &candle_core::Layout)>,
    ) -> candle_core::Result<Vec<T>> {
        let e = cpu_slice(e, le, "eps_m")?;
        let c = c.map(|(c, lc)| cpu_slice(c, lc, "eps")).transpose()?;
        let mut o = vec![T::zero(); le.shape().elem_count() / self.m];
        let (im, id) = (T::from_f64(self.inv_m), T::from_f64(self.inv_div));
        kernel(e, self.m, c, im, id, &mut o);
        Ok(o)
    }

    fn run(
        &self,
        e: &candle_core::CpuStorage,
        le: &candle_core::Layout,
        c: Option<(&candle_core::CpuStorage, &candle_core::Layout)>,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        use diffuq_linalg::members::{member_sq_dev_f32, member_sq_dev_f64};
        let out = match (e, c) {
            (S::F32(e), None) => S::F32(self.typed(member_sq_dev_f32, (e, le), None)?),
            (S::F32(e), Some((S::F32(c), lc))) => {
                S::F32(self.typed(member_sq_dev_f32, (e, le), Some((c, lc)))?)
            }
            (S::F64(e), None) => S::F64(self.typed(member_sq_dev_f64, (e, le), None)?),
            (S::F64(e), Some((S::F64(c), lc))) => {
                S::F64(self.typed(member_sq_dev_f64, (e, le), Some((c, lc)))?)
            }
            _ => candle_core::bail!("AU variance: tensors must all be f32 or all f64"),
        };
        Ok((out, candle_core::Shape::from(&le.shape().dims()[1..])))
    }
}

impl candle_core::CustomOp1 for SqDev {
    fn name(&self) -> &'static str {
        "diffuq-au-sq-dev"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        self.run(s, l, None)
    }
}

impl candle_core::CustomOp2 for SqDev {
    fn name(&self) -> &'static str {
        "diffuq-au-sq-dev-centred"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        self.run(s1, l1, Some((s2, l2)))
    }
}

/// A contiguous range of sampler steps (0-based step indices, not timesteps): where AU runs, or
/// which steps a per-image score sums (config keys `au.window_start`, `au.window_len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepWindow {
    pub start: usize,
    pub len: usize,
}

impl StepWindow {
    /// The paper's score window: steps 45..48 of 50 (Sec. 4, "from denoising timestep 45 until
    /// 48"; on the leading grid these are timesteps 80, 60, 40, 20).
    pub const PAPER: StepWindow = StepWindow { start: 45, len: 4 };

    pub fn contains(&self, step: usize) -> bool {
        (self.start..self.start + self.len).contains(&step)
    }

    /// Every step of an `n`-step trajectory.
    pub fn all(n: usize) -> Self {
        Self { start: 0, len: n }
    }

    /// The window must be non-empty and lie inside a grid of `steps` steps.
    pub fn validate(&self, key: &str, steps: usize) -> Result<()> {
        if self.len == 0 || self.start + self.len > steps {
            return Err(Error::invalid(
                key,
                format!(
                    "steps {}..{} lie outside the {steps}-step grid (valid: 0..{steps}, non-empty)",
                    self.start,
                    self.start + self.len
                ),
            ));
        }
        Ok(())
    }
}

/// U_t of one sampler step, reduced per image.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub step: usize,
    pub t: f64,
    /// Σ over pixels of U_t, one value per image of the batch.
    pub per_image: Vec<f64>,
}

/// Runs Alg. 1 at the steps of `window` while a sampler runs, keeping per-image sums of U_t.
/// Costs one extra batched denoiser call (M evaluations per sample) per uncertainty step.
pub struct AuObserver<'a> {
    pub denoiser: &'a dyn Denoiser,
    pub schedule: &'a NoiseSchedule,
    pub spec: AuSpec,
    pub purpose: Purpose,
    pub indices: &'a [u64],
    pub window: StepWindow,
    /// Keep the full per-pixel maps of the last uncertainty step (for figures).
    pub keep_maps: bool,
    /// Keep every uncertainty step's per-pixel map in `step_maps` (guidance calibration).
    pub keep_step_maps: bool,
    pub step_maps: Vec<(usize, Tensor)>,
    /// Accumulate Σ over the uncertainty steps of the per-pixel U_t in `map_sum` (AU Table 2:
    /// the pixel uncertainty of a reconstruction summed over the steps it ran).
    pub sum_maps: bool,
    pub map_sum: Option<Tensor>,
    pub records: Vec<StepRecord>,
    /// Network evaluations per sample spent on uncertainty (M per uncertainty step).
    pub extra_nfe: usize,
    pub last_map: Option<Tensor>,
}

impl<'a> AuObserver<'a> {
    pub fn new(
        denoiser: &'a dyn Denoiser,
        schedule: &'a NoiseSchedule,
        spec: AuSpec,
        purpose: Purpose,
        indices: &'a [u64],
        window: StepWindow,
    ) -> Self {
        Self {
            denoiser,
            schedule,
            spec,
            purpose,
            indices,
            window,
            keep_maps: false,
            keep_step_maps: false,
            step_maps: vec![],
            sum_maps: false,
            map_sum: None,
            records: vec![],
            extra_nfe: 0,
            last_map: None,
        }
    }

    /// Per-image score: Σ of the per-image sums over the recorded steps inside `window`
    /// (the paper's filtering score, Sec. 4).
    pub fn score(&self, window: StepWindow) -> Vec<f64> {
        let mut out = vec![0.0; self.indices.len()];
        for r in self.records.iter().filter(|r| window.contains(r.step)) {
            for (o, v) in out.iter_mut().zip(&r.per_image) {
                *o += v;
            }
        }
        out
    }
}

impl Observer for AuObserver<'_> {
    fn on_step(&mut self, view: &StepView<'_>) -> candle_core::Result<()> {
        if !self.window.contains(view.step) {
            return Ok(());
        }
        let u = uncertainty(
            self.denoiser,
            self.schedule,
            view.x_t,
            view.eps,
            view.t,
            view.step as u32,
            self.indices,
            &self.purpose,
            &self.spec,
        )
        .map_err(candle_core::Error::wrap)?;
        let b = u.dim(0)?;
        let per_image = u
            .reshape((b, ()))?
            .to_dtype(candle_core::DType::F64)?
            .sum(1)?
            .to_vec1::<f64>()?;
        self.records.push(StepRecord {
            step: view.step,
            t: view.t,
            per_image,
        });
        self.extra_nfe += self.spec.m;
        if self.sum_maps {
            self.map_sum = Some(match self.map_sum.take() {
                Some(acc) => (acc + &u)?,
                None => u.clone(),
            });
        }
        if self.keep_step_maps {
            self.step_maps.push((view.step, u.clone()));
        }
        if self.keep_maps {
            self.last_map = Some(u);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gmm::{Component, GaussianMixture};
    use crate::schedule::ScheduleKind;
    use crate::seed::SeedStreams;
    use std::cell::Cell;

    fn sched() -> NoiseSchedule {
        NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000)
    }

    struct Counting<'a>(&'a dyn Denoiser, Cell<usize>);
    impl Denoiser for Counting<'_> {
        fn eps(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
            self.1.set(self.1.get() + 1);
            self.0.eps(x, t)
        }
    }

    /// Returns (U, denoiser calls, ((1−ᾱ)/v)², the original ε per pixel).
    fn setup(m: usize, compat: AuCompat) -> (Vec<f64>, usize, f64, Vec<f64>) {
        setup_with(m, compat, Ddof::Minus(1))
    }

    #[test]
    fn fused_passes_give_the_candle_expressions_bits() {
        // Expected numbers: candle 0.11's own ops (the expression in `uncertainty_with`), taken
        // by making ε a Var so the graph is tracked and the fused passes stand aside; the fused
        // passes must reproduce them bit for bit (f32 and f64, both conventions, every divisor,
        // M = 1, 5, 6, and more positions than one parallel chunk of 4,096).
        let g = GaussianMixture::new(
            vec![
                Component {
                    weight: 0.5,
                    mean: vec![0.3; 72],
                    std: 0.4,
                },
                Component {
                    weight: 0.5,
                    mean: vec![-0.5; 72],
                    std: 0.7,
                },
            ],
            sched(),
        )
        .unwrap();
        let (b, f, t) = (70usize, 72usize, 420.0);
        let idx: Vec<u64> = (0..b as u64).collect();
        let st = SeedStreams::new(11);
        for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
            let x_t =
                Tensor::from_vec(st.purpose("x").normals(&idx, None, f), (b, f), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
            let eps = g
                .eps(&x_t.to_dtype(candle_core::DType::F64).unwrap(), t)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let ab = sched().alpha_bar_at(t);
            for m in [1usize, 5, 6] {
                let xi = renoising(&x_t, 3, &idx, &st.purpose("au-renoise"), m).unwrap();
                for (compat, ddof) in [
                    (AuCompat::Paper, Ddof::NoDivisor),
                    (AuCompat::Paper, Ddof::Minus(1)),
                    (AuCompat::Paper, Ddof::Minus(0)),
                    (AuCompat::AuRelease, Ddof::NoDivisor),
                ] {
                    if m == 1 && ddof == Ddof::Minus(1) {
                        continue;
                    }
                    let spec = AuSpec {
                        m,
                        ddof,
                        compat,
                        clip_sample: None,
                    };
                    let fused = uncertainty_with(&g, ab, &x_t, &eps, t, &xi, &spec).unwrap();
                    let var = candle_core::Var::from_tensor(&eps).unwrap();
                    let plain =
                        uncertainty_with(&g, ab, &x_t, var.as_tensor(), t, &xi, &spec).unwrap();
                    assert!(plain.track_op(), "the reference must take candle's ops");
                    let bits = |u: &Tensor| {
                        u.flatten_all()
                            .unwrap()
                            .to_dtype(candle_core::DType::F64)
                            .unwrap()
                            .to_vec1::<f64>()
                            .unwrap()
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(
                        bits(&fused),
                        bits(&plain),
                        "{dtype:?} M={m} {compat:?} {ddof:?}"
                    );
                }
            }
        }
    }

    fn setup_with(m: usize, compat: AuCompat, ddof: Ddof) -> (Vec<f64>, usize, f64, Vec<f64>) {
        // Single Gaussian data N(μ, s²I): ε*(x) = √(1−ᾱ)(x − √ᾱ μ)/v with v = ᾱ s² + 1 − ᾱ is
        // linear in x, so ε_m − mean_m = (1−ᾱ)/v · (ξ_m − ξ̄) and E[U] = ((1−ᾱ)/v)² exactly.
        let g = GaussianMixture::new(
            vec![Component {
                weight: 1.0,
                mean: vec![0.3, -0.2, 0.5],
                std: 0.4,
            }],
            sched(),
        )
        .unwrap();
        let counting = Counting(&g, Cell::new(0));
        let (b, t) = (64usize, 300.0);
        let dev = Device::Cpu;
        let idx: Vec<u64> = (0..b as u64).collect();
        let s = SeedStreams::new(5);
        let x_t = Tensor::from_vec(s.purpose("x").normals(&idx, None, 3), (b, 3), &dev)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        let eps = g.eps(&x_t, t).unwrap();
        let spec = AuSpec {
            m,
            ddof,
            compat,
            clip_sample: None,
        };
        let u = uncertainty(
            &counting,
            &sched(),
            &x_t,
            &eps,
            t,
            7,
            &idx,
            &s.purpose("au-renoise"),
            &spec,
        )
        .unwrap();
        let ab = sched().alpha_bar_at(t);
        let v = ab * 0.16 + 1.0 - ab;
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        (
            flat(&u),
            counting.1.get(),
            ((1.0 - ab) / v).powi(2),
            flat(&eps),
        )
    }

    #[test]
    fn paper_variance_matches_the_closed_form_and_costs_one_call() {
        let (u, calls, expected, _) = setup(400, AuCompat::Paper);
        assert_eq!(
            calls, 1,
            "the M perturbations must be one batched denoiser call"
        );
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        // 192 pixels × 400 draws: the relative standard error of the pooled variance is ≈ 0.5%.
        approx::assert_relative_eq!(mean, expected, max_relative = 0.03);
    }

    #[test]
    fn eq8_has_no_divisor_and_ddof_parses_from_config() {
        // Eq. 8 as printed, Σ_m (ε_m − ε̄)², is (M − 1) times the unbiased variance of the same
        // draws; `ddof` reads "none" or an integer, and anything else names what it expects.
        let (unbiased, _, _, _) = setup(5, AuCompat::Paper);
        let (none, _, _, _) = setup_with(5, AuCompat::Paper, Ddof::NoDivisor);
        for (a, b) in none.iter().zip(&unbiased) {
            approx::assert_relative_eq!(*a, 4.0 * b, max_relative = 1e-12);
        }
        #[derive(serde::Deserialize)]
        struct K {
            ddof: Ddof,
        }
        let k: K = toml::from_str("ddof = \"none\"").unwrap();
        assert_eq!(k.ddof, Ddof::NoDivisor);
        let k: K = toml::from_str("ddof = 1").unwrap();
        assert_eq!(k.ddof, Ddof::Minus(1));
        let e = toml::from_str::<K>("ddof = \"unbiased\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("Eq. 8"), "{e}");
        assert_eq!(Ddof::NoDivisor.divisor(7), 1.0);
        assert_eq!(Ddof::Minus(1).divisor(7), 6.0);
    }

    #[test]
    fn release_convention_centres_on_the_original_eps() {
        // Released code: U = (1/M) Σ (ε_m − ε)². For this linear ε*, ε_m − ε = (1−ᾱ)/v · (ξ_m − ε),
        // so E[U_release] = ((1−ᾱ)/v)² (1 + ε²) per pixel: the release inflates U by the squared
        // prediction itself, which the paper's variance about the mean does not.
        let (paper, _, _, _) = setup(8, AuCompat::Paper);
        let (release, _, k, eps) = setup(8, AuCompat::AuRelease);
        assert!(paper
            .iter()
            .zip(&release)
            .any(|(a, b)| (a - b).abs() > 1e-6));
        let ratio: f64 = release
            .iter()
            .zip(&eps)
            .map(|(u, e)| u / (k * (1.0 + e * e)))
            .sum::<f64>()
            / release.len() as f64;
        // 192 pixels × 8 draws: the pooled ratio has a standard error of about 4%.
        approx::assert_relative_eq!(ratio, 1.0, max_relative = 0.12);
    }

    #[test]
    fn observer_scores_the_window_and_does_not_depend_on_batching() {
        // DDIM 50 steps with AU at the paper's window (steps 45..48): 4 records, 4·M extra
        // evaluations per sample, score = Σ of the 4 per-image sums; sample 2's score is the same
        // whether it runs in a batch of 6 or of 3 (its draws come from its own stream).
        use crate::sampler::{ddim, StepRules, StreamNoise};
        let g = GaussianMixture::new(
            vec![
                Component {
                    weight: 0.5,
                    mean: vec![-1.0, 1.0],
                    std: 0.2,
                },
                Component {
                    weight: 0.5,
                    mean: vec![1.0, 0.0],
                    std: 0.2,
                },
            ],
            sched(),
        )
        .unwrap();
        let s = sched();
        let grid = crate::schedule::leading_grid(1000, 50);
        let streams = SeedStreams::new(3);
        let scores = |n: u64| {
            let idx: Vec<u64> = (0..n).collect();
            let x = Tensor::from_vec(
                streams.purpose("x_T").normals(&idx, None, 2),
                (n as usize, 2),
                &Device::Cpu,
            )
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
            let spec = AuSpec {
                m: 5,
                ddof: Ddof::Minus(1),
                compat: AuCompat::Paper,
                clip_sample: None,
            };
            let mut obs =
                AuObserver::new(&g, &s, spec, streams.purpose("au"), &idx, StepWindow::PAPER);
            let noise = StreamNoise {
                purpose: streams.purpose("noise"),
                indices: &idx,
                dim: 2,
                device: &Device::Cpu,
            };
            let out = ddim::sample(
                &g,
                &s,
                &grid,
                0.0,
                &StepRules::default(),
                x,
                &noise,
                &mut obs,
            )
            .unwrap();
            assert_eq!(out.nfe + obs.extra_nfe, 50 + 4 * 5);
            assert_eq!(
                obs.records.iter().map(|r| r.step).collect::<Vec<_>>(),
                vec![45, 46, 47, 48]
            );
            assert_eq!(obs.records[0].t, 80.0);
            let total: f64 = obs.records.iter().map(|r| r.per_image[1]).sum();
            let score = obs.score(StepWindow::PAPER);
            approx::assert_relative_eq!(score[1], total, max_relative = 1e-12);
            score
        };
        let (six, three) = (scores(6), scores(3));
        approx::assert_relative_eq!(six[2], three[2], max_relative = 1e-12);
        assert!(StepWindow { start: 48, len: 3 }
            .validate("au.window", 50)
            .is_err());
    }

    #[test]
    fn bad_settings_name_the_key() {
        let e = AuSpec {
            m: 1,
            ddof: Ddof::Minus(0),
            compat: AuCompat::Paper,
            clip_sample: None,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("au.m"), "{e}");
        let e = AuSpec {
            m: 2,
            ddof: Ddof::Minus(2),
            compat: AuCompat::Paper,
            clip_sample: None,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("au.ddof"), "{e}");
    }
}
