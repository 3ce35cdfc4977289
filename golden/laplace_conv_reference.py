"""Golden values for diffuq's last-layer diagonal empirical-Fisher Laplace (src/uq/laplace.rs) on
conv last layers with many output positions per item.

The MLP goldens (laplace_reference.py) have one output position per item, where the per-item
gradient squared, (sum_p g_p)^2, and the sum of per-position squares, sum_p g_p^2, coincide. Here
the last layer is a 3x3 convolution with H*W output positions, so the two differ.

laplace-torch's last-layer mode (`subset_of_weights="last_layer"`) only accepts an nn.Linear last
layer, so the fit is done the way GU's release does it (docs/released-code.md Sec. 2.3): a
`DiagLaplace` (`subset_of_weights="all"`, `hessian_structure="diag"`, likelihood "regression") over
the whole model with every parameter except the last conv frozen (requires_grad False), backend
`CurvlinopsEF`, whose diagonal is laplace-torch's own empirical Fisher from per-sample gradients
(torch.func vmap of grad of the summed-MSE loss, times 1/2), i.e. H = 2 sum_n (J_n^T r_n)^2. As in
BayesDiff's LLLA wrapper (Sec. 3.2) the model output is flattened to (N, C*H*W), so the loss is the
summed MSE over every channel and position and the GLM predictive (laplace-torch's
`la(X, pred_type="glm")`, f_var diagonal) is over the flattened outputs. For the small conv model
the fit is repeated with `BackPackEF` (BackPACK's SumGradSquared; BackPACK refuses frozen
parameters, so on the last conv + flatten alone, fed the features) and must agree to 1e-12.

Models (float64, 1 thread); the model input packs the timestep as an extra constant channel so that
laplace-torch's one-tensor interface carries one t per item:
  conv.safetensors  an eps-model on 2x6x6 images: [x_t (2 ch), t/1000 plane] -> Conv2d(3, 4, 3, p1)
                    -> tanh -> Conv2d(4, 2, 3, p1) (the last layer: 36 positions, 2 outputs,
                    4*9 features) -> flatten. 24 items, batch 8, 3 test inputs.
  unet/             diffusers 0.31.0 UNet2DModel, sample 8, 2 -> 2 channels, block_out (8, 16),
                    DownBlock2D + AttnDownBlock2D, AttnUpBlock2D + UpBlock2D, 1 layer per block,
                    4 groups, head dim 4, GroupNorm affines perturbed by 0.1 randn (as in
                    unet2d_reference.py); the last layer is conv_out (64 positions, 2 outputs,
                    8*9 features). config.json + diffusion_pytorch_model.safetensors (save_pretrained,
                    float32 weights: diffuq and the reference both run them cast to float64) and
                    laplace.safetensors. Model input [x_t, t plane], t an integer in 0..999 passed
                    to the UNet as its timestep. 16 items, batch 8, 3 test inputs.
Data: x0 = 0.5 randn + 0.3, t ~ U{0..999}, x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps (linear betas
1e-4..0.02, T = 1000), target eps.
Each with (sigma_noise, prior_precision) = (1, 1) [GU/BayesDiff] and (0.7, 0.5). Keys: x_t, t, Y
(eps), x_test, t_test, and per tag: H, posterior_precision (last layer's weight flattened row-major
as (O, C, 3, 3), then its bias), f_mu, f_var_diag (both (N, C, H, W)); conv.safetensors also holds
the model weights as model.{0,2}.{weight,bias}.

Pinned: Python 3.11.7, torch 2.15.0 (the CUDA wheel run on CPU, 1 thread), laplace-torch 0.2.2.2,
curvlinops-for-pytorch 2.0.1, backpack-for-pytorch 1.7.1 (with unfoldNd 0.2.3, einops 0.8.2,
einconv 0.1.0, opt_einsum 3.4.0, scipy 1.13.1, asdfghjkl 0.1a4, torchmetrics 1.9.0), diffusers
0.31.0, safetensors 0.8.0, numpy 1.26.4.
Run: python golden/laplace_conv_reference.py   (from the repository root; a few seconds)
"""
import copy
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from diffusers import UNet2DModel
from laplace import Laplace
from laplace.curvature import BackPackEF, CurvlinopsEF
from safetensors.torch import save_file

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
OUT = "golden/laplace"
TAGS = {"s1_p1": (1.0, 1.0), "s07_p05": (0.7, 0.5)}


def fit(model, X, Y, sigma, prior, batch, backend):
    la = Laplace(model, "regression", subset_of_weights="all", hessian_structure="diag",
                 backend=backend, sigma_noise=sigma, prior_precision=prior)
    la.fit(DataLoader(TensorDataset(X, Y), batch_size=batch))
    return la


def data(g, n, c, s):
    betas = torch.linspace(1e-4, 0.02, 1000)
    ab = torch.cumprod(1 - betas, 0)
    x0 = torch.randn(n, c, s, s, generator=g) * 0.5 + 0.3
    t = torch.randint(0, 1000, (n,), generator=g)
    eps = torch.randn(n, c, s, s, generator=g)
    x_t = ab[t].sqrt()[:, None, None, None] * x0 + (1 - ab[t]).sqrt()[:, None, None, None] * eps
    x_test = torch.randn(3, c, s, s, generator=g)
    t_test = torch.randint(0, 1000, (3,), generator=g)
    return x_t, t.double(), eps, x_test, t_test.double()


def pack(x, t, scale):
    plane = (t * scale)[:, None, None, None].expand(-1, 1, x.shape[2], x.shape[3])
    return torch.cat([x, plane], 1)


def record(model, x_t, t, eps, x_test, t_test, t_scale, batch, cross_check):
    out = {"x_t": x_t, "t": t, "Y": eps, "x_test": x_test, "t_test": t_test}
    X, Xs = pack(x_t, t, t_scale), pack(x_test, t_test, t_scale)
    Y = eps.flatten(1)
    for tag, (sigma, prior) in TAGS.items():
        la = fit(model, X, Y, sigma, prior, batch, CurvlinopsEF)
        if cross_check:
            # BackPACK refuses frozen parameters: fit the last layer alone on the features.
            with torch.no_grad():
                feats = model[1](model[0](X))
            other = fit(copy.deepcopy(model[2:]), feats, Y, sigma, prior, batch, BackPackEF)
            assert torch.allclose(la.H, other.H, rtol=1e-12, atol=0), "CurvlinopsEF vs BackPackEF"
        f_mu, f_var = la(Xs, pred_type="glm")
        out[f"{tag}.H"] = la.H.detach().clone()
        out[f"{tag}.posterior_precision"] = la.posterior_precision.detach().clone()
        out[f"{tag}.f_mu"] = f_mu.detach().reshape(x_test.shape).clone()
        out[f"{tag}.f_var_diag"] = (
            torch.diagonal(f_var, dim1=-2, dim2=-1).detach().reshape(x_test.shape).clone())
    return out


meta = {"script": "golden/laplace_conv_reference.py", "laplace-torch": "0.2.2.2",
        "backend": "CurvlinopsEF", "torch": torch.__version__}
g = torch.Generator().manual_seed(20261130)

# (1) conv -> tanh -> conv eps-model on 2x6x6 images.
conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 2, 3, padding=1),
                     nn.Flatten())
with torch.no_grad():
    for p in conv.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.5)
for p in conv[0].parameters():
    p.requires_grad_(False)
x_t, t, eps, x_test, t_test = data(g, 24, 2, 6)
res = record(conv, x_t, t, eps, x_test, t_test, 1e-3, 8, True)
res.update({f"model.{k}": v.detach().clone() for k, v in conv.state_dict().items()})
save_file({k: v.contiguous() for k, v in res.items()}, f"{OUT}/conv.safetensors", metadata=meta)


# (2) a diffusers UNet2DModel, last layer conv_out.
class Packed(nn.Module):
    """[x_t, t plane] -> unet(x_t, t).sample, flattened."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, X):
        c = X.shape[1] - 1
        return self.unet(X[:, :c], X[:, c, 0, 0]).sample.flatten(1)


torch.manual_seed(20261130)
unet = UNet2DModel(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16),
                   layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                   attention_head_dim=4).to(torch.float32)
with torch.no_grad():
    for m in unet.modules():
        if isinstance(m, nn.GroupNorm):
            m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=g, dtype=torch.float32))
            m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g, dtype=torch.float32))
unet.eval()
os.makedirs(f"{OUT}/unet", exist_ok=True)
unet.save_pretrained(f"{OUT}/unet", safe_serialization=True)
net = Packed(unet.to(torch.float64)).eval()
for name, p in net.named_parameters():
    p.requires_grad_(name.startswith("unet.conv_out."))
x_t, t, eps, x_test, t_test = data(g, 16, 2, 8)
res = record(net, x_t, t, eps, x_test, t_test, 1.0, 8, False)
save_file({k: v.contiguous() for k, v in res.items()}, f"{OUT}/unet/laplace.safetensors",
          metadata=meta)
print("wrote golden/laplace/conv.safetensors, golden/laplace/unet/")
