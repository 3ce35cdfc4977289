//! The one network interface every model implements, and the adapters that turn a network into
//! what samplers and uncertainty methods consume.
//!
//! A [`Network`] is what a checkpoint holds: forward(x, t per item, class labels, mode) → raw
//! output tagged with its [`Prediction`] kind. Samplers and uq methods never see that raw output;
//! they see a [`Bound`] network — the network with the labels of one batch (and, where the
//! prediction kind needs it, the noise schedule) bound to it — which implements
//!
//! - [`Denoiser`] (ε for DDPM/DDIM/DPM-Solver and AU/guidance/BayesDiff),
//! - [`VelocityField`] (flow-matching samplers, GU App. C.7),
//! - [`LastLayerModel`] (last-layer Laplace: GU, BayesDiff), and
//! - [`DropoutDenoiser`] (MC-Dropout),
//!
//! so a class-conditional network keeps its last layer and its dropout when labels are bound —
//! which the earlier separate traits could not express.
//!
//! Conversions to ε, with x_t = √ᾱ x₀ + √(1 − ᾱ) ε:
//! - ε-prediction: as is; ε + learned variance (ADM, DiT: 2C channels): the first C channels;
//! - x₀-prediction: ε = (x_t − √ᾱ x̂₀)/√(1 − ᾱ);
//! - v-prediction (Salimans & Ho 2022, v = √ᾱ ε − √(1 − ᾱ) x₀): ε = √ᾱ v + √(1 − ᾱ) x_t.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::sampler::flow::VelocityField;
use crate::schedule::NoiseSchedule;
use crate::seed::Purpose;

use super::Denoiser;

/// What a network's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prediction {
    /// ε (DDPM, diffusers UNet2DModel, U-ViT).
    Epsilon,
    /// ε in the first C channels, the variance interpolation in the last C (ADM, DiT).
    EpsilonLearnedVariance,
    /// x₀.
    Sample,
    /// v = √ᾱ ε − √(1 − ᾱ) x₀.
    VPrediction,
    /// A flow-matching velocity under [`crate::sampler::flow`]'s convention.
    Velocity,
}

/// Supplies dropout keep-masks: 1 with probability 1 − p, else 0, shaped like the activation.
pub trait MaskSource {
    fn keep_mask(&mut self, like: &Tensor, p: f64) -> candle_core::Result<Tensor>;
}

/// Keep-masks from the seed streams: layer ℓ of pass m at sampler step s draws, for sample b,
/// uniforms from `purpose.sub("pass-m/layer-ℓ")`, stream b, step s.
pub struct StreamMasks<'a> {
    pub purpose: Purpose,
    pub indices: &'a [u64],
    pub step: u32,
    pub pass: usize,
    layer: usize,
}

impl<'a> StreamMasks<'a> {
    pub fn new(purpose: Purpose, indices: &'a [u64], step: u32, pass: usize) -> Self {
        Self {
            purpose,
            indices,
            step,
            pass,
            layer: 0,
        }
    }
}

impl MaskSource for StreamMasks<'_> {
    fn keep_mask(&mut self, like: &Tensor, p: f64) -> candle_core::Result<Tensor> {
        let dims = like.dims();
        let b = self.indices.len();
        if dims.first() != Some(&b) {
            candle_core::bail!(
                "dropout mask for shape {dims:?}: leading axis must be the batch {b}"
            );
        }
        let f = like.elem_count() / b;
        let fam = self
            .purpose
            .sub(&format!("pass-{}/layer-{}", self.pass, self.layer));
        self.layer += 1;
        let keep = fam.keep_masks(self.indices, Some(self.step), f, p);
        Tensor::from_vec(keep, dims, like.device())?.to_dtype(like.dtype())
    }
}

/// How a forward pass runs.
pub enum Mode<'a> {
    /// Dropout off (sampling, evaluation).
    Eval,
    /// Dropout on, each dropout layer asking the source for its keep-mask in layer order
    /// (training; MC-Dropout). Kept units are scaled by 1/(1 − p), as torch's inverted dropout.
    Dropout(&'a mut dyn MaskSource),
}

impl Mode<'_> {
    /// Apply dropout with probability `p` to `h` (identity in eval mode or for p = 0).
    pub fn dropout(&mut self, h: &Tensor, p: f64) -> candle_core::Result<Tensor> {
        match self {
            Mode::Dropout(masks) if p > 0.0 => {
                let keep = masks.keep_mask(h, p)?;
                (h * keep)? / (1.0 - p)
            }
            _ => Ok(h.clone()),
        }
    }
}

/// A network as its checkpoint defines it.
pub trait Network: Send + Sync {
    /// What the output means.
    fn prediction(&self) -> Prediction;

    /// Raw output for inputs `x` (N, …), model times `t` (one per item, or one for all), class
    /// labels (U32 (N,)) for a class-conditional network.
    fn forward(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor>;

    /// Number of classes a class-conditional network takes (None: unconditional).
    fn num_classes(&self) -> Option<usize> {
        None
    }

    /// The last layer, as a linear map over output positions; an error naming the network when
    /// it has none that last-layer methods can use.
    fn last_layer(&self) -> Result<&dyn LastLayerNetwork> {
        Err(Error::invalid(
            "laplace",
            format!("network `{}` exposes no last layer", self.name()),
        ))
    }

    /// A short name for messages.
    fn name(&self) -> &str;
}

/// A network whose last layer is a linear map W φ + b applied at each of P output positions
/// (a conv layer as an im2col'd map, a token layer per token, an MLP output with P = 1).
pub trait LastLayerNetwork: Send + Sync {
    /// Features entering the last layer, (N, P, F).
    fn features(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor>;
    /// Weight (O, F) and bias (O,).
    fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)>;
    /// (N, P, O) last-layer outputs → the network's raw output layout (N, …).
    fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor>;
    /// A target in the raw output layout (N, …) → (N, P, O).
    fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor>;
}

/// A model whose last layer is exposed, with any conditioning already bound: what last-layer
/// Laplace methods (GU, BayesDiff) work on.
pub trait LastLayerModel {
    /// Features entering the last layer, (N, P, F), for inputs x_t (N, …) with one model time
    /// per item.
    fn features(&self, x_t: &Tensor, t: &[f64]) -> candle_core::Result<Tensor>;
    /// The last layer's weight (O, F) and bias (O,) if it has one.
    fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)>;
    /// Rearrange last-layer outputs (N, P, O) into the model's output layout (N, …).
    fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor>;
    /// Rearrange a target of the output layout (N, …) into (N, P, O).
    fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor>;
    /// The raw output (N, …) at (x_t, t) as ε (identity for ε-prediction; the first half of the
    /// channels for a learned-variance network).
    fn output_to_eps(&self, _x_t: &Tensor, _t: f64, out: Tensor) -> candle_core::Result<Tensor> {
        Ok(out)
    }
}

/// A network that can run with dropout switched on (ADM's residual blocks carry dropout 0.1).
pub trait DropoutDenoiser {
    /// ε with dropout active; each dropout layer asks `masks` for its keep-mask and scales the
    /// kept units by 1/(1 − p) (inverted dropout, as torch).
    fn eps_dropout(
        &self,
        x_t: &Tensor,
        t: f64,
        masks: &mut dyn MaskSource,
    ) -> candle_core::Result<Tensor>;
}

/// A network with one batch's labels (and the schedule, for x₀/v-prediction) bound to it.
///
/// The labels are one per sample of a batch of B. When a caller evaluates k·B rows made of k
/// stacked copies of the batch (AU's M re-noisings in one call, a sampler over posterior draws),
/// the labels are tiled k times — the released AU code passes y with every perturbed call in the
/// same way.
pub struct Bound<'a> {
    pub net: &'a dyn Network,
    /// U32 (B,), for a class-conditional network.
    pub labels: Option<Tensor>,
    /// Needed to convert x₀- and v-predictions to ε.
    pub schedule: Option<&'a NoiseSchedule>,
}

impl<'a> Bound<'a> {
    /// An unconditional ε-view of `net`.
    pub fn new(net: &'a dyn Network) -> Self {
        Self {
            net,
            labels: None,
            schedule: None,
        }
    }

    pub fn with_labels(mut self, labels: Tensor) -> Self {
        self.labels = Some(labels);
        self
    }

    pub fn with_schedule(mut self, schedule: &'a NoiseSchedule) -> Self {
        self.schedule = Some(schedule);
        self
    }

    /// The bound labels for `n` rows (tiled when n is a multiple of the batch).
    fn labels_for(&self, n: usize) -> candle_core::Result<Option<Tensor>> {
        match (&self.labels, self.net.num_classes()) {
            (None, Some(k)) => candle_core::bail!(
                "network `{}` is class-conditional ({k} classes) but no labels were given",
                self.net.name()
            ),
            (None, None) => Ok(None),
            (Some(y), _) => {
                let b = y.dim(0)?;
                if n == b {
                    Ok(Some(y.clone()))
                } else if b > 0 && n.is_multiple_of(b) {
                    Ok(Some(y.repeat(n / b)?))
                } else {
                    candle_core::bail!("{n} rows cannot carry the labels of a batch of {b}")
                }
            }
        }
    }

    fn raw(&self, x: &Tensor, t: f64, mode: &mut Mode<'_>) -> candle_core::Result<Tensor> {
        let y = self.labels_for(x.dim(0)?)?;
        self.net.forward(x, &[t], y.as_ref(), mode)
    }

    fn alpha_bar(&self, t: f64) -> candle_core::Result<f64> {
        match self.schedule {
            Some(s) => Ok(s.alpha_bar_at(t)),
            None => candle_core::bail!(
                "network `{}` predicts {:?}: converting it to ε needs the noise schedule",
                self.net.name(),
                self.net.prediction()
            ),
        }
    }

    /// Convert a raw output at (x_t, t) to ε.
    fn to_eps(&self, x_t: &Tensor, t: f64, out: Tensor) -> candle_core::Result<Tensor> {
        match self.net.prediction() {
            Prediction::Epsilon => Ok(out),
            Prediction::EpsilonLearnedVariance => {
                let c = out.dim(1)?;
                out.narrow(1, 0, c / 2)
            }
            Prediction::Sample => {
                let ab = self.alpha_bar(t)?;
                let x0 = out.to_dtype(x_t.dtype())?;
                (x_t - (x0 * ab.sqrt())?)? / (1.0 - ab).sqrt()
            }
            Prediction::VPrediction => {
                let ab = self.alpha_bar(t)?;
                (out * ab.sqrt())? + (x_t * (1.0 - ab).sqrt())?
            }
            Prediction::Velocity => candle_core::bail!(
                "network `{}` predicts a flow velocity; use a flow sampler",
                self.net.name()
            ),
        }
    }
}

impl Denoiser for Bound<'_> {
    fn eps(&self, x_t: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let out = self.raw(x_t, t, &mut Mode::Eval)?;
        self.to_eps(x_t, t, out)
    }

    fn velocity(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        VelocityField::velocity(self, x, t)
    }

    fn as_last_layer(&self) -> Option<&dyn LastLayerModel> {
        self.net
            .last_layer()
            .ok()
            .map(|_| self as &dyn LastLayerModel)
    }
}

impl DropoutDenoiser for Bound<'_> {
    fn eps_dropout(
        &self,
        x_t: &Tensor,
        t: f64,
        masks: &mut dyn MaskSource,
    ) -> candle_core::Result<Tensor> {
        let out = self.raw(x_t, t, &mut Mode::Dropout(masks))?;
        self.to_eps(x_t, t, out)
    }
}

impl VelocityField for Bound<'_> {
    fn velocity(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        if self.net.prediction() != Prediction::Velocity {
            candle_core::bail!(
                "network `{}` predicts {:?}, not a flow velocity",
                self.net.name(),
                self.net.prediction()
            );
        }
        self.raw(x, t, &mut Mode::Eval)
    }
}

impl Bound<'_> {
    /// The network's last layer, its absence as a tensor-op error (the trait's error type).
    fn ll(&self) -> candle_core::Result<&dyn LastLayerNetwork> {
        self.net
            .last_layer()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

impl LastLayerModel for Bound<'_> {
    fn features(&self, x_t: &Tensor, t: &[f64]) -> candle_core::Result<Tensor> {
        let y = self.labels_for(x_t.dim(0)?)?;
        self.ll()?.features(x_t, t, y.as_ref(), &mut Mode::Eval)
    }
    fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        self.ll()?.last_layer()
    }
    fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor> {
        self.ll()?.assemble(out)
    }
    fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor> {
        self.ll()?.disassemble(target)
    }
    fn output_to_eps(&self, x_t: &Tensor, t: f64, out: Tensor) -> candle_core::Result<Tensor> {
        self.to_eps(x_t, t, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gmm::{Component, GaussianMixture};
    use crate::model::Denoiser;
    use crate::schedule::{NoiseSchedule, ScheduleKind};
    use crate::seed::SeedStreams;
    use crate::uq::au::{uncertainty, AuCompat, AuSpec};
    use candle_core::{DType, Device, IndexOp};

    /// Class c's data is its own Gaussian: the exact conditional ε, row by row.
    struct PerClass(Vec<GaussianMixture>);
    impl Network for PerClass {
        fn prediction(&self) -> Prediction {
            Prediction::Epsilon
        }
        fn forward(
            &self,
            x: &Tensor,
            t: &[f64],
            labels: Option<&Tensor>,
            _mode: &mut Mode<'_>,
        ) -> candle_core::Result<Tensor> {
            let y = labels.expect("labels").to_vec1::<u32>()?;
            let rows = (0..x.dim(0)?)
                .map(|i| self.0[y[i] as usize].eps(&x.i(i..i + 1)?, t[0]))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&rows, 0)
        }
        fn num_classes(&self) -> Option<usize> {
            Some(self.0.len())
        }
        fn name(&self) -> &str {
            "per-class oracle"
        }
    }

    #[test]
    fn au_passes_labels_through_its_batched_call() {
        // AU on the labelled batch must equal AU run on each class's own (unconditional) oracle
        // for the samples of that class: the M·B-row call received correctly tiled labels.
        let s = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000);
        let class = |mean: f64, std: f64| {
            GaussianMixture::new(
                vec![Component {
                    weight: 1.0,
                    mean: vec![mean, -mean],
                    std,
                }],
                s.clone(),
            )
            .unwrap()
        };
        let model = PerClass(vec![class(-1.0, 0.1), class(1.0, 0.5)]);
        let labels = [0u32, 1, 1, 0];
        let dev = Device::Cpu;
        let lab = Bound::new(&model).with_labels(Tensor::new(&labels, &dev).unwrap());
        let idx: Vec<u64> = (0..4).collect();
        let streams = SeedStreams::new(4);
        let x = Tensor::from_vec(streams.purpose("x").normals(&idx, None, 2), (4, 2), &dev)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let spec = AuSpec {
            m: 6,
            ddof: crate::uq::au::Ddof::Minus(1),
            compat: AuCompat::Paper,
            clip_sample: None,
        };
        let purpose = streams.purpose("au");
        let t = 400.0;
        let eps = lab.eps(&x, t).unwrap();
        let u = uncertainty(&lab, &s, &x, &eps, t, 3, &idx, &purpose, &spec)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for (i, &c) in labels.iter().enumerate() {
            let g = &model.0[c as usize];
            let xi = x.i(i..i + 1).unwrap();
            let e = g.eps(&xi, t).unwrap();
            let alone = uncertainty(g, &s, &xi, &e, t, 3, &idx[i..i + 1], &purpose, &spec)
                .unwrap()
                .to_vec2::<f64>()
                .unwrap();
            for (a, b) in u[i].iter().zip(&alone[0]) {
                approx::assert_relative_eq!(*a, *b, max_relative = 1e-12);
            }
        }
    }

    #[test]
    fn toy_models_keep_their_numbers_on_the_network_layer() {
        // The analytic oracle and a toy-ensemble member seen through Bound give exactly what
        // their own Denoiser / last-layer code gives (gu-fig2 and au-fig3 snapshots rely on it).
        let s = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000);
        let g = GaussianMixture::new(
            vec![Component {
                weight: 1.0,
                mean: vec![0.5, -0.5],
                std: 0.2,
            }],
            s.clone(),
        )
        .unwrap();
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0.1f64, 0.2], [-1.0, 2.0]], &dev).unwrap();
        let a = Bound::new(&g).eps(&x, 321.0).unwrap();
        let b = g.eps(&x, 321.0).unwrap();
        assert_eq!(a.to_vec2::<f64>().unwrap(), b.to_vec2::<f64>().unwrap());
        // Per-item times: row by row.
        let per = Network::forward(&g, &x, &[10.0, 900.0], None, &mut Mode::Eval).unwrap();
        let r1 = g.eps(&x.narrow(0, 1, 1).unwrap(), 900.0).unwrap();
        assert_eq!(
            per.get(1).unwrap().to_vec1::<f64>().unwrap(),
            r1.get(0).unwrap().to_vec1::<f64>().unwrap()
        );

        let spec = crate::model::toy_mlp::MlpSpec {
            data_dim: 2,
            hidden: 8,
            layers: 1,
            time_dim: 4,
            fourier_features: 0,
            fourier_scale: 1.0,
            members: 2,
        };
        let ens = crate::model::toy_mlp::EnsembleMlp::init(spec, 100, &SeedStreams::new(1), &dev)
            .unwrap();
        let member = crate::model::toy_mlp::Member {
            net: &ens,
            index: 1,
        };
        let xf = x.to_dtype(DType::F32).unwrap();
        let via = Bound::new(&member).eps(&xf, 7.0).unwrap();
        let stacked = Tensor::stack(&[&xf, &xf], 0).unwrap();
        let own = ens.eps(&stacked, 7.0).unwrap().get(1).unwrap();
        let d = (via - own)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "{d}");
        assert!(Bound::new(&member).as_last_layer().is_some());
        assert!(Bound::new(&g).as_last_layer().is_none());
    }
}
