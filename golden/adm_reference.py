"""Golden ADM (guided-diffusion UNetModel) checkpoints and forward outputs, written by OpenAI's
guided-diffusion code itself, for diffuq's src/model/adm.rs (tests/adm_golden.rs).

The script reads the reference files at a pinned commit out of a git clone (or bare mirror) of
openai/guided-diffusion and imports them unchanged:

  openai/guided-diffusion @ 22e0df8183507e13a7813f8d38d51b072ca1e67c (2022-07-15)
      guided_diffusion/unet.py (UNetModel), nn.py (GroupNorm32, timestep_embedding, ...),
      fp16_util.py (convert_module_to_f16/f32), and script_util.py (model_and_diffusion_defaults,
      create_model: the flag -> constructor conversion, i.e. channel_mult defaults per image size,
      attention_resolutions "32,16,8" -> image_size // res, learn_sigma -> 6 output channels,
      class_cond -> NUM_CLASSES) with what it imports (gaussian_diffusion.py, respace.py,
      losses.py; torch and numpy only). fp16_util.py's `from . import logger` (used only by the
      fp16 training helpers) gets an empty stand-in module; nothing else is replaced.

Every model is built by the reference `create_model(**flags)` under a fixed torch.manual_seed;
then, so that every parameter matters, the zero-initialised convolutions (each ResBlock's
out_layers.3, each AttentionBlock's proj_out, the final out.2) get 0.05 * randn (0.2 for out.2)
and every GroupNorm weight and bias gets 0.1 * randn added (seeded generator). The state dict is
saved with torch.save (zip format), as guided-diffusion's released checkpoints are.

Each case directory golden/adm/<case>/ holds
    config.json      model_and_diffusion_defaults() updated with the case's flags (guided-diffusion
                     flag names; what create_model got), plus "num_classes" where the case shrinks
                     script_util.NUM_CLASSES (1000) to keep the label embedding small
    model.pt         torch.save(model.state_dict())
    io.safetensors   x       (3, 3, 16, 16) float32, standard normal (seeded generator)
                     t       (3,) float32, [0.0, 17.5, 999.0] (17.5: a fractional time)
                     labels  (3,) int64, [7, 0, 9] (class-conditional case only)
                     t_emb   (3, C) float32, timestep_embedding(t, C) as this forward made it
                     emb     (3, 4C) float32, the embedding handed to the blocks (time MLP [+ label])
                     feat    (3, C, 16, 16) float32, the input of the final conv out.2
                     out     (3, O, 16, 16) float32, model(x, t, y), eval mode, no_grad
                     out_f64 (3, O, 16, 16) float64, the same model cast with .double(), fed x as
                             float64. The reference cannot run in float64 as it stands (its
                             sinusoid is always float32, UNetModel.dtype stays float32, and
                             GroupNorm32 casts its input to float32 against float64 affines), so
                             for this output only: the f32 sinusoid is cast to f64 by a forward
                             pre-hook on time_embed, model.dtype is set to float64, and each
                             GroupNorm32 instance runs torch.nn.GroupNorm.forward (its float() cast
                             is the only thing GroupNorm32 adds).
Cases:
  imagenet64_tiny/  the released 64x64 model's flag set (class_cond, learn_sigma,
                    use_scale_shift_norm, resblock_updown, use_new_attention_order,
                    num_head_channels, dropout 0.1 (inactive in eval), cosine schedule) at
                    image_size 16, num_channels 32, channel_mult "1,1", num_res_blocks 1,
                    attention_resolutions "16,8" (ds 1 and 2; 2 heads of 16), num_classes 10
  legacy_tiny/      legacy attention order with num_heads 2 and num_heads_upsample 4,
                    conv Downsample/Upsample (no resblock_updown), no scale-shift, unconditional,
                    learn_sigma False, channel_mult "1,2" (attention at ds 2: 64 channels, heads of
                    32 down and 16 up), num_res_blocks 1, linear schedule.
                    Saved as guided-diffusion's fp16 sampling code holds it (model.convert_to_fp16():
                    every torso conv weight and bias float16, the rest float32); the reference
                    forward uses the same float16-rounded values in float32 (convert_to_fp32()).
  (GroupNorm32's 32 groups make 32 channels the least, so even these hold 0.37M / 0.70M
  parameters: 1.5 MB / 1.6 MB of model.pt.)
  imagenet{64,128,256,512}_shapes.json  the released checkpoints' flags (repository README),
                    model built on the meta device (no weights): the flags, the parameter count
                    and every state-dict [name, shape] in order.

Pinned: Python 3.11.7, torch 2.15.0 (CPU, one thread), numpy 1.26.4, safetensors 0.8.0.
Run (from the repository root; a clone or a bare mirror both work):
  git clone https://github.com/openai/guided-diffusion /tmp/guided-diffusion
  python golden/adm_reference.py /tmp/guided-diffusion
"""
import copy
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types

import numpy
import safetensors
import torch
from safetensors.torch import save_file

COMMIT = "22e0df8183507e13a7813f8d38d51b072ca1e67c"
FILES = ["__init__.py", "unet.py", "nn.py", "fp16_util.py", "script_util.py", "gaussian_diffusion.py",
         "respace.py", "losses.py"]
OUT = "golden/adm"
B = 3
T = torch.tensor([0.0, 17.5, 999.0], dtype=torch.float32)
LABELS = torch.tensor([7, 0, 9], dtype=torch.int64)

if len(sys.argv) != 2:
    sys.exit(f"usage: python {sys.argv[0]} /path/to/guided-diffusion-clone")
repo = sys.argv[1]
torch.set_num_threads(1)
print("python", sys.version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__,
      "safetensors", safetensors.__version__)

tmp = tempfile.mkdtemp(prefix="diffuq-adm-ref-")
pkg = os.path.join(tmp, "guided_diffusion")
os.makedirs(pkg)
for f in FILES:
    src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:guided_diffusion/{f}"], check=True,
                         capture_output=True).stdout
    with open(os.path.join(pkg, f), "wb") as fh:
        fh.write(src)
sys.path.insert(0, tmp)
sys.modules["guided_diffusion.logger"] = types.ModuleType("guided_diffusion.logger")
gd_nn = importlib.import_module("guided_diffusion.nn")
gd_unet = importlib.import_module("guided_diffusion.unet")
script_util = importlib.import_module("guided_diffusion.script_util")
CREATE_ARGS = list(inspect.signature(script_util.create_model).parameters)


def flags_for(case_flags):
    cfg = script_util.model_and_diffusion_defaults()
    unknown = set(case_flags) - set(cfg) - {"num_classes"}
    assert not unknown, unknown
    cfg.update(case_flags)
    return cfg


def create(cfg):
    """The reference create_model, with NUM_CLASSES shrunk where the config says so."""
    old = script_util.NUM_CLASSES
    script_util.NUM_CLASSES = cfg.get("num_classes", old)
    try:
        return script_util.create_model(**{k: cfg[k] for k in CREATE_ARGS})
    finally:
        script_util.NUM_CLASSES = old


def build(cfg, seed):
    torch.manual_seed(seed)
    model = create(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, m in model.named_modules():
            zero_init = (name.endswith("out_layers.3") or name.endswith("proj_out") or name == "out.2")
            if zero_init:
                assert m.weight.abs().max() == 0, name
                s = 0.2 if name == "out.2" else 0.05
                m.weight.add_(s * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(s * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, torch.nn.GroupNorm):
                assert isinstance(m, gd_nn.GroupNorm32) and m.num_groups == 32 and m.eps == 1e-5
                m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def forward(model, x, t, labels):
    """out, plus the sinusoid, the block embedding and the final conv's input of this forward."""
    seen = {}
    hooks = [
        model.time_embed.register_forward_pre_hook(lambda m, a: seen.__setitem__("t_emb", a[0].clone()),
                                                  prepend=True),
        model.input_blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("emb", a[1].clone())),
        model.out[2].register_forward_pre_hook(lambda m, a: seen.__setitem__("feat", a[0].clone())),
    ]
    with torch.no_grad():
        out = model(x, t, labels)
    for h in hooks:
        h.remove()
    return out, seen


def as_float64(model):
    """The f64 twin (see the header: three adaptations, none of them to the arithmetic)."""
    m = copy.deepcopy(model).double()
    m.dtype = torch.float64
    m.time_embed.register_forward_pre_hook(lambda mod, a: (a[0].double(),))
    for sub in m.modules():
        if isinstance(sub, gd_nn.GroupNorm32):
            sub.forward = types.MethodType(torch.nn.GroupNorm.forward, sub)
    return m


def case(name, flags, seed, fp16=False):
    cfg = flags_for(flags)
    model = build(cfg, seed)
    if fp16:
        # What guided-diffusion's sampling scripts run with --use_fp16 True; save that state dict,
        # then compute the reference in float32 with the same (float16-rounded) values.
        model.convert_to_fp16()
        state = model.state_dict()
        model.convert_to_fp32()
        assert any(v.dtype == torch.float16 for v in state.values())
        assert any(v.dtype == torch.float32 for v in state.values())
    else:
        state = model.state_dict()
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    g = torch.Generator().manual_seed(seed + 2)
    s = cfg["image_size"]
    x = torch.randn(B, 3, s, s, generator=g, dtype=torch.float32)
    labels = LABELS if cfg["class_cond"] else None
    out, seen = forward(model, x, T, labels)
    out64, seen64 = forward(as_float64(model), x.double(), T.double(), labels)
    assert seen64["t_emb"].dtype == torch.float32 and torch.equal(seen64["t_emb"], seen["t_emb"])
    assert out64.dtype == torch.float64
    assert torch.equal(seen["t_emb"], gd_nn.timestep_embedding(T, cfg["num_channels"]))
    io = {"x": x, "t": T.clone(), "t_emb": seen["t_emb"], "emb": seen["emb"], "feat": seen["feat"],
          "out": out, "out_f64": out64}
    if labels is not None:
        io["labels"] = labels.clone()
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    torch.save({k: v.contiguous() for k, v in state.items()}, os.path.join(d, "model.pt"))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
        f.write("\n")
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(d, "io.safetensors"),
              metadata={"made_by": f"golden/adm_reference.py, guided-diffusion {COMMIT[:8]}, "
                                   f"torch {torch.__version__}"})
    # The saved files reproduce the reference output through the reference constructor.
    reloaded = create(json.load(open(os.path.join(d, "config.json"))))
    reloaded.load_state_dict(torch.load(os.path.join(d, "model.pt")))
    assert torch.equal(forward(reloaded.eval(), x, T, labels)[0], out), name
    n = sum(p.numel() for p in model.parameters())
    rel = ((out64 - out.double()).abs().max() / out64.abs().max()).item()
    print(f"{name}: {n} parameters, {len(state)} tensors, out {tuple(out.shape)}, |out| max "
          f"{out.abs().max():.4f}, f32 vs f64 max rel {rel:.2e}")


os.makedirs(OUT, exist_ok=True)
case("imagenet64_tiny", dict(
    image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,1", attention_resolutions="16,8",
    num_head_channels=16, class_cond=True, num_classes=10, learn_sigma=True, use_scale_shift_norm=True,
    resblock_updown=True, use_new_attention_order=True, dropout=0.1, noise_schedule="cosine",
    diffusion_steps=1000), seed=60)
case("legacy_tiny", dict(
    image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
    num_heads=2, num_heads_upsample=4, num_head_channels=-1, class_cond=False, learn_sigma=False,
    use_scale_shift_norm=False, resblock_updown=False, use_new_attention_order=False, dropout=0.0,
    noise_schedule="linear", diffusion_steps=1000), seed=70, fp16=True)

# The released checkpoints' MODEL_FLAGS (guided-diffusion README), layout only.
RELEASED = {
    "imagenet64": dict(attention_resolutions="32,16,8", class_cond=True, diffusion_steps=1000, dropout=0.1,
                       image_size=64, learn_sigma=True, noise_schedule="cosine", num_channels=192,
                       num_head_channels=64, num_res_blocks=3, resblock_updown=True,
                       use_new_attention_order=True, use_fp16=True, use_scale_shift_norm=True),
    "imagenet128": dict(attention_resolutions="32,16,8", class_cond=True, diffusion_steps=1000, image_size=128,
                        learn_sigma=True, noise_schedule="linear", num_channels=256, num_heads=4,
                        num_res_blocks=2, resblock_updown=True, use_fp16=True, use_scale_shift_norm=True),
    "imagenet256": dict(attention_resolutions="32,16,8", class_cond=True, diffusion_steps=1000, image_size=256,
                        learn_sigma=True, noise_schedule="linear", num_channels=256, num_head_channels=64,
                        num_res_blocks=2, resblock_updown=True, use_fp16=True, use_scale_shift_norm=True),
    "imagenet512": dict(attention_resolutions="32,16,8", class_cond=True, diffusion_steps=1000, image_size=512,
                        learn_sigma=True, noise_schedule="linear", num_channels=256, num_head_channels=64,
                        num_res_blocks=2, resblock_updown=True, use_fp16=False, use_scale_shift_norm=True),
}
for name, flags in RELEASED.items():
    cfg = flags_for(flags)
    with torch.device("meta"):
        full = create(cfg)
    shapes = {"flags": flags, "num_parameters": sum(p.numel() for p in full.parameters()),
              "tensors": [[k, list(v.shape)] for k, v in full.state_dict().items()]}
    with open(os.path.join(OUT, f"{name}_shapes.json"), "w") as f:  # one tensor a line
        f.write('{"flags": %s,\n"num_parameters": %d,\n"tensors": [\n%s\n]}\n' % (
            json.dumps(flags), shapes["num_parameters"], ",\n".join(json.dumps(e) for e in shapes["tensors"])))
    assert json.load(open(os.path.join(OUT, f"{name}_shapes.json"))) == shapes
    print(f"{name}: {shapes['num_parameters']} parameters, {len(shapes['tensors'])} tensors")
shutil.rmtree(tmp)
