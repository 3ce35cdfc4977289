//! diffuq's samplers against diffusers, step by step.
//!
//! Expected numbers: golden/diffusers_traj/trajectories.safetensors, written by
//! golden/diffusers_trajectories_lead.py with diffusers 0.31.0 and torch 2.15.0 (CPU, float32):
//! DDPMScheduler (fixed_small), DDIMScheduler (η = 0 and 1, and η = 0 with clip_sample),
//! DPMSolverMultistepScheduler (order 2, dpmsolver++, midpoint, final sigma zero), 50 steps, linear
//! and cosine schedules, on the fake ε(x, t) = 0.6 tanh(x) + 0.3 sin(0.7x + t/250) from a stored
//! x_T (4 × 16), with diffusers' per-step noise stored and injected here. The schedule is rebuilt
//! from diffusers' own float32 `alphas_cumprod` so the comparison isolates the samplers; a separate
//! test bounds the difference between diffuq's f64 schedules and those float32 ones.
//!
//! Tolerance: every element of x before every step and of the output within 1e-5 relative
//! (absolute below |x| = 1). The fake ε is no denoiser, so DDPM's x grows to |x| ≈ 20, where
//! float32 rounding alone is ≈ 2e-6.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use diffuq::model::Denoiser;
use diffuq::sampler::dpm_solver::Coefficients;
use diffuq::sampler::{
    ddim, ddpm, dpm_solver, FinalStep, NoiseSource, Observer, StepRules, StepView,
};
use diffuq::schedule::{grid, leading_grid, NoiseSchedule, ScheduleKind, Spacing};

fn fixture() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/golden/diffusers_traj/trajectories.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu).expect("golden fixture")
}

struct Fake;
impl Denoiser for Fake {
    fn eps(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let a = (x.tanh()? * 0.6)?;
        let b = ((x * 0.7)? + t / 250.0)?.sin()?;
        a + (b * 0.3)?
    }
}

struct Stored(Tensor);
impl NoiseSource for Stored {
    fn noise(&self, step: u32) -> candle_core::Result<Tensor> {
        self.0.get(step as usize)
    }
}

struct Record(Vec<Tensor>);
impl Observer for Record {
    fn on_step(&mut self, v: &StepView<'_>) -> candle_core::Result<()> {
        self.0.push(v.x_t.clone());
        Ok(())
    }
}

fn schedule(f: &HashMap<String, Tensor>, name: &str) -> NoiseSchedule {
    let ab = f[&format!("{name}.alphas_cumprod")]
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    NoiseSchedule::from_alpha_bars(ab)
}

fn grid_of(f: &HashMap<String, Tensor>, key: &str) -> Vec<usize> {
    f[key]
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&t| t as usize)
        .collect()
}

fn compare(got: &[Tensor], final_x: &Tensor, want: &Tensor, case: &str) {
    let want = want.to_vec3::<f32>().unwrap();
    assert_eq!(got.len() + 1, want.len(), "{case}: number of steps");
    let mut worst = 0f32;
    for (step, x) in got.iter().chain(std::iter::once(final_x)).enumerate() {
        let x = x.to_vec2::<f32>().unwrap();
        for (a, b) in x.iter().flatten().zip(want[step].iter().flatten()) {
            let err = (a - b).abs() / b.abs().max(1.0);
            worst = worst.max(err);
            assert!(
                err <= 1e-5,
                "{case}, step {step}: diffuq {a} vs diffusers {b}"
            );
        }
    }
    eprintln!("{case}: max rel. diff {worst:.2e}");
}

#[test]
fn ddpm_ddim_and_dpmpp_match_diffusers_every_step() {
    let f = fixture();
    let x_t = f["x_T"].clone();
    let noise = Stored(f["noise"].clone());
    for name in ["linear", "cosine"] {
        let s = schedule(&f, name);
        // DDPM.
        let g = grid_of(&f, &format!("{name}.ddpm.t"));
        assert_eq!(g, leading_grid(1000, 50), "{name}: DDPM grid");
        let mut rec = Record(vec![]);
        let out = ddpm::sample(
            &Fake,
            &s,
            &g,
            &StepRules::default(),
            x_t.clone(),
            &noise,
            &mut rec,
        )
        .unwrap();
        compare(
            &rec.0,
            &out.x0,
            &f[&format!("{name}.ddpm.x")],
            &format!("{name} DDPM"),
        );
        // DDIM η = 0 and η = 1.
        for eta in [0usize, 1] {
            let key = format!("{name}.ddim_eta{eta}");
            let g = grid_of(&f, &format!("{key}.t"));
            assert_eq!(g, grid(Spacing::Leading, 1000, 50, 0), "{key}: grid");
            let mut rec = Record(vec![]);
            let out = ddim::sample(
                &Fake,
                &s,
                &g,
                eta as f64,
                &StepRules::default(),
                x_t.clone(),
                &noise,
                &mut rec,
            )
            .unwrap();
            compare(&rec.0, &out.x0, &f[&format!("{key}.x")], &key);
        }
        // DPM-Solver++(2M): diffusers' linspace spacing drops the final 0: 999, 979, …, 20.
        let key = format!("{name}.dpmpp2m");
        let g = grid_of(&f, &format!("{key}.t"));
        let expected: Vec<usize> = (0..=50)
            .map(|i| (i as f64 * 999.0 / 50.0).round_ties_even() as usize)
            .rev()
            .take(50)
            .collect();
        assert_eq!(g, expected, "{key}: grid");
        // diffusers computes the step coefficients in float32 (`Coefficients::DiffusersF32`);
        // with exact f64 coefficients the cosine run differs by 1.1e-4 relative, because its first
        // step (α_999 ≈ 8e-5) cancels two O(300) terms (diffusers' own float32 and float64 runs
        // differ by 2.4e-4). The cosine case is also checked in float64 against diffusers'
        // float64 run.
        let mut rec = Record(vec![]);
        let out = dpm_solver::sample_2m_with(
            &Fake,
            &s,
            &g,
            Coefficients::DiffusersF32,
            x_t.clone(),
            &mut rec,
        )
        .unwrap();
        compare(&rec.0, &out.x0, &f[&format!("{key}.x")], &key);
        if name == "cosine" {
            let x64 = x_t.to_dtype(DType::F64).unwrap();
            let mut rec = Record(vec![]);
            let out = dpm_solver::sample_2m_with(
                &Fake,
                &s,
                &g,
                Coefficients::DiffusersF32,
                x64,
                &mut rec,
            )
            .unwrap();
            let to32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let got: Vec<Tensor> = rec.0.iter().map(to32).collect();
            compare(
                &got,
                &to32(&out.x0),
                &to32(&f["cosine.dpmpp2m_f64.x"]),
                "cosine.dpmpp2m f64",
            );
        }
    }
    // DDIM η = 0 with clip_sample (x̂₀ clipped to [-1, 1], direction with the unclipped ε).
    let s = schedule(&f, "linear");
    let g = grid_of(&f, "linear.ddim_eta0_clip.t");
    let rules = StepRules {
        clip_sample: Some(1.0),
        final_step: FinalStep::AlphaOne,
    };
    let mut rec = Record(vec![]);
    let out = ddim::sample(&Fake, &s, &g, 0.0, &rules, x_t.clone(), &noise, &mut rec).unwrap();
    compare(
        &rec.0,
        &out.x0,
        &f["linear.ddim_eta0_clip.x"],
        "linear DDIM clip",
    );
}

#[test]
fn diffuq_f64_schedules_agree_with_diffusers_float32_ones() {
    // diffusers builds β in float32 and takes a float32 cumulative product; diffuq computes in
    // f64. They differ by float32 rounding accumulated over 1000 products: measured below 2e-5
    // relative everywhere (ᾱ_999 ≈ 4e-5 for the linear schedule).
    let f = fixture();
    for (name, kind) in [
        ("linear", ScheduleKind::Linear),
        ("cosine", ScheduleKind::Cosine),
    ] {
        let ours = NoiseSchedule::new(kind, 1e-4, 0.02, 1000);
        let theirs = schedule(&f, name);
        for t in 0..1000 {
            let (a, b) = (ours.alpha_bar(Some(t)), theirs.alpha_bar(Some(t)));
            assert!(
                (a - b).abs() <= 2e-5 * b,
                "{name} ᾱ_{t}: diffuq {a} vs diffusers {b}"
            );
        }
    }
}
