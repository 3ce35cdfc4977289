"""Reference timings for benches/metrics.rs, on the same machine and the same problem sizes:

  pytorch-fid 0.3.0 calculate_frechet_distance on 2048-d statistics of 3000 samples (best of 3)
  prdc 0.2 compute_prdc on 10k real x 10k generated 2048-d features, k = 3 (one run; sklearn
  pairwise_distances with prdc's n_jobs=8, float64)

The features follow the bench's law (x = z * s + shift, s_j = (1 + j/64)^-1/2), drawn with NumPy
rather than the bench's ChaCha8 stream: timings do not depend on the values.

Pinned: numpy 1.26.4, scipy 1.17.1, scikit-learn 1.9.1, pytorch-fid 0.3.0, prdc 0.2.
Run: python golden/bench_reference.py   (prints the timings quoted in the README)
"""
import sys
import time

import numpy as np
from prdc import compute_prdc
from pytorch_fid.fid_score import calculate_frechet_distance

D = 2048
rng = np.random.default_rng(0)
s = (1.0 + np.arange(D) / 64.0) ** -0.5


def feats(n, scale, shift):
    return rng.normal(size=(n, D)) * s * scale + shift


a, b = feats(3000, 1.0, 0.0), feats(3000, 1.1, 0.05)
mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
times = []
for _ in range(3):
    t0 = time.perf_counter()
    calculate_frechet_distance(mu1, s1, mu2, s2)
    times.append(time.perf_counter() - t0)
print("pytorch-fid FD 2048-d: best %.2f s of %s" % (min(times), ["%.2f" % t for t in times]))
sys.stdout.flush()

n = 10_000
real, fake = feats(n, 1.0, 0.0), feats(n, 1.05, 0.02)
t0 = time.perf_counter()
r = compute_prdc(real, fake, 3)
print("prdc %dx%d 2048-d: %.1f s" % (n, n, time.perf_counter() - t0), r)
