//! Small summary statistics shared by reports.

/// Mean and sample standard deviation (ddof = 1; 0 for fewer than two values).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_numpy_ddof1() {
        // numpy.std([1, 2, 3, 4], ddof=1) = 1.2909944487358056
        let (m, s) = super::mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        approx::assert_relative_eq!(s, 1.2909944487358056, max_relative = 1e-15);
        assert_eq!(super::mean_std(&[3.0]), (3.0, 0.0));
    }
}
