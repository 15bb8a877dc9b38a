//! CPU helpers the tasks' hand-written kernels share.

/// out (m x n) = a * b, or += with `accumulate`: a is m rows of k floats starting `a_stride` apart
/// (rows may overlap: a stride-1 convolution reads its padded input in place), b is k x n, all
/// row-major.
pub fn matmul(
    (a, a_stride): (&[f32], usize),
    b: &[f32],
    out: &mut [f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    assert!(m > 0 && a.len() >= (m - 1) * a_stride + k, "matmul: the left operand is too short");
    assert!(b.len() >= k * n && out.len() >= m * n, "matmul: operands too short");
    // SAFETY: the asserts keep every element the strides describe inside its slice; out is
    // written only, and aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            a_stride as isize,
            b.as_ptr(),
            1,
            n as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
