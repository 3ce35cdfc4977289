//! A deep ensemble of small MLP ε-models for low-dimensional data, evaluated as one batched
//! computation: every weight carries a leading member axis, so member m maps x[m] with its own
//! parameters, and M members cost one batched matmul per layer instead of M small ones.
//!
//! Member network: h₀ = SiLU(u(x) W_x + e(t) W_t + b), h_{l+1} = SiLU(h_l W_l + b_l),
//! ε = h_L W_out + b_out, with e(t) the sinusoidal timestep embedding of Vaswani et al. (2017) /
//! Ho et al. (2020) and u(x) = [x, sin(2π x Bᵀ), cos(2π x Bᵀ)] optional Gaussian Fourier features
//! (Tancik et al. 2020; B ~ N(0, s²), F/2 × D, fixed, one draw per member). Plain MLPs on 2-D
//! coordinates learn the sharp, cell-wise ε field of well-separated modes very slowly (spectral
//! bias); the features make that learnable in a CPU-minute budget. `fourier_features = 0` gives
//! the plain u(x) = x network.
//! Initialisation follows PyTorch's `nn.Linear` default, U(−1/√fan_in, 1/√fan_in) for weights and
//! biases, drawn from the seed streams (purpose `mlp-init`, index = member, step = layer), so
//! member m is the same network whatever M is.

use candle_core::{Device, Tensor, Var};

use super::Denoiser;
use crate::seed::SeedStreams;

/// Shape of the ensemble.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlpSpec {
    /// Data dimension D (2 for the toy grid).
    pub data_dim: usize,
    /// Width of each hidden layer.
    pub hidden: usize,
    /// Number of hidden layers (≥ 1).
    pub layers: usize,
    /// Size of the sinusoidal timestep embedding (even).
    pub time_dim: usize,
    /// Number F of Fourier features of x (even; 0 = none).
    pub fourier_features: usize,
    /// Standard deviation s of the Fourier frequencies, in cycles per data unit.
    pub fourier_scale: f64,
    /// Ensemble size M.
    pub members: usize,
}

/// M independent MLPs stored as stacked tensors. Cloning shares the parameters' storage.
#[derive(Clone)]
pub struct EnsembleMlp {
    spec: MlpSpec,
    /// (M, D, F/2) Fourier frequencies 2πB, when F > 0 (constant, not trained).
    fourier: Option<Tensor>,
    /// (M, D + F, H) and (M, E, H): first layer split into data and time parts.
    w_x: Var,
    w_t: Var,
    /// Biases (M, 1, H) of the first layer, then hidden layers (weights (M, H, H)), then output.
    b_in: Var,
    hidden: Vec<(Var, Var)>,
    w_out: Var,
    b_out: Var,
    /// Sinusoidal embedding table for t = 0..T, (T, E).
    embed: Tensor,
    /// Parameters enter the forward pass detached (see [`EnsembleMlp::frozen`]).
    frozen: bool,
}

/// Sinusoidal embedding [sin(t·f_k), cos(t·f_k)], f_k = 10000^(−k/(E/2)), k < E/2.
pub fn timestep_embedding(t: f64, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let mut out = vec![0f32; dim];
    for k in 0..half {
        let f = (-(10000f64.ln()) * k as f64 / half as f64).exp();
        out[k] = (t * f).sin() as f32;
        out[half + k] = (t * f).cos() as f32;
    }
    out
}

impl EnsembleMlp {
    /// A freshly initialised ensemble; `timesteps` sizes the embedding table.
    pub fn init(
        spec: MlpSpec,
        timesteps: usize,
        streams: &SeedStreams,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let MlpSpec {
            data_dim: d,
            hidden: h,
            layers,
            time_dim: e,
            members: m,
            fourier_features: f,
            fourier_scale,
        } = spec;
        let purpose = streams.purpose("mlp-init");
        // Per layer, the weights then the bias of every member, each member from its own stream.
        let mut layer_no = 0u32;
        let mut linear = |fan_in: usize,
                          rows: usize,
                          cols: usize|
         -> candle_core::Result<(Var, Var)> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let mut w = Vec::with_capacity(m * rows * cols);
            let mut b = Vec::with_capacity(m * cols);
            for member in 0..m as u64 {
                let v =
                    purpose.uniforms(&[member], Some(layer_no), rows * cols + cols, -bound, bound);
                w.extend_from_slice(&v[..rows * cols]);
                b.extend_from_slice(&v[rows * cols..]);
            }
            layer_no += 1;
            Ok((
                Var::from_tensor(&Tensor::from_vec(w, (m, rows, cols), device)?)?,
                Var::from_tensor(&Tensor::from_vec(b, (m, 1, cols), device)?)?,
            ))
        };
        let (w_in, b_in) = linear(d + f + e, d + f + e, h)?;
        let w_x = Var::from_tensor(&w_in.as_tensor().narrow(1, 0, d + f)?.contiguous()?)?;
        let w_t = Var::from_tensor(&w_in.as_tensor().narrow(1, d + f, e)?.contiguous()?)?;
        let fourier = if f > 0 {
            let fp = streams.purpose("mlp-fourier");
            let scale = (2.0 * std::f64::consts::PI * fourier_scale) as f32;
            let b: Vec<f32> = (0..m as u64)
                .flat_map(|member| fp.normals(&[member], None, d * f / 2))
                .map(|z| z * scale)
                .collect();
            Some(Tensor::from_vec(b, (m, d, f / 2), device)?)
        } else {
            None
        };
        let hidden = (1..layers)
            .map(|_| linear(h, h, h))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (w_out, b_out) = linear(h, h, d)?;
        let table: Vec<f32> = (0..timesteps)
            .flat_map(|t| timestep_embedding(t as f64, e))
            .collect();
        let embed = Tensor::from_vec(table, (timesteps, e), device)?;
        Ok(Self {
            spec,
            fourier,
            w_x,
            w_t,
            b_in,
            hidden,
            w_out,
            b_out,
            embed,
            frozen: false,
        })
    }

    /// The same parameters (shared storage: later training steps show through) for inference.
    ///
    /// candle records the op graph of every tensor computed from a `Var`, and each result keeps
    /// its inputs alive. A sampler chaining 50 steps of a trainable model therefore holds every
    /// activation of every step until x₀ is dropped: gu-fig2's mini profile (5 members × 10,000
    /// points per batch) peaked at 10.3 GB resident that way. A frozen model's outputs track no
    /// graph, so each step's activations are freed when the next step starts.
    pub fn frozen(&self) -> Self {
        Self {
            frozen: true,
            ..self.clone()
        }
    }

    /// A parameter as the forward pass uses it: detached when frozen.
    fn param(&self, v: &Var) -> Tensor {
        if self.frozen {
            v.as_tensor().detach()
        } else {
            v.as_tensor().clone()
        }
    }

    pub fn spec(&self) -> MlpSpec {
        self.spec
    }

    /// All trainable parameters.
    pub fn vars(&self) -> Vec<Var> {
        let mut v = vec![self.w_x.clone(), self.w_t.clone(), self.b_in.clone()];
        for (w, b) in &self.hidden {
            v.push(w.clone());
            v.push(b.clone());
        }
        v.push(self.w_out.clone());
        v.push(self.b_out.clone());
        v
    }

    /// Embeddings of the given timesteps, (len, E).
    pub fn embed(&self, timesteps: &Tensor) -> candle_core::Result<Tensor> {
        self.embed.index_select(timesteps, 0)
    }

    /// ε for x of shape (M, B, D) and time embeddings of shape (M, B, E) or (M, 1, E).
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> candle_core::Result<Tensor> {
        self.hidden_features(x, temb)?
            .matmul(&self.param(&self.w_out))?
            .broadcast_add(&self.param(&self.b_out))
    }

    /// The last hidden layer h_L (M, B, H): everything before the output layer.
    pub fn hidden_features(&self, x: &Tensor, temb: &Tensor) -> candle_core::Result<Tensor> {
        self.hidden_of(x, temb, None)
    }

    /// h_L of all members, or (with `member`) of that member alone — x and temb then (1, B, ·).
    fn hidden_of(
        &self,
        x: &Tensor,
        temb: &Tensor,
        member: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let pick = |t: &Tensor| match member {
            Some(i) => t.narrow(0, i, 1),
            None => Ok(t.clone()),
        };
        let u = match &self.fourier {
            Some(b) => {
                let proj = x.matmul(&pick(b)?)?;
                Tensor::cat(&[x.clone(), proj.sin()?, proj.cos()?], 2)?
            }
            None => x.clone(),
        };
        let mut h = u
            .matmul(&pick(&self.param(&self.w_x))?)?
            .broadcast_add(&temb.matmul(&pick(&self.param(&self.w_t))?)?)?
            .broadcast_add(&pick(&self.param(&self.b_in))?)?
            .silu()?;
        for (w, b) in &self.hidden {
            h = h
                .matmul(&pick(&self.param(w))?)?
                .broadcast_add(&pick(&self.param(b))?)?
                .silu()?;
        }
        Ok(h)
    }

    /// Time embeddings for one model time per item, (N, E).
    fn embeddings(&self, t: &[f64], device: &candle_core::Device) -> candle_core::Result<Tensor> {
        let e = self.spec.time_dim;
        let v: Vec<f32> = t.iter().flat_map(|&t| timestep_embedding(t, e)).collect();
        Tensor::from_vec(v, (t.len(), e), device)
    }
}

/// One member of the ensemble seen as a single (N, D) → (N, D) network whose output layer is
/// exposed: the last-layer Laplace model of the gu-fig2 Laplace variant (GU App. B).
pub struct Member<'a> {
    pub net: &'a EnsembleMlp,
    pub index: usize,
}

impl super::LastLayerModel for Member<'_> {
    fn features(&self, x: &Tensor, t: &[f64]) -> candle_core::Result<Tensor> {
        let temb = self.net.embeddings(t, x.device())?.unsqueeze(0)?;
        let xs = x.to_dtype(candle_core::DType::F32)?.unsqueeze(0)?;
        let h = self
            .net
            .hidden_of(&xs, &temb, Some(self.index))?
            .squeeze(0)?;
        h.to_dtype(x.dtype())?.unsqueeze(1)
    }
    fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let w = self
            .net
            .param(&self.net.w_out)
            .get(self.index)?
            .t()?
            .contiguous()?;
        let b = self
            .net
            .param(&self.net.b_out)
            .get(self.index)?
            .squeeze(0)?;
        Ok((w, Some(b)))
    }
    fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor> {
        out.squeeze(1)
    }
    fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor> {
        target.unsqueeze(1)
    }
}

impl Denoiser for EnsembleMlp {
    /// `x_t` is (M, B, D); every member sees the same t.
    fn eps(&self, x_t: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let m = self.spec.members;
        let e = if t.fract() == 0.0 && t >= 0.0 && (t as usize) < self.embed.dim(0)? {
            self.embed.narrow(0, t as usize, 1)?
        } else {
            // A real model time (DPM-Solver-2 midpoints): the same sinusoid, off the table.
            Tensor::from_vec(
                timestep_embedding(t, self.spec.time_dim),
                (1, self.spec.time_dim),
                x_t.device(),
            )?
        }
        .reshape((1, 1, self.spec.time_dim))?;
        let temb = e.broadcast_as((m, 1, self.spec.time_dim))?.contiguous()?;
        self.forward(x_t, &temb)
    }
}

/// One ensemble member as a [`super::Network`] on inputs (N, D): W φ(x, t) + b through its
/// last layer, which it exposes (the gu-fig2 Laplace variant fits a posterior over it).
impl super::Network for Member<'_> {
    fn prediction(&self) -> super::Prediction {
        super::Prediction::Epsilon
    }

    fn forward(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        mode: &mut super::Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        use super::LastLayerNetwork;
        let phi = LastLayerNetwork::features(self, x, t, labels, mode)?;
        let (w, b) = super::LastLayerModel::last_layer(self)?;
        let mut out = phi.broadcast_matmul(&w.to_dtype(phi.dtype())?.t()?)?;
        if let Some(b) = b {
            out = out.broadcast_add(&b.to_dtype(phi.dtype())?)?;
        }
        out.squeeze(1)
    }

    fn last_layer(&self) -> crate::Result<&dyn super::LastLayerNetwork> {
        Ok(self)
    }

    fn name(&self) -> &str {
        "toy-mlp-member"
    }
}

impl super::LastLayerNetwork for Member<'_> {
    fn features(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        _mode: &mut super::Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        if labels.is_some() {
            candle_core::bail!("the toy MLP is unconditional; labels were given");
        }
        let n = x.dim(0)?;
        let t: Vec<f64> = if t.len() == 1 {
            vec![t[0]; n]
        } else {
            t.to_vec()
        };
        super::LastLayerModel::features(self, x, &t)
    }
    fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        super::LastLayerModel::last_layer(self)
    }
    fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor> {
        super::LastLayerModel::assemble(self, out)
    }
    fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor> {
        super::LastLayerModel::disassemble(self, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(members: usize) -> MlpSpec {
        MlpSpec {
            data_dim: 2,
            hidden: 8,
            layers: 2,
            time_dim: 4,
            members,
            fourier_features: 4,
            fourier_scale: 1.0,
        }
    }

    #[test]
    fn member_parameters_do_not_depend_on_ensemble_size() {
        let s = SeedStreams::new(3);
        let a = EnsembleMlp::init(spec(2), 10, &s, &Device::Cpu).unwrap();
        let b = EnsembleMlp::init(spec(5), 10, &s, &Device::Cpu).unwrap();
        let first_two = |v: &Var| {
            let t = v.as_tensor().narrow(0, 0, 2).unwrap();
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        for (va, vb) in a.vars().iter().zip(b.vars()) {
            assert_eq!(first_two(va), first_two(&vb));
        }
    }

    #[test]
    fn a_frozen_model_samples_without_a_graph_and_sees_training_updates() {
        // What a 3-step DDPM chain keeps: from the trainable model, an op graph reaching back to
        // x_T (every step's activations alive); from the frozen one, none — with equal numbers.
        use crate::sampler::{ddpm, NoObserver, StepRules};
        let s = SeedStreams::new(5);
        let net = EnsembleMlp::init(spec(2), 10, &s, &Device::Cpu).unwrap();
        let frozen = net.frozen();
        let sched = crate::schedule::NoiseSchedule::new(
            crate::schedule::ScheduleKind::Linear,
            1e-4,
            0.02,
            10,
        );
        let x_t = Tensor::ones((2, 3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        struct Zero;
        impl crate::sampler::NoiseSource for Zero {
            fn noise(&self, _: u32) -> candle_core::Result<Tensor> {
                Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu)
            }
        }
        let noise = Zero;
        let run = |m: &EnsembleMlp| {
            ddpm::sample(
                m,
                &sched,
                &[9, 5, 1],
                &StepRules::default(),
                x_t.clone(),
                &noise,
                &mut NoObserver,
            )
            .unwrap()
            .x0
        };
        let (a, b) = (run(&net), run(&frozen));
        assert!(
            a.track_op(),
            "the trainable model's chain should track its graph"
        );
        assert!(!b.track_op(), "the frozen model's chain tracks a graph");
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&a), v(&b));
        // Shared storage: a parameter update after freezing shows in the frozen model.
        let w = &net.vars()[0];
        w.set(&(w.as_tensor() * 2.0).unwrap()).unwrap();
        assert_eq!(v(&run(&net)), v(&run(&frozen)));
        assert_ne!(v(&run(&frozen)), v(&b));
    }

    #[test]
    fn members_are_independent_functions() {
        // Feeding member 0's input to both members gives different ε (different weights), and the
        // batched forward equals evaluating each member alone.
        let s = SeedStreams::new(4);
        let net = EnsembleMlp::init(spec(2), 10, &s, &Device::Cpu).unwrap();
        let x = Tensor::new(&[[[0.5f32, -1.0]], [[0.5, -1.0]]], &Device::Cpu).unwrap();
        let out = net.eps(&x, 3.0).unwrap().to_vec3::<f32>().unwrap();
        assert_ne!(out[0][0], out[1][0]);
        let single = EnsembleMlp::init(spec(1), 10, &s, &Device::Cpu).unwrap();
        let one = single
            .eps(&x.narrow(0, 0, 1).unwrap(), 3.0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(one[0][0], out[0][0]);
    }

    #[test]
    fn member_last_layer_reproduces_the_member_output() {
        // Member i through (features, last layer) must equal member i of the batched forward.
        use crate::model::LastLayerModel;
        let streams = crate::seed::SeedStreams::new(4);
        let spec = MlpSpec {
            data_dim: 2,
            hidden: 8,
            layers: 2,
            time_dim: 6,
            members: 3,
            fourier_features: 4,
            fourier_scale: 1.0,
        };
        let net = EnsembleMlp::init(spec, 100, &streams, &Device::Cpu).unwrap();
        let x = Tensor::new(&[[0.3f32, -0.2], [1.0, 0.5]], &Device::Cpu).unwrap();
        let all = net
            .eps(
                &x.unsqueeze(0)
                    .unwrap()
                    .broadcast_as((3, 2, 2))
                    .unwrap()
                    .contiguous()
                    .unwrap(),
                7.0,
            )
            .unwrap();
        let member = Member {
            net: &net,
            index: 1,
        };
        let phi = member.features(&x, &[7.0, 7.0]).unwrap();
        let (w, b) = member.last_layer().unwrap();
        let out = phi
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b.unwrap())
            .unwrap();
        let got = member.assemble(&out).unwrap().to_vec2::<f32>().unwrap();
        let want = all.get(1).unwrap().to_vec2::<f32>().unwrap();
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            approx::assert_abs_diff_eq!(g, w, epsilon = 1e-5);
        }
    }

    #[test]
    fn embedding_is_sinusoidal() {
        let e = timestep_embedding(0.0, 6);
        assert_eq!(e, vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let e = timestep_embedding(2.0, 2);
        approx::assert_abs_diff_eq!(e[0], 2f32.sin(), epsilon = 1e-6);
    }
}
