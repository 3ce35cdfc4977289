//! diffuq's last-layer diagonal empirical-Fisher Laplace against laplace-torch.
//!
//! Expected numbers: golden/laplace/{mlp,eps_model}.safetensors, written by
//! golden/laplace_reference.py with laplace-torch 0.2.2.2 (`Laplace(model, "regression",
//! subset_of_weights="last_layer", hessian_structure="diag", backend=BackPackEF)`), torch 2.15.0,
//! backpack-for-pytorch 1.7.1, float64. Compared: laplace-torch's `H`, `posterior_precision` (the
//! last layer's weight row-major, then its bias) and its GLM predictive (`f_mu`, the diagonal of
//! `f_var`) at test inputs, for (σ, λ) = (1, 1) and (0.7, 0.5). Tolerance 1e-10 relative: both sides
//! compute in f64 and differ only in summation order.

use candle_core::{DType, Device, Tensor};
use diffuq::uq::laplace::{FisherAccumulator, LaplaceSpec, LastLayerModel};
use std::collections::HashMap;

fn load(name: &str) -> HashMap<String, Tensor> {
    let path = format!(
        "{}/golden/laplace/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    candle_core::safetensors::load(&path, &Device::Cpu).expect("golden fixture")
}

/// tanh(inp W1ᵀ + b1) → last layer (W2, b2); for the ε-model the input is [x_t, t/1000].
struct TinyNet {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    with_time: bool,
}

impl TinyNet {
    fn new(g: &HashMap<String, Tensor>, with_time: bool) -> Self {
        let p = |k: &str| g[&format!("model.{k}")].to_dtype(DType::F64).unwrap();
        Self {
            w1: p("0.weight"),
            b1: p("0.bias"),
            w2: p("2.weight"),
            b2: p("2.bias"),
            with_time,
        }
    }
}

impl LastLayerModel for TinyNet {
    fn features(&self, x: &Tensor, t: &[f64]) -> candle_core::Result<Tensor> {
        let inp = if self.with_time {
            let tt: Vec<f64> = t.iter().map(|t| t / 1000.0).collect();
            let tt = Tensor::from_vec(tt, (t.len(), 1), x.device())?;
            Tensor::cat(&[x, &tt], 1)?
        } else {
            x.clone()
        };
        let h = inp.matmul(&self.w1.t()?)?.broadcast_add(&self.b1)?.tanh()?;
        h.unsqueeze(1)
    }
    fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        Ok((self.w2.clone(), Some(self.b2.clone())))
    }
    fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor> {
        out.squeeze(1)
    }
    fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor> {
        target.unsqueeze(1)
    }
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-10 * b.abs().max(1e-12),
            "{what}[{i}]: diffuq {a} vs laplace-torch {b}"
        );
    }
}

fn check(name: &str, with_time: bool, batch: usize) {
    let g = load(name);
    let net = TinyNet::new(&g, with_time);
    let (x, y) = if with_time {
        (g["x_t"].clone(), g["Y"].clone())
    } else {
        (g["X"].clone(), g["Y"].clone())
    };
    let t: Vec<f64> = if with_time {
        flat(&g["t"])
    } else {
        vec![0.0; x.dim(0).unwrap()]
    };
    let xtest = g["Xtest"].to_dtype(DType::F64).unwrap();
    let (x_test, t_test): (Tensor, Vec<f64>) = if with_time {
        let n = xtest.dim(0).unwrap();
        let tt = flat(&xtest.narrow(1, 4, 1).unwrap());
        (
            xtest.narrow(1, 0, 4).unwrap(),
            tt.iter().map(|v| v * 1000.0).collect::<Vec<_>>()[..n].to_vec(),
        )
    } else {
        let n = xtest.dim(0).unwrap();
        (xtest, vec![0.0; n])
    };
    for (tag, sigma, prior) in [("s1_p1", 1.0, 1.0), ("s07_p05", 0.7, 0.5)] {
        let spec = LaplaceSpec {
            sigma,
            prior_precision: prior,
            ..LaplaceSpec::GU
        };
        let mut acc = FisherAccumulator::new(&net, spec).unwrap();
        let n = x.dim(0).unwrap();
        for start in (0..n).step_by(batch) {
            let len = batch.min(n - start);
            acc.add(
                &x.narrow(0, start, len).unwrap(),
                &t[start..start + len],
                &y.narrow(0, start, len).unwrap(),
            )
            .unwrap();
        }
        let post = acc.finish();
        let (pw, pb) = post.precision().unwrap();
        let mut prec = flat(&pw);
        prec.extend(flat(&pb.unwrap()));
        let mut h = flat(&post.h_w);
        h.extend(flat(post.h_b.as_ref().unwrap()));
        close(
            &h,
            &flat(&g[&format!("{tag}.H")]),
            &format!("{name} {tag} H"),
        );
        close(
            &prec,
            &flat(&g[&format!("{tag}.posterior_precision")]),
            &format!("{name} {tag} posterior precision"),
        );
        let phi = net.features(&x_test, &t_test).unwrap();
        let (mean, var) = post.predictive(&phi).unwrap();
        close(
            &flat(&mean),
            &flat(&g[&format!("{tag}.f_mu")]),
            &format!("{name} {tag} f_mu"),
        );
        close(
            &flat(&var),
            &flat(&g[&format!("{tag}.f_var_diag")]),
            &format!("{name} {tag} f_var"),
        );
    }
}

#[test]
fn mlp_regression_matches_laplace_torch() {
    check("mlp", false, 10);
}

#[test]
fn eps_model_matches_laplace_torch() {
    check("eps_model", true, 16);
}
