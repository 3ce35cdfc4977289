//! Realism score (Kynkäänniemi et al., "Improved Precision and Recall Metric for Assessing
//! Generative Models", NeurIPS 2019, Sec. 5), and the k-NN machinery it shares with
//! [`super::rarity`].
//!
//! For a generated feature φ_g and real features φ_r,i with k-NN radii r_i,
//!
//!   R(φ_g) = max_{i ∈ K} r_i / (‖φ_g − φ_r,i‖ + eps),
//!
//! where K holds the real samples whose radius is not among the largest half ("with 50 % radius
//! pruning": the paper discards the hyperspheres with the largest radii, which cover empty space
//! around outliers). With eps = 0, R > 1 exactly when φ_g lies strictly inside some kept real
//! k-NN ball. Higher is more realistic; GU (App. C.5) keeps the images with the highest realism.
//!
//! **Radius convention** (the same as prdc — Naeem et al. 2020 — and Kynkäänniemi's release):
//! r_i is the distance from φ_r,i to its k-th nearest *other* real feature, i.e. the (k+1)-th
//! smallest entry of row i of the real–real distance matrix, whose smallest entry is the
//! self-distance 0. Duplicated real features count as distinct neighbours at distance 0. At least
//! k + 1 real features are needed. prdc (Naeem et al. 2020) takes the (k+1)-th smallest including
//! self too; `super::prdc` is written separately, so this file keeps its own small k-NN code.
//!
//! **Pruning** follows the release: threshold = `numpy.percentile(radii, p)` (linear, p = 50), and
//! balls with radius > threshold are dropped (the release sets them to 0, which contributes a zero
//! ratio: the same maximum).
//!
//! **Presets** — the printed formula and the two released variants that matter for GU:
//! - [`RealismOptions::paper`] (default): Euclidean distances, 50 % pruning, eps = 0.
//! - [`RealismOptions::kynkaat_release`]: `kynkaat/improved-precision-and-recall-metric` computes
//!   the ratio of **squared** distances with eps = 1e-5 (`ManifoldEstimator.evaluate`), and its
//!   realism experiment (`experiments.py`) builds the real manifold with
//!   `clamp_to_percentile=50`.
//! - [`RealismOptions::gu_release`]: GU's `eval/precision_recall_torch.py`
//!   (docs/released-code.md §2.6), a torch port of the same class whose realism is computed on the
//!   precision manifold, built without `clamp_to_percentile`: squared distances, eps = 1e-5,
//!   **no** pruning.
//!
//! [`RealismVariant`] names the three presets for configuration files (`paper`,
//! `kynkaat-release`, `gu-release`); the filtering artifacts select one with it. Both releases are
//! checked against the authors' code itself in tests/realism_rarity_reference.rs
//! (golden/realism_rarity_reference.py). The releases compute in float32; diffuq in f64.
//!
//! Squaring is monotone, so with eps = 0 the squared and Euclidean scores rank samples identically
//! (the squared score is the square of the Euclidean one); eps only matters for near-coincident
//! samples. With eps = 0 a generated feature equal to a kept real feature of positive radius scores
//! +∞; a ball of radius 0 (k + 1 coincident real features) contributes 0.
//!
//! **Cost.** Squared distances come in blocks of 512 × 2048 pairs from one f64 matrix product
//! each (‖a‖² + ‖b‖² − 2a·b, faer's multi-threaded gemm through `diffuq-linalg`, which is built at
//! opt-level 3), with near-coincident pairs recomputed directly so that coincident points are at
//! distance exactly 0 (accuracy bound at `fold_distances`). Radii take O(N²·D) time and the
//! scores O(M·N·D) for N real and M generated features of dimension D; memory is O(N + M) plus
//! one 8 MiB block — no N×N or M×N matrix is ever formed. The products run at ≈ 50 GFLOP/s on
//! the 2-core dev machine (candle's gemm, used before, reached ≈ 20); `just bench` times
//! precision/recall on 10k × 10k 2048-d features, which makes three such passes. A 50k reference
//! set, as GU uses, needs ≈ 10¹³ flops for its radii.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, TensorContext};

/// A row-major matrix of feature vectors (one per sample) borrowed from a flat slice.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    data: &'a [f64],
    dim: usize,
}

impl<'a> Rows<'a> {
    /// `data` holds `data.len() / dim` rows of length `dim`; the metric functions check the shape
    /// and the values, and name the array in their errors.
    pub fn new(data: &'a [f64], dim: usize) -> Self {
        Self { data, dim }
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Row i.
    pub fn row(&self, i: usize) -> &'a [f64] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Shape and finiteness checks, naming the array `what` in the error.
    pub(crate) fn validate(&self, what: &str) -> Result<()> {
        if self.dim == 0 {
            return Err(Error::invalid(what, "feature dimension is 0; expected ≥ 1"));
        }
        if !self.data.len().is_multiple_of(self.dim) {
            return Err(Error::invalid(
                what,
                format!(
                    "{} values are not a whole number of rows of dimension {}",
                    self.data.len(),
                    self.dim
                ),
            ));
        }
        if let Some(p) = self.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                what,
                format!(
                    "row {}, column {} is {}; expected finite values",
                    p / self.dim,
                    p % self.dim,
                    self.data[p]
                ),
            ));
        }
        Ok(())
    }
}

/// Copies a rank-2 tensor (N, D) of any float dtype into an f64 row-major buffer for [`Rows`];
/// returns (values, D).
pub fn rows_from_tensor(what: &str, t: &Tensor) -> Result<(Vec<f64>, usize)> {
    let (_, d) = t.dims2().map_err(|_| {
        Error::invalid(
            what,
            format!("tensor shape {:?}; expected (samples, features)", t.dims()),
        )
    })?;
    let v = t
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .ctx(what)?;
    Ok((v, d))
}

/// k ≥ 1 (else an error naming `k_key`) and at least k + 1 rows in `rows` (else an error naming
/// `what`): the preconditions of k-NN radii.
pub(crate) fn check_k(what: &str, rows: &Rows, k: usize, k_key: &str) -> Result<()> {
    if k == 0 {
        return Err(Error::invalid(
            k_key,
            "is 0; expected k ≥ 1 nearest neighbours",
        ));
    }
    if rows.len() < k + 1 {
        return Err(Error::invalid(
            what,
            format!(
                "{} rows; k-NN radii with k = {k} need at least k + 1 = {}",
                rows.len(),
                k + 1
            ),
        ));
    }
    Ok(())
}

/// Squared Euclidean distance, Σ (a_d − b_d)², the direct formula the tests compare with.
#[cfg(test)]
pub(crate) fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Query rows and reference rows per block: one block of squared distances is
/// 512 × 2048 f64 = 8 MiB.
const QUERY_BLOCK: usize = 512;
const REF_BLOCK: usize = 2048;

/// For every query row q, folds `step(state, q, r, ‖q − r‖²)` over all reference rows r in
/// increasing order, starting from `init()`, and returns `finish(state)` per query.
///
/// Blocks of squared distances come from [`diffuq_linalg::sq_distances`]: one f64 matrix product
/// each (faer, every core), ‖q − r‖² = ‖q‖² + ‖r‖² − 2 q·r, clamped at 0. That expansion loses
/// accuracy when ‖q − r‖² ≪ ‖q‖² + ‖r‖², so any pair below [`diffuq_linalg::REFINE_BELOW`] of it
/// is recomputed directly as Σ (q_d − r_d)² — coincident points are then at distance exactly 0. Elsewhere the relative
/// error of ‖q − r‖² is at most ≈ 2(D + 1)·2⁻⁵³ / 1e-4 (≈ 5e-9 for D = 2048, a worst case;
/// rounding errors of random sign make it typically √D times smaller, and for well-separated
/// points it is ~1e-16). Time O(|Q|·|R|·D), memory O(|Q| + |R|) plus one 8 MiB block.
pub(crate) fn fold_distances<S, I, F, G>(
    queries: Rows,
    refs: Rows,
    init: I,
    mut step: F,
    finish: G,
) -> Result<Vec<f64>>
where
    I: Fn() -> S,
    F: FnMut(&mut S, usize, usize, f64),
    G: Fn(S) -> f64,
{
    let (nq, nr, dim) = (queries.len(), refs.len(), queries.dim());
    let mut out = Vec::with_capacity(nq);
    if nq == 0 {
        return Ok(out);
    }
    let qn = diffuq_linalg::sq_norms(queries.data, dim);
    let rn = diffuq_linalg::sq_norms(refs.data, dim);
    let mut block = vec![0.0; QUERY_BLOCK.min(nq) * REF_BLOCK.min(nr)];
    for q0 in (0..nq).step_by(QUERY_BLOCK) {
        let q1 = (q0 + QUERY_BLOCK).min(nq);
        let mut states: Vec<S> = (q0..q1).map(|_| init()).collect();
        for r0 in (0..nr).step_by(REF_BLOCK) {
            let r1 = (r0 + REF_BLOCK).min(nr);
            let d2s = &mut block[..(q1 - q0) * (r1 - r0)];
            diffuq_linalg::sq_distances(
                d2s,
                &queries.data[q0 * dim..q1 * dim],
                &refs.data[r0 * dim..r1 * dim],
                &qn[q0..q1],
                &rn[r0..r1],
                q1 - q0,
                r1 - r0,
                dim,
            )
            .map_err(|e| Error::invalid("pairwise distances", e.to_string()))?;
            let width = r1 - r0;
            for (dq, state) in states.iter_mut().enumerate() {
                let q = q0 + dq;
                for (dr, &d2) in d2s[dq * width..(dq + 1) * width].iter().enumerate() {
                    step(state, q, r0 + dr, d2);
                }
            }
        }
        out.extend(states.into_iter().map(&finish));
    }
    Ok(out)
}

/// Squared k-NN radii of the real set: the k-th smallest ‖φ_r,i − φ_r,j‖² over j ≠ i (= the
/// (k+1)-th smallest including the self-distance 0). Inputs must already be validated.
pub(crate) fn knn_sq_radii(real: Rows, k: usize) -> Result<Vec<f64>> {
    // Symmetric: each pair of row blocks is computed once and feeds both rows (half the flops of
    // a query × reference pass); the kernel runs at opt-level 3 in diffuq-linalg.
    diffuq_linalg::knn_sq_radii(real.data, real.len(), real.dim(), k, 1024)
        .map_err(|e| Error::invalid("real features", e.to_string()))
}

/// Euclidean k-NN radii of `real` (convention in the module doc). Errors name the array; needs at
/// least k + 1 rows.
pub fn knn_radii(real: Rows, k: usize) -> Result<Vec<f64>> {
    real.validate("real features")?;
    check_k("real features", &real, k, "k")?;
    Ok(knn_sq_radii(real, k)?.into_iter().map(f64::sqrt).collect())
}

/// Which distance enters the realism ratio (radii and sample distances alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealismDistance {
    /// ‖·‖₂, as printed in the paper.
    Euclidean,
    /// ‖·‖₂², as both released implementations compute it.
    Squared,
}

/// Settings of the realism score; see the module doc for the presets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RealismOptions {
    /// Neighbourhood size of the real k-NN radii (paper: 3).
    pub k: usize,
    /// Drop real balls whose radius exceeds this percentile of all radii (paper: Some(50.0)).
    pub prune_percentile: Option<f64>,
    pub distance: RealismDistance,
    /// Added to the sample distance in the denominator (paper: 0; releases: 1e-5).
    pub eps: f64,
}

impl RealismOptions {
    /// The formula of Kynkäänniemi et al. 2019, Sec. 5: k = 3, Euclidean, 50 % pruning, eps = 0.
    pub fn paper() -> Self {
        Self {
            k: 3,
            prune_percentile: Some(50.0),
            distance: RealismDistance::Euclidean,
            eps: 0.0,
        }
    }
    /// Kynkäänniemi et al.'s released code: squared distances, eps = 1e-5, 50 % pruning.
    pub fn kynkaat_release() -> Self {
        Self {
            k: 3,
            prune_percentile: Some(50.0),
            distance: RealismDistance::Squared,
            eps: 1e-5,
        }
    }
    /// GU's `eval/precision_recall_torch.py`: squared distances, eps = 1e-5, no pruning.
    pub fn gu_release() -> Self {
        Self {
            k: 3,
            prune_percentile: None,
            distance: RealismDistance::Squared,
            eps: 1e-5,
        }
    }
    fn validate(&self) -> Result<()> {
        if let Some(p) = self.prune_percentile {
            if !(0.0..=100.0).contains(&p) {
                return Err(Error::invalid(
                    "realism prune_percentile",
                    format!("{p}; expected a percentile in [0, 100]"),
                ));
            }
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(Error::invalid(
                "realism eps",
                format!("{}; expected a finite value ≥ 0", self.eps),
            ));
        }
        Ok(())
    }
}

/// The realism presets by name, for configuration (module doc). `paper` is the default, as for
/// every printed-versus-released choice in diffuq; GU's filtering numbers need `gu-release`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RealismVariant {
    /// [`RealismOptions::paper`].
    #[default]
    Paper,
    /// [`RealismOptions::kynkaat_release`].
    KynkaatRelease,
    /// [`RealismOptions::gu_release`].
    GuRelease,
}

impl RealismVariant {
    /// The preset's options with neighbourhood size `k` (all three releases use k = 3).
    pub fn options(self, k: usize) -> RealismOptions {
        let preset = match self {
            RealismVariant::Paper => RealismOptions::paper(),
            RealismVariant::KynkaatRelease => RealismOptions::kynkaat_release(),
            RealismVariant::GuRelease => RealismOptions::gu_release(),
        };
        RealismOptions { k, ..preset }
    }

    /// The configuration name (`paper`, `kynkaat-release`, `gu-release`).
    pub fn name(self) -> &'static str {
        match self {
            RealismVariant::Paper => "paper",
            RealismVariant::KynkaatRelease => "kynkaat-release",
            RealismVariant::GuRelease => "gu-release",
        }
    }
}

impl Default for RealismOptions {
    fn default() -> Self {
        Self::paper()
    }
}

/// The real feature set with its k-NN radii, computed once (O(N²·D)) and shared by
/// [`RealManifold::realism`] and [`RealManifold::rarity`](super::rarity).
#[derive(Debug, Clone)]
pub struct RealManifold<'a> {
    real: Rows<'a>,
    k: usize,
    sq_radii: Vec<f64>,
}

impl<'a> RealManifold<'a> {
    /// Validates `real` (finite, ≥ k + 1 rows) and computes its k-NN radii.
    pub fn new(real: Rows<'a>, k: usize) -> Result<Self> {
        real.validate("real features")?;
        check_k("real features", &real, k, "k")?;
        let sq_radii = knn_sq_radii(real, k)?;
        Ok(Self { real, k, sq_radii })
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn real(&self) -> Rows<'a> {
        self.real
    }
    /// Euclidean k-NN radii, one per real row.
    pub fn radii(&self) -> Vec<f64> {
        self.sq_radii.iter().map(|r| r.sqrt()).collect()
    }
    /// Checks generated features against this manifold (finite, same dimension).
    pub(crate) fn check_fake(&self, fake: &Rows) -> Result<()> {
        fake.validate("generated features")?;
        if self.real.dim() != fake.dim() {
            return Err(Error::invalid(
                "generated features",
                format!(
                    "dimension {} differs from the real features' {}",
                    fake.dim(),
                    self.real.dim()
                ),
            ));
        }
        Ok(())
    }

    /// Realism of every generated row. `opts.k` must equal the manifold's k.
    pub fn realism(&self, fake: Rows, opts: &RealismOptions) -> Result<Vec<f64>> {
        opts.validate()?;
        if opts.k != self.k {
            return Err(Error::invalid(
                "realism k",
                format!(
                    "{} differs from the k = {} the real radii were computed with",
                    opts.k, self.k
                ),
            ));
        }
        self.check_fake(&fake)?;
        let radii: Vec<f64> = match opts.distance {
            RealismDistance::Squared => self.sq_radii.clone(),
            RealismDistance::Euclidean => self.radii(),
        };
        let keep: Vec<bool> = match opts.prune_percentile {
            None => vec![true; radii.len()],
            Some(p) => {
                let mut sorted = radii.clone();
                sorted.sort_by(f64::total_cmp);
                let threshold = crate::metrics::rank::percentile_sorted(&sorted, p);
                radii.iter().map(|&r| r <= threshold).collect()
            }
        };
        let (eps, squared) = (opts.eps, opts.distance == RealismDistance::Squared);
        fold_distances(
            fake,
            self.real,
            // Every ratio is ≥ 0; pruned and zero-radius balls contribute 0 (no support).
            || 0.0f64,
            |best, _, r, d2| {
                if !keep[r] || radii[r] == 0.0 {
                    return;
                }
                let d = if squared { d2 } else { d2.sqrt() };
                let ratio = radii[r] / (d + eps);
                if ratio > *best {
                    *best = ratio;
                }
            },
            |best| best,
        )
    }
}

/// Realism score of every generated feature (rows of `fake`) against the real set `real`.
/// Errors (one line, naming the array): non-finite values, a dimension mismatch, fewer than k + 1
/// real rows, bad options. To score several sets, or realism and rarity, against one real set,
/// build a [`RealManifold`] once.
pub fn realism(real: Rows, fake: Rows, opts: &RealismOptions) -> Result<Vec<f64>> {
    opts.validate()?;
    RealManifold::new(real, opts.k)?.realism(fake, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radii_count_self_as_the_zeroth_neighbour() {
        // Points on a line at 0, 1, 3, 7: sorted distances from 0 are [0, 1, 3, 7], so with k = 2
        // the radius is 3 (the 2nd nearest other point), the (k+1)-th entry counting self.
        let x = [0.0, 1.0, 3.0, 7.0];
        let r = knn_radii(Rows::new(&x, 1), 2).unwrap();
        assert_eq!(r, vec![3.0, 2.0, 3.0, 6.0]);
        // A duplicated point is a neighbour at distance 0.
        let x = [0.0, 0.0, 5.0];
        assert_eq!(knn_radii(Rows::new(&x, 1), 1).unwrap(), vec![0.0, 0.0, 5.0]);
    }

    #[test]
    fn realism_by_hand() {
        // Real 1-D points 0, 1, 3, 7; k = 1 radii [1, 1, 2, 4]; median (np.percentile 50) = 1.5,
        // so pruning keeps the balls at 0 and 1. Generated point 2: distances [2, 1, 1, 5].
        // Unpruned: max(1/2, 1/1, 2/1, 4/5) = 2; pruned: max(1/2, 1/1) = 1.
        let real = [0.0, 1.0, 3.0, 7.0];
        let fake = [2.0];
        let mut o = RealismOptions {
            k: 1,
            ..RealismOptions::paper()
        };
        let r = |o: &RealismOptions| realism(Rows::new(&real, 1), Rows::new(&fake, 1), o).unwrap();
        assert_eq!(r(&o), vec![1.0]);
        o.prune_percentile = None;
        assert_eq!(r(&o), vec![2.0]);
        // Squared with eps: max(1/(4+e), 1/(1+e), 4/(1+e), 16/(25+e)).
        o.distance = RealismDistance::Squared;
        o.eps = 1e-5;
        approx::assert_relative_eq!(r(&o)[0], 4.0 / (1.0 + 1e-5), max_relative = 1e-15);
    }

    #[test]
    fn variants_name_the_presets() {
        // The configuration names round-trip through serde and select the documented presets.
        for (v, name, opts) in [
            (RealismVariant::Paper, "paper", RealismOptions::paper()),
            (
                RealismVariant::KynkaatRelease,
                "kynkaat-release",
                RealismOptions::kynkaat_release(),
            ),
            (
                RealismVariant::GuRelease,
                "gu-release",
                RealismOptions::gu_release(),
            ),
        ] {
            assert_eq!(v.name(), name);
            assert_eq!(v.options(3), opts);
            let parsed: RealismVariant = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(parsed, v);
        }
        assert_eq!(RealismVariant::default(), RealismVariant::Paper);
        assert_eq!(RealismVariant::GuRelease.options(5).k, 5);
        assert!(serde_json::from_str::<RealismVariant>("\"gu\"").is_err());
    }

    #[test]
    fn coincident_sample_is_infinitely_realistic_without_eps() {
        let real = [0.0, 1.0, 3.0, 7.0];
        let o = RealismOptions {
            k: 1,
            ..RealismOptions::paper()
        };
        let s = realism(Rows::new(&real, 1), Rows::new(&[1.0], 1), &o).unwrap();
        assert_eq!(s, vec![f64::INFINITY]);
    }

    /// Squared distances the slow, exact way.
    fn brute_sq(q: &[f64], r: &[f64], dim: usize) -> Vec<Vec<f64>> {
        q.chunks(dim)
            .map(|a| r.chunks(dim).map(|b| sq_dist(a, b)).collect())
            .collect()
    }

    #[test]
    fn blocked_distances_match_brute_force_across_block_edges() {
        // 2100 references (> REF_BLOCK) and 600 queries (> QUERY_BLOCK): every query's fold must
        // see every reference once, in order, with the distance of the direct formula.
        let dim = 5;
        let mut s = 7u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
        };
        let r: Vec<f64> = (0..2100 * dim).map(|_| rnd()).collect();
        let q: Vec<f64> = (0..600 * dim).map(|_| rnd()).collect();
        let want = brute_sq(&q, &r, dim);
        // State: (next expected reference index, max relative error, first out-of-order index).
        let got = fold_distances(
            Rows::new(&q, dim),
            Rows::new(&r, dim),
            || (0usize, 0.0f64, usize::MAX),
            |st, qi, ri, d2| {
                if ri != st.0 {
                    st.2 = ri;
                }
                st.0 += 1;
                let w = want[qi][ri];
                st.1 = st.1.max((d2 - w).abs() / w);
            },
            |st| {
                assert_eq!((st.0, st.2), (2100, usize::MAX), "references out of order");
                st.1
            },
        )
        .unwrap();
        assert_eq!(got.len(), 600);
        let worst = got.iter().cloned().fold(0.0, f64::max);
        assert!(worst < 1e-12, "max relative error {worst:e}");
    }

    #[test]
    fn near_coincident_points_get_exact_distances() {
        // 64 coordinates of magnitude ~1e7 (‖a‖² ≈ 3e16): the Gram expansion alone returns 0
        // for the pair at distance 0.5 (measured with the recomputation disabled), rounding noise
        // of order 1 in ‖a‖² + ‖b‖² − 2a·b. The direct recomputation gives 0 and 0.25 exactly.
        let a: Vec<f64> = (0..64)
            .map(|i| 3.7e6 * ((i + 2) as f64).sqrt() * if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let mut b = a.clone();
        b[0] += 0.5;
        let q: Vec<f64> = [a.clone(), b].concat();
        let d = fold_distances(
            Rows::new(&q, 64),
            Rows::new(&a, 64),
            || 0.0,
            |st, _, _, d2| *st = d2,
            |st| st,
        )
        .unwrap();
        assert_eq!(d, vec![0.0, 0.25]);
    }

    #[test]
    fn tensors_become_rows() {
        let t = Tensor::new(
            &[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.5]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let (v, d) = rows_from_tensor("real features", &t).unwrap();
        assert_eq!((v, d), (vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5], 3));
        let t = Tensor::new(&[1.0f32, 2.0], &candle_core::Device::Cpu).unwrap();
        let e = rows_from_tensor("generated features", &t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "generated features: tensor shape [2]; expected (samples, features)"
        );
    }

    #[test]
    fn bad_inputs_name_the_array() {
        let real = [0.0, 1.0, 3.0, 7.0];
        let o = RealismOptions::paper();
        let e = realism(Rows::new(&real, 2), Rows::new(&[1.0, 2.0], 2), &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "real features: 2 rows; k-NN radii with k = 3 need at least k + 1 = 4"
        );
        let e = realism(Rows::new(&real, 1), Rows::new(&[1.0, 2.0], 2), &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "generated features: dimension 2 differs from the real features' 1"
        );
        let e = realism(Rows::new(&real, 1), Rows::new(&[f64::NAN], 1), &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "generated features: row 0, column 0 is NaN; expected finite values"
        );
        let e = realism(Rows::new(&real[..3], 2), Rows::new(&[1.0, 2.0], 2), &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "real features: 3 values are not a whole number of rows of dimension 2"
        );
    }
}
