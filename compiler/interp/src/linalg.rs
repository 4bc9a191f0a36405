//! Matrix factorizations (`svd_u`/`svd_s`/`svd_vh`, `qr_q`/`qr_r`) and linear solves
//! (`solve`), on the last two axes, in `f64`, rounded once to the node dtype.
//!
//! - **QR** is Householder's, with LAPACK's reflector convention (`dlarfg`): column `j`'s
//!   reflector maps `x = A[j.., j]` to `β·e₀` with `β = −sign(x₀)·‖x‖` (no reflection when
//!   `x[1..]` is zero), so `R`'s diagonal has the signs `torch.linalg.qr` gives. `Q` is the
//!   product of the reflectors applied to the first `k` columns of the identity.
//! - **SVD** is one-sided Jacobi (Hestenes) on the columns of `x` (of `xᵀ` when `m < n`),
//!   swept until no pair is further than `1e-15` from orthogonal. Singular values descend;
//!   each singular pair is signed so that the entry of largest magnitude in its column of `U`
//!   is positive (LAPACK leaves the sign open; callers that compare with it match signs).
//!   Columns for a zero singular value are completed to an orthonormal set.
//! - **Solve** is Gaussian elimination with partial pivoting (LAPACK's `getrf`/`getrs`, as
//!   `torch.linalg.solve` calls): the row of largest magnitude in each column is the pivot;
//!   an exactly zero pivot is [`InterpError::Singular`].

use crate::tensor::{Data, round_f64};
use crate::{Ctx, InterpError, Tensor};
use graft_ir::{DType, FactorOp};

/// The three results of one factorization: (U, S, Vh) or (Q, [], R), row-major.
type Factors = (Vec<f64>, Vec<f64>, Vec<f64>);

/// The last factorization computed on this thread: `@init` asks for each factor of one
/// matrix in turn (PiSSA reads U, S and Vh of W), and each is one op.
struct Cached {
    is_svd: bool,
    shape: Vec<usize>,
    input: Vec<f64>,
    factors: Vec<Factors>,
}

thread_local! {
    static LAST: std::cell::RefCell<Option<Cached>> = const { std::cell::RefCell::new(None) };
}

/// `op` of the operand's matrices (every leading index is one matrix).
pub(crate) fn factor(ctx: &Ctx<'_>, op: FactorOp) -> Result<Tensor, InterpError> {
    let x = ctx.arg(0)?;
    let shape = x.shape();
    let r = shape.len();
    if r < 2 {
        return Err(ctx.unsupported("expects a matrix"));
    }
    let (m, n) = (shape[r - 2], shape[r - 1]);
    let v = x.to_f64_vec();
    let is_svd = matches!(op, FactorOp::SvdU | FactorOp::SvdS | FactorOp::SvdVh);
    let factors = LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some(c) if c.is_svd == is_svd && c.shape == shape && c.input == v => c.factors.clone(),
            _ => {
                // An empty matrix has empty factors (k = 0).
                let batches = if m * n == 0 { 0 } else { v.len() / (m * n) };
                let f: Vec<Factors> = v
                    .chunks(m * n.max(1))
                    .take(batches)
                    .map(|a| if is_svd { svd(a, m, n) } else { qr(a, m, n) })
                    .collect();
                *last = Some(Cached {
                    is_svd,
                    shape: shape.to_vec(),
                    input: v.clone(),
                    factors: f.clone(),
                });
                f
            }
        }
    });
    let mut out = Vec::with_capacity(ctx.ty.numel());
    for f in factors {
        out.extend(match op {
            FactorOp::QrQ | FactorOp::SvdU => f.0,
            FactorOp::SvdS => f.1,
            FactorOp::QrR | FactorOp::SvdVh => f.2,
        });
    }
    f64_result(ctx, out)
}

/// The node's result from values computed in `f64`, rounded once to its dtype.
fn f64_result(ctx: &Ctx<'_>, out: Vec<f64>) -> Result<Tensor, InterpError> {
    let dt = ctx.ty.dtype;
    let data = match dt {
        DType::F64 => Data::F64(out),
        _ => Data::F32(out.into_iter().map(|x| round_f64(dt, x)).collect()),
    };
    ctx.result(data)
}

/// `solve(A, B)`: X with A·X = B for every matrix of the batch.
pub(crate) fn solve(ctx: &Ctx<'_>) -> Result<Tensor, InterpError> {
    let (a, b) = (ctx.arg(0)?, ctx.arg(1)?);
    let (sa, sb) = (a.shape(), b.shape());
    let r = sa.len();
    if r < 2 || sb.len() != r {
        return Err(ctx.unsupported("expects matrices"));
    }
    let (n, k) = (sa[r - 1], sb[r - 1]);
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let batches = if n == 0 { 0 } else { av.len() / (n * n) };
    let mut out = Vec::with_capacity(ctx.ty.numel());
    for i in 0..batches {
        let x = lu_solve(
            &av[i * n * n..(i + 1) * n * n],
            &bv[i * n * k..(i + 1) * n * k],
            n,
            k,
        )
        .ok_or(InterpError::Singular {
            node: ctx.node,
            batch: i,
        })?;
        out.extend(x);
    }
    f64_result(ctx, out)
}

/// X [n, k] with A·X = B for row-major A [n, n] and B [n, k]; `None` if A is singular.
fn lu_solve(a: &[f64], b: &[f64], n: usize, k: usize) -> Option<Vec<f64>> {
    let (mut a, mut x) = (a.to_vec(), b.to_vec());
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i * n + c].abs().total_cmp(&a[j * n + c].abs()))?;
        if a[p * n + c] == 0.0 || !a[p * n + c].is_finite() {
            return None;
        }
        if p != c {
            for j in 0..n {
                a.swap(c * n + j, p * n + j);
            }
            for j in 0..k {
                x.swap(c * k + j, p * k + j);
            }
        }
        let d = a[c * n + c];
        for i in c + 1..n {
            let f = a[i * n + c] / d;
            if f == 0.0 {
                continue;
            }
            for j in c..n {
                a[i * n + j] -= f * a[c * n + j];
            }
            for j in 0..k {
                x[i * k + j] -= f * x[c * k + j];
            }
        }
    }
    for c in (0..n).rev() {
        let d = a[c * n + c];
        for j in 0..k {
            let mut v = x[c * k + j];
            for t in c + 1..n {
                v -= a[c * n + t] * x[t * k + j];
            }
            x[c * k + j] = v / d;
        }
    }
    Some(x)
}

/// `(Q [m, k], [], R [k, n])` of the row-major `a` [m, n].
fn qr(a: &[f64], m: usize, n: usize) -> Factors {
    let k = m.min(n);
    let mut a = a.to_vec();
    let mut reflectors = Vec::with_capacity(k);
    for j in 0..k {
        let alpha = a[j * n + j];
        let xnorm = (j + 1..m).map(|i| a[i * n + j].powi(2)).sum::<f64>().sqrt();
        if xnorm == 0.0 {
            reflectors.push((0.0, vec![1.0]));
            continue;
        }
        let beta = -alpha.signum() * alpha.hypot(xnorm);
        let tau = (beta - alpha) / beta;
        let mut v = vec![1.0];
        v.extend((j + 1..m).map(|i| a[i * n + j] / (alpha - beta)));
        a[j * n + j] = beta;
        for i in j + 1..m {
            a[i * n + j] = 0.0;
        }
        // A[j.., j+1..] -= τ·v·(vᵀ·A[j.., j+1..])
        for c in j + 1..n {
            let dot: f64 = (j..m).map(|i| v[i - j] * a[i * n + c]).sum();
            for i in j..m {
                a[i * n + c] -= tau * v[i - j] * dot;
            }
        }
        reflectors.push((tau, v));
    }
    let mut r = vec![0.0; k * n];
    for i in 0..k {
        for c in i..n {
            r[i * n + c] = a[i * n + c];
        }
    }
    // Q = H₀·H₁·…·H_{k−1}·I[:, ..k], applied from the last reflector back.
    let mut q = vec![0.0; m * k];
    for i in 0..k {
        q[i * k + i] = 1.0;
    }
    for (j, (tau, v)) in reflectors.iter().enumerate().rev() {
        for c in 0..k {
            let dot: f64 = (j..m).map(|i| v[i - j] * q[i * k + c]).sum();
            for i in j..m {
                q[i * k + c] -= tau * v[i - j] * dot;
            }
        }
    }
    (q, Vec::new(), r)
}

/// `(U [m, k], S [k], Vh [k, n])` of the row-major `a` [m, n].
fn svd(a: &[f64], m: usize, n: usize) -> Factors {
    if m < n {
        // xᵀ = U'·S·V'ᵀ, so x = V'·S·U'ᵀ: U = V', Vh = U'ᵀ.
        let at = transpose(a, m, n);
        let (u2, s, vh2) = svd(&at, n, m);
        return (transpose(&vh2, m, m), s, transpose(&u2, n, m));
    }
    // m ≥ n: orthogonalize the columns of a, kept as the rows of `cols` [n, m].
    let mut cols = transpose(a, m, n);
    let mut v = vec![0.0; n * n]; // rows: the columns of V
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (cp, cq) = (&cols[p * m..(p + 1) * m], &cols[q * m..(q + 1) * m]);
                let alpha: f64 = cp.iter().map(|x| x * x).sum();
                let beta: f64 = cq.iter().map(|x| x * x).sum();
                let gamma: f64 = cp.iter().zip(cq).map(|(x, y)| x * y).sum();
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(&mut cols, m, p, q, c, s);
                rotate(&mut v, n, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = (0..n)
        .map(|j| {
            cols[j * m..(j + 1) * m]
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| norms[j].total_cmp(&norms[i]));
    let scale = norms.iter().copied().fold(0.0, f64::max);
    let mut u_rows: Vec<Vec<f64>> = Vec::with_capacity(n); // the columns of U
    let mut s = Vec::with_capacity(n);
    let mut vh = Vec::with_capacity(n * n);
    for &j in &order {
        let sigma = norms[j];
        let mut u: Vec<f64> = if sigma > scale * 1e-14 && sigma > 0.0 {
            cols[j * m..(j + 1) * m].iter().map(|x| x / sigma).collect()
        } else {
            complete(&u_rows, m)
        };
        let mut vj = v[j * n..(j + 1) * n].to_vec();
        let big = u
            .iter()
            .copied()
            .fold(0.0f64, |b, x| if x.abs() > b.abs() { x } else { b });
        if big < 0.0 {
            u.iter_mut().for_each(|x| *x = -*x);
            vj.iter_mut().for_each(|x| *x = -*x);
        }
        u_rows.push(u);
        s.push(sigma);
        vh.extend(vj);
    }
    let u: Vec<f64> = u_rows.concat();
    (transpose(&u, n, m), s, vh)
}

/// Rows `p` and `q` of the row-major `x` [_, len] rotated by (c, s):
/// `p ← c·p − s·q`, `q ← s·p + c·q`.
fn rotate(x: &mut [f64], len: usize, p: usize, q: usize, c: f64, s: f64) {
    for i in 0..len {
        let (a, b) = (x[p * len + i], x[q * len + i]);
        x[p * len + i] = c * a - s * b;
        x[q * len + i] = s * a + c * b;
    }
}

/// A unit vector of length `m` orthogonal to every vector of `basis` (Gram–Schmidt on the
/// first standard basis vector that is not in their span).
fn complete(basis: &[Vec<f64>], m: usize) -> Vec<f64> {
    for e in 0..m {
        let mut u = vec![0.0; m];
        u[e] = 1.0;
        for _ in 0..2 {
            for b in basis {
                let d: f64 = u.iter().zip(b).map(|(x, y)| x * y).sum();
                u.iter_mut().zip(b).for_each(|(x, y)| *x -= d * y);
            }
        }
        let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-8 {
            return u.into_iter().map(|x| x / norm).collect();
        }
    }
    vec![0.0; m]
}

/// The row-major `a` [rows, cols] transposed.
fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
            }
        }
        c
    }

    fn sample(m: usize, n: usize) -> Vec<f64> {
        (0..m * n)
            .map(|i| ((i * 7919 + 13) % 101) as f64 / 50.0 - 1.0)
            .collect()
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// Q·R reproduces x and QᵀQ = I, for tall, wide and square x; tolerance 1e-12.
    #[test]
    fn qr_reconstructs() {
        for (m, n) in [(7, 4), (4, 7), (5, 5)] {
            let a = sample(m, n);
            let (q, _, r) = qr(&a, m, n);
            let k = m.min(n);
            assert!(max_diff(&matmul(&q, &r, m, k, n), &a) < 1e-12);
            let qtq = matmul(&transpose(&q, m, k), &q, k, m, k);
            let eye: Vec<f64> = (0..k * k)
                .map(|i| f64::from(u8::from(i % (k + 1) == 0)))
                .collect();
            assert!(max_diff(&qtq, &eye) < 1e-12);
            for i in 0..k {
                for j in 0..i {
                    assert_eq!(r[i * n + j], 0.0);
                }
            }
        }
    }

    /// U·diag(S)·Vh reproduces x, UᵀU = I, S descends; tolerance 1e-12.
    #[test]
    fn svd_reconstructs() {
        for (m, n) in [(7, 4), (4, 7), (6, 6)] {
            let a = sample(m, n);
            let (u, s, vh) = svd(&a, m, n);
            let k = m.min(n);
            let mut us = u.clone();
            for i in 0..m {
                for j in 0..k {
                    us[i * k + j] *= s[j];
                }
            }
            assert!(max_diff(&matmul(&us, &vh, m, k, n), &a) < 1e-12);
            let utu = matmul(&transpose(&u, m, k), &u, k, m, k);
            let eye: Vec<f64> = (0..k * k)
                .map(|i| f64::from(u8::from(i % (k + 1) == 0)))
                .collect();
            assert!(max_diff(&utu, &eye) < 1e-12);
            assert!(s.windows(2).all(|w| w[0] >= w[1]));
        }
    }

    /// A rank-deficient matrix still gets an orthonormal U (zero singular values completed).
    #[test]
    fn svd_of_rank_one() {
        let a = [1.0, 2.0, 2.0, 4.0, 3.0, 6.0];
        let (u, s, _) = svd(&a, 3, 2);
        assert!(s[1].abs() < 1e-12);
        let utu = matmul(&transpose(&u, 3, 2), &u, 2, 3, 2);
        assert!(max_diff(&utu, &[1.0, 0.0, 0.0, 1.0]) < 1e-12);
    }
}
