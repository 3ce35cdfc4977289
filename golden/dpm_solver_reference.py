"""Golden DPM-Solver-2 trajectories and BayesDiff DPM-2 variance propagation, written by the
reference implementations themselves (compared in tests/dpm_solver_golden.rs with
src/sampler/dpm_solver_2.rs and src/uq/bayesdiff.rs::dpm_solver_2).

The script reads each reference file at a pinned commit out of a git clone (or bare mirror) of its
repository, imports it unchanged, and calls its functions:

  LuChengTHU/dpm-solver @ 52bc3fbcd5de56d60917b826b15d2b69460fc2fa (2023-12-06)
      dpm_solver_pytorch.py: NoiseScheduleVP('discrete', betas, dtype=float64), model_wrapper
      (model_type='noise'), DPM_Solver(algorithm_type='dpmsolver').
  karrykkk/BayesDiff @ bc1e3f74e2575c35a04e2bce29247162f8b3c123 (2024-05-17)
      ddpm_and_guided/dpmUQ_utils.py (NoiseScheduleVP, get_model_input_time,
      singlestep_dpm_solver_second_update, exp_iteration, var_iteration, sample_from_gaussion) and
      ddpm_and_guided/dpm_solver_skipUQ.py (conditioned_update, conditioned_exp_iteration,
      conditioned_var_iteration). dpm_solver_skipUQ.py's other imports (the networks, the data
      sets, pytorch_lightning) are only bound, never called here, and are replaced by empty
      stand-in modules while it is imported.

Everything runs in float64 (torch's default dtype is set to float64, so the schedules' own
linspace calls are float64 too). Schedule: linear beta 1e-4 .. 0.02, T = 1000 (no lambda clipping:
lambda at t = 1 is -5.06 > -5.1).

Analytic epsilon. The exact epsilon of a 2-D Gaussian mixture p0 = sum_k w_k N(mu_k, s_k^2 I)
(w = 0.4, 0.6; mu = (-1, 0.5), (1.2, -0.3); s = 0.3, 0.36): at model time tau with
abar = alpha(tau)^2 from the reference schedule (t = tau/1000 + 1/N), v_k = abar s_k^2 + 1 - abar,
r = softmax_k(log w_k - log v_k - |x - sqrt(abar) mu_k|^2 / (2 v_k)) and
eps*(x, tau) = sqrt(1 - abar) sum_k r_k (x - sqrt(abar) mu_k) / v_k. Written here from the formula.

(a) DPM-Solver, x_T 4 x 2 (seeded), stored:
  dpm.logsnr.*        DPM_Solver.sample(steps=20, order=2, skip_type='logSNR',
                      method='singlestep', solver_type='dpmsolver', return_intermediate=True):
                      10 DPM-Solver-2 steps; r1 = 1/2 (the inner logSNR grid's midpoint).
  dpm.time_uniform.*  the same call with skip_type='time_uniform'. The library then takes r1 from
                      the inner *time* grid, i.e. s1 = (s + t)/2 in time, not r1 = 1/2
                      (stored: .r1 per step).
  dpm.time_uniform_r1half.*  the same outer grid (get_orders_and_timesteps_for_singlestep_solver),
                      each step by DPM_Solver.singlestep_dpm_solver_update(order=2, r1=0.5,
                      solver_type='dpmsolver'): Lu et al.'s Alg. 1, and GU's / BayesDiff's U-ViT
                      samplers.
  Each: .grid (K + 1 model times tau = (t - 1/N) * 1000, decreasing), .x (K x 4 x 2, x after every
  step), .r1 (K).

(b) BayesDiff DPM-2 variance propagation (release estimator), x_T 3 x 2 (seeded), stored.
  The analytic last-layer posterior: eps_p = w phi_p(x, tau) + b at every coordinate p, with
  phi = eps* above (the features) and independent Gaussian (w, b); its exact predictive mean
  w_map phi + b_map and variance v_w phi^2 + v_b are what CustomModel.forward returns, and
  accurate_forward returns the mean (diffuq: DiagPosterior::predictive on a one-feature last
  layer).
  The sampling loop of dpm_solver_skipUQ.py's main() cannot be called as is (it builds the
  network, the Laplace fit and the data loader, and moves the time grid to the CUDA device index
  given on its command line), so it is restated in bayesdiff_release() below, step for step; every
  number in it comes from the reference functions listed above, and the glue in between (the
  Monte-Carlo loop, Cov = mean(x eps) - E[x] mean(eps), the clamp of Var before drawing) follows
  main() exactly. Every standard normal that sample_from_gaussion draws (torch.randn) is recorded
  under the name of the draw diffuq uses for it:
      z.eps-s.0.k / z.eps-s1.0.k   the trajectory's sampled eps at s and at s1 in uncertainty step k
      z.x.i.k / z.u.i.k            Monte-Carlo draw i for step k: x^i ~ N(E, max(Var, 0)) at s and
                                   its push to s1, u^i ~ N(e^(la_s1-la_s) x^i - k1 mu(x^i),
                                   k1^2 v(x^i))
  (the one draw inside the first step's extra midpoint evaluation, whose sample is discarded by
  the release, is not stored). Cases (logSNR grid unless noted; uncertainty steps as main()
  builds uq_array: every `every`-th step counted from the first):
      bd.every5.*    12 steps, every = 5 (main()'s rule), mc_size = 10, posterior (w, b) means
                     (0.9, 0.05), variances (0.05, 0.02)
      bd.every1.*    6 steps on the time-uniform grid, every = 1, mc_size = 4, same posterior
      bd.every2.*    8 steps, every = 2, mc_size = 2, variances (0.2, 0.1)
  The released Var[x] goes negative before an uncertainty step in some of them (asserted), so
  main()'s clamp of Var before drawing is exercised.
  Each: .grid, .x / .mean / .var (K x 3 x 2: trajectory, E[x], Var[x] after every step),
  .uq (K, 1.0 where step k is an uncertainty step), .post (w, b, v_w, v_b), .mc, the z.* draws.

Pinned: Python 3.11.7, torch 2.15.0 (CPU), numpy 1.26.4, safetensors 0.8.0.
Run (from the repository root; clones or bare mirrors both work):
  git clone https://github.com/LuChengTHU/dpm-solver /tmp/dpm-solver
  git clone https://github.com/karrykkk/BayesDiff /tmp/bayesdiff
  python golden/dpm_solver_reference.py --dpm-solver /tmp/dpm-solver --bayesdiff /tmp/bayesdiff
Writes golden/dpm_solver/reference.safetensors (float64).
"""
import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import types

import numpy as np
import safetensors
import torch
from safetensors.torch import save_file

DPM_SOLVER = "52bc3fbcd5de56d60917b826b15d2b69460fc2fa"
BAYESDIFF = "bc1e3f74e2575c35a04e2bce29247162f8b3c123"
OUT = "golden/dpm_solver/reference.safetensors"

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--dpm-solver", required=True, help="git clone (or bare mirror) of LuChengTHU/dpm-solver")
ap.add_argument("--bayesdiff", required=True, help="git clone (or bare mirror) of karrykkk/BayesDiff")
args = ap.parse_args()

print("python", sys.version.split()[0], "torch", torch.__version__, "numpy", np.__version__,
      "safetensors", safetensors.__version__)
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)


def checkout(repo, commit, files, into):
    """Write `files` of `repo` at `commit` (`git show commit:path`) flat into directory `into`."""
    os.makedirs(into)
    for path in files:
        src = subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], check=True,
                             capture_output=True).stdout
        with open(os.path.join(into, os.path.basename(path)), "wb") as f:
            f.write(src)


tmp = tempfile.mkdtemp(prefix="diffuq-dpm-refs-")
checkout(args.dpm_solver, DPM_SOLVER, ["dpm_solver_pytorch.py"], os.path.join(tmp, "dpm"))
checkout(args.bayesdiff, BAYESDIFF, ["ddpm_and_guided/dpmUQ_utils.py",
                                     "ddpm_and_guided/dpm_solver_skipUQ.py"], os.path.join(tmp, "bd"))

sys.path.insert(0, os.path.join(tmp, "dpm"))
dpm = importlib.import_module("dpm_solver_pytorch")
sys.path.insert(0, os.path.join(tmp, "bd"))
uq = importlib.import_module("dpmUQ_utils")
# Stand-ins for the modules dpm_solver_skipUQ.py imports only for main() (never called here).
STUBS = {
    "runners": [], "runners.diffusion": ["Diffusion"], "models": [], "models.diffusion": ["Model"],
    "models.guided_diffusion": [], "models.guided_diffusion.unet": ["UNetModel"],
    "models.ema": ["EMAHelper"], "custom_model": ["CustomModel"],
    "pytorch_lightning": ["seed_everything"],
    "la_train_datasets": ["celeba_dataset", "imagenet_dataset"],
}
for name, attrs in STUBS.items():
    assert name not in sys.modules, name
    m = types.ModuleType(name)
    for a in attrs:
        setattr(m, a, None)
    sys.modules[name] = m
skip = importlib.import_module("dpm_solver_skipUQ")
for name in STUBS:
    del sys.modules[name]

N = 1000
BETAS = torch.linspace(1e-4, 0.02, N, dtype=torch.float64)
GMM_W = torch.tensor([0.4, 0.6])
GMM_MU = torch.tensor([[-1.0, 0.5], [1.2, -0.3]])
GMM_S = torch.tensor([0.3, 0.36])


def gmm_eps(ns, x, t_input):
    """Exact eps of the Gaussian mixture at model time t_input (one value per row, all equal)."""
    tau = t_input.reshape(-1)[0]
    log_alpha = ns.marginal_log_mean_coeff(torch.reshape(tau / 1000.0 + 1.0 / ns.total_N, (1,)))[0]
    ab = torch.exp(2.0 * log_alpha)
    v = ab * GMM_S ** 2 + 1.0 - ab                                    # (K,)
    diff = x[:, None, :] - torch.sqrt(ab) * GMM_MU[None, :, :]        # (B, K, D)
    d = x.shape[1]
    logits = torch.log(GMM_W) - 0.5 * d * torch.log(v) - 0.5 * (diff ** 2).sum(-1) / v
    r = torch.softmax(logits, dim=1)                                  # (B, K)
    return torch.sqrt(1.0 - ab) * (r[:, :, None] * diff / v[None, :, None]).sum(1)


def tau_of(t):
    return (t - 1.0 / N) * 1000.0


out = {}

# ---------------------------------------------------------------- (a) DPM-Solver
ns = dpm.NoiseScheduleVP("discrete", betas=BETAS, dtype=torch.float64)
model_fn = dpm.model_wrapper(lambda x, t: gmm_eps(ns, x, t), ns, model_type="noise")
solver = dpm.DPM_Solver(model_fn, ns, algorithm_type="dpmsolver")
g = torch.Generator().manual_seed(20240517)
x_T = torch.randn(4, 2, generator=g, dtype=torch.float64)
out["dpm.x_T"] = x_T
STEPS = 20  # NFE: 10 steps of DPM-Solver-2
t_0, t_T = 1.0 / ns.total_N, ns.T


def inner_r1(skip_type, s, t):
    """r1 as DPM_Solver.sample computes it for a singlestep order-2 step (its inner grid)."""
    inner = solver.get_time_steps(skip_type=skip_type, t_T=s.item(), t_0=t.item(), N=2, device="cpu")
    lam = ns.marginal_lambda(inner)
    return ((lam[1] - lam[0]) / (lam[-1] - lam[0])).item()


for skip_type, key in [("logSNR", "logsnr"), ("time_uniform", "time_uniform")]:
    outer, orders = solver.get_orders_and_timesteps_for_singlestep_solver(
        steps=STEPS, order=2, skip_type=skip_type, t_T=t_T, t_0=t_0, device="cpu")
    assert orders == [2] * (STEPS // 2)
    x_end, inter = solver.sample(x_T.clone(), steps=STEPS, order=2, skip_type=skip_type,
                                 method="singlestep", denoise_to_zero=False, solver_type="dpmsolver",
                                 return_intermediate=True)
    assert torch.equal(x_end, inter[-1])
    out[f"dpm.{key}.grid"] = tau_of(outer)
    out[f"dpm.{key}.x"] = torch.stack(inter)
    out[f"dpm.{key}.r1"] = torch.tensor([inner_r1(skip_type, outer[k], outer[k + 1])
                                         for k in range(len(orders))])
    if skip_type == "time_uniform":
        xs, x = [], x_T.clone()
        for k in range(len(orders)):
            x = solver.singlestep_dpm_solver_update(x, outer[k], outer[k + 1], 2,
                                                    solver_type="dpmsolver", r1=0.5)
            xs.append(x)
        out["dpm.time_uniform_r1half.grid"] = tau_of(outer)
        out["dpm.time_uniform_r1half.x"] = torch.stack(xs)
        out["dpm.time_uniform_r1half.r1"] = torch.full((len(orders),), 0.5)
print("DPM-Solver r1 per step, time_uniform:", np.round(out["dpm.time_uniform.r1"].numpy(), 4))
print("                        logSNR:      ", out["dpm.logsnr.r1"].numpy())

# ---------------------------------------------------------------- (b) BayesDiff
ns_bd = uq.NoiseScheduleVP("discrete", betas=BETAS, dtype=torch.float64)


class AnalyticLlla:
    """CustomModel's interface (forward -> (mean, var), accurate_forward -> MAP mean) for the
    exact predictive of eps_p = w phi_p + b, (w, b) ~ N((w_map, b_map), diag(v_w, v_b))."""

    def __init__(self, w, b, vw, vb):
        self.w, self.b, self.vw, self.vb = w, b, vw, vb

    def __call__(self, x, t_input, **kw):
        phi = gmm_eps(ns_bd, x, t_input)
        return self.w * phi + self.b, self.vw * phi ** 2 + self.vb

    def accurate_forward(self, x, t_input, **kw):
        return self.w * gmm_eps(ns_bd, x, t_input) + self.b


class Recorder:
    """Replaces torch.randn while the propagation runs: draws from its own generator and files
    every draw under the label the loop set just before the call."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)
        self.label = None
        self.draws = {}
        self.original = torch.randn

    def __enter__(self):
        def randn(*size, **kw):
            assert self.label is not None, "unlabelled draw"
            shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
            z = self.original(tuple(shape), generator=self.gen, dtype=torch.float64)
            if self.label != "discard":
                assert self.label not in self.draws, self.label
                self.draws[self.label] = z.clone()
            self.label = None
            return z
        torch.randn = randn
        return self

    def __exit__(self, *exc):
        torch.randn = self.original


def bayesdiff_release(model, x_T, t_seq, every, mc, rec):
    """main()'s sampling loop (dpm_solver_skipUQ.py) for one batch, recording x, E[x], Var[x]
    after every step. t_seq is increasing (main() flips the outer grid); the loop walks from
    index K down to 1 and step k = K - timestep goes from s = t_seq[timestep] to t_seq[timestep - 1]."""
    K = len(t_seq) - 1
    uq_array = [False] * (K + 1)
    for i in range(K, 0, -every):
        uq_array[i] = True
    B = x_T.shape[0]
    inp = lambda t: uq.get_model_input_time(ns_bd, t).expand(B)

    def monte_carlo(timestep, exp_x, var_x):
        """The draws main() makes at the end of a step when the next one is an uncertainty step:
        E[eps_s1] = mean_i mu(u^i) and Cov[x, eps_s1] for step k = K - (timestep - 1)."""
        k_next = K - (timestep - 1)
        s_n, t_n = t_seq[timestep - 1], t_seq[timestep - 2]
        lam_s, lam_t = ns_bd.marginal_lambda(s_n), ns_bd.marginal_lambda(t_n)
        h = lam_t - lam_s
        s1 = ns_bd.inverse_lambda(lam_s + 0.5 * h)
        sig_s1 = ns_bd.marginal_std(s1)
        la_s, la_s1 = ns_bd.marginal_log_mean_coeff(s_n), ns_bd.marginal_log_mean_coeff(s1)
        phi_11 = torch.expm1(0.5 * h)
        xs, eps = [], []
        for i in range(mc):
            var_x = torch.clamp(var_x, min=0)
            rec.label = f"x.{i}.{k_next}"
            x_i = uq.sample_from_gaussion(exp_x, var_x)
            xs.append(x_i)
            mu_i, v_i = model(x_i, inp(s_n))
            rec.label = f"u.{i}.{k_next}"
            u_i = uq.sample_from_gaussion(torch.exp(la_s1 - la_s) * x_i - (sig_s1 * phi_11) * mu_i,
                                          torch.square(sig_s1 * phi_11) * v_i)
            eps.append(model(u_i, inp(s1))[0])
        xs, eps = torch.stack(xs), torch.stack(eps)
        cov = torch.mean(xs * eps, dim=0) - exp_x * torch.mean(eps, dim=0)
        return var_x, eps, cov

    # Start: x_T, Var = 0, Cov = 0; the first step's E[eps_s1] is the mean model at the midpoint
    # reached with the mean eps (the sample drawn inside that call is discarded).
    T = t_seq[K]
    x_next, exp_next, var_next = x_T, x_T, torch.zeros_like(x_T)
    mu_next, v_next = model(x_T, inp(T))
    cov_next = torch.zeros_like(x_T)
    rec.label = "discard"
    _, m_s1, _ = skip.conditioned_update(ns_bd, x_next, T, t_seq[K - 1], model, mu_next,
                                         pre_wuq=True, r1=0.5)
    eps_list = m_s1.unsqueeze(0)
    xs, means, vars_ = [], [], []
    for timestep in range(K, 0, -1):
        k = K - timestep
        x, exp_x, var_x = x_next, exp_next, var_next
        s, t = t_seq[timestep], t_seq[timestep - 1]
        if uq_array[timestep]:
            mu, v, cov = mu_next, v_next, cov_next
            mc_exp = torch.mean(eps_list, dim=0)
            rec.label = f"eps-s.0.{k}"
            eps_t = uq.sample_from_gaussion(mu, v)
            rec.label = f"eps-s1.0.{k}"
            x_next, _, v_s1 = skip.conditioned_update(ns=ns_bd, x=x, s=s, t=t, custom_model=model,
                                                      model_s=eps_t, pre_wuq=True, r1=0.5)
            exp_next = skip.conditioned_exp_iteration(exp_x, ns_bd, s, t, pre_wuq=True,
                                                      mc_eps_exp_s1=mc_exp)
            var_next = skip.conditioned_var_iteration(var_x, ns_bd, s, t, pre_wuq=True,
                                                      cov_xt_epst=cov, var_epst=v_s1)
        else:
            mu = mu_next
            x_next, m_s1 = skip.conditioned_update(ns=ns_bd, x=x, s=s, t=t, custom_model=model,
                                                   model_s=mu, pre_wuq=False, r1=0.5)
            exp_next = skip.conditioned_exp_iteration(exp_x, ns_bd, s, t, exp_s1=m_s1, pre_wuq=False)
            var_next = skip.conditioned_var_iteration(var_x, ns_bd, s, t, pre_wuq=False)
        xs.append(x_next)
        means.append(exp_next)
        vars_.append(var_next)
        # Before the next step; main() records nothing of this (the clamp below changes the Var
        # that the next step starts from, not the recorded value).
        if uq_array[timestep - 1]:
            var_next, eps_list, cov_next = monte_carlo(timestep, exp_next, var_next)
            mu_next, v_next = model(x_next, inp(t_seq[timestep - 1]))
        else:
            mu_next = model.accurate_forward(x_next, inp(t))
    return torch.stack(xs), torch.stack(means), torch.stack(vars_), uq_array


g = torch.Generator().manual_seed(1350)
x_T_bd = torch.randn(3, 2, generator=g, dtype=torch.float64)
out["bd.x_T"] = x_T_bd
CASES = [
    # name, steps, skip_type, every, mc, (w, b, v_w, v_b)
    ("every5", 12, "logSNR", 5, 10, (0.9, 0.05, 0.05, 0.02)),
    ("every1", 6, "time_uniform", 1, 4, (0.9, 0.05, 0.05, 0.02)),
    ("every2", 8, "logSNR", 2, 2, (0.9, 0.05, 0.2, 0.1)),
]
clamped = 0
for seed, (name, K, skip_type, every, mc, post) in enumerate(CASES):
    # main()'s grid: get_orders_and_timesteps_for_singlestep_solver(steps = 2K), flipped.
    outer, _ = solver.get_orders_and_timesteps_for_singlestep_solver(
        steps=2 * K, order=2, skip_type=skip_type, t_T=ns_bd.T, t_0=1.0 / ns_bd.total_N, device="cpu")
    t_seq = torch.flip(outer, dims=[0])
    with Recorder(7000 + seed) as rec:
        xs, means, vars_, uq_array = bayesdiff_release(AnalyticLlla(*post), x_T_bd, t_seq, every, mc, rec)
    p = f"bd.{name}"
    out[f"{p}.grid"] = tau_of(outer)
    out[f"{p}.x"], out[f"{p}.mean"], out[f"{p}.var"] = xs, means, vars_
    out[f"{p}.uq"] = torch.tensor([float(uq_array[K - k]) for k in range(K)])
    out[f"{p}.post"] = torch.tensor(post)
    out[f"{p}.mc"] = torch.tensor([float(mc)])
    for label, z in rec.draws.items():
        out[f"{p}.z.{label}"] = z
    print(f"{name}: {len(rec.draws)} draws, min Var {vars_.min().item():.3e}, "
          f"final Var mean {vars_[-1].mean().item():.3e}")
    # Var < 0 after a step that an uncertainty step follows: the clamp before drawing changes
    # the Var that step starts from.
    clamped += int(sum(((vars_[k] < 0).any() and out[f"{p}.uq"][k + 1] > 0).item()
                       for k in range(K - 1)))
assert clamped > 0, "some case must exercise main()'s clamp of a negative Var"

os.makedirs(os.path.dirname(OUT), exist_ok=True)
save_file({k: v.to(torch.float64).contiguous() for k, v in out.items()}, OUT,
          # One metadata key: safetensors writes several in hash order, so the bytes would vary.
          metadata={"source": f"golden/dpm_solver_reference.py; LuChengTHU/dpm-solver {DPM_SOLVER}; "
                              f"karrykkk/BayesDiff {BAYESDIFF}; torch {torch.__version__}"})
print("wrote", OUT, len(out), "tensors")
