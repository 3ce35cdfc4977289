//! Class-conditional denoisers ε_θ(x_t, t, y): the labels ride along with the batch, so samplers
//! and uncertainty methods that only know [`Denoiser`] pass them through unchanged.
//!
//! [`Labelled`] fixes one label per sample of a batch of B. When a caller evaluates a batch of
//! k·B rows made of k stacked copies of the batch (AU's M re-noisings in one call, an ensemble's
//! members), the labels are tiled k times — the released AU code passes y with every perturbed
//! call in the same way (seed-repos.md §1.3).

use candle_core::Tensor;

use super::Denoiser;

/// A network that takes class labels (U32 tensor of shape (N,)) besides (x_t, t).
pub trait ClassConditional {
    fn eps_y(&self, x_t: &Tensor, t: f64, y: &Tensor) -> candle_core::Result<Tensor>;
}

/// A class-conditional model with the labels of one batch bound to it.
pub struct Labelled<'a> {
    pub model: &'a dyn ClassConditional,
    /// One label per sample, (B,).
    pub labels: Tensor,
}

impl Denoiser for Labelled<'_> {
    fn eps(&self, x_t: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let b = self.labels.dim(0)?;
        let n = x_t.dim(0)?;
        if n % b != 0 {
            candle_core::bail!("{n} rows cannot carry the labels of a batch of {b}");
        }
        let y = if n == b {
            self.labels.clone()
        } else {
            self.labels.repeat(n / b)?
        };
        self.model.eps_y(x_t, t, &y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gmm::{Component, GaussianMixture};
    use crate::schedule::{NoiseSchedule, ScheduleKind};
    use crate::seed::SeedStreams;
    use crate::uq::au::{uncertainty, AuCompat, AuSpec};
    use candle_core::{DType, Device, IndexOp};

    /// Class c's data is its own Gaussian: the exact conditional ε, row by row.
    struct PerClass(Vec<GaussianMixture>);
    impl ClassConditional for PerClass {
        fn eps_y(&self, x: &Tensor, t: f64, y: &Tensor) -> candle_core::Result<Tensor> {
            let y = y.to_vec1::<u32>()?;
            let rows = (0..x.dim(0)?)
                .map(|i| self.0[y[i] as usize].eps(&x.i(i..i + 1)?, t))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&rows, 0)
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
        let lab = Labelled {
            model: &model,
            labels: Tensor::new(&labels, &dev).unwrap(),
        };
        let idx: Vec<u64> = (0..4).collect();
        let streams = SeedStreams::new(4);
        let x = Tensor::from_vec(streams.purpose("x").normals(&idx, None, 2), (4, 2), &dev)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let spec = AuSpec {
            m: 6,
            ddof: 1,
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
}
