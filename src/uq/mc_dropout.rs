//! MC-Dropout baseline (Gal & Ghahramani 2016), as AU compares against it (AU Tables 1–2; the
//! released `scheduling_ddim_mc_dropout.py`, docs/released-code.md §1.3): at step t, evaluate the
//! same x_t M times with dropout active and take the per-pixel variance of the M predictions,
//!
//!   U_t^drop = Var_m[ε_θ^{(m)}(x_t, t)],   θ^{(m)} = θ with an independent dropout mask,
//!
//! unbiased (÷ (M − 1)) like `torch.var` in the released code; `ddof` is a key. Costs M network
//! evaluations per uncertainty step (the released code runs them one at a time).
//!
//! Masks come from the seed streams, one derived family per (pass, layer) and one stream per
//! sample, so U does not depend on batching and never touches a global RNG.

use candle_core::Tensor;

use crate::error::{Error, Result, TensorContext};
use crate::seed::Purpose;

pub use crate::model::{DropoutDenoiser, MaskSource, StreamMasks};

/// U_t^drop for the batch `x_t` at model time `t`, sampler step `step`, with `m` passes.
#[allow(clippy::too_many_arguments)]
pub fn uncertainty(
    model: &dyn DropoutDenoiser,
    x_t: &Tensor,
    t: f64,
    step: u32,
    indices: &[u64],
    purpose: &Purpose,
    m: usize,
    ddof: usize,
) -> Result<Tensor> {
    if m < 2 {
        return Err(Error::invalid(
            "mc_dropout.m",
            format!("must be ≥ 2 (a variance needs two passes), got {m}"),
        ));
    }
    if ddof >= m {
        return Err(Error::invalid(
            "mc_dropout.ddof",
            format!("must be < mc_dropout.m = {m}, got {ddof}"),
        ));
    }
    (|| {
        let passes = (0..m)
            .map(|pass| {
                let mut masks = StreamMasks::new(*purpose, indices, step, pass);
                model.eps_dropout(x_t, t, &mut masks)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let stack = Tensor::stack(&passes, 0)?;
        let mean = stack.mean_keepdim(0)?;
        stack.broadcast_sub(&mean)?.sqr()?.sum(0)? / (m - ddof) as f64
    })()
    .ctx("MC-dropout uncertainty")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::SeedStreams;
    use candle_core::{DType, Device};

    /// ε = (x ⊙ keep/(1 − p)) W: one dropout layer on the input of a linear map.
    struct LinearDropout {
        w: Tensor,
        p: f64,
    }
    impl DropoutDenoiser for LinearDropout {
        fn eps_dropout(
            &self,
            x: &Tensor,
            _t: f64,
            masks: &mut dyn MaskSource,
        ) -> candle_core::Result<Tensor> {
            let keep = masks.keep_mask(x, self.p)?;
            ((x * keep)? / (1.0 - self.p))?.matmul(&self.w)
        }
    }

    #[test]
    fn variance_matches_the_closed_form_of_inverted_dropout() {
        // keep_j ~ Bernoulli(1 − p) independently: Var[keep_j/(1−p)] = p/(1−p), so
        // Var[ε_i] = p/(1−p) Σ_j x_j² W_ji² exactly. 2000 passes: relative standard error of a
        // variance estimate ≈ √(2/2000) ≈ 3% (heavier tails here), tolerance 15%.
        let dev = Device::Cpu;
        let w = Tensor::from_vec(vec![1.0, -0.5, 0.3, 2.0, 0.0, 1.0], (3, 2), &dev).unwrap();
        let model = LinearDropout {
            w: w.clone(),
            p: 0.1,
        };
        let x = Tensor::from_vec(vec![0.5, -1.0, 2.0, 1.0, 1.0, 1.0], (2, 3), &dev).unwrap();
        let idx = [0u64, 1];
        let u = uncertainty(
            &model,
            &x,
            10.0,
            3,
            &idx,
            &SeedStreams::new(1).purpose("mc-dropout"),
            2000,
            1,
        )
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
        let (xv, wv) = (x.to_vec2::<f64>().unwrap(), w.to_vec2::<f64>().unwrap());
        for b in 0..2 {
            for i in 0..2 {
                let expect: f64 = (0..3)
                    .map(|j| xv[b][j].powi(2) * wv[j][i].powi(2))
                    .sum::<f64>()
                    * 0.1
                    / 0.9;
                approx::assert_relative_eq!(u[b][i], expect, max_relative = 0.15);
            }
        }
    }

    #[test]
    fn one_pass_is_rejected_with_the_key() {
        let dev = Device::Cpu;
        let model = LinearDropout {
            w: Tensor::ones((1, 1), DType::F64, &dev).unwrap(),
            p: 0.1,
        };
        let x = Tensor::ones((1, 1), DType::F64, &dev).unwrap();
        let e = uncertainty(
            &model,
            &x,
            0.0,
            0,
            &[0],
            &SeedStreams::new(1).purpose("d"),
            1,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("mc_dropout.m"), "{e}");
    }
}
