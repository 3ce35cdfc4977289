use std::time::Instant;
fn main() {
    for &(m, n, k) in &[
        (1024usize, 1024usize, 1024usize),
        (64, 256, 576),
        (192, 1225, 720),
        (64, 21609, 288),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32).collect();
        let mut c = vec![0f32; m * n];
        let reps = (2e10 / (2.0 * (m * n * k) as f64)).max(3.0) as usize;
        for par in [gemm::Parallelism::None, gemm::Parallelism::Rayon(2)] {
            let s = Instant::now();
            for _ in 0..reps {
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    );
                }
            }
            let t = s.elapsed().as_secs_f64() / reps as f64;
            println!(
                "gemm {m}x{n}x{k} {:?}: {:.2} ms {:.1} GFLOP/s",
                matches!(par, gemm::Parallelism::None),
                t * 1e3,
                2.0 * (m * n * k) as f64 / t / 1e9
            );
        }
        for par in [faer::Par::Seq, faer::Par::rayon(2)] {
            let s = Instant::now();
            for _ in 0..reps {
                let am = faer::MatRef::from_row_major_slice(&a, m, k);
                let bm = faer::MatRef::from_row_major_slice(&b, k, n);
                let cm = faer::MatMut::from_row_major_slice_mut(&mut c, m, n);
                faer::linalg::matmul::matmul(cm, faer::Accum::Replace, am, bm, 1.0f32, par);
            }
            let t = s.elapsed().as_secs_f64() / reps as f64;
            println!(
                "faer {m}x{n}x{k} seq={:?}: {:.2} ms {:.1} GFLOP/s",
                matches!(par, faer::Par::Seq),
                t * 1e3,
                2.0 * (m * n * k) as f64 / t / 1e9
            );
        }
    }
}
