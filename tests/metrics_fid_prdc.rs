//! Fréchet distance, feature statistics and precision/recall/density/coverage against the tools
//! their users trust.
//!
//! Expected numbers: golden/metrics_fid_prdc.py (pinned numpy 1.26.4, scipy 1.17.1, scikit-learn
//! 1.9.1, pytorch-fid 0.3.0, prdc 0.2) wrote golden/metrics/{fid_64,fid_2048,prdc,
//! adm_reference_tiny}.npz by calling `pytorch_fid.fid_score.calculate_frechet_distance` on
//! `np.mean`/`np.cov` statistics, and `prdc.compute_prdc(real, fake, k)`.

use std::path::{Path, PathBuf};

use approx::assert_relative_eq;
use candle_core::{Device, Tensor};
use diffuq::metrics::fid::{
    frechet_distance, frechet_terms, trace_sqrt_product, FeatureStats, GaussianStats,
    ReferenceBatch, SqrtPath,
};
use diffuq::metrics::prdc::{prdc, PrdcDistance, PrdcOptions};
use diffuq::metrics::realism::Rows;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/metrics")
        .join(name)
}

struct Npz(Vec<(String, Tensor)>);

impl Npz {
    fn open(name: &str) -> Self {
        Self(Tensor::read_npz(golden(name)).unwrap())
    }
    fn get(&self, name: &str) -> Tensor {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("fixture array {name} missing"))
            .1
            .clone()
    }
    fn vec(&self, name: &str) -> Vec<f64> {
        self.get(name)
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    }
    fn scalar(&self, name: &str) -> f64 {
        self.vec(name)[0]
    }
    fn rows(&self, name: &str) -> (Vec<f64>, usize) {
        let t = self.get(name);
        let d = t.dims2().unwrap().1;
        (self.vec(name), d)
    }
    fn stats(&self, mu: &str, sigma: &str) -> GaussianStats {
        GaussianStats::new(self.vec(mu), self.vec(sigma), format!("{mu}/{sigma}")).unwrap()
    }
}

/// pytorch-fid's statistics and Fréchet distance on 64-d Gaussian features: our streaming
/// statistics equal np.mean/np.cov, and our FD equals calculate_frechet_distance to 1e-6
/// relative (observed ≈ 1e-12), from its statistics and from ours.
#[test]
fn frechet_distance_64d_matches_pytorch_fid() {
    let f = Npz::open("fid_64.npz");
    let want = f.scalar("fd");
    for (x, mu, sigma) in [("a", "mu_a", "sigma_a"), ("b", "mu_b", "sigma_b")] {
        let (v, d) = f.rows(x);
        let mut acc = FeatureStats::new(d);
        for chunk in v.chunks(97 * d) {
            acc.update(Rows::new(chunk, d), x).unwrap();
        }
        let ours = acc.finish(x).unwrap();
        assert_eq!(ours.n, Some(v.len() / d));
        for (o, w) in ours.mu.iter().zip(f.vec(mu)) {
            assert_relative_eq!(*o, w, max_relative = 1e-12, epsilon = 1e-14);
        }
        for (o, w) in ours.sigma.iter().zip(f.vec(sigma)) {
            assert_relative_eq!(*o, w, max_relative = 1e-10, epsilon = 1e-13);
        }
    }
    let (sa, sb) = (f.stats("mu_a", "sigma_a"), f.stats("mu_b", "sigma_b"));
    let fd = frechet_distance(&sa, &sb).unwrap();
    eprintln!(
        "64-d FD {fd} vs pytorch-fid {want}: rel {:.1e}",
        (fd - want).abs() / want
    );
    assert_relative_eq!(fd, want, max_relative = 1e-6);
    // Both factorisations of Σ₁ give the same trace: Cholesky (taken here) and the
    // eigendecomposition (taken for singular Σ₁).
    assert_eq!(frechet_terms(&sa, &sb).unwrap().path, SqrtPath::Cholesky);
    let (chol, _) = trace_sqrt_product(&sa, &sb, false).unwrap();
    let (eig, path) = trace_sqrt_product(&sa, &sb, true).unwrap();
    assert_eq!(path, SqrtPath::Eigen);
    assert_relative_eq!(chol, eig, max_relative = 1e-12);
    // The distance is symmetric (our algorithm is not: it whitens by the first argument).
    assert_relative_eq!(
        frechet_distance(&sb, &sa).unwrap(),
        want,
        max_relative = 1e-6
    );
    let (a, d) = f.rows("a");
    let (b, _) = f.rows("b");
    let ours = frechet_distance(
        &GaussianStats::from_features(Rows::new(&a, d), "a").unwrap(),
        &GaussianStats::from_features(Rows::new(&b, d), "b").unwrap(),
    )
    .unwrap();
    assert_relative_eq!(ours, want, max_relative = 1e-6);
}

/// Covariances with eigenvalues from 1 down to 1e-10 (condition number 1e10) and a rank-deficient
/// pair (40 samples in 64-d: the covariances are singular, so Σ₁Σ₂ has a 24-fold zero
/// eigenvalue). pytorch-fid's sqrtm stays finite on both (no ε·I retry was printed).
#[test]
fn frechet_distance_near_singular_and_rank_deficient() {
    let f = Npz::open("fid_64.npz");
    let fd = frechet_distance(
        &f.stats("ns_mu1", "ns_sigma1"),
        &f.stats("ns_mu2", "ns_sigma2"),
    )
    .unwrap();
    eprintln!(
        "near-singular rel {:.1e}",
        (fd / f.scalar("ns_fd") - 1.0).abs()
    );
    assert_relative_eq!(fd, f.scalar("ns_fd"), max_relative = 1e-6);

    let (r1, d) = f.rows("rank_a");
    let (r2, _) = f.rows("rank_b");
    let s1 = GaussianStats::from_features(Rows::new(&r1, d), "rank_a").unwrap();
    let s2 = GaussianStats::from_features(Rows::new(&r2, d), "rank_b").unwrap();
    let fd = frechet_distance(&s1, &s2).unwrap();
    eprintln!(
        "rank-deficient rel {:.1e}",
        (fd / f.scalar("rank_fd") - 1.0).abs()
    );
    assert_relative_eq!(fd, f.scalar("rank_fd"), max_relative = 1e-6);
}

/// splitmix64 and the hashed 2048-d features of golden/metrics_fid_prdc.py, bit for bit: every
/// value is a dyadic rational and the sums run in the script's order.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(seed: u64, idx: u64) -> f64 {
    let h = splitmix64(idx.wrapping_add(seed.wrapping_mul(0x100_0000)));
    (h >> 40) as f64 / 16_777_216.0 - 0.5
}

fn hashed_rows(seed: u64, rows: std::ops::Range<usize>, d: usize, out: &mut Vec<f64>) {
    const RANK: usize = 16;
    out.clear();
    let w: Vec<f64> = (0..RANK * d)
        .map(|i| unit(seed + 2, ((i / d) * d + i % d) as u64))
        .collect();
    for i in rows {
        let z: Vec<f64> = (0..RANK)
            .map(|r| unit(seed + 1, (i * RANK + r) as u64))
            .collect();
        for j in 0..d {
            let mut f = unit(seed, (i * d + j) as u64);
            for r in 0..RANK {
                f += z[r] * w[r * d + j] * 0.25;
            }
            out.push(f);
        }
    }
}

/// 2048-d statistics of 4096 hashed samples per set, accumulated in batches of 512, against
/// pytorch-fid's np.mean/np.cov and calculate_frechet_distance (scipy sqrtm): FD to 1e-6.
#[test]
fn frechet_distance_2048d_matches_pytorch_fid() {
    let f = Npz::open("fid_2048.npz");
    let (n, d) = (4096, 2048);
    let mut buf = Vec::new();
    let mut stats = Vec::new();
    for (seed, head, mu, diag) in [
        (1, "x1_head", "mu1", "sigma1_diag"),
        (7, "x2_head", "mu2", "sigma2_diag"),
    ] {
        let mut acc = FeatureStats::new(d);
        for start in (0..n).step_by(512) {
            hashed_rows(seed, start..start + 512, d, &mut buf);
            if seed == 7 {
                buf.iter_mut().for_each(|v| *v = *v * 1.125 + 0.0625);
            }
            if start == 0 {
                assert_eq!(
                    buf[..4 * d],
                    f.vec(head)[..],
                    "features differ from the script's"
                );
            }
            acc.update(Rows::new(&buf, d), "hashed features").unwrap();
        }
        let s = acc.finish("hashed features").unwrap();
        for (o, w) in s.mu.iter().zip(f.vec(mu)) {
            assert_relative_eq!(*o, w, max_relative = 1e-12, epsilon = 1e-15);
        }
        for (i, w) in f.vec(diag).into_iter().enumerate() {
            assert_relative_eq!(s.sigma[i * d + i], w, max_relative = 1e-12);
        }
        if seed == 1 {
            for (o, w) in s.sigma[..d].iter().zip(f.vec("sigma1_row0")) {
                assert_relative_eq!(*o, w, max_relative = 1e-9, epsilon = 1e-14);
            }
        }
        stats.push(s);
    }
    let t = std::time::Instant::now();
    let fd = frechet_distance(&stats[0], &stats[1]).unwrap();
    eprintln!(
        "2048-d FD {fd} vs pytorch-fid {}: rel {:.1e} ({:.2} s)",
        f.scalar("fd"),
        (fd / f.scalar("fd") - 1.0).abs(),
        t.elapsed().as_secs_f64()
    );
    assert_relative_eq!(fd, f.scalar("fd"), max_relative = 1e-6);
}

/// Writing pytorch-fid's layout and reading it back; the ADM reference-batch layout written by
/// np.savez; and wrong-shape files named with their array.
#[test]
fn stats_files() {
    let f = Npz::open("fid_64.npz");
    let s = f.stats("mu_a", "sigma_a");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/stats.npz");
    s.write_npz(&path).unwrap();
    let back = GaussianStats::read_npz(&path).unwrap();
    assert_eq!(back.mu, s.mu);
    assert_eq!(back.sigma, s.sigma);

    let adm = ReferenceBatch::read(&golden("adm_reference_tiny.npz")).unwrap();
    assert_eq!(adm.pool.dim, 16);
    assert_eq!(adm.spatial.as_ref().map(|s| s.dim), Some(8));
    assert_eq!(adm.images_shape, Some(vec![4, 8, 8, 3]));
    let pool = GaussianStats::read_npz(&golden("adm_reference_tiny.npz")).unwrap();
    assert_eq!(pool.sigma, adm.pool.sigma);

    // sigma of the wrong shape.
    let bad = dir.path().join("bad.npz");
    let mu = Tensor::zeros(4, candle_core::DType::F64, &Device::Cpu).unwrap();
    let sigma = Tensor::zeros((4, 3), candle_core::DType::F64, &Device::Cpu).unwrap();
    Tensor::write_npz(&[("mu", &mu), ("sigma", &sigma)], &bad).unwrap();
    let e = GaussianStats::read_npz(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.npz array `sigma`") && e.contains("expected (4, 4)") && !e.contains('\n'),
        "{e}"
    );
    // A missing array names the file's arrays.
    Tensor::write_npz(&[("mean", &mu)], &bad).unwrap();
    let e = GaussianStats::read_npz(&bad).unwrap_err().to_string();
    assert!(
        e.contains("array `mu`: is missing (the file has: mean)"),
        "{e}"
    );
    // Not an npz at all.
    std::fs::write(&bad, b"nope").unwrap();
    let e = GaussianStats::read_npz(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.npz") && e.contains("not a readable .npz"),
        "{e}"
    );
    // Statistics of different dimensions.
    let small = GaussianStats::read_npz(&golden("adm_reference_tiny.npz")).unwrap();
    let e = frechet_distance(&s, &small).unwrap_err().to_string();
    assert!(e.contains("feature dimensions differ (64 vs 16)"), "{e}");
}

/// prdc.compute_prdc on real 400 × 32 and fake 300 × 32, k = 3 and 5: the fractions are equal
/// exactly (same counts), density to 1e-12. Kynkäänniemi's squared distances give the same.
#[test]
fn prdc_matches_reference() {
    let f = Npz::open("prdc.npz");
    let (real, d) = f.rows("real");
    let (fake, _) = f.rows("fake");
    for k in [3, 5] {
        for distance in [PrdcDistance::Euclidean, PrdcDistance::Squared] {
            let p = prdc(
                Rows::new(&real, d),
                Rows::new(&fake, d),
                &PrdcOptions { k, distance },
            )
            .unwrap();
            assert_eq!(p.precision, f.scalar(&format!("precision_k{k}")), "k {k}");
            assert_eq!(p.recall, f.scalar(&format!("recall_k{k}")), "k {k}");
            assert_eq!(p.coverage, f.scalar(&format!("coverage_k{k}")), "k {k}");
            assert_relative_eq!(
                p.density,
                f.scalar(&format!("density_k{k}")),
                max_relative = 1e-12
            );
        }
    }
}

/// prdc's identical-set edge case, as documented in src/metrics/prdc.rs: compute_prdc(X, X)
/// gives 1, 1, 1, 1 (density exactly 1: each ball holds exactly k points strictly inside). With
/// duplicated rows (radius 0, empty ball under '<') the exact answer is 90/140; prdc reports
/// 95/140 because sklearn puts some exact duplicates at 8.4e-8 instead of 0. diffuq gives the
/// exact-distance answer, equal to the script's cdist computation, and differs from prdc there.
#[test]
fn prdc_identical_sets() {
    let f = Npz::open("prdc.npz");
    let (real, d) = f.rows("real");
    let p = prdc(
        Rows::new(&real, d),
        Rows::new(&real, d),
        &PrdcOptions::default(),
    )
    .unwrap();
    for (name, ours) in p.fields() {
        assert_eq!(ours, 1.0, "{name}");
        assert_eq!(ours, f.scalar(&format!("{name}_same")), "{name}");
    }
    let (dup, d) = f.rows("dup");
    let p = prdc(
        Rows::new(&dup, d),
        Rows::new(&dup, d),
        &PrdcOptions::default(),
    )
    .unwrap();
    for (name, ours) in p.fields() {
        let key = format!("{name}_dup");
        assert_relative_eq!(
            ours,
            f.scalar(&format!("{key}_exact")),
            max_relative = 1e-12
        );
        assert!(
            ours < f.scalar(&key),
            "{key}: prdc's sklearn rounding changes this case"
        );
    }
    assert_eq!(p.precision, 90.0 / 140.0);
}

/// One-line errors naming the array: wrong dimension, non-finite values, fewer than k + 1 rows.
#[test]
fn bad_features_are_named() {
    let real: Vec<f64> = (0..40).map(|i| i as f64).collect();
    let fake3: Vec<f64> = (0..30).map(|i| i as f64).collect();
    let opts = PrdcOptions::default();
    let e = prdc(Rows::new(&real, 4), Rows::new(&fake3, 3), &opts)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "generated features: dimension 3; expected 4 (the dimension of real features)"
    );
    let mut nan = real.clone();
    nan[13] = f64::NAN;
    let e = prdc(Rows::new(&nan, 4), Rows::new(&real, 4), &opts)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "real features: row 3, column 1 is NaN; expected finite values"
    );
    let e = prdc(Rows::new(&real, 4), Rows::new(&real[..12], 4), &opts)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "generated features: 3 rows; k-NN radii with k = 3 need at least k + 1 = 4"
    );
    let mut acc = FeatureStats::new(4);
    let e = acc
        .update(Rows::new(&fake3, 3), "batch 7")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "batch 7: feature dimension 3; expected 4 (the statistics' dimension)"
    );
    let e = acc
        .update(Rows::new(&nan, 4), "batch 8")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "batch 8: row 3, column 1 is NaN; expected finite values");
}
