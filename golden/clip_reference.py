"""Golden CLIP ViT image towers, embeddings and preprocessing for diffuq's src/features/clip.rs
(tests/clip_golden.rs), written by the reference libraries themselves.

GU (Jazbec et al. 2025) computes its semantic likelihood on CLIP ViT-B/32 image embeddings: its
release (`semantic_likelihood.py`) calls OpenAI's `clip.load("ViT-B/32")`, runs every generated PNG
through the returned `preprocess` and `model.encode_image`, and keeps the raw (un-normalised) 512-d
embeddings. This script imports, unchanged:

  openai/CLIP @ d05afc436d78f1c48dc0dbf8e5980a9d471f35f6: clip/clip.py (`load`, `_transform`: the
      exact preprocess GU uses), clip/model.py (`CLIP`, `build_model`, `convert_weights`) and what
      they import (simple_tokenizer.py + its vocabulary; ftfy, regex, packaging, tqdm);
  open_clip 3.3.0 (`open_clip.model.CLIP`, `CLIPVisionCfg`, `CLIPTextCfg`,
      `push_to_hf_hub.save_config_for_hf`, `create_model("local-dir:...")`, `create_model` on meta);
  transformers 5.24.0 (`CLIPVisionModelWithProjection`, `CLIPModel`, `save_pretrained`).

Random-init tiny towers (every parameter reaches the output: LayerNorm affines and the
zero-initialised biases are perturbed with a seeded generator), all at image_size 32, patch 8 (a
4x4 grid + the class token = 17 tokens), 2 layers:

  golden/clip/openai_tiny/model.pt
      OpenAI `clip.model.CLIP(embed_dim=16, image_resolution=32, vision_layers=2, vision_width=128,
      vision_patch_size=8, context_length=8, vocab_size=64, transformer_width=64,
      transformer_heads=1, transformer_layers=1)` (vision heads = width // 64 = 2, QuickGELU), after
      `convert_weights` (float16 convs, linears, attention and projections; LayerNorms and
      embeddings float32, as `build_model` leaves the released weights), traced with
      `torch.jit.trace_module(model, {"encode_image": ...})` and saved with `torch.jit.save`: a
      TorchScript archive like the released `ViT-B-32.pt` (its `*.debug_pkl` source-location
      records, which name this machine's temp paths, are removed; torch.jit.load does not need
      them). No config file: like OpenAI's
      `build_model`, the reader infers the tower from the tensor shapes. The reference is
      `clip.load(model.pt, device="cpu")` (jit=False: build_model of the archive's state dict,
      then .float() on the CPU) and its `preprocess` (bicubic resize of the shorter side to 32,
      centre crop 32).
  golden/clip/open_clip_tiny/{open_clip_pytorch_model.bin, open_clip_model.safetensors,
      open_clip_config.json}
      open_clip `CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(width=64, layers=2, head_width=32
      (2 heads), mlp_ratio=4, patch_size=8, image_size=32), text_cfg=CLIPTextCfg(context_length=8,
      vocab_size=64, width=32, heads=2, layers=1), quick_gelu=False)`: nn.GELU (erf) blocks. The
      full state dict (text tower included, as open_clip's hub files) saved with torch.save and
      safetensors' save_file; the config with open_clip's own `save_config_for_hf`. The reference
      model is re-created from the directory by `open_clip.create_model("local-dir:<dir>")`.
  golden/clip/hf_vision_tiny/{config.json, model.safetensors}
      transformers `CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=64,
      intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=32,
      patch_size=8, projection_dim=16, hidden_act="quick_gelu"))`, `save_pretrained`;
      reference `image_embeds`.
  golden/clip/hf_clip_tiny/{config.json, model.safetensors}
      transformers `CLIPModel(CLIPConfig(text_config=tiny, vision_config=CLIPVisionConfig(
      hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
      image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6), projection_dim=12))`,
      `save_pretrained`; reference `get_image_features` (the nested vision_config, the top-level
      projection_dim, erf GELU and a non-default eps).
  Each case directory's io.safetensors:
      u8         uint8 (3, 3, 40, 48): random RGB images (N, C, H, W); the preprocessing
                 downsamples them (shorter side 40 -> 32; antialiased bicubic) and crops 32
      pre        float32 (3, 3, 32, 32): OpenAI's `_transform(32)` of the PIL images
      embed      float32 (3, D): the reference embedding of `pre` (encode_image / image_embeds /
                 get_image_features), eval mode, no_grad, float32 on the CPU
      samples    float32 (2, 3, 24, 24): diffusion-like samples in [-1.2, 1.2] (N(0, 0.6), clipped)
      samples_u8 uint8 (2, 3, 24, 24): GU's conversion (ADM/main.py + utils.inverse_data_transform):
                 torch.clamp((x + 1.0) / 2.0, 0, 1) in float32, then numpy (img * 255).astype(uint8)
                 (truncation), as the PNGs GU embeds
      samples_pre, samples_embed   the same for the samples (upsampled 24 -> 32)

  golden/clip/preprocess.safetensors  OpenAI's `_transform(224)` (GU's preprocess) on PIL images
      of random uint8 pixels, per input `<name>`:
        rgb32 (2, 3, 32, 32), rgb64 (2, 3, 64, 64), rgb40x48 (2, 3, 40, 48) [H x W], rgb48x40
        (1, 3, 48, 40), gray28 (1, 1, 28, 28) (an 'L' image: `_convert_image_to_rgb` repeats it)
      <name>.u8          the input pixels (N, C, H, W)
      <name>.resized_u8  (N, 3, 224, 224) uint8: PIL's bicubic Resize + CenterCrop + RGB output,
                         before ToTensor. The script asserts that the float preprocess output equals
                         Normalize(ToTensor(resized_u8)) bit for bit, so this encodes it exactly.
      rgb40x48.pre       (1, 3, 224, 224) float32: the full preprocess output of the first input, as is
      open_clip_equal    int: 1 if open_clip's own `image_transform` (224, bicubic, shortest, OpenAI
                         mean/std) gave the same tensors bit for bit on every input
  golden/clip/vit_b32_shapes.json  the full ViT-B/32 image tower without weights (meta device):
      open_clip `create_model("ViT-B-32")` `visual.*` state-dict names and shapes (equal to OpenAI's
      `CLIP(512, 224, 12, 768, 32, ...)` visual names, asserted), the transformers
      `CLIPVisionModelWithProjection(CLIPVisionConfig())` names and shapes (the defaults are
      openai/clip-vit-base-patch32's vision tower), and the parameter count.

Pinned: Python 3.11.7, torch 2.15.0 (CPU, one thread), open_clip 3.3.0, transformers 5.24.0,
torchvision 0.29.2, Pillow 13.0.0, numpy 1.26.4, safetensors 0.8.0.
Run (from the repository root; a clone or a bare mirror of openai/CLIP both work; ~20 s):
  git clone https://github.com/openai/CLIP /tmp/openai-clip
  python golden/clip_reference.py /tmp/openai-clip
Re-running reproduces every tensor bit for bit; the bytes of openai_tiny/model.pt differ (its
random `.data/serialization_id`).
"""
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import open_clip
import PIL
import safetensors
import torch
import torchvision
import transformers
from PIL import Image
from open_clip.model import CLIP as OpenClipCLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors.torch import save_file

COMMIT = "d05afc436d78f1c48dc0dbf8e5980a9d471f35f6"
OUT = "golden/clip"

if len(sys.argv) != 2:
    sys.exit(f"usage: python {sys.argv[0]} /path/to/openai-CLIP-clone")
repo = sys.argv[1]
torch.set_num_threads(1)
print("python", sys.version.split()[0], "torch", torch.__version__, "open_clip", open_clip.__version__,
      "transformers", transformers.__version__, "torchvision", torchvision.__version__, "Pillow",
      PIL.__version__, "numpy", np.__version__, "safetensors", safetensors.__version__)

tmp = tempfile.mkdtemp(prefix="diffuq-clip-ref-")
archive = subprocess.run(["git", "-C", repo, "archive", "--format=tar", COMMIT, "clip"], check=True,
                         capture_output=True).stdout
subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
sys.path.insert(0, tmp)
oa_clip = importlib.import_module("clip.clip")
oa_model = importlib.import_module("clip.model")

rng = np.random.default_rng(20261130)


def perturb(model, seed):
    """LayerNorm affines and every bias off their init (torch/transformers init them to 1/0), so
    that every parameter reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or (".ln" in name or "norm" in name or name.startswith("ln")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def pil_images(u8):
    """(N, C, H, W) uint8 -> PIL images (RGB, or L for one channel) as the release opens PNGs."""
    out = []
    for a in u8:
        hwc = a.transpose(1, 2, 0)
        out.append(Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc))
    return out


def preprocess_all(transform, u8):
    return torch.stack([transform(im) for im in pil_images(u8)])


def gu_to_uint8(x):
    """GU's ADM path: inverse_data_transform (torch, float32) then (img * 255).astype(np.uint8)."""
    x = torch.clamp((x + 1.0) / 2.0, 0.0, 1.0)
    return (x.numpy() * 255).astype(np.uint8)


def inputs():
    u8 = rng.integers(0, 256, size=(3, 3, 40, 48), dtype=np.uint8)
    samples = torch.from_numpy(np.clip(rng.normal(0, 0.6, size=(2, 3, 24, 24)), -1.2, 1.2)
                               .astype(np.float32))
    # Exact grid points and the range ends: -1 -> 0, 1 -> 255, 0 -> 127 (127.5 truncated).
    samples[0, 0, 0, :4] = torch.tensor([-1.0, 1.0, 0.0, -1.2])
    return u8, samples


def write_case(name, files, embed_fn, transform, meta):
    u8, samples = inputs()
    samples_u8 = gu_to_uint8(samples)
    assert samples_u8[0, 0, 0, :4].tolist() == [0, 255, 127, 0]
    pre = preprocess_all(transform, u8)
    spre = preprocess_all(transform, samples_u8)
    with torch.no_grad():
        embed = embed_fn(pre).float()
        sembed = embed_fn(spre).float()
    io = {"u8": torch.from_numpy(u8), "pre": pre, "embed": embed, "samples": samples,
          "samples_u8": torch.from_numpy(samples_u8), "samples_pre": spre, "samples_embed": sembed}
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(OUT, name, "io.safetensors"),
              metadata={"made_by": f"golden/clip_reference.py ({meta})"})
    sizes = sum(os.path.getsize(os.path.join(OUT, name, f)) for f in os.listdir(os.path.join(OUT, name)))
    print(f"{name}: embed {tuple(embed.shape)} |embed| max {embed.abs().max():.4f}; files {files}; "
          f"{sizes / 1e6:.2f} MB")


def fresh(name):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


os.makedirs(OUT, exist_ok=True)

# --- OpenAI CLIP, TorchScript archive (like ViT-B-32.pt), float16 weights --------------------
d = fresh("openai_tiny")
torch.manual_seed(1)
oa = perturb(oa_model.CLIP(16, 32, 2, 128, 8, 8, 64, 64, 1, 1), 2)
oa_model.convert_weights(oa)
assert oa.visual.conv1.weight.dtype == torch.float16 and oa.visual.ln_pre.weight.dtype == torch.float32
example = torch.zeros(1, 3, 32, 32, dtype=torch.float16)
traced = torch.jit.trace_module(oa.float(), {"encode_image": example.float()})
oa_model.convert_weights(oa)  # .float() above converted the eager model back
with torch.no_grad():
    for (n, p), (n2, q) in zip(traced.named_parameters(), oa.named_parameters()):
        assert n == n2
        p.data = q.data.clone()
torch.jit.save(traced, os.path.join(d, "model.pt"))
# Drop the archive's *.debug_pkl records (source locations, with this machine's temp paths);
# torch.jit.load does not need them.
with zipfile.ZipFile(os.path.join(d, "model.pt")) as zin:
    records = [(i, zin.read(i.filename)) for i in zin.infolist() if not i.filename.endswith(".debug_pkl")]
with zipfile.ZipFile(os.path.join(d, "model.pt"), "w", zipfile.ZIP_STORED) as zout:
    for info, data in records:
        zout.writestr(info, data)
sd = torch.jit.load(os.path.join(d, "model.pt")).state_dict()
assert sd["visual.conv1.weight"].dtype == torch.float16 and sd["visual.ln_post.weight"].dtype == torch.float32
ref, ref_pre = oa_clip.load(os.path.join(d, "model.pt"), device="cpu")
assert ref.visual.transformer.resblocks[0].attn.num_heads == 2 and ref.dtype == torch.float32
write_case("openai_tiny", ["model.pt"], ref.encode_image, ref_pre,
           f"openai/CLIP {COMMIT[:8]} clip.load + encode_image, torch {torch.__version__}")

# --- open_clip, state dict (.bin and .safetensors) + open_clip_config.json ---------------------
d = fresh("open_clip_tiny")
model_cfg = {"embed_dim": 16, "quick_gelu": False,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
torch.manual_seed(3)
oc = perturb(OpenClipCLIP(16, CLIPVisionCfg(**model_cfg["vision_cfg"]), CLIPTextCfg(**model_cfg["text_cfg"]),
                          quick_gelu=False), 4)
state = oc.state_dict()
torch.save(state, os.path.join(d, "open_clip_pytorch_model.bin"))
save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(d, "open_clip_model.safetensors"))
oc.visual.image_mean = open_clip.OPENAI_DATASET_MEAN
oc.visual.image_std = open_clip.OPENAI_DATASET_STD
save_config_for_hf(oc, __import__("pathlib").Path(d) / "open_clip_config.json", model_cfg)
ref = open_clip.create_model(f"local-dir:{d}").eval()
assert isinstance(ref.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
assert all(torch.equal(ref.state_dict()[k], v) for k, v in state.items())
write_case("open_clip_tiny", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"], ref.encode_image,
           oa_clip._transform(32), f"open_clip {open_clip.__version__} encode_image, torch {torch.__version__}")

# --- transformers CLIPVisionModelWithProjection ------------------------------------------------
d = fresh("hf_vision_tiny")
torch.manual_seed(5)
vcfg = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=32, patch_size=8, projection_dim=16,
                                     hidden_act="quick_gelu")
hv = perturb(transformers.CLIPVisionModelWithProjection(vcfg), 6)
hv.save_pretrained(d)
ref = transformers.CLIPVisionModelWithProjection.from_pretrained(d).eval()
write_case("hf_vision_tiny", ["config.json", "model.safetensors"],
           lambda x: ref(pixel_values=x).image_embeds, oa_clip._transform(32),
           f"transformers {transformers.__version__} CLIPVisionModelWithProjection, torch {torch.__version__}")

# --- transformers CLIPModel (nested vision_config, gelu, eps 1e-6) -----------------------------
d = fresh("hf_clip_tiny")
torch.manual_seed(7)
ccfg = transformers.CLIPConfig(
    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     vocab_size=64, max_position_embeddings=8),
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6),
    projection_dim=12)
hc = perturb(transformers.CLIPModel(ccfg), 8)
hc.save_pretrained(d)
ref = transformers.CLIPModel.from_pretrained(d).eval()


def hf_image_features(x):
    out = ref.get_image_features(pixel_values=x)
    return out if torch.is_tensor(out) else out.pooler_output


write_case("hf_clip_tiny", ["config.json", "model.safetensors"], hf_image_features, oa_clip._transform(32),
           f"transformers {transformers.__version__} CLIPModel.get_image_features, torch {torch.__version__}")

# --- GU's preprocess at 224 ---------------------------------------------------------------------
gu_pre = oa_clip._transform(224)
oc_pre = open_clip.image_transform(224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                   std=open_clip.OPENAI_DATASET_STD, interpolation="bicubic",
                                   resize_mode="shortest")
mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
resize_crop = torchvision.transforms.Compose(gu_pre.transforms[:3])  # Resize, CenterCrop, to RGB
pre_io = {}
same_as_open_clip = True
for name, shape in [("rgb32", (2, 3, 32, 32)), ("rgb64", (2, 3, 64, 64)), ("rgb40x48", (2, 3, 40, 48)),
                    ("rgb48x40", (1, 3, 48, 40)), ("gray28", (1, 1, 28, 28))]:
    u8 = rng.integers(0, 256, size=shape, dtype=np.uint8)
    full = preprocess_all(gu_pre, u8)
    resized = np.stack([np.asarray(resize_crop(im)).transpose(2, 0, 1) for im in pil_images(u8)])
    assert resized.shape == (shape[0], 3, 224, 224) and resized.dtype == np.uint8
    # The float output is Normalize(ToTensor(.)) of the resized uint8 image, bit for bit.
    again = (torch.from_numpy(resized).float().div(255) - mean) / std
    assert torch.equal(again, full), name
    same_as_open_clip &= torch.equal(preprocess_all(oc_pre, u8), full)
    pre_io[f"{name}.u8"] = torch.from_numpy(u8)
    pre_io[f"{name}.resized_u8"] = torch.from_numpy(resized)
    if name == "rgb40x48":
        pre_io[f"{name}.pre"] = full[:1]
pre_io["open_clip_equal"] = torch.tensor([int(same_as_open_clip)], dtype=torch.int64)
print("open_clip image_transform == OpenAI _transform:", same_as_open_clip)
save_file({k: v.contiguous() for k, v in pre_io.items()}, os.path.join(OUT, "preprocess.safetensors"),
          metadata={"made_by": f"golden/clip_reference.py (openai/CLIP {COMMIT[:8]} _transform(224), "
                               f"torchvision {torchvision.__version__}, Pillow {PIL.__version__})"})
print(f"preprocess.safetensors {os.path.getsize(os.path.join(OUT, 'preprocess.safetensors')) / 1e6:.2f} MB")

# --- The full ViT-B/32 image tower, names and shapes only --------------------------------------
with torch.device("meta"):
    oc_full = OpenClipCLIP(**open_clip.get_model_config("ViT-B-32"))
    oa_full = oa_model.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
    hf_full = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig())
oc_visual = [[k, list(v.shape)] for k, v in oc_full.state_dict().items() if k.startswith("visual.")]
oa_visual = [[k, list(v.shape)] for k, v in oa_full.state_dict().items() if k.startswith("visual.")]
assert sorted(oc_visual) == sorted(oa_visual)  # the same tensors (in another order)
hf_visual = [[k, list(v.shape)] for k, v in hf_full.state_dict().items()]
n_oc = sum(int(np.prod(s)) for _, s in oc_visual)
n_hf = sum(int(np.prod(s)) for _, s in hf_visual)
assert n_oc == n_hf, (n_oc, n_hf)
with open(os.path.join(OUT, "vit_b32_shapes.json"), "w") as f:  # one tensor a line
    f.write('{"open_clip_model": "ViT-B-32", "num_parameters": %d,\n"open_clip": [\n%s\n],\n'
            '"transformers": [\n%s\n]}\n' % (n_oc, ",\n".join(json.dumps(e) for e in oc_visual),
                                             ",\n".join(json.dumps(e) for e in hf_visual)))
json.load(open(os.path.join(OUT, "vit_b32_shapes.json")))
print(f"ViT-B/32 image tower: {n_oc} parameters, {len(oc_visual)} open_clip / {len(hf_visual)} transformers tensors")
shutil.rmtree(tmp)
