//! Denoising models. A [`Denoiser`] predicts ε from (x_t, t); samplers only see this trait.

pub mod gmm;
pub mod toy_mlp;
pub mod train;

use candle_core::Tensor;

/// An ε-prediction network: ε_θ(x_t, t), t a discrete DDPM timestep shared by the batch.
///
/// Inputs may carry leading batch dimensions (for an ensemble: members × samples × dim); the
/// output has the shape of `x_t`.
pub trait Denoiser {
    fn eps(&self, x_t: &Tensor, t: usize) -> candle_core::Result<Tensor>;
}
