//! Realism, rarity, sparsification (AUSE/AURG), Spearman and GU's rank combination against an
//! independent NumPy/SciPy computation, plus their invariants.
//!
//! Expected numbers: golden/metrics/other_{knn,sparsification,rank}.npz, written by
//! golden/metrics_other.py (Python 3.11.7, numpy 1.26.4, scipy 1.17.1) from the formulas, with
//! `scipy.spatial.distance.cdist` distances, `np.percentile` thresholds, `np.trapz` areas,
//! `scipy.stats.rankdata` / `spearmanr`:
//! * 300 × 16 real and 200 × 16 generated features: k = 3 radii; realism with and without 50 %
//!   pruning (Euclidean, eps 0), as Kynkäänniemi's release (squared, pruned, eps 1e-5) and as GU's
//!   (squared, unpruned, eps 1e-5); k = 5 realism; rarity at k = 3 and 5 (60 and 49 samples outside
//!   every ball → +∞).
//! * 4 maps of 3 × 8 × 8 uncertainty and error values: AUSE/AURG and both 51-point curves pooled,
//!   with tied uncertainties (rounded to 0.1), per image, and pooled with two all-zero images
//!   appended (the AU release's over-allocated rows).
//! * Spearman ρ between realism, rarity (with +∞) and a synthetic uncertainty; GU's combined ranks
//!   for the three pairs.
//!
//! Tolerance: 1e-10 relative (infinities must match exactly). Both sides compute in f64; they
//! differ in how distances are formed (blocked gemm ‖a‖² + ‖b‖² − 2a·b here, `cdist`'s direct
//! differences there) and in summation order (compensated prefix sums here, pairwise sums in
//! NumPy). Measured worst case over all arrays: 1.2e-15 relative. Rank outputs are compared exactly.
//!
//! Properties (proptest): the oracle sparsification curve is nowhere above the method's and
//! AURG(oracle) ≥ AURG(method) for distinct errors (any uncertainties, ties included); Spearman's ρ
//! lies in [−1, 1] and is ±1 under strictly monotone transforms; the rank combination is invariant
//! under strictly increasing transforms of either score; realism and rarity agree on ball
//! membership and do not depend on the order of the real set.

use std::collections::HashMap;

use candle_core::Tensor;
use diffuq::metrics::rank::{combined_ranks, spearman, Score};
use diffuq::metrics::rarity::rarity;
use diffuq::metrics::realism::{knn_radii, realism, RealManifold, RealismOptions, Rows};
use diffuq::metrics::sparsification::{
    sparsification, sparsification_per_image, Compat, SparsificationOptions,
};
use proptest::prelude::*;

fn load(name: &str) -> HashMap<String, Vec<f64>> {
    let path = format!(
        "{}/golden/metrics/other_{name}.npz",
        env!("CARGO_MANIFEST_DIR")
    );
    Tensor::read_npz(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .into_iter()
        .map(|(k, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            (k, v)
        })
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_infinite() || g.is_infinite() {
            assert_eq!(g, w, "{what}[{i}]");
        } else {
            assert!(
                (g - w).abs() <= rel * w.abs().max(1e-300),
                "{what}[{i}]: got {g:e}, want {w:e} (rel diff {:e})",
                (g - w).abs() / w.abs()
            );
        }
    }
}

#[test]
fn realism_and_rarity_match_numpy() {
    let g = load("knn");
    let (real, fake) = (Rows::new(&g["real"], 16), Rows::new(&g["fake"], 16));
    assert_eq!((real.len(), fake.len()), (300, 200));
    assert_close(
        "radii k=3",
        &knn_radii(real, 3).unwrap(),
        &g["radii_k3"],
        1e-10,
    );

    let paper = RealismOptions::paper();
    let cases = [
        ("realism_paper_k3", paper),
        (
            "realism_noprune_k3",
            RealismOptions {
                prune_percentile: None,
                ..paper
            },
        ),
        ("realism_kynkaat_k3", RealismOptions::kynkaat_release()),
        ("realism_gu_k3", RealismOptions::gu_release()),
        ("realism_paper_k5", RealismOptions { k: 5, ..paper }),
    ];
    for (key, opts) in cases {
        assert_close(key, &realism(real, fake, &opts).unwrap(), &g[key], 1e-10);
    }
    // Pruning must matter on this fixture, or the comparison above would not test it.
    assert_ne!(g["realism_paper_k3"], g["realism_noprune_k3"]);

    let m3 = RealManifold::new(real, 3).unwrap();
    let r3 = m3.rarity(fake).unwrap();
    assert_close("rarity_k3", &r3, &g["rarity_k3"], 1e-10);
    assert_eq!(r3.iter().filter(|r| r.is_infinite()).count(), 60);
    assert_close(
        "rarity_k5",
        &rarity(real, fake, 5).unwrap(),
        &g["rarity_k5"],
        1e-10,
    );
    // The shared manifold gives the same realism as the one-shot function.
    assert_eq!(
        m3.realism(fake, &paper).unwrap(),
        realism(real, fake, &paper).unwrap()
    );
}

#[test]
fn sparsification_matches_numpy() {
    let g = load("sparsification");
    let (u, u_tied, err) = (&g["u"], &g["u_tied"], &g["err"]);
    assert_eq!(u.len(), 4 * 3 * 8 * 8);
    let opts = SparsificationOptions::default();
    let check = |name: &str, s: diffuq::metrics::sparsification::Sparsification| {
        assert_close(
            &format!("{name} method"),
            &s.method,
            &g[&format!("{name}_method")],
            1e-10,
        );
        assert_close(
            &format!("{name} oracle"),
            &s.oracle,
            &g[&format!("{name}_oracle")],
            1e-10,
        );
        assert_close(
            &format!("{name} ause"),
            &[s.ause],
            &g[&format!("{name}_ause")],
            1e-10,
        );
        assert_close(
            &format!("{name} aurg"),
            &[s.aurg],
            &g[&format!("{name}_aurg")],
            1e-10,
        );
        assert_eq!(s.fractions.len(), 51);
    };
    check("pooled", sparsification(u, err, &opts).unwrap());
    check("tied", sparsification(u_tied, err, &opts).unwrap());
    let zero_rows = SparsificationOptions {
        compat: Compat::AuZeroRows(2 * 3 * 8 * 8),
        ..opts
    };
    check("zerorows", sparsification(u, err, &zero_rows).unwrap());
    // The tie rule must matter on this fixture: tied uncertainties give another curve.
    assert_ne!(g["pooled_method"], g["tied_method"]);

    let per = sparsification_per_image(u, err, 3 * 8 * 8, &opts).unwrap();
    let ause: Vec<f64> = per.images.iter().map(|s| s.ause).collect();
    let aurg: Vec<f64> = per.images.iter().map(|s| s.aurg).collect();
    assert_close("perimage ause", &ause, &g["perimage_ause_each"], 1e-10);
    assert_close("perimage aurg", &aurg, &g["perimage_aurg_each"], 1e-10);
    assert_close("mean ause", &[per.mean_ause], &g["perimage_ause"], 1e-10);
    assert_close("mean aurg", &[per.mean_aurg], &g["perimage_aurg"], 1e-10);
}

#[test]
fn spearman_and_rank_combination_match_scipy() {
    let g = load("rank");
    let (unc, rea, rar) = (&g["unc"], &g["realism"], &g["rarity"]);
    assert!(rar.iter().any(|r| r.is_infinite()));
    let pairs = [
        ("spearman_realism_rarity", ("realism", rea), ("rarity", rar)),
        (
            "spearman_unc_realism",
            ("uncertainty", unc),
            ("realism", rea),
        ),
        ("spearman_unc_rarity", ("uncertainty", unc), ("rarity", rar)),
    ];
    for (key, x, y) in pairs {
        let (x, y) = ((x.0, x.1.as_slice()), (y.0, y.1.as_slice()));
        assert_close(key, &[spearman(x, y).unwrap()], &g[key], 1e-10);
    }
    let u = Score::lowest("uncertainty", unc);
    let re = Score::highest("realism", rea);
    let ra = Score::lowest("rarity", rar);
    assert_eq!(combined_ranks(&u, &re).unwrap(), g["combined_unc_realism"]);
    assert_eq!(combined_ranks(&u, &ra).unwrap(), g["combined_unc_rarity"]);
    assert_eq!(
        combined_ranks(&re, &ra).unwrap(),
        g["combined_realism_rarity"]
    );
}

/// Strategy: n errors with pairwise-distinct squares (the oracle's premise, see the
/// sparsification module doc) and uncertainties that are either continuous or heavily tied.
fn sparsification_case() -> impl Strategy<Value = (Vec<f64>, Vec<f64>, usize)> {
    (2usize..200, 1usize..60).prop_flat_map(|(n, intervals)| {
        let errors = proptest::collection::vec(-10.0f64..10.0, n);
        let unc = prop_oneof![
            proptest::collection::vec(0.0f64..5.0, n),
            proptest::collection::vec((0u8..4).prop_map(f64::from), n),
        ];
        (errors, unc, Just(intervals))
    })
}

fn distinct_squares(e: &[f64]) -> bool {
    let mut sq: Vec<f64> = e.iter().map(|x| x * x).collect();
    sq.sort_by(f64::total_cmp);
    sq.windows(2).all(|w| w[0] < w[1])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn oracle_is_never_above_the_method((e, u, intervals) in sparsification_case()) {
        prop_assume!(distinct_squares(&e));
        let opts = SparsificationOptions { intervals, ..Default::default() };
        let s = sparsification(&u, &e, &opts).unwrap();
        for (i, (o, m)) in s.oracle.iter().zip(&s.method).enumerate() {
            prop_assert!(o <= m, "fraction {}: oracle {o} > method {m}", s.fractions[i]);
        }
        prop_assert!(s.ause >= 0.0);
        // The oracle used as a method (u = e²) has the largest AURG of all.
        let sq: Vec<f64> = e.iter().map(|x| x * x).collect();
        let oracle = sparsification(&sq, &e, &opts).unwrap();
        prop_assert!(oracle.aurg >= s.aurg, "AURG oracle {} < method {}", oracle.aurg, s.aurg);
        prop_assert_eq!(oracle.ause, 0.0);
    }

    #[test]
    fn spearman_is_bounded_and_one_for_monotone_maps(
        x in proptest::collection::vec(-500i32..500, 2..100),
        y in proptest::collection::vec(-3i32..3, 100),
    ) {
        let x: Vec<f64> = x.into_iter().map(f64::from).collect();
        prop_assume!(x.iter().any(|v| *v != x[0]));
        let y: Vec<f64> = y[..x.len()].iter().map(|&v| f64::from(v)).collect();
        if y.iter().any(|v| *v != y[0]) {
            let r = spearman(("x", &x), ("y", &y)).unwrap();
            prop_assert!((-1.0..=1.0).contains(&r), "ρ = {r}");
        }
        // Strictly increasing maps (exp, cube) keep the order: ρ = 1; a decreasing one: ρ = −1.
        let up: Vec<f64> = x.iter().map(|v| (v / 50.0).exp() + v.powi(3)).collect();
        let down: Vec<f64> = x.iter().map(|v| -v.powi(3)).collect();
        let r_up = spearman(("x", &x), ("f(x)", &up)).unwrap();
        let r_down = spearman(("x", &x), ("g(x)", &down)).unwrap();
        prop_assert!((r_up - 1.0).abs() < 1e-12, "ρ = {r_up}");
        prop_assert!((r_down + 1.0).abs() < 1e-12, "ρ = {r_down}");
    }

    #[test]
    fn rank_combination_ignores_monotone_transforms(
        a in proptest::collection::vec(-100i32..100, 1..80),
        b in proptest::collection::vec(prop_oneof![(-20i32..20).prop_map(f64::from), Just(f64::INFINITY)], 80),
    ) {
        let a: Vec<f64> = a.into_iter().map(f64::from).collect();
        let b = &b[..a.len()];
        let base = combined_ranks(&Score::lowest("a", &a), &Score::lowest("b", b)).unwrap();
        // Strictly increasing transforms of a, of b, or of both: same combined ranks.
        let fa: Vec<f64> = a.iter().map(|v| (v / 10.0).exp()).collect();
        let fb: Vec<f64> = b.iter().map(|v| v.powi(3) + 7.0).collect();
        prop_assert_eq!(&combined_ranks(&Score::lowest("f(a)", &fa), &Score::lowest("b", b)).unwrap(), &base);
        prop_assert_eq!(&combined_ranks(&Score::lowest("a", &a), &Score::lowest("f(b)", &fb)).unwrap(), &base);
        // A decreasing transform with the direction flipped is the same score.
        let na: Vec<f64> = a.iter().map(|v| -2.0 * v).collect();
        prop_assert_eq!(&combined_ranks(&Score::highest("-2a", &na), &Score::lowest("b", b)).unwrap(), &base);
        // Ranks of n samples sum to n(n+1)/2.
        let n = a.len() as f64;
        prop_assert_eq!(base.iter().sum::<f64>(), n * (n + 1.0) / 2.0);
    }

    #[test]
    fn realism_and_rarity_agree_on_ball_membership(
        real in proptest::collection::vec(-3i8..3, 3 * 20..3 * 120),
        fake in proptest::collection::vec(-4i8..4, 3..3 * 90),
        k in 1usize..6,
        shift in 0usize..1000,
    ) {
        // Small-integer coordinates: coincident points and tied radii are common.
        let real: Vec<f64> = real[..real.len() / 3 * 3].iter().map(|&v| f64::from(v) * 0.5).collect();
        let fake: Vec<f64> = fake[..fake.len() / 3 * 3].iter().map(|&v| f64::from(v) * 0.5).collect();
        let (r, f) = (Rows::new(&real, 3), Rows::new(&fake, 3));
        let opts = RealismOptions { k, prune_percentile: None, ..RealismOptions::paper() };
        let rea = realism(r, f, &opts).unwrap();
        let rar = rarity(r, f, k).unwrap();
        for (i, (x, y)) in rea.iter().zip(&rar).enumerate() {
            // Inside some ball (d < r) ⇔ realism > 1 ⇔ rarity finite.
            prop_assert_eq!(*x > 1.0, y.is_finite(), "sample {}: realism {}, rarity {}", i, x, y);
        }
        // Rotating the real rows changes nothing (ties included), also with pruning and squares.
        let n = r.len();
        let rot: Vec<f64> = (0..n).flat_map(|i| r.row((i + shift) % n).to_vec()).collect();
        let rr = Rows::new(&rot, 3);
        prop_assert_eq!(&rarity(rr, f, k).unwrap(), &rar);
        for o in [opts, RealismOptions { k, ..RealismOptions::kynkaat_release() }] {
            prop_assert_eq!(realism(rr, f, &o).unwrap(), realism(r, f, &o).unwrap());
        }
    }
}
