"""Golden values for diffuq's realism, rarity and precision/recall from the reference
implementations themselves (src/metrics/{realism,rarity,prdc}.rs; compared in
tests/realism_rarity_reference.rs).

golden/metrics_other.py checks realism and rarity against NumPy written from the formulas; this
script runs the authors' own code instead. It reads each file at a pinned commit out of a git
clone (or mirror) of its repository, imports it unchanged, and calls its functions:

  kynkaat/improved-precision-and-recall-metric @ ed8ee4cd2cbc73346b5aecddb0c8080aed5d021d
      precision_recall.py: ManifoldEstimator(..., clamp_to_percentile=50).evaluate(fake,
      return_realism=True) — the realism score exactly as experiments.py's
      compute_stylegan_realism builds it (the rest of that function generates StyleGAN images);
      ManifoldEstimator with clamp_to_percentile=None (unpruned); and
      knn_precision_recall_features(real, fake, nhood_sizes=[3]) for precision and recall.
  metodj/DIFF-UQ (GU) @ d650dc13424dbe1f0f0520699664695e43773fc4
      eval/precision_recall_torch.py: knn_precision_recall_features(real, fake, realism=True),
      GU's torch port (precision, recall and the unpruned realism its evaluation saves).
  hichoe95/Rarity-Score @ ec2ebd84619f4485ceecf2f02bfac071270c55bf
      src/rarity_score.py: MANIFOLD(real, fake).rarity(k) and .is_in_ball(k, fake) (for the
      indices of samples outside every real ball, which rarity() scores 0 and diffuq +inf).
  prdc 0.2 (clovaai/generative-evaluation-prdc, PyPI): compute_prdc(real, fake, 3), for the tie
      case only (prdc's general agreement is golden/metrics_fid_prdc.py's job).

TensorFlow. kynkaat's precision_recall.py imports TensorFlow 1.x (tf.placeholder, sessions) for
one thing only: DistanceBlock, which evaluates `batch_pairwise_distances` — squared Euclidean
distances max(|u|^2 - 2 u.v + |v|^2, 0) in float32 — as a TF graph. TF 1.x does not install on
Python 3.11, so when `import tensorflow` fails the script registers an empty stand-in module (the
functions that need it are never called) and replaces the module's DistanceBlock class with
NumpyDistanceBlock below: the same formula in NumPy float32. Everything else — ManifoldEstimator's
k-NN radii (np.partition, self counted as the 0th neighbour), the percentile pruning, the
in-manifold test `d <= radius`, the realism max r/(d + 1e-5), and knn_precision_recall_features'
body — is the reference code, run unchanged. The only difference from a TF run is the summation
order of the float32 dot products (rounding at ~1e-7 relative).

Data
  gauss   real 300 x 16, fake 200 x 16 (150 from the real law scaled by 0.9, 50 wider and shifted
          so that some leave every real ball), values rounded to float32 so both sides start from
          the same numbers. The script asserts that no fake-real distance lies within 1e-5
          (relative) of a radius and no radius within 1e-5 of the pruning threshold, so float32
          (kynkaat, GU) and float64 (diffuq) cannot disagree on a comparison.
  tie     2-D points with integer coordinates in [0, 9]^2, 40 distinct real, 30 distinct fake
          (some on real points): every squared distance is a small integer, exact in float32 and
          float64, so many fake points lie exactly on a real k-NN radius. Here prdc's strict '<'
          and Kynkaanniemi's '<=' give different precision/recall (asserted; the seed is the
          first from 0 for which both precision and recall differ).

Writes golden/metrics/realism_rarity_reference.npz (float64; scalars as 1-element arrays):
  {gauss,tie}_real, {gauss,tie}_fake                      features
  {gauss,tie}_realism_kynkaat         kynkaat, pruned at the 50th percentile (k = 3, eps 1e-5)
  {gauss,tie}_realism_kynkaat_noprune kynkaat, clamp_to_percentile=None
  {gauss,tie}_realism_gu              GU's eval/precision_recall_torch.py
  {gauss,tie}_precision_{kynkaat,gu}, {gauss,tie}_recall_{kynkaat,gu}
  {gauss,tie}_rarity_k{3,5}, {gauss,tie}_rarity_out_k{3,5}   rarity() and 1.0 where out of balls
  tie_prdc_{precision,recall,density,coverage}                prdc 0.2, k = 3

Pinned: Python 3.11.7, numpy 1.26.4, torch 2.15.0 (CPU), torchvision 0.29.2, scikit-learn 1.9.1,
scipy 1.17.1, prdc 0.2 (printed below).
Run (from the repository root):
  git clone https://github.com/kynkaat/improved-precision-and-recall-metric /tmp/kynkaat
  git clone https://github.com/metodj/DIFF-UQ /tmp/diff-uq
  git clone https://github.com/hichoe95/Rarity-Score /tmp/rarity
  python golden/realism_rarity_reference.py --kynkaat /tmp/kynkaat --gu /tmp/diff-uq \
      --rarity /tmp/rarity
"""
import argparse
import contextlib
import importlib
import io
import os
import subprocess
import sys
import tempfile
import types

import numpy as np
import sklearn
import torch
from prdc import compute_prdc

KYNKAAT = "ed8ee4cd2cbc73346b5aecddb0c8080aed5d021d"
GU = "d650dc13424dbe1f0f0520699664695e43773fc4"
RARITY = "ec2ebd84619f4485ceecf2f02bfac071270c55bf"
OUT = "golden/metrics/realism_rarity_reference.npz"

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--kynkaat", required=True, help="git clone of kynkaat/improved-precision-and-recall-metric")
ap.add_argument("--gu", required=True, help="git clone of metodj/DIFF-UQ")
ap.add_argument("--rarity", required=True, help="git clone of hichoe95/Rarity-Score")
args = ap.parse_args()

print("python", sys.version.split()[0], "numpy", np.__version__, "torch", torch.__version__,
      "sklearn", sklearn.__version__)
torch.set_num_threads(1)


def checkout(repo, commit, files, into):
    """Write `files` of `repo` at `commit` (`git show commit:path`) flat into directory `into`."""
    for path in files:
        src = subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], check=True,
                             capture_output=True).stdout
        with open(os.path.join(into, os.path.basename(path)), "wb") as f:
            f.write(src)


def quiet(fn, *a, **kw):
    """Call a reference function with its progress prints silenced."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **kw)


tmp = tempfile.mkdtemp(prefix="diffuq-refs-")
for name, repo, commit, files in [
    ("kynkaat", args.kynkaat, KYNKAAT, ["precision_recall.py"]),
    ("gu", args.gu, GU, ["eval/precision_recall_torch.py"]),
    ("rarity", args.rarity, RARITY, ["src/rarity_score.py", "src/improved_precision_recall.py"]),
]:
    d = os.path.join(tmp, name)
    os.makedirs(d)
    checkout(repo, commit, files, d)
    sys.path.insert(0, d)

gu = importlib.import_module("precision_recall_torch")
rarity_score = importlib.import_module("rarity_score")
try:
    import tensorflow  # noqa: F401  (TF 1.x would be used as is; see the docstring)
    kyn = importlib.import_module("precision_recall")
except ImportError:
    # The stand-in exists only while precision_recall.py is imported (torch probes for a real
    # tensorflow module later and must not find this one).
    sys.modules["tensorflow"] = types.ModuleType("tensorflow")
    kyn = importlib.import_module("precision_recall")
    del sys.modules["tensorflow"]


class NumpyDistanceBlock:
    """kynkaat's DistanceBlock without TensorFlow: `batch_pairwise_distances` in NumPy float32."""

    def __init__(self, num_features, num_gpus):
        self.num_features = num_features

    def pairwise_distances(self, U, V):
        U = np.asarray(U, np.float32)
        V = np.asarray(V, np.float32)
        norm_u = np.sum(np.square(U), 1).reshape(-1, 1)
        norm_v = np.sum(np.square(V), 1).reshape(1, -1)
        return np.maximum(norm_u - 2 * (U @ V.T) + norm_v, np.float32(0.0))


kyn.DistanceBlock = NumpyDistanceBlock


def references(real, fake):
    """Every reference number for one (real, fake) pair."""
    out = {}
    r32, f32 = real.astype(np.float32), fake.astype(np.float32)
    block = NumpyDistanceBlock(real.shape[1], 1)
    pruned = kyn.ManifoldEstimator(block, r32, clamp_to_percentile=50)
    out["realism_kynkaat"] = pruned.evaluate(f32, return_realism=True)[1]
    unpruned = kyn.ManifoldEstimator(block, r32, clamp_to_percentile=None)
    out["realism_kynkaat_noprune"] = unpruned.evaluate(f32, return_realism=True)[1]
    state = quiet(kyn.knn_precision_recall_features, r32, f32, nhood_sizes=[3])
    out["precision_kynkaat"] = state["precision"]
    out["recall_kynkaat"] = state["recall"]
    state, realism = quiet(gu.knn_precision_recall_features, r32, f32, realism=True)
    out["realism_gu"] = realism
    out["precision_gu"] = state["precision"]
    out["recall_gu"] = state["recall"]
    manifold = quiet(rarity_score.MANIFOLD, real_features=real, fake_features=fake)
    for k in (3, 5):
        scores, _ = quiet(manifold.rarity, k=k, samples=fake)
        _, _, out_ids = quiet(manifold.is_in_ball, k=k, samples=fake)
        outside = np.zeros(fake.shape[0])
        outside[out_ids] = 1.0
        out[f"rarity_k{k}"] = scores
        out[f"rarity_out_k{k}"] = outside
    # GU's torch port is kynkaat's code without the pruning: the same numbers (float32 rounding).
    assert np.allclose(out["realism_gu"], out["realism_kynkaat_noprune"], rtol=1e-5, atol=0)
    return {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in out.items()}


def sqdist(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def radii(real, k):
    return np.sort(sqdist(real, real), axis=1)[:, k]


fixture = {}

# ---------------------------------------------------------------- gauss
rng = np.random.default_rng(20260610)
D = 16
real = rng.normal(size=(300, D)).astype(np.float32).astype(np.float64)
fake = np.concatenate([rng.normal(size=(150, D)) * 0.9,
                       rng.normal(size=(50, D)) * 1.6 + 0.5]).astype(np.float32).astype(np.float64)
d2 = sqdist(fake, real)
for k in (3, 5):
    r2 = radii(real, k)
    margin = np.abs(d2 - r2[None, :]) / r2[None, :]
    assert margin.min() > 1e-5, f"near tie at k = {k}: {margin.min()}"
    thr = np.percentile(r2, 50)
    assert (np.abs(r2 - thr) / thr).min() > 1e-5, "radius near the pruning threshold"
    thr = np.percentile(np.sqrt(r2), 50)
    assert (np.abs(np.sqrt(r2) - thr) / thr).min() > 1e-5, "radius near the pruning threshold"
g = references(real, fake)
print("gauss: outside every ball (k = 3, 5):", int(g["rarity_out_k3"].sum()),
      int(g["rarity_out_k5"].sum()), " precision kynkaat/gu:", g["precision_kynkaat"][0],
      g["precision_gu"][0])
fixture.update({f"gauss_{k}": v for k, v in g.items()}, gauss_real=real, gauss_fake=fake)

# ---------------------------------------------------------------- tie


def grid_points(rng, n):
    cells = rng.choice(100, size=n, replace=False)
    return np.stack([cells // 10, cells % 10], 1).astype(np.float64)


for seed in range(1000):
    rng = np.random.default_rng(seed)
    real, fake = grid_points(rng, 40), grid_points(rng, 30)
    p = quiet(compute_prdc, real, fake, 3)
    t = references(real, fake)
    if p["precision"] != t["precision_kynkaat"][0] and p["recall"] != t["recall_kynkaat"][0]:
        break
else:
    raise SystemExit("no seed separates '<' from '<='")
ties = (sqdist(fake, real) == radii(real, 3)[None, :]).sum()
print(f"tie: seed {seed}, {ties} fake-real pairs exactly at a real 3-NN radius;",
      f"precision prdc {p['precision']} vs kynkaat {t['precision_kynkaat'][0]},",
      f"recall prdc {p['recall']} vs kynkaat {t['recall_kynkaat'][0]}")
assert t["precision_gu"][0] == t["precision_kynkaat"][0] and t["recall_gu"][0] == t["recall_kynkaat"][0]
fixture.update({f"tie_{k}": v for k, v in t.items()}, tie_real=real, tie_fake=fake)
fixture.update({f"tie_prdc_{k}": np.array([float(v)]) for k, v in p.items()})

os.makedirs(os.path.dirname(OUT), exist_ok=True)
np.savez(OUT, **fixture)
print("wrote", OUT, "with", len(fixture), "arrays")
