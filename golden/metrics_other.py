"""Golden values for diffuq's realism, rarity, sparsification (AUSE/AURG) and rank metrics
(src/metrics/{realism,rarity,sparsification,rank}.rs; compared in tests/metrics_other.rs).

An independent NumPy/SciPy computation written from the formulas (not from diffuq's Rust):
  k-NN radius   r_i = k-th smallest distance from real i to the other reals
                = np.sort(cdist(real, real), axis=1)[:, k]   (self-distance 0 at index 0; prdc's
                  and Kynkaenniemi's convention)
  realism       R(g) = max over kept i of r_i / (d(g, r_i) + eps), kept = r_i <= np.percentile(r, 50)
                (or all); 'paper': Euclidean, pruned, eps 0; 'noprune': Euclidean, unpruned, eps 0;
                'kynkaat': squared distances, pruned, eps 1e-5; 'gu': squared, unpruned, eps 1e-5
                (Kynkaanniemi et al. 2019, Sec. 5; released variants per docs/released-code.md §2.6)
  rarity        min { r_i : d(g, r_i) < r_i }, +inf when in no ball (Han et al. 2023; GU App. D)
  sparsification (mono-uncertainty's compute_aucs convention, docs/released-code.md §1.6):
                for p = 0, 2, ..., 98: keep -u >= np.percentile(-u, p), RMSE of kept; append 0;
                oracle the same with -err**2; x = 0, 0.02, ..., 1; np.trapz;
                AUSE = trapz(method) - trapz(oracle); AURG = RMSE_all - trapz(method).
                'pooled' = all values of all images; 'per image' = mean over images;
                'zero rows' = pooled with 2 extra all-zero images (u = 0, err = 0) appended, the
                released code's over-allocation bug (b).
  spearman      scipy.stats.spearmanr(x, y).statistic
  combination   rankdata(rankdata(keep-first a) + rankdata(keep-first b)), rankdata 'average';
                keep-first = the score itself when low is kept (uncertainty, rarity), its negation
                when high is kept (realism) (GU App. C.5).

Data (seeded): real 300 x 16 and generated 200 x 16 features (150 from the real law scaled by 0.9,
50 from a wider, shifted law so that some fall outside every real ball); 4 maps of 3 x 8 x 8
uncertainty/error values (uncertainty correlated with |error|), and a tied copy of the uncertainty
(rounded to 1 decimal) to exercise the ties-included threshold rule.

Writes (np.savez, float64; scalars as 1-element arrays):
  golden/metrics/other_knn.npz     real, fake, radii_k3, realism_{paper,noprune,kynkaat,gu}_k3,
                                   realism_paper_k5, rarity_k3, rarity_k5
  golden/metrics/other_sparsification.npz  u, u_tied, err (4, 3, 8, 8); for each of
                                   {pooled, tied, perimage, zerorows}: ause, aurg; pooled/tied/
                                   zerorows also method, oracle (51,); perimage also ause_each,
                                   aurg_each (4,)
  golden/metrics/other_rank.npz    unc, realism, rarity (200,), spearman_{realism_rarity,
                                   unc_realism, unc_rarity}, combined_{unc_realism, unc_rarity,
                                   realism_rarity}

Pinned: Python 3.11.7, numpy 1.26.4, scipy 1.17.1 (printed below; scipy < 1.18).
Run: python golden/metrics_other.py   (from the repository root)
"""
import os

import numpy as np
import scipy
from scipy.spatial.distance import cdist
from scipy.stats import rankdata, spearmanr

print("numpy", np.__version__, "scipy", scipy.__version__)
rng = np.random.default_rng(20260517)
OUT = "golden/metrics"
os.makedirs(OUT, exist_ok=True)

# ---------------------------------------------------------------- realism and rarity
D = 16
real = rng.normal(size=(300, D))
fake = np.concatenate([rng.normal(size=(150, D)) * 0.9,
                       rng.normal(size=(50, D)) * 1.6 + 0.5])


def radii(k, squared):
    d = cdist(real, real, "sqeuclidean" if squared else "euclidean")
    return np.sort(d, axis=1)[:, k]


def realism(k, squared, prune, eps):
    r = radii(k, squared)
    d = cdist(fake, real, "sqeuclidean" if squared else "euclidean")
    keep = np.ones(r.shape, bool) if prune is None else r <= np.percentile(r, prune)
    return (r[keep][None, :] / (d[:, keep] + eps)).max(axis=1)


def rarity(k):
    r = radii(k, False)
    d = cdist(fake, real)
    return np.where(d < r[None, :], r[None, :], np.inf).min(axis=1)


knn = dict(
    real=real, fake=fake, radii_k3=radii(3, False),
    realism_paper_k3=realism(3, False, 50, 0.0),
    realism_noprune_k3=realism(3, False, None, 0.0),
    realism_kynkaat_k3=realism(3, True, 50, 1e-5),
    realism_gu_k3=realism(3, True, None, 1e-5),
    realism_paper_k5=realism(5, False, 50, 0.0),
    rarity_k3=rarity(3), rarity_k5=rarity(5),
)
print("outside every ball (k=3, k=5):", np.isinf(knn["rarity_k3"]).sum(),
      np.isinf(knn["rarity_k5"]).sum())
np.savez(f"{OUT}/other_knn.npz", **knn)

# ---------------------------------------------------------------- sparsification
err = rng.normal(size=(4, 3, 8, 8)) * rng.uniform(0.05, 0.5, size=(4, 1, 1, 1))
u = np.abs(err) * np.exp(0.7 * rng.normal(size=err.shape)) + 0.02 * rng.uniform(size=err.shape)
u_tied = np.round(u, 1)


def sparsification(u, err, intervals=50):
    u, se = u.ravel(), err.ravel() ** 2
    quants = [100.0 / intervals * t for t in range(intervals)]
    x = [1.0 / intervals * t for t in range(intervals + 1)]

    def curve(key):
        return [np.sqrt(se[key >= np.percentile(key, q)].mean()) for q in quants] + [0.0]

    m, o = curve(-u), curve(-se)
    am, ao = np.trapz(m, x=x), np.trapz(o, x=x)
    return dict(method=np.array(m), oracle=np.array(o), ause=np.array([am - ao]),
                aurg=np.array([np.sqrt(se.mean()) - am]))


sp = dict(u=u, u_tied=u_tied, err=err)
for name, (uu, ee) in dict(
        pooled=(u, err), tied=(u_tied, err),
        zerorows=(np.concatenate([u, np.zeros((2, 3, 8, 8))]),
                  np.concatenate([err, np.zeros((2, 3, 8, 8))]))).items():
    for key, val in sparsification(uu, ee).items():
        sp[f"{name}_{key}"] = val
each = [sparsification(u[i], err[i]) for i in range(u.shape[0])]
sp["perimage_ause_each"] = np.array([e["ause"][0] for e in each])
sp["perimage_aurg_each"] = np.array([e["aurg"][0] for e in each])
sp["perimage_ause"] = np.array([sp["perimage_ause_each"].mean()])
sp["perimage_aurg"] = np.array([sp["perimage_aurg_each"].mean()])
print("pooled AUSE/AURG", sp["pooled_ause"], sp["pooled_aurg"],
      "tied", sp["tied_ause"], sp["tied_aurg"])
np.savez(f"{OUT}/other_sparsification.npz", **sp)

# ---------------------------------------------------------------- ranks
unc = np.linalg.norm(fake, axis=1) + rng.normal(size=fake.shape[0])
rea, rar = knn["realism_paper_k3"], knn["rarity_k3"]


def combined(a, b):
    return rankdata(rankdata(a) + rankdata(b))


rk = dict(
    unc=unc, realism=rea, rarity=rar,
    spearman_realism_rarity=np.array([spearmanr(rea, rar).statistic]),
    spearman_unc_realism=np.array([spearmanr(unc, rea).statistic]),
    spearman_unc_rarity=np.array([spearmanr(unc, rar).statistic]),
    combined_unc_realism=combined(unc, -rea),
    combined_unc_rarity=combined(unc, rar),
    combined_realism_rarity=combined(-rea, rar),
)
print("spearman realism/rarity, unc/realism, unc/rarity:", rk["spearman_realism_rarity"],
      rk["spearman_unc_realism"], rk["spearman_unc_rarity"])
np.savez(f"{OUT}/other_rank.npz", **rk)
print("wrote", f"{OUT}/other_{{knn,sparsification,rank}}.npz")
