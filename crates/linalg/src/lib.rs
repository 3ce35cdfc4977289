//! Dense f64 linear algebra for diffuq's metrics, and the other hot numeric kernels (convolution,
//! normalisation, seed-stream draws), behind non-generic functions.
//!
//! Why a separate crate: faer's solvers are generic, and Rust monomorphises generic code in the
//! crate that *calls* it, at that crate's optimisation level. diffuq itself builds at opt-level 1
//! in the dev profile (compile time), which made a 2048-d symmetric eigendecomposition 3.5×
//! slower (4.8 s instead of 1.4 s) even though faer's own profile says opt-level 3. The functions
//! here are instantiated once, in this crate, which the workspace profile builds at opt-level 3.
//!
//! Matrices are row-major `&[f64]` slices with explicit sizes; all products use every rayon
//! thread.

pub mod act;
pub mod chacha;
pub mod conv;
pub mod kernels;
pub mod members;
pub mod norm;
pub mod par;
pub mod pool;
pub mod resample;
pub mod streams;
#[cfg(target_arch = "x86_64")]
mod winograd;

use std::mem::MaybeUninit;

/// A pointer shared by the threads of a parallel loop whose items write disjoint parts of one
/// output (the convolution kernels' images, bands and panels).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);

#[cfg(target_arch = "x86_64")]
impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: only used to let parallel items write disjoint parts of one output.
#[cfg(target_arch = "x86_64")]
unsafe impl Send for SyncPtr {}
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for SyncPtr {}

/// An initialised slice viewed as output storage for the `*_uninit` kernels (sound: they only
/// ever store initialised values into it).
pub(crate) fn as_uninit<T>(s: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: MaybeUninit<T> has T's layout, and writers through the view store only
    // initialised values, so the slice stays initialised for its owner.
    unsafe { &mut *(s as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// Uninitialised storage zero-filled (`T::default()`) and handed back initialised: the
/// `*_uninit` entry points of kernels that accumulate into their output.
pub(crate) fn zeroed<T: Copy + Default>(s: &mut [MaybeUninit<T>]) -> &mut [T] {
    s.fill(MaybeUninit::new(T::default()));
    // SAFETY: every element was just initialised, and MaybeUninit<T> has T's layout.
    unsafe { &mut *(s as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// A vector of `n` values produced by `fill`, which must write every one of them: the
/// `*_uninit` kernels, whose outputs would otherwise be zeroed first by a single-threaded
/// memset that the kernel then overwrites (≈ 5% of a UNet evaluation on 2 cores).
///
/// # Safety
/// `fill` writes all `n` elements of the slice it is given.
pub unsafe fn written_vec<T>(n: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the caller's contract: all n elements were written.
    unsafe { v.set_len(n) };
    v
}

use faer::{linalg::matmul::matmul, Accum, Mat, MatMut, MatRef, Par, Side};

/// A decomposition that did not converge, or arguments of inconsistent size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinalgError(pub String);

impl std::fmt::Display for LinalgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LinalgError {}

fn square<'a>(a: &'a [f64], n: usize, what: &str) -> Result<MatRef<'a, f64>, LinalgError> {
    if a.len() != n * n {
        return Err(LinalgError(format!(
            "{what}: {} values, expected {n} × {n}",
            a.len()
        )));
    }
    Ok(MatRef::from_row_major_slice(a, n, n))
}

/// `c += alpha · xᵀ x` for x (rows × n, row-major) and c (n × n, row-major): a scatter matrix.
pub fn add_gram(
    c: &mut [f64],
    x: &[f64],
    rows: usize,
    n: usize,
    alpha: f64,
) -> Result<(), LinalgError> {
    if c.len() != n * n || x.len() != rows * n {
        return Err(LinalgError(format!(
            "add_gram: c has {} values (expected {}), x has {} (expected {rows} × {n})",
            c.len(),
            n * n,
            x.len()
        )));
    }
    let x = MatRef::from_row_major_slice(x, rows, n);
    let c = MatMut::from_row_major_slice_mut(c, n, n);
    matmul(c, Accum::Add, x.transpose(), x, alpha, Par::rayon(0));
    Ok(())
}

/// `out = q · rᵀ` for q (nq × d) and r (nr × d), both row-major, out (nq × nr) row-major: the
/// inner products behind blocked pairwise distances.
pub fn inner_products(
    out: &mut [f64],
    q: &[f64],
    r: &[f64],
    nq: usize,
    nr: usize,
    d: usize,
) -> Result<(), LinalgError> {
    if out.len() != nq * nr || q.len() != nq * d || r.len() != nr * d {
        return Err(LinalgError(format!(
            "inner_products: out {} (expected {nq} × {nr}), q {} (expected {nq} × {d}), r {} \
             (expected {nr} × {d})",
            out.len(),
            q.len(),
            r.len()
        )));
    }
    let q = MatRef::from_row_major_slice(q, nq, d);
    let r = MatRef::from_row_major_slice(r, nr, d);
    let out = MatMut::from_row_major_slice_mut(out, nq, nr);
    matmul(out, Accum::Replace, q, r.transpose(), 1.0, Par::rayon(0));
    Ok(())
}

/// A Gram-trick squared distance below this fraction of ‖q‖² + ‖r‖² is recomputed directly as
/// Σ (q_d − r_d)²: the expansion ‖q‖² + ‖r‖² − 2 q·r loses accuracy when the distance is small
/// next to the norms, and coincident points must come out at exactly 0. Elsewhere the relative
/// error of ‖q − r‖² is at most ≈ 2(d + 1)·2⁻⁵³ / 1e-4 (a worst case; typically √d smaller).
pub const REFINE_BELOW: f64 = 1e-4;

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            let d = x[l] - y[l];
            acc[l] += d * d;
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        let d = x - y;
        tail += d * d;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Squared row norms of x (n × d, row-major).
pub fn sq_norms(x: &[f64], d: usize) -> Vec<f64> {
    x.chunks_exact(d.max(1))
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect()
}

/// `out[i·nr + j] = ‖q_i − r_j‖²` for a block of query rows q (nq × d) and reference rows r
/// (nr × d), from one gemm plus the [`REFINE_BELOW`] recomputation; `qn`, `rn` are the rows'
/// squared norms ([`sq_norms`]). Never negative.
#[allow(clippy::too_many_arguments)]
pub fn sq_distances(
    out: &mut [f64],
    q: &[f64],
    r: &[f64],
    qn: &[f64],
    rn: &[f64],
    nq: usize,
    nr: usize,
    d: usize,
) -> Result<(), LinalgError> {
    if qn.len() != nq || rn.len() != nr {
        return Err(LinalgError(format!(
            "sq_distances: {} query norms for {nq} rows, {} reference norms for {nr} rows",
            qn.len(),
            rn.len()
        )));
    }
    inner_products(out, q, r, nq, nr, d)?;
    for i in 0..nq {
        let row = &mut out[i * nr..(i + 1) * nr];
        for (j, v) in row.iter_mut().enumerate() {
            let scale = qn[i] + rn[j];
            let mut d2 = scale - 2.0 * *v;
            if d2 <= REFINE_BELOW * scale {
                d2 = sq_dist(&q[i * d..(i + 1) * d], &r[j * d..(j + 1) * d]);
            }
            *v = d2.max(0.0);
        }
    }
    Ok(())
}

/// Inserts `v` into `best` (ascending, fixed length k) if it is smaller than the largest.
#[inline]
fn insert_smallest(best: &mut [f64], v: f64) {
    let k = best.len();
    if v >= best[k - 1] {
        return;
    }
    let mut at = k - 1;
    while at > 0 && best[at - 1] > v {
        best[at] = best[at - 1];
        at -= 1;
    }
    best[at] = v;
}

/// For every row of x (n × d), the k-th smallest squared distance to the *other* rows (the
/// (k+1)-th smallest counting the self-distance 0; duplicates count as neighbours at distance
/// 0). Blocks of `block` rows; each pair of blocks is computed once and feeds both rows' lists,
/// so the cost is half of a full n × n pass. Needs n ≥ k + 1 and k ≥ 1.
pub fn knn_sq_radii(
    x: &[f64],
    n: usize,
    d: usize,
    k: usize,
    block: usize,
) -> Result<Vec<f64>, LinalgError> {
    if k == 0 || n < k + 1 || x.len() != n * d || block == 0 {
        return Err(LinalgError(format!(
            "knn_sq_radii: n = {n}, d = {d}, k = {k}, block = {block}, {} values",
            x.len()
        )));
    }
    let norms = sq_norms(x, d);
    let mut best = vec![f64::INFINITY; n * k];
    let mut buf = vec![0.0; block * block];
    for i0 in (0..n).step_by(block) {
        let i1 = (i0 + block).min(n);
        for j0 in (i0..n).step_by(block) {
            let j1 = (j0 + block).min(n);
            let (bi, bj) = (i1 - i0, j1 - j0);
            let out = &mut buf[..bi * bj];
            sq_distances(
                out,
                &x[i0 * d..i1 * d],
                &x[j0 * d..j1 * d],
                &norms[i0..i1],
                &norms[j0..j1],
                bi,
                bj,
                d,
            )?;
            for a in 0..bi {
                let i = i0 + a;
                for b in 0..bj {
                    let j = j0 + b;
                    if i0 == j0 && j <= i {
                        continue; // the diagonal block: each unordered pair once, no self
                    }
                    let v = out[a * bj + b];
                    insert_smallest(&mut best[i * k..(i + 1) * k], v);
                    insert_smallest(&mut best[j * k..(j + 1) * k], v);
                }
            }
        }
    }
    Ok((0..n).map(|i| best[i * k + k - 1]).collect())
}

/// How [`whitened_product_eigenvalues`] factored A.
#[derive(Debug, Clone, PartialEq)]
pub enum Factor {
    /// A = L Lᵀ succeeded (A is numerically positive definite); the matrix was Lᵀ B L.
    Cholesky,
    /// A = V Λ Vᵀ (Cholesky failed: A is singular or indefinite); the matrix was
    /// Λ₊^{1/2} Vᵀ B V Λ₊^{1/2} with Λ₊ = max(Λ, 0). Carries Λ (ascending, unclamped) so the
    /// caller can reject a clearly indefinite A.
    Eigen(Vec<f64>),
}

/// The eigenvalues (ascending) of a symmetric positive semi-definite matrix similar to A·B on
/// the range of A, for symmetric PSD A and B: so Σ √max(μᵢ, 0) = tr (AB)^{1/2}.
///
/// With A = L Lᵀ, A·B = L (Lᵀ B L) L⁻¹, so the matrix is Lᵀ B L: one Cholesky factorisation, two
/// products and one eigenvalues-only decomposition (≈ 1.3 s for 2048-d on 2 cores). When the
/// Cholesky factorisation breaks down (singular A: fewer samples than dimensions), A = V Λ Vᵀ
/// and W = V Λ₊^{1/2} give A·B = V Λ^{1/2} (Wᵀ B W) Λ^{-1/2} Vᵀ on the range of A, so the matrix
/// is Wᵀ B W (a full eigendecomposition: ≈ 2.7 s). Both are backward stable.
pub fn whitened_product_eigenvalues(
    a: &[f64],
    b: &[f64],
    n: usize,
) -> Result<(Factor, Vec<f64>), LinalgError> {
    whitened_product(a, b, n, false)
}

/// As [`whitened_product_eigenvalues`] but always through the eigendecomposition of A (the path
/// taken for singular A), so tests can compare the two.
pub fn whitened_product_eigenvalues_eigen(
    a: &[f64],
    b: &[f64],
    n: usize,
) -> Result<(Factor, Vec<f64>), LinalgError> {
    whitened_product(a, b, n, true)
}

fn whitened_product(
    a: &[f64],
    b: &[f64],
    n: usize,
    force_eigen: bool,
) -> Result<(Factor, Vec<f64>), LinalgError> {
    let a = square(a, n, "whitened_product_eigenvalues: a")?;
    let b = square(b, n, "whitened_product_eigenvalues: b")?;
    if !force_eigen {
        if let Ok(llt) = a.llt(Side::Lower) {
            return Ok((Factor::Cholesky, congruence_eigenvalues(b, llt.L())?));
        }
    }
    whitened_by_eigen(a, b)
}

fn whitened_by_eigen(
    a: MatRef<'_, f64>,
    b: MatRef<'_, f64>,
) -> Result<(Factor, Vec<f64>), LinalgError> {
    let n = a.nrows();
    let e = a
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| LinalgError(format!("eigendecomposition of a did not converge: {e:?}")))?;
    let lambda: Vec<f64> = (0..n).map(|i| e.S()[i]).collect();
    let u = e.U();
    let w = Mat::<f64>::from_fn(n, n, |i, j| u[(i, j)] * lambda[j].max(0.0).sqrt());
    Ok((
        Factor::Eigen(lambda),
        congruence_eigenvalues(b, w.as_ref())?,
    ))
}

/// Eigenvalues of the symmetric matrix Wᵀ B W.
fn congruence_eigenvalues(b: MatRef<'_, f64>, w: MatRef<'_, f64>) -> Result<Vec<f64>, LinalgError> {
    let n = b.nrows();
    let mut t = Mat::<f64>::zeros(n, n);
    matmul(t.as_mut(), Accum::Replace, b, w, 1.0, Par::rayon(0));
    let mut m = Mat::<f64>::zeros(n, n);
    matmul(
        m.as_mut(),
        Accum::Replace,
        w.transpose(),
        t.as_ref(),
        1.0,
        Par::rayon(0),
    );
    // The two products round differently above and below the diagonal; the symmetric solver
    // reads one triangle, so average them first.
    let m = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    m.self_adjoint_eigenvalues(Side::Lower).map_err(|e| {
        LinalgError(format!(
            "eigenvalues of the whitened product did not converge: {e:?}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A = [[2, 1], [1, 2]]: eigenvalues 1, 3 with vectors (1, −1)/√2, (1, 1)/√2.
    #[test]
    fn two_by_two() {
        let a = [2.0, 1.0, 1.0, 2.0];
        // A·I: eigenvalues of A, by either factorisation.
        let id = [1.0, 0.0, 0.0, 1.0];
        let (f, mu) = whitened_product_eigenvalues(&a, &id, 2).unwrap();
        assert_eq!(f, Factor::Cholesky);
        assert!((mu[0] - 1.0).abs() < 1e-14 && (mu[1] - 3.0).abs() < 1e-14);
        let (f, mu) = whitened_product_eigenvalues_eigen(&a, &id, 2).unwrap();
        let Factor::Eigen(l) = f else { panic!("{f:?}") };
        assert!((l[0] - 1.0).abs() < 1e-14 && (l[1] - 3.0).abs() < 1e-14);
        assert!((mu[0] - 1.0).abs() < 1e-14 && (mu[1] - 3.0).abs() < 1e-14);
        // Singular A = [[1, 1], [1, 1]] (eigenvalues 0, 2): Cholesky breaks down, the eigen path
        // gives AB's eigenvalues 0 and 2·(uᵀBu) with u = (1, 1)/√2: for B = diag(1, 3), 4.
        let (f, mu) =
            whitened_product_eigenvalues(&[1.0, 1.0, 1.0, 1.0], &[1.0, 0.0, 0.0, 3.0], 2).unwrap();
        assert!(matches!(f, Factor::Eigen(_)), "{f:?}");
        assert!(mu[0].abs() < 1e-14 && (mu[1] - 4.0).abs() < 1e-14, "{mu:?}");
        let mut c = vec![0.0; 4];
        add_gram(&mut c, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2, 1.0).unwrap();
        assert_eq!(c, vec![35.0, 44.0, 44.0, 56.0]);
        assert!(whitened_product_eigenvalues(&a, &id, 3).is_err());
        let mut g = vec![0.0; 6];
        inner_products(
            &mut g,
            &[1.0, 2.0, 3.0, 4.0],
            &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            2,
            3,
            2,
        )
        .unwrap();
        assert_eq!(g, vec![1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);
        // Points 0, 1, 3, 7 on a line, k = 2: the 2nd nearest other point.
        let x = [0.0, 1.0, 3.0, 7.0];
        for block in [1, 2, 3, 4, 8] {
            let r = knn_sq_radii(&x, 4, 1, 2, block).unwrap();
            assert_eq!(r, vec![9.0, 4.0, 9.0, 36.0], "block {block}");
        }
        // Duplicates are neighbours at distance exactly 0.
        let x = [0.5, 0.5, 2.0, 0.5];
        assert_eq!(
            knn_sq_radii(&x, 4, 1, 1, 2).unwrap(),
            vec![0.0, 0.0, 2.25, 0.0]
        );
    }
}
