"""Golden trajectory for diffuq's AdamW, gradient clipping, warmup/cosine schedule and EMA
(src/model/optim.rs, LrDecay::factor in src/model/train.rs).

A linear regression y = x W^T + b (W 3x4, b 3) on fixed data X (8x4), Y (8x3), loss
mean((x W^T + b - y)^2), float32, plus a parameter `unused` that never gets a gradient (torch skips
it: no weight decay, no step). Ten steps of
  torch.optim.AdamW(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1, foreach=False)
with torch.nn.utils.clip_grad_norm_(max_norm=6.0) before each step (the gradient norm falls from
7.0 to 5.6, so the first steps are clipped and the last are not) and the learning rate of
diffusers.optimization.get_cosine_schedule_with_warmup(num_warmup_steps=2, num_training_steps=10)
(a LambdaLR), and an EMA torch.optim.swa_utils.AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(0.7))
updated after every step. eps is large so that adding it to sqrt(v_hat), not sqrt(v), shows.

Writes golden/optim/adamw.safetensors: the data (X, Y), the parameter trajectories
traj.{weight,bias,unused} (11 x ..., index 0 = initial), the EMA after each step
ema.{weight,bias,unused} (10 x ...), grad_norm (clip_grad_norm_'s pre-clip return) and lr (10,).

Pinned: Python 3.11.7, torch 2.15.0 (the CUDA wheel run on CPU, 1 thread), diffusers 0.31.0,
safetensors 0.8.0, numpy 1.26.4.
Run: python golden/adamw_reference.py   (from the repository root; takes about a second)
"""
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from safetensors.torch import save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

torch.set_num_threads(1)
STEPS, LR, BETAS, EPS, WD, MAX_NORM, WARMUP, EMA_DECAY = 10, 0.05, (0.8, 0.95), 1e-3, 0.1, 6.0, 2, 0.7


class Linear(torch.nn.Module):
    def __init__(self, g):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 4, generator=g))
        self.bias = torch.nn.Parameter(torch.randn(3, generator=g))
        self.unused = torch.nn.Parameter(torch.randn(2, generator=g))

    def forward(self, x):
        return x @ self.weight.T + self.bias


g = torch.Generator().manual_seed(20250101)
model = Linear(g)
X = torch.randn(8, 4, generator=g)
Y = torch.randn(8, 3, generator=g) * 3.0
names = ["weight", "bias", "unused"]

opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD,
                        foreach=False)
sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY))

traj = {n: [getattr(model, n).detach().clone()] for n in names}
ema_traj = {n: [] for n in names}
norms, lrs = [], []
for step in range(STEPS):
    opt.zero_grad(set_to_none=True)
    loss = ((model(X) - Y) ** 2).mean()
    loss.backward()
    norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)))
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
    ema.update_parameters(model)
    for n in names:
        traj[n].append(getattr(model, n).detach().clone())
        ema_traj[n].append(getattr(ema.module, n).detach().clone())

out = {"X": X, "Y": Y,
       "grad_norm": torch.tensor(norms, dtype=torch.float64),
       "lr": torch.tensor(lrs, dtype=torch.float64)}
for n in names:
    out[f"traj.{n}"] = torch.stack(traj[n]).contiguous()
    out[f"ema.{n}"] = torch.stack(ema_traj[n]).contiguous()
save_file(out, "golden/optim/adamw.safetensors")
print("grad norms", [round(x, 4) for x in norms])
print("lrs", lrs)
print("final weight", traj["weight"][-1])
