"""Golden U-ViT checkpoints and forward outputs, written by the U-ViT repository's own code, for
diffuq's src/model/uvit.rs (tests/uvit_golden.rs).

The script reads the reference files at a pinned commit out of a git clone (or bare mirror) of
baofff/U-ViT and imports them unchanged:

  baofff/U-ViT @ ce551708dc9cde9818d2af7d84dfadfeb7bd9034 (2023-03-25; libs/ last changed in
      0935d807)  libs/__init__.py, libs/uvit.py (UViT, timestep_embedding, patchify/unpatchify,
      Attention, Block), libs/timm.py (Mlp, trunc_normal_); torch and einops only.

libs/uvit.py picks its attention kernel at import time (module global ATTENTION_MODE): 'flash'
(torch.nn.functional.scaled_dot_product_attention) under torch >= 2.0, else xformers, else
'math'. All three compute softmax(q k^T * scale) v; the script sets ATTENTION_MODE = 'math' after
the import, so the fixtures come from the plain-math branch (the one that reads qk_scale: the
flash branch ignores it and always scales by head_dim^-1/2). The release configs leave qk_scale
None, where the branches agree.

Every model is built by the reference UViT(**config) under a fixed torch.manual_seed. Its
initialisation (trunc_normal std 0.02 for every Linear, zero biases, unit LayerNorms) makes the
attention scores nearly uniform, which would hide a wrong head split; so, with a seeded
generator, every nn.Linear weight is redrawn as randn / sqrt(fan_in), every Linear bias, LayerNorm
weight - 1 and LayerNorm bias as 0.1 * randn, and pos_embed as 0.5 * randn (the patch-embedding
and final convs keep torch's default init, the label embedding its N(0, 1)). The state dict is
saved with torch.save (zip format), as the released imagenet{256,512}_uvit_huge.pth are.

Each case directory golden/uvit/<case>/ holds
    config.json      {"architecture": "uvit"} plus the UViT constructor's keyword arguments (what
                     UViT(**kwargs) got; the U-ViT configs' config.nnet without "name")
    model.pth        torch.save(model.state_dict())
    io.safetensors   x       (4, C, S, S) float32, standard normal (seeded generator)
                     t       (4,) float32, [0.0, 17.5, 999.0, 1000.0] (17.5: a fractional time;
                             1000 = t_continuous * N at T = 1, DPM-Solver's first step in the
                             U-ViT scripts)
                     labels  (4,) int64 (class-conditional case only; includes num_classes - 1,
                             the null class of classifier-free guidance in the releases)
                     t_emb   (4, D) float32, timestep_embedding(t, D), the input of time_embed
                     feat    (4, L, D) float32, the output of the final norm without the extra
                             tokens (what decoder_pred maps per token: GU's last-layer features)
                     pre_final (4, C, S, S) float32, unpatchify(decoder_pred(...)), the input of
                             final_layer (Identity, or the 3x3 conv when conv=True)
                     out     (4, C, S, S) float32, model(x, t, y), eval mode, no_grad
                     out_f64 (4, C, S, S) float64, the same model cast with .double(), fed x and t
                             as float64. The reference's sinusoid is float32 whatever the input
                             (timesteps.float()); a forward pre-hook on time_embed casts it to
                             float64 (needed only when time_embed is an MLP); nothing else changes.
Cases:
  class_tiny/       the released ImageNet models' options (qkv_bias False, mlp_time_embed False,
                    conv False, skip True, class-conditional with a null class) at img_size 8,
                    patch_size 2, in_chans 4, embed_dim 64, depth 5 (2 in_blocks, mid_block,
                    2 out_blocks with skip_linear), num_heads 2, num_classes 11
  conv_uncond_tiny/ the other branches: unconditional (num_classes -1: one extra token),
                    mlp_time_embed True, qkv_bias True, conv True (3x3 final_layer), mlp_ratio 2.5,
                    img_size 16, patch_size 4, in_chans 3, embed_dim 48, depth 3, num_heads 3
  noskip_tiny/      skip False (out_blocks without skip_linear), qk_scale 0.3 (math branch), depth
                    4 (still 2 + 1 + 2 blocks: depth // 2 each side), class-conditional, img_size 8,
                    patch_size 2, in_chans 4, embed_dim 32, num_heads 4, num_classes 5
  imagenet{256,512}_shapes.json  the released models' config.nnet (configs/imagenet256_uvit_huge.py,
                    configs/imagenet512_uvit_huge.py), model built on the meta device (no weights):
                    the config, the parameter count and every state-dict [name, shape] in order.

Pinned: Python 3.11.7, torch 2.15.0 (CPU, one thread), numpy 1.26.4, safetensors 0.8.0, einops 0.8.2.
Run (from the repository root; a clone or a bare mirror both work):
  git clone https://github.com/baofff/U-ViT /tmp/U-ViT
  python golden/uvit_reference.py /tmp/U-ViT
"""
import copy
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import einops
import numpy
import safetensors
import torch
from safetensors.torch import save_file

COMMIT = "ce551708dc9cde9818d2af7d84dfadfeb7bd9034"
FILES = ["__init__.py", "uvit.py", "timm.py"]
OUT = "golden/uvit"
T = torch.tensor([0.0, 17.5, 999.0, 1000.0], dtype=torch.float32)

if len(sys.argv) != 2:
    sys.exit(f"usage: python {sys.argv[0]} /path/to/U-ViT-clone")
repo = sys.argv[1]
torch.set_num_threads(1)
print("python", sys.version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__,
      "safetensors", safetensors.__version__, "einops", einops.__version__)

tmp = tempfile.mkdtemp(prefix="diffuq-uvit-ref-")
pkg = os.path.join(tmp, "libs")
os.makedirs(pkg)
for f in FILES:
    src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:libs/{f}"], check=True,
                         capture_output=True).stdout
    with open(os.path.join(pkg, f), "wb") as fh:
        fh.write(src)
sys.path.insert(0, tmp)
uvit = importlib.import_module("libs.uvit")
uvit.ATTENTION_MODE = "math"


def build(cfg, seed):
    torch.manual_seed(seed)
    model = uvit.UViT(**cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.LayerNorm):
                assert m.eps == 1e-5 and m.elementwise_affine
                m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))
        model.pos_embed.copy_(0.5 * torch.randn(model.pos_embed.shape, generator=g))
    return model.eval()


def forward(model, x, t, labels):
    """out, plus the sinusoid, the final norm's token features and final_layer's input."""
    seen = {}
    hooks = [
        model.time_embed.register_forward_pre_hook(lambda m, a: seen.__setitem__("t_emb", a[0].clone()),
                                                   prepend=True),
        model.norm.register_forward_hook(lambda m, a, o: seen.__setitem__("feat", o[:, model.extras:].clone())),
        model.final_layer.register_forward_pre_hook(lambda m, a: seen.__setitem__("pre_final", a[0].clone())),
    ]
    with torch.no_grad():
        out = model(x, t, labels)
    for h in hooks:
        h.remove()
    return out, seen


def as_float64(model):
    m = copy.deepcopy(model).double()
    m.time_embed.register_forward_pre_hook(lambda mod, a: (a[0].double(),))
    return m


def case(name, cfg, seed, labels=None):
    model = build(cfg, seed)
    state = model.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    g = torch.Generator().manual_seed(seed + 2)
    s, c = cfg["img_size"], cfg["in_chans"]
    x = torch.randn(len(T), c, s, s, generator=g, dtype=torch.float32)
    out, seen = forward(model, x, T, labels)
    out64, seen64 = forward(as_float64(model), x.double(), T.double(), labels)
    assert out64.dtype == torch.float64 and seen64["t_emb"].dtype == torch.float32
    assert torch.equal(seen["t_emb"], uvit.timestep_embedding(T, cfg["embed_dim"]))
    if not cfg.get("conv", True):
        assert torch.equal(seen["pre_final"], out)
    io = {"x": x, "t": T.clone(), "t_emb": seen["t_emb"], "feat": seen["feat"],
          "pre_final": seen["pre_final"], "out": out, "out_f64": out64}
    if labels is not None:
        io["labels"] = labels.clone()
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    torch.save({k: v.contiguous() for k, v in state.items()}, os.path.join(d, "model.pth"))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"architecture": "uvit", **cfg}, f, indent=1)
        f.write("\n")
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(d, "io.safetensors"),
              metadata={"made_by": f"golden/uvit_reference.py, U-ViT {COMMIT[:8]}, "
                                   f"torch {torch.__version__}, attention mode math"})
    # The saved files reproduce the reference output through the reference constructor.
    saved = json.load(open(os.path.join(d, "config.json")))
    saved.pop("architecture")
    reloaded = uvit.UViT(**saved)
    reloaded.load_state_dict(torch.load(os.path.join(d, "model.pth")))
    assert torch.equal(forward(reloaded.eval(), x, T, labels)[0], out), name
    n = sum(p.numel() for p in model.parameters())
    rel = ((out64 - out.double()).abs().max() / out64.abs().max()).item()
    print(f"{name}: {n} parameters, {len(state)} tensors, out {tuple(out.shape)}, |out| max "
          f"{out.abs().max():.4f}, f32 vs f64 max rel {rel:.2e}")


os.makedirs(OUT, exist_ok=True)
case("class_tiny", dict(
    img_size=8, patch_size=2, in_chans=4, embed_dim=64, depth=5, num_heads=2, mlp_ratio=4, qkv_bias=False,
    qk_scale=None, mlp_time_embed=False, num_classes=11, use_checkpoint=False, conv=False, skip=True),
    seed=80, labels=torch.tensor([7, 0, 10, 3], dtype=torch.int64))
case("conv_uncond_tiny", dict(
    img_size=16, patch_size=4, in_chans=3, embed_dim=48, depth=3, num_heads=3, mlp_ratio=2.5, qkv_bias=True,
    qk_scale=None, mlp_time_embed=True, num_classes=-1, use_checkpoint=False, conv=True, skip=True),
    seed=90)
case("noskip_tiny", dict(
    img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=4, num_heads=4, mlp_ratio=4, qkv_bias=False,
    qk_scale=0.3, mlp_time_embed=False, num_classes=5, use_checkpoint=False, conv=False, skip=False),
    seed=100, labels=torch.tensor([4, 1, 0, 2], dtype=torch.int64))

# config.nnet of configs/imagenet{256,512}_uvit_huge.py (ml_collections dicts, copied as values).
HUGE = dict(name="uvit", in_chans=4, embed_dim=1152, depth=28, num_heads=16, mlp_ratio=4, qkv_bias=False,
            mlp_time_embed=False, num_classes=1001, use_checkpoint=True, conv=False)
RELEASED = {
    "imagenet256": dict(HUGE, img_size=32, patch_size=2),
    "imagenet512": dict(HUGE, img_size=64, patch_size=4),
}
for name, nnet in RELEASED.items():
    kwargs = {k: v for k, v in nnet.items() if k != "name"}  # utils.get_nnet(name, **kwargs)
    with torch.device("meta"):
        full = uvit.UViT(**kwargs)
    shapes = {"config": nnet, "num_parameters": sum(p.numel() for p in full.parameters()),
              "tensors": [[k, list(v.shape)] for k, v in full.state_dict().items()]}
    with open(os.path.join(OUT, f"{name}_shapes.json"), "w") as f:  # one tensor a line
        f.write('{"config": %s,\n"num_parameters": %d,\n"tensors": [\n%s\n]}\n' % (
            json.dumps(nnet), shapes["num_parameters"], ",\n".join(json.dumps(e) for e in shapes["tensors"])))
    assert json.load(open(os.path.join(OUT, f"{name}_shapes.json"))) == shapes
    dp = full.decoder_pred
    print(f"{name}: {shapes['num_parameters']} parameters, {len(shapes['tensors'])} tensors, decoder_pred "
          f"{dp.in_features}->{dp.out_features} ({sum(p.numel() for p in dp.parameters())} parameters)")
shutil.rmtree(tmp)
