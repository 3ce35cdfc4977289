//! Denoising models. Every network implements [`network::Network`] (forward with per-item
//! times, labels and a dropout mode; a tagged prediction kind; optional last layer); samplers and
//! uncertainty methods see it through [`network::Bound`] as a [`Denoiser`] (ε), a velocity field,
//! a [`LastLayerModel`] or a [`DropoutDenoiser`].

pub mod act;
pub mod adm;
pub mod cache;
pub mod catalog;
pub mod conv;
pub mod dit;
pub mod gmm;
pub mod loader;
pub mod network;
pub mod norm;
pub mod optim;
pub mod params;
pub mod recipe;
pub mod toy_mlp;
pub mod train;
pub mod trainer;
pub mod unet2d;
pub mod upsample;
pub mod uvit;
pub mod vae;

pub use network::{
    Bound, DropoutDenoiser, LastLayerModel, LastLayerNetwork, MaskSource, Mode, Network,
    Prediction, StreamMasks,
};

use candle_core::Tensor;

/// An ε-prediction network: ε_θ(x_t, t), with t the model's time input shared by the batch.
///
/// t is in training-step units (0 ≤ t ≤ T − 1): discrete samplers (DDPM, DDIM, DPM++) pass
/// integers, DPM-Solver-2's midpoints are real (model time (t_c − 1/T)·T of a continuous
/// t_c, as DPM-Solver's `get_model_input_time`). At a real t, ᾱ is the log-linear interpolation of
/// [`crate::schedule::NoiseSchedule::alpha_bar_at`].
///
/// Inputs may carry leading batch dimensions (for an ensemble: members × samples × dim); the
/// output has the shape of `x_t`. Implementations built from candle ops are differentiable in
/// `x_t` (AU guidance back-propagates through them).
pub trait Denoiser {
    fn eps(&self, x_t: &Tensor, t: f64) -> candle_core::Result<Tensor>;

    /// The flow velocity v_θ(x, t) of a flow-matching model ([`crate::sampler::flow`]'s
    /// convention, t ∈ [0, 1]); what the flow samplers of [`crate::sampler::spec`] integrate. An
    /// ε-model has none: the default is an error naming the mismatch.
    fn velocity(&self, _x: &Tensor, _t: f64) -> candle_core::Result<Tensor> {
        candle_core::bail!(
            "this model predicts ε, not a flow velocity: use a diffusion sampler (ddim, ddpm, dpm-solver-2, dpm-solver-pp2m)"
        )
    }

    /// The model's last layer, for last-layer Laplace methods (GU, BayesDiff); `None` for models
    /// that expose none (the analytic oracle, an ensemble as a whole).
    fn as_last_layer(&self) -> Option<&dyn LastLayerModel> {
        None
    }
}

/// The elements of a contiguous CPU tensor's storage (the custom ops' kernels read flat slices);
/// an error naming the op and the argument otherwise.
pub(crate) fn contiguous_slice<'a, T>(
    s: &'a [T],
    l: &candle_core::Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

/// [`contiguous_slice`] of an f32 CPU storage; an error naming `op` and `what` for any other
/// dtype.
pub(crate) fn contiguous_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match s {
        candle_core::CpuStorage::F32(v) => contiguous_slice(v, l, op, what),
        _ => candle_core::bail!("{op}: {what} must be f32"),
    }
}
