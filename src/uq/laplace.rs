//! Diagonal empirical-Fisher Laplace approximation over a model's last layer (GU Sec. 3, App. B;
//! BayesDiff's LLLA), as laplace-torch's `DiagLaplace` with `subset_of_weights = "last_layer"`,
//! likelihood "regression" and an empirical-Fisher backend.
//!
//! The last layer is a linear map applied at each of P positions (ADM's final 3×3 conv as an
//! im2col'd linear map, U-ViT's `decoder_pred` per token, an MLP's output layer with P = 1):
//! y_{n,p} = W φ_{n,p} + b, W ∈ ℝ^{O×F}. For a training item n with its own timestep t_n and noise
//! ε_n (the diffusion loss ‖ε_θ(x_t, t, y) − ε‖²), the residual r_{n,p} = y_{n,p} − ε_{n,p} over the
//! counted output channels gives the per-item gradient of ½‖r_n‖²,
//!
//!   g_n(W) = Σ_p r_{n,p} φ_{n,p}ᵀ,   g_n(b) = Σ_p r_{n,p},
//!
//! and the diagonal empirical Fisher H = c · Σ_n g_n ⊙ g_n, elementwise
//!
//!   H(W) = c Σ_n (Σ_p r_{n,p} φ_{n,p}ᵀ)²,   H(b) = c Σ_n (Σ_p r_{n,p})²:
//!
//! the per-item gradient is summed over the positions and then squared — not c Σ_n Σ_p (r φᵀ)²,
//! which would treat every position as its own item (tests/laplace_golden.rs checks conv last
//! layers with 36 and 64 positions against laplace-torch). laplace-torch differentiates the
//! summed MSE ‖r‖² and halves the square: ½ (2 g_n)² = 2 g_n², so its H has c = 2 — twice the
//! textbook EF (c = 1); GU and BayesDiff inherit it (docs/released-code.md §2.3, §3.2). c is the
//! key `laplace.ef_scale`. The posterior is N(θ_MAP, diag(1/(H/σ² + λ))) with observation noise σ
//! (`laplace.sigma`) and prior precision λ (`laplace.prior_precision`); GU/BayesDiff use σ = λ = 1.
//!
//! Because the last layer is linear, the predictive under this posterior is Gaussian in closed
//! form: mean W_MAP φ + b, variance Σ_f φ_f² v_W[o, f] + v_b[o] per output (laplace-torch's "glm"
//! predictive, exact here). BayesDiff instead averages S sampled last layers ("mc"); both are
//! provided and agree as S grows (tested).

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result, TensorContext};
use crate::model::Denoiser;
use crate::seed::Purpose;

pub use crate::model::LastLayerModel;

/// Settings (config table `[laplace]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaplaceSpec {
    /// Observation noise σ > 0.
    pub sigma: f64,
    /// Prior precision λ > 0.
    pub prior_precision: f64,
    /// c in H = c Σ g²: 2 = laplace-torch (GU, BayesDiff), 1 = textbook empirical Fisher.
    pub ef_scale: f64,
    /// Output channels that enter the loss (ADM: the first 3 of 6); `None` = all.
    pub channels: Option<usize>,
}

impl LaplaceSpec {
    /// GU's and BayesDiff's settings.
    pub const GU: LaplaceSpec = LaplaceSpec {
        sigma: 1.0,
        prior_precision: 1.0,
        ef_scale: 2.0,
        channels: None,
    };

    pub fn validate(&self) -> Result<()> {
        if !(self.sigma > 0.0 && self.sigma.is_finite()) {
            return Err(Error::invalid(
                "laplace.sigma",
                format!("observation noise must be > 0, got {}", self.sigma),
            ));
        }
        if !(self.prior_precision > 0.0 && self.prior_precision.is_finite()) {
            return Err(Error::invalid(
                "laplace.prior_precision",
                format!("must be > 0, got {}", self.prior_precision),
            ));
        }
        if !(self.ef_scale > 0.0 && self.ef_scale.is_finite()) {
            return Err(Error::invalid(
                "laplace.ef_scale",
                format!("must be > 0, got {}", self.ef_scale),
            ));
        }
        Ok(())
    }
}

/// The fitted diagonal posterior over (W, b), in f64.
#[derive(Debug, Clone)]
pub struct DiagPosterior {
    pub w_map: Tensor,
    pub b_map: Option<Tensor>,
    /// Diagonal empirical Fisher of W (O, F) and b (O,), scaled by `ef_scale`.
    pub h_w: Tensor,
    pub h_b: Option<Tensor>,
    pub spec: LaplaceSpec,
    /// Training items seen.
    pub n_items: usize,
}

/// Accumulates H over batches of (x_t, t per item, target ε).
pub struct FisherAccumulator<'a> {
    model: &'a dyn LastLayerModel,
    spec: LaplaceSpec,
    w: Tensor,
    b: Option<Tensor>,
    h_w: Tensor,
    h_b: Option<Tensor>,
    n: usize,
}

impl<'a> FisherAccumulator<'a> {
    pub fn new(model: &'a dyn LastLayerModel, spec: LaplaceSpec) -> Result<Self> {
        spec.validate()?;
        let (w, b) = model.last_layer().ctx("last layer")?;
        let w = w.to_dtype(DType::F64).ctx("last-layer weight")?;
        let b = b
            .map(|b| b.to_dtype(DType::F64))
            .transpose()
            .ctx("last-layer bias")?;
        let (o, _) = w.dims2().ctx("last-layer weight must be (O, F)")?;
        if let Some(c) = spec.channels {
            if c == 0 || c > o {
                return Err(Error::invalid(
                    "laplace.channels",
                    format!("must lie in 1..={o} (the last layer's outputs), got {c}"),
                ));
            }
        }
        let h_w = w.zeros_like().ctx("H")?;
        let h_b = b.as_ref().map(|b| b.zeros_like()).transpose().ctx("H")?;
        Ok(Self {
            model,
            spec,
            w,
            b,
            h_w,
            h_b,
            n: 0,
        })
    }

    /// Add one batch: inputs x_t (N, …), one model time per item, targets ε (N, …).
    pub fn add(&mut self, x_t: &Tensor, t: &[f64], target: &Tensor) -> Result<()> {
        let n = x_t.dim(0).ctx("x_t")?;
        if t.len() != n {
            return Err(Error::invalid(
                "laplace fit batch",
                format!("{} timesteps for {n} items", t.len()),
            ));
        }
        let (g_w, g_b) = (|| -> candle_core::Result<(Tensor, Tensor)> {
            let phi = self.model.features(x_t, t)?.to_dtype(DType::F64)?; // (N, P, F)
            let mut out = phi.broadcast_matmul(&self.w.t()?)?; // (N, P, O)
            if let Some(b) = &self.b {
                out = out.broadcast_add(b)?;
            }
            let tgt = self.model.disassemble(target)?.to_dtype(DType::F64)?;
            let mut r = (out - tgt)?;
            if let Some(c) = self.spec.channels {
                // Uncounted channels get no gradient (ADM's variance outputs).
                let o = r.dim(D::Minus1)?;
                let keep: Vec<f64> = (0..o).map(|i| f64::from(u8::from(i < c))).collect();
                r = r.broadcast_mul(&Tensor::from_vec(keep, o, r.device())?)?;
            }
            let g_w = r.transpose(1, 2)?.contiguous()?.matmul(&phi)?; // (N, O, F)
            let g_b = r.sum(1)?; // (N, O)
            Ok((g_w, g_b))
        })()
        .ctx("per-item last-layer gradients")?;
        let s = self.spec.ef_scale;
        self.h_w = (&self.h_w + (g_w.sqr().ctx("H")?.sum(0).ctx("H")? * s).ctx("H")?).ctx("H")?;
        if let Some(h_b) = &self.h_b {
            self.h_b = Some((h_b + (g_b.sqr().ctx("H")?.sum(0).ctx("H")? * s).ctx("H")?).ctx("H")?);
        }
        self.n += n;
        Ok(())
    }

    pub fn finish(self) -> DiagPosterior {
        DiagPosterior {
            w_map: self.w,
            b_map: self.b,
            h_w: self.h_w,
            h_b: self.h_b,
            spec: self.spec,
            n_items: self.n,
        }
    }
}

/// One set of last-layer parameters.
#[derive(Debug, Clone)]
pub struct LastLayerDraw {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

impl DiagPosterior {
    /// The posterior of the union of two fits of the same last layer: the empirical Fisher is a
    /// sum over items, so the H of disjoint item sets add (used when every batch binds its own
    /// class labels to the network and so needs its own accumulator).
    pub fn merged(&self, other: &DiagPosterior) -> Result<DiagPosterior> {
        if self.h_w.dims() != other.h_w.dims() || self.spec != other.spec {
            return Err(Error::invalid(
                "Laplace fit",
                format!(
                    "cannot merge fits of different layers or settings ({:?} vs {:?})",
                    self.h_w.dims(),
                    other.h_w.dims()
                ),
            ));
        }
        let h_b = match (&self.h_b, &other.h_b) {
            (Some(a), Some(b)) => Some((a + b).ctx("H")?),
            _ => None,
        };
        Ok(DiagPosterior {
            w_map: self.w_map.clone(),
            b_map: self.b_map.clone(),
            h_w: (&self.h_w + &other.h_w).ctx("H")?,
            h_b,
            spec: self.spec,
            n_items: self.n_items + other.n_items,
        })
    }

    /// Posterior precision H/σ² + λ of W and b.
    pub fn precision(&self) -> Result<(Tensor, Option<Tensor>)> {
        let s2 = self.spec.sigma * self.spec.sigma;
        let lam = self.spec.prior_precision;
        let p = |h: &Tensor| (h / s2).and_then(|x| x + lam);
        Ok((
            p(&self.h_w).ctx("precision")?,
            self.h_b.as_ref().map(p).transpose().ctx("precision")?,
        ))
    }

    /// Posterior variances 1/precision.
    pub fn variance(&self) -> Result<(Tensor, Option<Tensor>)> {
        let (pw, pb) = self.precision()?;
        Ok((
            pw.recip().ctx("variance")?,
            pb.map(|p| p.recip()).transpose().ctx("variance")?,
        ))
    }

    /// θ_m = θ_MAP + ξ_m ⊙ σ_post for m = 0..count, ξ_m from stream m of `purpose`; with
    /// `include_map` the MAP comes first (GU's 1 + M parameter sets).
    pub fn draws(
        &self,
        count: usize,
        include_map: bool,
        purpose: &Purpose,
    ) -> Result<Vec<LastLayerDraw>> {
        if count == 0 {
            return Err(Error::invalid(
                "laplace.samples",
                "the number of posterior draws M must be ≥ 1, got 0",
            ));
        }
        let (vw, vb) = self.variance()?;
        let dev = self.w_map.device();
        let mut out = vec![];
        if include_map {
            out.push(LastLayerDraw {
                w: self.w_map.clone(),
                b: self.b_map.clone(),
            });
        }
        let nw = self.w_map.elem_count();
        let nb = self.b_map.as_ref().map_or(0, |b| b.elem_count());
        for m in 0..count {
            let xi = purpose.normals(&[m as u64], None, nw + nb);
            let xi: Vec<f64> = xi.into_iter().map(f64::from).collect();
            let draw = (|| -> candle_core::Result<LastLayerDraw> {
                let xw = Tensor::from_vec(xi[..nw].to_vec(), self.w_map.shape(), dev)?;
                let w = (&self.w_map + (xw * vw.sqrt()?)?)?;
                let b = match (&self.b_map, &vb) {
                    (Some(b), Some(vb)) => {
                        let xb = Tensor::from_vec(xi[nw..].to_vec(), b.shape(), dev)?;
                        Some((b + (xb * vb.sqrt()?)?)?)
                    }
                    _ => None,
                };
                Ok(LastLayerDraw { w, b })
            })()
            .ctx("posterior draw")?;
            out.push(draw);
        }
        Ok(out)
    }

    /// Closed-form predictive for features φ (N, P, F): (mean, variance), each (N, P, O).
    pub fn predictive(&self, phi: &Tensor) -> Result<(Tensor, Tensor)> {
        let (vw, vb) = self.variance()?;
        (|| -> candle_core::Result<(Tensor, Tensor)> {
            let phi = phi.to_dtype(DType::F64)?;
            let mut mean = phi.broadcast_matmul(&self.w_map.t()?)?;
            if let Some(b) = &self.b_map {
                mean = mean.broadcast_add(b)?;
            }
            let mut var = phi.sqr()?.broadcast_matmul(&vw.t()?)?;
            if let Some(vb) = &vb {
                var = var.broadcast_add(vb)?;
            }
            Ok((mean, var))
        })()
        .ctx("closed-form last-layer predictive")
    }

    /// BayesDiff's Monte-Carlo predictive: mean and unbiased variance over `samples` drawn last
    /// layers (`samples` ≥ 2).
    pub fn predictive_mc(
        &self,
        phi: &Tensor,
        samples: usize,
        purpose: &Purpose,
    ) -> Result<(Tensor, Tensor)> {
        if samples < 2 {
            return Err(Error::invalid(
                "laplace.mc_samples",
                format!("must be ≥ 2, got {samples}"),
            ));
        }
        let draws = self.draws(samples, false, purpose)?;
        (|| -> candle_core::Result<(Tensor, Tensor)> {
            let phi = phi.to_dtype(DType::F64)?;
            let outs = draws
                .iter()
                .map(|d| {
                    let y = phi.broadcast_matmul(&d.w.t()?)?;
                    match &d.b {
                        Some(b) => y.broadcast_add(b),
                        None => Ok(y),
                    }
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let stack = Tensor::stack(&outs, 0)?;
            let mean = stack.mean(0)?;
            let var = (stack.broadcast_sub(&mean)?.sqr()?.sum(0)? / (samples - 1) as f64)?;
            Ok((mean, var))
        })()
        .ctx("Monte-Carlo last-layer predictive")
    }
}

/// The model with its last layer replaced by `draw`: a [`Denoiser`] for any sampler.
pub struct WithLastLayer<'a> {
    pub model: &'a dyn LastLayerModel,
    pub draw: &'a LastLayerDraw,
}

impl WithLastLayer<'_> {
    /// The network's raw output with the drawn last layer (its output layout).
    fn raw(&self, x_t: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let n = x_t.dim(0)?;
        let phi = self.model.features(x_t, &vec![t; n])?;
        let w = self.draw.w.to_dtype(phi.dtype())?;
        let mut out = phi.broadcast_matmul(&w.t()?)?;
        if let Some(b) = &self.draw.b {
            out = out.broadcast_add(&b.to_dtype(phi.dtype())?)?;
        }
        self.model.assemble(&out)
    }
}

impl Denoiser for WithLastLayer<'_> {
    /// A flow-matching network's raw output is its velocity (GU App. C.7: the last-layer Laplace
    /// on the velocity network); the caller's flow sampler is what makes it one.
    fn velocity(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        self.raw(x, t)
    }

    fn eps(&self, x_t: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let n = x_t.dim(0)?;
        let phi = self.model.features(x_t, &vec![t; n])?;
        let w = self.draw.w.to_dtype(phi.dtype())?;
        let mut out = phi.broadcast_matmul(&w.t()?)?;
        if let Some(b) = &self.draw.b {
            out = out.broadcast_add(&b.to_dtype(phi.dtype())?)?;
        }
        let out = self.model.assemble(&out)?;
        self.model.output_to_eps(x_t, t, out)
    }

    fn as_last_layer(&self) -> Option<&dyn LastLayerModel> {
        Some(self.model)
    }
}

/// The last layer of `model` (named `model_name` in the message), or the one-line error for a
/// model that exposes none (config key `laplace`).
pub fn require_last_layer<'a>(
    model: &'a dyn Denoiser,
    model_name: &str,
) -> Result<&'a dyn LastLayerModel> {
    model.as_last_layer().ok_or_else(|| {
        Error::invalid(
            "laplace",
            format!(
                "model `{model_name}` exposes no last layer, so no last-layer Laplace posterior can be fitted"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::SeedStreams;
    use candle_core::Device;

    /// Identity features: φ is the input itself, (N, 1, F); last layer given.
    struct Linear {
        w: Tensor,
        b: Tensor,
    }
    impl LastLayerModel for Linear {
        fn features(&self, x: &Tensor, _t: &[f64]) -> candle_core::Result<Tensor> {
            x.unsqueeze(1)
        }
        fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)> {
            Ok((self.w.clone(), Some(self.b.clone())))
        }
        fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor> {
            out.squeeze(1)
        }
        fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor> {
            target.unsqueeze(1)
        }
    }

    /// The 3 → 2 linear last layer the posterior tests fit.
    fn linear() -> Linear {
        let dev = Device::Cpu;
        Linear {
            w: Tensor::new(&[[0.5f64, -1.0, 0.2], [1.5, 0.0, -0.3]], &dev).unwrap(),
            b: Tensor::new(&[0.1f64, -0.2], &dev).unwrap(),
        }
    }

    /// n × d standard normals from purpose `p` of seed `seed`, in f64.
    fn normals(seed: u64, p: &str, n: usize, d: usize) -> Tensor {
        let idx: Vec<u64> = (0..n as u64).collect();
        let v: Vec<f64> = SeedStreams::new(seed)
            .purpose(p)
            .normals(&idx, None, d)
            .into_iter()
            .map(f64::from)
            .collect();
        Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
    }

    fn posterior() -> (DiagPosterior, Tensor) {
        let net = linear();
        let f = |p: &str, d| normals(8, p, 30, d);
        let mut acc = FisherAccumulator::new(&net, LaplaceSpec::GU).unwrap();
        acc.add(&f("x", 3), &[0.0; 30], &f("y", 2)).unwrap();
        (
            acc.finish(),
            f("xt", 3).narrow(0, 0, 4).unwrap().unsqueeze(1).unwrap(),
        )
    }

    /// The empirical Fisher is a sum over items: fitting two halves separately and merging gives
    /// the fit on all items (up to summation order), and the item counts add.
    #[test]
    fn merged_halves_equal_the_whole_fit() {
        let net = linear();
        let (x, y) = (normals(9, "x", 20, 3), normals(9, "y", 20, 2));
        let fit = |a: usize, n: usize| {
            let mut acc = FisherAccumulator::new(&net, LaplaceSpec::GU).unwrap();
            acc.add(
                &x.narrow(0, a, n).unwrap(),
                &vec![0.0; n],
                &y.narrow(0, a, n).unwrap(),
            )
            .unwrap();
            acc.finish()
        };
        let whole = fit(0, 20);
        let merged = fit(0, 7).merged(&fit(7, 13)).unwrap();
        assert_eq!(merged.n_items, 20);
        let d = (&merged.h_w - &whole.h_w)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(d < 1e-12, "{d}");
        let other = FisherAccumulator::new(
            &net,
            LaplaceSpec {
                prior_precision: 2.0,
                ..LaplaceSpec::GU
            },
        )
        .unwrap()
        .finish();
        assert!(whole.merged(&other).is_err());
    }

    #[test]
    fn monte_carlo_predictive_converges_to_the_closed_form() {
        // The closed form is exact for a linear last layer; BayesDiff's MC estimate must approach
        // it: relative error of an S-sample variance ≈ √(2/S) (4.5% at S = 1000, 1.4% at 10 000).
        let (post, phi) = posterior();
        let (mean, var) = post.predictive(&phi).unwrap();
        let (mean, var) = (
            mean.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            var.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        );
        let purpose = SeedStreams::new(9).purpose("laplace-mc");
        let err = |s| {
            let (m, v) = post.predictive_mc(&phi, s, &purpose).unwrap();
            let (m, v) = (
                m.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                v.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            );
            let ev = v
                .iter()
                .zip(&var)
                .map(|(a, b)| (a / b - 1.0).abs())
                .fold(0.0, f64::max);
            let em = m
                .iter()
                .zip(&mean)
                .zip(&var)
                .map(|((a, b), v)| (a - b).abs() / v.sqrt())
                .fold(0.0, f64::max);
            (em, ev)
        };
        let (m1, v1) = err(200);
        let (m2, v2) = err(20_000);
        assert!(v2 < 0.05, "variance rel. error at 20k draws: {v2}");
        assert!(
            m2 < 0.05,
            "mean error at 20k draws (in posterior stds): {m2}"
        );
        assert!(
            v2 < v1 && m2 < m1 + 0.05,
            "MC error must shrink: {v1} → {v2}"
        );
    }

    #[test]
    fn draws_start_with_the_map_and_scale_with_the_posterior() {
        let (post, _) = posterior();
        let purpose = SeedStreams::new(1).purpose("draws");
        let d = post.draws(3, true, &purpose).unwrap();
        assert_eq!(d.len(), 4);
        let w0 = d[0].w.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let wm = post.w_map.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(w0, wm);
        // The same purpose gives the same draws (seed streams, not a global RNG).
        let again = post.draws(3, false, &purpose).unwrap();
        assert_eq!(
            again[0].w.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            d[1].w.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        );
        let e = post.draws(0, true, &purpose).unwrap_err().to_string();
        assert!(e.starts_with("laplace.samples"), "{e}");
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (spec, key) in [
            (
                LaplaceSpec {
                    sigma: 0.0,
                    ..LaplaceSpec::GU
                },
                "laplace.sigma",
            ),
            (
                LaplaceSpec {
                    prior_precision: -1.0,
                    ..LaplaceSpec::GU
                },
                "laplace.prior_precision",
            ),
        ] {
            let e = spec.validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{e}");
        }
        let g = crate::model::gmm::GaussianMixture::new(
            vec![crate::model::gmm::Component {
                weight: 1.0,
                mean: vec![0.0],
                std: 1.0,
            }],
            crate::schedule::NoiseSchedule::new(
                crate::schedule::ScheduleKind::Linear,
                1e-4,
                0.02,
                10,
            ),
        )
        .unwrap();
        let e = require_last_layer(&g, "gmm-oracle")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("laplace") && e.contains("exposes no last layer"),
            "{e}"
        );
    }
}
