"""Golden UNet2DModel checkpoints and forward outputs made by diffusers itself, for diffuq's UNet.

Every model is a diffusers.UNet2DModel with default (PyTorch) initialisation under a fixed
torch.manual_seed, after which every GroupNorm weight and bias gets 0.1 * randn added (seeded
generator), so that a wrong or missing norm affine cannot pass. Each case directory holds what
`save_pretrained` writes (config.json plus the weights) and io.safetensors with
    x        (B, C, H, W) float32, standard normal (seeded generator)
    t        (B,) float32, [0.0, 17.5, 999.0] (17.5: a fractional t, as DPM-Solver-2 midpoints pass)
    labels   (B,) int64, [7, 0, 9] (class-conditional case only)
    t_proj   (B, C0) float32, the sinusoidal embedding diffusers' time_proj made (always in float32)
    emb      (B, 4 C0) float32, the embedding handed to the blocks (time MLP, plus class embedding)
    out      (B, C, H, W) float32, model(x, t, class_labels=labels).sample, eval mode, no_grad
    out_f64  (B, C, H, W) float64, the same model cast to float64, fed x and t as float64; as in
             diffusers, its sinusoidal embedding is still computed in float32 (t_proj), then cast
B = 3. Cases (golden/unet2d/):
  tiny/             sample 16, 1 -> 1 channels, block_out (16, 32), DownBlock2D + AttnDownBlock2D,
                    AttnUpBlock2D + UpBlock2D, 1 layer per block, 8 groups, head dim 8, dropout 0.1
                    (inactive in eval); diffusion_pytorch_model.safetensors
  tiny_class/       tiny plus num_class_embeds 10, resnet_time_scale_shift "scale_shift",
                    flip_sin_to_cos False, freq_shift 1; saved with safe_serialization=False
                    (diffusion_pytorch_model.bin, PyTorch zip pickle)
  tiny_legacy/      tiny's weights and config, its attention keys renamed to the legacy names the
                    hub's google/ddpm-cifar10-32 uses (query, key, value, proj_attn instead of to_q,
                    to_k, to_v, to_out.0); the script asserts that diffusers' own from_pretrained
                    loads it (no missing or unexpected key) and reproduces tiny's `out` bit for bit.
                    io.safetensors is tiny's.
  cifar10_reduced/  google/ddpm-cifar10-32's config with block_out_channels (32, 64, 32, 32)
                    (not (32, 64, 64, 64): that is 9.0 MB of weights; this is 4.9 MB and keeps the
                    channel change inside AttnDownBlock2D / AttnUpBlock2D that the full model has)
  cifar10_full_shapes.json  for the full ddpm-cifar10-32 config (random init, not saved): the
                    config save_pretrained would write, the parameter count and the state dict's
                    [name, shape] list in order (current attention names).
Every saved directory is reloaded with UNet2DModel.from_pretrained and must reproduce `out` exactly.

Pinned: Python 3.11.7, torch 2.15.0 (CPU, one thread), diffusers 0.31.0, numpy 1.26.4,
safetensors 0.8.0 (huggingface_hub 2.4.0 came with them).
Run: /path/to/python golden/unet2d_reference.py   (from the repository root)
"""
import copy
import json
import os
import shutil
import sys

import numpy
import safetensors
import torch
import diffusers
from diffusers import UNet2DModel
from safetensors.torch import save_file, load_file

torch.set_num_threads(1)
diffusers.utils.logging.set_verbosity_error()
OUT = "golden/unet2d"
B = 3
T = torch.tensor([0.0, 17.5, 999.0], dtype=torch.float32)
LABELS = torch.tensor([7, 0, 9], dtype=torch.int64)

TINY = dict(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8, attention_head_dim=8, dropout=0.1)
TINY_CLASS = dict(TINY, num_class_embeds=10, resnet_time_scale_shift="scale_shift", flip_sin_to_cos=False,
                  freq_shift=1)
# google/ddpm-cifar10-32's config.json (written by diffusers 0.0.4; later keys take their defaults).
CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
               layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32,
               norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, attention_head_dim=None,
               act_fn="silu", time_embedding_type="positional", center_input_sample=False, mid_block_scale_factor=1)
CIFAR10_REDUCED = dict(CIFAR10, block_out_channels=(32, 64, 32, 32))
# Current name -> legacy name of the attention projections (diffusers' _convert_deprecated_attention_blocks
# maps the other way when it loads a state dict; group_norm keeps its name).
LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def build(config, seed):
    torch.manual_seed(seed)
    model = UNet2DModel(**config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def forward(model, x, t, labels):
    """out, plus the sinusoidal embedding and the block embedding that this very forward used."""
    seen = {}
    h1 = model.time_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("t_proj", o.clone()))
    h2 = model.down_blocks[0].register_forward_pre_hook(
        lambda m, a, kw: seen.__setitem__("emb", kw["temb"].clone()), with_kwargs=True)
    with torch.no_grad():
        out = model(x, t, class_labels=labels).sample
    h1.remove()
    h2.remove()
    return out, seen["t_proj"], seen["emb"]


def case(name, config, seed, safe=True):
    model = build(config, seed)
    g = torch.Generator().manual_seed(seed + 2)
    c, s = config["in_channels"], config["sample_size"]
    x = torch.randn(B, c, s, s, generator=g, dtype=torch.float32)
    labels = LABELS if config.get("num_class_embeds") else None
    out, t_proj, emb = forward(model, x, T, labels)
    out64, t_proj64, _ = forward(copy.deepcopy(model).double(), x.double(), T.double(), labels)
    assert t_proj64.dtype == torch.float32 and torch.equal(t_proj64, t_proj)
    assert out64.dtype == torch.float64
    io = {"x": x, "t": T.clone(), "t_proj": t_proj, "emb": emb, "out": out, "out_f64": out64}
    if labels is not None:
        io["labels"] = labels.clone()
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=safe)
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(d, "io.safetensors"),
              metadata={"made_by": f"golden/unet2d_reference.py, diffusers {diffusers.__version__}, "
                                   f"torch {torch.__version__}"})  # one key: a map's order is not kept
    reloaded = UNet2DModel.from_pretrained(d).eval()
    assert torch.equal(forward(reloaded, x, T, labels)[0], out), name
    n = sum(p.numel() for p in model.parameters())
    rel = ((out64 - out.double()).abs().max() / out64.abs().max()).item()
    print(f"{name}: {n} parameters, |out| max {out.abs().max():.4f}, f32 vs f64 max rel {rel:.2e}")
    return model, io


os.makedirs(OUT, exist_ok=True)
tiny, tiny_io = case("tiny", TINY, 20)
case("tiny_class", TINY_CLASS, 30, safe=False)
case("cifar10_reduced", CIFAR10_REDUCED, 40)

# tiny_legacy: tiny's state dict with the legacy attention names.
d = os.path.join(OUT, "tiny_legacy")
shutil.rmtree(d, ignore_errors=True)
tiny.save_pretrained(d)
paths = [n for n, m in tiny.named_modules() if getattr(m, "_from_deprecated_attn_block", False)]
legacy = {}
for key, value in tiny.state_dict().items():
    for p in paths:
        for new, old in LEGACY.items():
            if key.startswith(f"{p}.{new}."):
                key = f"{p}.{old}." + key[len(f"{p}.{new}."):]
    legacy[key] = value.contiguous()
assert not any(".to_q." in k or ".to_out." in k for k in legacy) and any(".proj_attn." in k for k in legacy)
save_file(legacy, os.path.join(d, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
shutil.copyfile(os.path.join(OUT, "tiny", "io.safetensors"), os.path.join(d, "io.safetensors"))
loaded, info = UNet2DModel.from_pretrained(d, output_loading_info=True)
assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
ref = tiny.state_dict()
assert list(loaded.state_dict()) == list(ref)
assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
assert torch.equal(forward(loaded.eval(), tiny_io["x"], T, None)[0], tiny_io["out"])
print(f"tiny_legacy: from_pretrained renamed {len(paths)} attention blocks and reproduces tiny's out")

# The full google/ddpm-cifar10-32 layout, without its 143 MB of weights.
torch.manual_seed(50)
full = UNet2DModel(**CIFAR10)
shapes = {"config": json.loads(full.to_json_string()),
          "num_parameters": sum(p.numel() for p in full.parameters()),
          "tensors": [[k, list(v.shape)] for k, v in full.state_dict().items()]}
with open(os.path.join(OUT, "cifar10_full_shapes.json"), "w") as f:
    json.dump(shapes, f, indent=1)
    f.write("\n")
print(f"cifar10_full: {shapes['num_parameters']} parameters, {len(shapes['tensors'])} tensors")
print("versions: Python", sys.version.split()[0], "torch", torch.__version__, "diffusers", diffusers.__version__,
      "numpy", numpy.__version__, "safetensors", safetensors.__version__)
