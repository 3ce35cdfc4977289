//! Denoising models. A [`Denoiser`] predicts ε from (x_t, t); samplers only see this trait.

pub mod cache;
pub mod conditional;
pub mod gmm;
pub mod optim;
pub mod toy_mlp;
pub mod train;
pub mod trainer;

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

    /// The model's last layer, for last-layer Laplace methods (GU, BayesDiff); `None` for models
    /// that expose none (the analytic oracle, an ensemble as a whole).
    fn as_last_layer(&self) -> Option<&dyn crate::uq::laplace::LastLayerModel> {
        None
    }
}
