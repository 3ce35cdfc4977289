"""Golden DiT (Peebles & Xie 2023) checkpoints and forward outputs, written by the reference code
itself, for diffuq's src/model/dit.rs (tests/dit_golden.rs).

Two implementations of the same network, each imported unchanged:

  facebookresearch/DiT @ ed81ce2229091fd4ecc9a223645f95cf379d582b (2023-06-02)
      models.py (DiT, DiT_models, get_2d_sincos_pos_embed), read out of a git clone or bare
      mirror at that commit into a temporary directory and imported; it imports timm's
      PatchEmbed, Attention and Mlp (timm 1.0.31).
  diffusers 0.31.0: DiTTransformer2DModel (what `DiTPipeline` and the hub's facebook/DiT-XL-2-*
      `transformer/` folders load; their legacy `Transformer2DModel` configs with
      norm_type "ada_norm_zero" are remapped to it by diffusers).

Cases (golden/dit/<case>/):
  tiny/             DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2,
                    num_heads=2, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10,
                    learn_sigma=True) built under torch.manual_seed(80). initialize_weights()
                    zeroes every adaLN_modulation.1 and final_layer.linear and every Linear bias;
                    so that every parameter reaches the output, each all-zero parameter then gets
                    0.05 * randn (0.2 for final_layer.linear; seeded generator). pos_embed (the
                    fixed sin-cos table, a state-dict entry) is kept as made.
                    config.json   the constructor arguments plus "architecture": "dit"
                    model.pt      torch.save(model.state_dict()): the layout of the released
                                  DiT-XL-2-256x256.pt / DiT-XL-2-512x512.pt (a plain state dict)
  diffusers_tiny/   the SAME weights renamed into DiTTransformer2DModel(num_attention_heads=2,
                    attention_head_dim=32, in_channels=4, out_channels=8, num_layers=2,
                    sample_size=8, patch_size=2, num_embeds_ada_norm=10; norm_eps left at its
                    default 1e-5, as the hub's converted DiT configs) by load_state_dict(strict=True)
                    under the names listed in TO_DIFFUSERS (qkv split into to_q/to_k/to_v; the time
                    MLP and label table copied into every block's norm1.emb, as diffusers' own
                    conversion script does), then block 1's copy of the time MLP and label table
                    moved by 0.05 * randn, so that the per-block embeddings diffusers recomputes
                    differ and a loader that used block 0's everywhere would fail.
                    Written with save_pretrained (config.json + diffusion_pytorch_model.safetensors).
                    diffusers' DiT is not numerically facebook's: its Timesteps use
                    downscale_freq_shift=1 (frequencies 10000^(-k/(half-1)), facebook's
                    10000^(-k/half)) and its feed-forward LayerNorm (norm3) takes norm_eps (1e-5;
                    facebook 1e-6). On the unperturbed conversion the two outputs differ by the
                    printed "diffusers vs facebook" amount; each case is compared with its own
                    library.

Each case's io.safetensors:
    x        (4, 4, 8, 8) float32, standard normal (seeded generator)
    t        (4,) float32, [0.0, 17.5, 500.25, 999.0]
    labels   (4,) int64, [7, 10, 0, 9]; 10 = num_classes is the classifier-free-guidance null class
             (the label table's extra row)
    t_freq   (4, 256) float32, the sinusoid this forward made (tiny: TimestepEmbedder.
             timestep_embedding; diffusers_tiny: block 0's Timesteps)
    c        (4, 64) float32, the conditioning t_emb + y_emb (diffusers_tiny: block 0's, which the
             final layer uses)
    feat     (4, 16, 64) float32, the input of final_layer.linear (diffusers: proj_out_2): the
             modulated, normalised tokens
    out      (4, 8, 8, 8) float32, model(x, t, y) in eval mode under no_grad
    out_f64  (4, 8, 8, 8) float64, the same model cast with .double(), fed float64 x and t. DiT's
             timestep_embedding always returns float32, so for tiny a forward pre-hook on
             t_embedder.mlp casts that float32 sinusoid to float64 (diffusers casts it itself).

Shapes (no weights): xl2_256_shapes.json and xl2_512_shapes.json: DiT_models['DiT-XL/2'](input_size=
32 / 64) (the released 256x256 and 512x512 models: latent 32 / 64, 4 channels, learn_sigma, 1000
classes + the null row) built on the meta device: its config, the parameter count and every
state-dict [name, shape] in order.

Pinned: Python 3.11.7, torch 2.15.0 (CPU, one thread), timm 1.0.31, diffusers 0.31.0, numpy 1.26.4,
safetensors 0.8.0.
Run (from the repository root; a clone or a bare mirror both work):
  git clone https://github.com/facebookresearch/DiT /tmp/DiT
  python golden/dit_reference.py /tmp/DiT
"""
import copy
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import diffusers
import numpy
import safetensors
import timm
import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import save_file

COMMIT = "ed81ce2229091fd4ecc9a223645f95cf379d582b"
OUT = "golden/dit"
T = torch.tensor([0.0, 17.5, 500.25, 999.0], dtype=torch.float32)
LABELS = torch.tensor([7, 10, 0, 9], dtype=torch.int64)
TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=2,
            mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)

if len(sys.argv) != 2:
    sys.exit(f"usage: python {sys.argv[0]} /path/to/DiT-clone")
repo = sys.argv[1]
torch.set_num_threads(1)
print("python", sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__,
      "diffusers", diffusers.__version__, "numpy", numpy.__version__, "safetensors",
      safetensors.__version__)

tmp = tempfile.mkdtemp(prefix="diffuq-dit-ref-")
src = subprocess.run(["git", "--git-dir", os.path.join(repo, ".git") if os.path.isdir(
    os.path.join(repo, ".git")) else repo, "show", f"{COMMIT}:models.py"], check=True,
    capture_output=True).stdout
with open(os.path.join(tmp, "models.py"), "wb") as fh:
    fh.write(src)
sys.path.insert(0, tmp)
dit_models = importlib.import_module("models")


def write_io(d, io, made_by):
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(d, "io.safetensors"),
              metadata={"made_by": made_by})


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


# ---- facebookresearch/DiT ------------------------------------------------------------------
torch.manual_seed(80)
model = dit_models.DiT(**TINY)
g = torch.Generator().manual_seed(81)
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.abs().max() == 0:
            s = 0.2 if name.startswith("final_layer.linear") else 0.05
            p.add_(s * torch.randn(p.shape, generator=g))
model.eval()
assert model.y_embedder.embedding_table.weight.shape[0] == TINY["num_classes"] + 1
x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(82), dtype=torch.float32)


def dit_forward(m, x, t):
    seen = {}
    hooks = [
        m.t_embedder.mlp.register_forward_pre_hook(lambda mod, a: seen.__setitem__("t_freq", a[0].clone()),
                                                prepend=True),
        m.blocks[0].register_forward_pre_hook(lambda mod, a: seen.__setitem__("c", a[1].clone())),
        m.final_layer.linear.register_forward_pre_hook(lambda mod, a: seen.__setitem__("feat", a[0].clone())),
    ]
    with torch.no_grad():
        out = m(x, t, LABELS)
    for h in hooks:
        h.remove()
    return out, seen


out, seen = dit_forward(model, x, T)
m64 = copy.deepcopy(model).double()
m64.t_embedder.mlp.register_forward_pre_hook(lambda mod, a: (a[0].double(),))
out64, seen64 = dit_forward(m64, x.double(), T.double())
assert seen64["t_freq"].dtype == torch.float32 and torch.equal(seen64["t_freq"], seen["t_freq"])
assert torch.equal(seen["t_freq"], dit_models.TimestepEmbedder.timestep_embedding(T, 256))
d = os.path.join(OUT, "tiny")
shutil.rmtree(d, ignore_errors=True)
os.makedirs(d)
state = model.state_dict()
torch.save({k: v.contiguous() for k, v in state.items()}, os.path.join(d, "model.pt"))
with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(dict(architecture="dit", **TINY), f, indent=1)
    f.write("\n")
write_io(d, dict(x=x, t=T.clone(), labels=LABELS.clone(), t_freq=seen["t_freq"], c=seen["c"],
                 feat=seen["feat"], out=out, out_f64=out64),
         f"golden/dit_reference.py, facebookresearch/DiT {COMMIT[:8]}, timm {timm.__version__}, "
         f"torch {torch.__version__}")
saved_cfg = json.load(open(os.path.join(d, "config.json")))
assert saved_cfg.pop("architecture") == "dit"
reloaded = dit_models.DiT(**saved_cfg)
reloaded.load_state_dict(torch.load(os.path.join(d, "model.pt")))
assert torch.equal(dit_forward(reloaded.eval(), x, T)[0], out)
n = sum(p.numel() for p in model.parameters())
print(f"tiny: {n} parameters, {len(state)} tensors, out {tuple(out.shape)}, |out| max "
      f"{out.abs().max():.4f}, f32 vs f64 max rel {rel(out, out64):.2e}")

# ---- diffusers DiTTransformer2DModel, the same weights -------------------------------------
D = TINY["hidden_size"]


def to_diffusers(sd, depth):
    """facebook state dict -> DiTTransformer2DModel state dict (names only; qkv split in three)."""
    out = {
        "pos_embed.proj.weight": sd["x_embedder.proj.weight"],
        "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
        "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
        "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
        "proj_out_2.weight": sd["final_layer.linear.weight"],
        "proj_out_2.bias": sd["final_layer.linear.bias"],
    }
    for i in range(depth):
        b, f = f"transformer_blocks.{i}.", f"blocks.{i}."
        emb = b + "norm1.emb."
        for w in ["weight", "bias"]:
            out[emb + f"timestep_embedder.linear_1.{w}"] = sd[f"t_embedder.mlp.0.{w}"]
            out[emb + f"timestep_embedder.linear_2.{w}"] = sd[f"t_embedder.mlp.2.{w}"]
            out[b + f"norm1.linear.{w}"] = sd[f + f"adaLN_modulation.1.{w}"]
            q, k, v = sd[f + f"attn.qkv.{w}"].chunk(3, dim=0)
            out[b + f"attn1.to_q.{w}"], out[b + f"attn1.to_k.{w}"], out[b + f"attn1.to_v.{w}"] = q, k, v
            out[b + f"attn1.to_out.0.{w}"] = sd[f + f"attn.proj.{w}"]
            out[b + f"ff.net.0.proj.{w}"] = sd[f + f"mlp.fc1.{w}"]
            out[b + f"ff.net.2.{w}"] = sd[f + f"mlp.fc2.{w}"]
        out[emb + "class_embedder.embedding_table.weight"] = sd["y_embedder.embedding_table.weight"]
    return {k: v.clone() for k, v in out.items()}


DCFG = dict(num_attention_heads=TINY["num_heads"], attention_head_dim=D // TINY["num_heads"],
            in_channels=4, out_channels=8, num_layers=TINY["depth"], sample_size=TINY["input_size"],
            patch_size=TINY["patch_size"], num_embeds_ada_norm=TINY["num_classes"])
dmodel = DiTTransformer2DModel(**DCFG)
dmodel.load_state_dict(to_diffusers(state, TINY["depth"]), strict=True)
dmodel.eval()


def diffusers_forward(m, x, t):
    seen = {}
    emb = m.transformer_blocks[0].norm1.emb
    hooks = [
        emb.timestep_embedder.register_forward_pre_hook(
            lambda mod, a: seen.setdefault("t_freq", a[0].clone())),
        emb.register_forward_hook(lambda mod, a, o: seen.setdefault("c", o.clone())),
        m.proj_out_2.register_forward_pre_hook(lambda mod, a: seen.__setitem__("feat", a[0].clone())),
    ]
    with torch.no_grad():
        out = m(x, t, LABELS, return_dict=False)[0]
    for h in hooks:
        h.remove()
    return out, seen


same, _ = diffusers_forward(dmodel, x, T)
print(f"diffusers vs facebook on the same weights: max rel {rel(same, out):.2e} "
      "(downscale_freq_shift=1 and norm3 eps 1e-5)")
with torch.no_grad():
    e1 = dmodel.transformer_blocks[1].norm1.emb
    for p in [e1.timestep_embedder.linear_1.weight, e1.timestep_embedder.linear_2.bias,
              e1.class_embedder.embedding_table.weight]:
        p.add_(0.05 * torch.randn(p.shape, generator=g))
dout, dseen = diffusers_forward(dmodel, x, T)
dout64, _ = diffusers_forward(copy.deepcopy(dmodel).double(), x.double(), T.double())
assert dout64.dtype == torch.float64
d = os.path.join(OUT, "diffusers_tiny")
shutil.rmtree(d, ignore_errors=True)
dmodel.save_pretrained(d)
write_io(d, dict(x=x, t=T.clone(), labels=LABELS.clone(), t_freq=dseen["t_freq"], c=dseen["c"],
                 feat=dseen["feat"], out=dout, out_f64=dout64),
         f"golden/dit_reference.py, diffusers {diffusers.__version__} DiTTransformer2DModel, "
         f"torch {torch.__version__}")
back = DiTTransformer2DModel.from_pretrained(d).eval()
assert torch.equal(diffusers_forward(back, x, T)[0], dout)
names = sorted(safetensors.safe_open(os.path.join(d, "diffusion_pytorch_model.safetensors"), "pt").keys())
print(f"diffusers_tiny: {sum(p.numel() for p in dmodel.parameters())} parameters, {len(names)} tensors, "
      f"|out| max {dout.abs().max():.4f}, f32 vs f64 max rel {rel(dout, dout64):.2e}, "
      f"vs the unperturbed conversion {rel(dout, same):.2e}")

# ---- the released XL/2 layouts, meta device ---------------------------------------------------
for name, size in [("xl2_256", 32), ("xl2_512", 64)]:
    with torch.device("meta"):
        full = dit_models.DiT_models["DiT-XL/2"](input_size=size)
    cfg = dict(architecture="dit", input_size=size, patch_size=full.patch_size, in_channels=full.in_channels,
               hidden_size=full.pos_embed.shape[-1], depth=len(full.blocks), num_heads=full.num_heads,
               mlp_ratio=4.0, class_dropout_prob=full.y_embedder.dropout_prob,
               num_classes=full.y_embedder.num_classes, learn_sigma=full.learn_sigma)
    shapes = {"config": cfg, "num_parameters": sum(p.numel() for p in full.parameters()),
              "tensors": [[k, list(v.shape)] for k, v in full.state_dict().items()]}
    with open(os.path.join(OUT, f"{name}_shapes.json"), "w") as f:  # one tensor a line
        f.write('{"config": %s,\n"num_parameters": %d,\n"tensors": [\n%s\n]}\n' % (
            json.dumps(cfg), shapes["num_parameters"], ",\n".join(json.dumps(e) for e in shapes["tensors"])))
    assert json.load(open(os.path.join(OUT, f"{name}_shapes.json"))) == shapes
    print(f"{name}: {shapes['num_parameters']} parameters, {len(shapes['tensors'])} tensors")
shutil.rmtree(tmp)
