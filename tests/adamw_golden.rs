//! diffuq's AdamW, gradient clipping, warmup + cosine learning rate and EMA against PyTorch.
//!
//! Expected numbers: golden/optim/adamw.safetensors, written by golden/adamw_reference.py with
//! torch 2.15.0 (`torch.optim.AdamW(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1,
//! foreach=False)`, `torch.nn.utils.clip_grad_norm_(max_norm=6.0)`,
//! `torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn(0.7)`) and diffusers 0.31.0
//! (`get_cosine_schedule_with_warmup(num_warmup_steps=2, num_training_steps=10)`), float32: ten
//! steps of a linear regression, plus a parameter that never receives a gradient. Tolerance: 1e-5
//! relative (1e-6 absolute for entries near 0): the gradients are computed independently on both
//! sides in f32, so the trajectories agree to f32 round-off, not bit for bit.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarMap};
use diffuq::model::optim::{clip_grad_norm, named_vars, AdamW, AdamWConfig, Ema};
use diffuq::model::train::LrDecay;

const STEPS: usize = 10;

fn fixture() -> HashMap<String, Tensor> {
    let path = format!(
        "{}/golden/optim/adamw.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    candle_core::safetensors::load(&path, &Device::Cpu).expect("golden fixture")
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest |got − expected| / |expected|, asserting the test's tolerance on the way.
fn compare(what: &str, got: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(got.len(), expected.len(), "{what}");
    let mut worst = 0f64;
    for (g, e) in got.iter().zip(expected) {
        assert!(
            (g - e).abs() <= 1e-5 * e.abs() + 1e-6,
            "{what}: got {g}, torch {e}"
        );
        worst = worst.max((g - e).abs() / e.abs());
    }
    worst
}

#[test]
fn adamw_with_clipping_warmup_cosine_and_ema_follows_torch() {
    let g = fixture();
    let dev = Device::Cpu;
    let vm = VarMap::new();
    for name in ["weight", "bias", "unused"] {
        let init = g[&format!("traj.{name}")].get(0).unwrap();
        vm.get(init.dims(), name, Init::Const(0.0), DType::F32, &dev)
            .unwrap();
        vm.data().lock().unwrap()[name].set(&init).unwrap();
    }
    let vars = named_vars(&vm);
    let var = |n: &str| vars.iter().find(|v| v.0 == n).unwrap().1.clone();
    let (w, b) = (var("weight"), var("bias"));
    let config = AdamWConfig {
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-3,
        weight_decay: 0.1,
    };
    let mut opt = AdamW::new(vars.clone(), config).unwrap();
    let mut ema = Ema::new(vars.clone(), 0.7, 1).unwrap();
    let (x, y) = (&g["X"], &g["Y"]);
    let norms = flat(&g["grad_norm"]);
    let lrs = flat(&g["lr"]);
    let mut worst = 0f64;
    for step in 0..STEPS {
        let pred = x
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        let loss = (pred - y).unwrap().sqr().unwrap().mean_all().unwrap();
        let mut grads = loss.backward().unwrap();
        let norm = clip_grad_norm(opt.vars(), &mut grads, 6.0).unwrap();
        worst = worst.max(compare("grad norm", &[norm], &norms[step..=step]));
        let lr = 0.05 * LrDecay::Cosine.factor(step, STEPS, 2);
        approx::assert_relative_eq!(lr, lrs[step], max_relative = 1e-14);
        opt.step(&grads, lr).unwrap();
        ema.update().unwrap();
        let averaged: HashMap<String, Tensor> = ema.weights().into_iter().collect();
        for name in ["weight", "bias", "unused"] {
            let what = format!("{name} after step {}", step + 1);
            let expected = g[&format!("traj.{name}")].get(step + 1).unwrap();
            worst = worst.max(compare(
                &what,
                &flat(var(name).as_tensor()),
                &flat(&expected),
            ));
            let expected = g[&format!("ema.{name}")].get(step).unwrap();
            worst = worst.max(compare(
                &format!("EMA {what}"),
                &flat(&averaged[name]),
                &flat(&expected),
            ));
        }
    }
    // The parameter without gradients never moved (torch skips it), and the others did.
    assert_eq!(
        flat(var("unused").as_tensor()),
        flat(&g["traj.unused"].get(0).unwrap())
    );
    assert_ne!(flat(w.as_tensor()), flat(&g["traj.weight"].get(0).unwrap()));
    eprintln!("largest relative deviation from torch: {worst:.2e}");
}
