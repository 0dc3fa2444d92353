//! The one call into the `gemm` crate behind the CPU host kernels (`host_attention`,
//! `host_conv`): strided f32 matrices, bounds-checked before the `unsafe` call.

/// A matrix inside a slice: element `(i, j)` is `data[at + i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub at: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Mat<'_> {
    /// Whether every element of a `rows x cols` matrix lies inside `data`.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        let last = (rows - 1)
            .checked_mul(self.rs)
            .and_then(|r| r.checked_add((cols - 1).checked_mul(self.cs)?))
            .and_then(|r| r.checked_add(self.at));
        last.is_some_and(|last| last < self.data.len())
    }
}

/// `dst = beta · a · b`, or `dst += beta · a · b` when `accumulate`: `a` is `m x k`, `b` is
/// `k x n`, `dst` is `m x n` with element `(i, j)` at `dst[i·dst_rs + j·dst_cs]`.
/// Single-threaded (the callers run in parallel). Panics when an operand does not hold its
/// matrix or a size is zero: the callers size them, so that is a bug, not bad input.
pub(crate) fn gemm_f32(
    dst: &mut [f32],
    [dst_rs, dst_cs]: [usize; 2],
    a: Mat<'_>,
    b: Mat<'_>,
    [m, n, k]: [usize; 3],
    accumulate: bool,
    beta: f32,
) {
    let dst_mat = Mat {
        data: dst,
        at: 0,
        rs: dst_rs,
        cs: dst_cs,
    };
    assert!(
        m > 0 && n > 0 && k > 0 && dst_mat.holds(m, n) && a.holds(m, k) && b.holds(k, n),
        "gemm_f32: an operand does not hold its matrix of [{m}, {n}, {k}]"
    );
    // SAFETY: the assertion above puts every element gemm reads or writes inside its slice:
    // with non-negative strides, the largest index of each `rows x cols` operand is
    // `at + (rows - 1)·rs + (cols - 1)·cs`, checked (without overflow) against the slice's
    // length; the pointers are offset by `at`, itself inside the slice. `dst` is a unique
    // borrow, so it aliases neither input.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr().add(a.at),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.at),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_operands_and_accumulation() {
        // a: 2 x 3 stored column-major after one unused value; b: 3 x 2 row-major, read
        // transposed from a 2 x 3 layout.
        let a_store = [9.0, 1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        let a = Mat {
            data: &a_store,
            at: 1,
            rs: 1,
            cs: 2,
        };
        let b_store = [1.0, 0.0, 2.0, 1.0, 1.0, 0.5];
        let b = Mat {
            data: &b_store,
            at: 0,
            rs: 1,
            cs: 3,
        };
        // a = [[1, 2, 3], [4, 5, 6]], b = [[1, 1], [0, 1], [2, 0.5]].
        let mut dst = [0.0f32; 4];
        gemm_f32(&mut dst, [2, 1], a, b, [2, 2, 3], false, 1.0);
        assert_eq!(dst, [7.0, 4.5, 16.0, 12.0]);
        gemm_f32(&mut dst, [2, 1], a, b, [2, 2, 3], true, 0.5);
        assert_eq!(dst, [10.5, 6.75, 24.0, 18.0]);
    }

    #[test]
    #[should_panic(expected = "does not hold")]
    fn an_operand_too_short_is_refused_before_gemm() {
        let a = Mat {
            data: &[1.0; 5],
            at: 0,
            rs: 3,
            cs: 1,
        };
        let mut dst = [0.0f32; 4];
        gemm_f32(&mut dst, [2, 1], a, a, [2, 2, 3], false, 1.0);
    }
}
