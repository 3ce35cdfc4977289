"""Golden sampler trajectories made by diffusers, for diffuq's samplers (tests/diffusers_golden.rs).

A fixed fake eps-function, elementwise and smooth, computed in float32:
    eps(x, t) = 0.6 * tanh(x) + 0.3 * sin(0.7 * x + t / 250)
and a fixed x_T (4 x 16, float32, seeded generator, stored). For the linear (1e-4..0.02) and the
cosine ("squaredcos_cap_v2") schedules, T = 1000, 50 inference steps:
  - DDPMScheduler (fixed_small, clip_sample=False), its per-step noise pre-drawn and stored, fed by
    replacing the module's randn_tensor with a function that returns the stored draw;
  - DDIMScheduler eta=0 and eta=1 (variance_noise passed explicitly, stored), clip_sample=False,
    set_alpha_to_one=True; and eta=0 with clip_sample=True (linear only: AU's pixel convention);
  - DPMSolverMultistepScheduler(solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
    final_sigmas_type="zero"), default timestep spacing; for the cosine schedule also in float64.
Each case stores the timesteps, x before every step plus the final output ((steps + 1) x 4 x 16),
the noise used, and the scheduler's float32 alphas_cumprod.

Pinned: Python 3.11.7, torch 2.15.0 (CPU), diffusers 0.31.0, numpy 1.26.4, safetensors 0.8.0.
Run: python golden/diffusers_trajectories_lead.py   (from the repository root)
"""
import torch
import diffusers
from diffusers import DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler
import diffusers.schedulers.scheduling_ddpm as ddpm_mod
from safetensors.torch import save_file

torch.set_num_threads(1)
STEPS = 50
g = torch.Generator().manual_seed(1123)
x_T = torch.randn(4, 16, generator=g, dtype=torch.float32)


def eps(x, t):
    return 0.6 * torch.tanh(x) + 0.3 * torch.sin(0.7 * x + float(t) / 250.0)


def run(sched, noises=None, eta=None):
    sched.set_timesteps(STEPS)
    x = x_T.clone()
    xs = [x.clone()]
    used = []
    for i, t in enumerate(sched.timesteps):
        e = eps(x, int(t))
        if isinstance(sched, DDIMScheduler):
            kw = {"eta": eta}
            if eta and eta > 0:
                kw["variance_noise"] = noises[i]
                used.append(noises[i])
            x = sched.step(e, t, x, **kw).prev_sample
        else:
            x = sched.step(e, t, x).prev_sample
        xs.append(x.clone())
    return torch.stack(xs), sched.timesteps.to(torch.int64)


out = {"x_T": x_T}
noise = torch.randn(STEPS, 4, 16, generator=g, dtype=torch.float32)
out["noise"] = noise
for name, kw in {"linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
                 "cosine": dict(beta_schedule="squaredcos_cap_v2")}.items():
    # DDPM with the stored noise injected in order.
    queue = list(noise)
    original = ddpm_mod.randn_tensor
    ddpm_mod.randn_tensor = lambda *a, **k: queue.pop(0).clone()
    s = DDPMScheduler(num_train_timesteps=1000, clip_sample=False, variance_type="fixed_small", **kw)
    xs, ts = run(s)
    ddpm_mod.randn_tensor = original
    out[f"{name}.ddpm.x"], out[f"{name}.ddpm.t"] = xs, ts
    out[f"{name}.ddpm.noise_used"] = torch.tensor(STEPS - len(queue))
    out[f"{name}.alphas_cumprod"] = s.alphas_cumprod.clone()
    for eta in (0.0, 1.0):
        s = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True, **kw)
        xs, ts = run(s, noise, eta)
        out[f"{name}.ddim_eta{int(eta)}.x"], out[f"{name}.ddim_eta{int(eta)}.t"] = xs, ts
    s = DPMSolverMultistepScheduler(num_train_timesteps=1000, solver_order=2,
                                    algorithm_type="dpmsolver++", solver_type="midpoint",
                                    final_sigmas_type="zero", **kw)
    xs, ts = run(s)
    out[f"{name}.dpmpp2m.x"], out[f"{name}.dpmpp2m.t"] = xs, ts

# The cosine schedule's first DPM++ step divides by alpha_999 ~ 8e-5, so float32 rounding alone moves
# the trajectory by up to 2.4e-4 relative (diffusers' own f32 vs f64 run): also store a float64 run.
s = DPMSolverMultistepScheduler(num_train_timesteps=1000, solver_order=2, algorithm_type="dpmsolver++",
                                solver_type="midpoint", final_sigmas_type="zero",
                                beta_schedule="squaredcos_cap_v2")
s.set_timesteps(STEPS)
x = x_T.double()
xs = [x.clone()]
for t in s.timesteps:
    x = s.step(eps(x, int(t)), t, x).prev_sample
    xs.append(x.clone())
out["cosine.dpmpp2m_f64.x"] = torch.stack(xs)

s = DDIMScheduler(num_train_timesteps=1000, clip_sample=True, set_alpha_to_one=True,
                  beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
xs, ts = run(s, noise, 0.0)
out["linear.ddim_eta0_clip.x"], out["linear.ddim_eta0_clip.t"] = xs, ts

save_file({k: v.contiguous() for k, v in out.items()}, "golden/diffusers_traj/trajectories.safetensors",
          metadata={"script": "golden/diffusers_trajectories_lead.py", "diffusers": diffusers.__version__,
                    "torch": torch.__version__})
print("wrote golden/diffusers_traj/trajectories.safetensors", diffusers.__version__, torch.__version__)
