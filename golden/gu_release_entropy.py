"""Golden values for diffuq's `compat = "gu-release"` entropy (src/uq/gu.rs).

Re-computes, with NumPy, the arithmetic that GU's released `semantic_likelihood.py` applies to its
N x M x D float16 CLIP features (docs/released-code.md §2.5; written from that description, not
copied):
  v = clip(mean_m(c**2) - mean_m(c)**2, 0)        float16 arrays (numpy means of float16)
  H = 0.5 * sum_d log(v + gamma) + 0.5 * D * (log(2 pi) + 1),   gamma = 1e-3, float16 throughout
Features: N = 24 samples, M = 6 (MAP + 5 draws), D = 512, float16, drawn from a seeded generator
as raw-CLIP-like magnitudes (per-dimension scale 0.05..1.5, member spread 1e-3..0.3).
Writes golden/gu/release_entropy.npz: `features` (N, M, D) float16, `entropy` (N,) float64 (numpy 1.26 promotes the final python-float arithmetic; the f16 sum quantises it), and
`entropy_f64` (N,) — the exact f64 moment-matched entropy of the same features, for contrast.

Pinned: Python 3.11.7, numpy (as installed in the venv: see `numpy.__version__` printed below).
Run: python golden/gu_release_entropy.py   (from the repository root)
"""
import numpy as np

print("numpy", np.__version__)
rng = np.random.default_rng(20261123)
N, M, D = 24, 6, 512
scale = rng.uniform(0.05, 1.5, size=(1, 1, D))
centre = rng.normal(size=(N, 1, D)) * scale
spread = rng.uniform(1e-3, 0.3, size=(N, 1, 1))
feats = (centre + rng.normal(size=(N, M, D)) * spread * scale).astype(np.float16)
gamma = 1e-3

out = []
for i in range(N):
    c = feats[i]                                  # (M, D) float16
    v = np.clip(np.mean(c ** 2, axis=0) - np.mean(c, axis=0) ** 2, 0, None)
    h = 0.5 * np.sum(np.log(v + gamma)) + 0.5 * D * (np.log(2 * np.pi) + 1)
    out.append(h)
ent = np.array(out)
print("dtype of H:", ent.dtype)
c64 = feats.astype(np.float64)
v64 = c64.var(axis=1)
ent64 = 0.5 * np.log(2 * np.pi * np.e * (v64 + gamma)).sum(axis=1)
np.savez("golden/gu/release_entropy.npz", features=feats, entropy=ent,
         entropy_f64=ent64)
print("wrote golden/gu/release_entropy.npz", ent[:4], ent64[:4])
