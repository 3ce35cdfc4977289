//! Dense f64 linear algebra for diffuq's metrics, behind non-generic functions.
//!
//! Why a separate crate: faer's solvers are generic, and Rust monomorphises generic code in the
//! crate that *calls* it, at that crate's optimisation level. diffuq itself builds at opt-level 1
//! in the dev profile (compile time), which made a 2048-d symmetric eigendecomposition 3.5×
//! slower (4.8 s instead of 1.4 s) even though faer's own profile says opt-level 3. The functions
//! here are instantiated once, in this crate, which the workspace profile builds at opt-level 3.
//!
//! Matrices are row-major `&[f64]` slices with explicit sizes; all products use every rayon
//! thread.

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

/// Eigenvalues (ascending) of the symmetric matrix `a` (n × n; only the lower triangle is read).
pub fn sym_eigenvalues(a: &[f64], n: usize) -> Result<Vec<f64>, LinalgError> {
    square(a, n, "sym_eigenvalues")?
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| LinalgError(format!("symmetric eigenvalues did not converge: {e:?}")))
}

/// Eigenvalues (ascending) and eigenvectors of the symmetric matrix `a` (lower triangle read):
/// returns (λ, V) with V row-major n × n and column j the eigenvector of λ_j.
pub fn sym_eigen(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>), LinalgError> {
    let e = square(a, n, "sym_eigen")?
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| {
            LinalgError(format!(
                "symmetric eigendecomposition did not converge: {e:?}"
            ))
        })?;
    let lambda = (0..n).map(|i| e.S()[i]).collect();
    let u = e.U();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            v[i * n + j] = u[(i, j)];
        }
    }
    Ok((lambda, v))
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

/// The eigenvalues (ascending) of the symmetric positive semi-definite matrix
/// Λ^{1/2} Vᵀ B V Λ^{1/2}, where A = V Λ Vᵀ (Λ clamped at 0). They are the eigenvalues of A·B
/// (for symmetric PSD A and B, AB is similar to this matrix on the range of A), so
/// Σ √μᵢ = tr (AB)^{1/2}. Also returns Λ (ascending, unclamped) so the caller can check that A
/// is positive semi-definite.
pub fn whitened_product_eigenvalues(
    a: &[f64],
    b: &[f64],
    n: usize,
) -> Result<(Vec<f64>, Vec<f64>), LinalgError> {
    let a = square(a, n, "whitened_product_eigenvalues: a")?;
    let b = square(b, n, "whitened_product_eigenvalues: b")?;
    let e = a
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| LinalgError(format!("eigendecomposition of a did not converge: {e:?}")))?;
    let lambda: Vec<f64> = (0..n).map(|i| e.S()[i]).collect();
    let u = e.U();
    let w = Mat::<f64>::from_fn(n, n, |i, j| u[(i, j)] * lambda[j].max(0.0).sqrt());
    let mut t = Mat::<f64>::zeros(n, n);
    matmul(
        t.as_mut(),
        Accum::Replace,
        b,
        w.as_ref(),
        1.0,
        Par::rayon(0),
    );
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
    let mu = m.self_adjoint_eigenvalues(Side::Lower).map_err(|e| {
        LinalgError(format!(
            "eigenvalues of the whitened product did not converge: {e:?}"
        ))
    })?;
    Ok((lambda, mu))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A = [[2, 1], [1, 2]]: eigenvalues 1, 3 with vectors (1, −1)/√2, (1, 1)/√2.
    #[test]
    fn two_by_two() {
        let a = [2.0, 1.0, 1.0, 2.0];
        let (l, v) = sym_eigen(&a, 2).unwrap();
        assert!((l[0] - 1.0).abs() < 1e-14 && (l[1] - 3.0).abs() < 1e-14);
        let s = std::f64::consts::FRAC_1_SQRT_2;
        assert!((v[0].abs() - s).abs() < 1e-14 && (v[0] + v[2]).abs() < 1e-14);
        assert_eq!(sym_eigenvalues(&a, 2).unwrap().len(), 2);
        // A·I: eigenvalues of A.
        let (_, mu) = whitened_product_eigenvalues(&a, &[1.0, 0.0, 0.0, 1.0], 2).unwrap();
        assert!((mu[0] - 1.0).abs() < 1e-14 && (mu[1] - 3.0).abs() < 1e-14);
        let mut c = vec![0.0; 4];
        add_gram(&mut c, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2, 1.0).unwrap();
        assert_eq!(c, vec![35.0, 44.0, 44.0, 56.0]);
        assert!(sym_eigen(&a, 3).is_err());
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
    }
}
