"""Golden values for diffuq's last-layer diagonal empirical-Fisher Laplace (src/uq/laplace.rs).

Made by laplace-torch's own `Laplace(..., subset_of_weights="last_layer", hessian_structure="diag",
backend=BackPackEF, likelihood="regression")` on
  (1) a tiny MLP regression 3 -> 8 -> 2 (tanh), 40 training points, batch 10;
  (2) a tiny eps-model: input [x_t (4-d), t/1000] -> 16 (tanh) -> 4, on x_t = sqrt(ab_t) x0 +
      sqrt(1 - ab_t) eps with one t per item (the diffusion loss ||eps_theta(x_t, t) - eps||^2),
      linear beta schedule 1e-4..0.02, T = 1000, 48 items, batch 16.
Each with (sigma_noise, prior_precision) = (1, 1) [GU/BayesDiff] and (0.7, 0.5).
Writes golden/laplace/*.safetensors: the model weights, the data, laplace-torch's H (diagonal
empirical Fisher), posterior_precision, and the GLM predictive (f_mu, diagonal of f_var) at test
inputs.

Pinned: Python 3.11.7, torch 2.15.0 (the CUDA wheel run on CPU, 1 thread), laplace-torch 0.2.2.2,
backpack-for-pytorch 1.7.1, curvlinops-for-pytorch 2.0.1, safetensors 0.8.0, numpy 1.26.4.
Run: python golden/laplace_reference.py   (from the repository root; takes a few seconds)
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from laplace import Laplace
from laplace.curvature import BackPackEF
from safetensors.torch import save_file

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)


def fit(model, X, Y, sigma, prior, batch):
    la = Laplace(model, "regression", subset_of_weights="last_layer", hessian_structure="diag",
                 backend=BackPackEF, sigma_noise=sigma, prior_precision=prior)
    la.fit(DataLoader(TensorDataset(X, Y), batch_size=batch))
    return la


def record(name, model, X, Y, Xtest, batch, extra):
    out = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out.update({"X": X, "Y": Y, "Xtest": Xtest})
    out.update(extra)
    for tag, (sigma, prior) in {"s1_p1": (1.0, 1.0), "s07_p05": (0.7, 0.5)}.items():
        la = fit(model, X, Y, sigma, prior, batch)
        f_mu, f_var = la(Xtest, pred_type="glm")
        out[f"{tag}.H"] = la.H.detach().clone()
        out[f"{tag}.posterior_precision"] = la.posterior_precision.detach().clone()
        out[f"{tag}.f_mu"] = f_mu.detach().clone()
        out[f"{tag}.f_var_diag"] = torch.diagonal(f_var, dim1=-2, dim2=-1).detach().clone()
    save_file({k: v.contiguous() for k, v in out.items()}, f"golden/laplace/{name}.safetensors",
              metadata={"script": "golden/laplace_reference.py", "laplace-torch": "0.2.2.2",
                        "torch": torch.__version__})


g = torch.Generator().manual_seed(20261123)
mlp = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
with torch.no_grad():
    for p in mlp.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.7)
X = torch.randn(40, 3, generator=g)
Y = torch.randn(40, 2, generator=g)
record("mlp", mlp, X, Y, torch.randn(6, 3, generator=g), 10, {})

betas = torch.linspace(1e-4, 0.02, 1000)
ab = torch.cumprod(1 - betas, 0)
eps_model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 4))
with torch.no_grad():
    for p in eps_model.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.5)
x0 = torch.randn(48, 4, generator=g) * 0.5 + 0.3
t = torch.randint(0, 1000, (48,), generator=g)
eps = torch.randn(48, 4, generator=g)
x_t = ab[t].sqrt()[:, None] * x0 + (1 - ab[t]).sqrt()[:, None] * eps
inp = torch.cat([x_t, (t.double() / 1000.0)[:, None]], 1)
test = torch.cat([torch.randn(5, 4, generator=g), torch.rand(5, 1, generator=g)], 1)
record("eps_model", eps_model, inp, eps, test, 16, {"t": t.double(), "x_t": x_t})
print("wrote golden/laplace/{mlp,eps_model}.safetensors")
