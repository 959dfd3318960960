//! BatchNorm1d and its dual (clean / adversarial) form (docs/SPEC.md §2).

use crate::real::Real;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, Zip};

/// What the forward pass remembers for the backward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct BnCache<F> {
    /// `x̂ = (x − μ) / √(σ² + eps_bn)`, `N x h`.
    pub x_hat: Array2<F>,
    /// `1 / √(σ² + eps_bn)` per feature, `h`.
    pub inv_std: Array1<F>,
    /// `true` when `μ, σ²` were the batch's own statistics (training mode),
    /// so the backward pass must include their dependence on `x`.
    pub batch_stats: bool,
}

/// The statistics of one training-mode batch, kept so the running averages
/// can be updated later (or not, for the adversarial generation pass).
#[derive(Debug, Clone, PartialEq)]
pub struct BnStats<F> {
    /// Batch mean `μ`, `h`.
    pub mean: Array1<F>,
    /// Unbiased batch variance `Σ(x − μ)² / (N − 1)`, `h` (what PyTorch
    /// folds into `running_var`).
    pub var_unbiased: Array1<F>,
}

/// Training-mode BatchNorm1d:
///
/// ```text
/// μ  = (1/N) Σ_n x[n]            σ² = (1/N) Σ_n (x[n] − μ)²   (biased)
/// x̂ = (x − μ) / √(σ² + eps_bn)   y  = γ ⊙ x̂ + β
/// ```
///
/// Shapes: `x: N x h`, `gamma, beta: h` → `y: N x h`. `N >= 2`.
pub(crate) fn batchnorm_forward_train<F: Real>(
    x: ArrayView2<'_, F>,
    gamma: ArrayView1<'_, F>,
    beta: ArrayView1<'_, F>,
    eps_bn: f64,
) -> (Array2<F>, BnCache<F>, BnStats<F>) {
    let n = F::c(x.nrows() as f64);
    let mean = x.sum_axis(Axis(0)) / n;
    let centered = &x - &mean;
    let sq_sum = centered.mapv(|v| v * v).sum_axis(Axis(0));
    let var_biased = &sq_sum / n;
    let var_unbiased = &sq_sum / (n - F::one());
    let inv_std = var_biased.mapv(|v| F::one() / (v + F::c(eps_bn)).sqrt());
    let x_hat = &centered * &inv_std;
    let y = &x_hat * &gamma + beta;
    (
        y,
        BnCache {
            x_hat,
            inv_std,
            batch_stats: true,
        },
        BnStats { mean, var_unbiased },
    )
}

/// Evaluation-mode BatchNorm1d: `y = γ ⊙ (x − running_mean) / √(running_var + eps_bn) + β`.
///
/// Shapes: `x: N x h`, all vectors `h` → `y: N x h`.
pub(crate) fn batchnorm_forward_eval<F: Real>(
    x: ArrayView2<'_, F>,
    gamma: ArrayView1<'_, F>,
    beta: ArrayView1<'_, F>,
    running_mean: ArrayView1<'_, F>,
    running_var: ArrayView1<'_, F>,
    eps_bn: f64,
) -> (Array2<F>, BnCache<F>) {
    let inv_std = running_var.mapv(|v| F::one() / (v + F::c(eps_bn)).sqrt());
    let x_hat = (&x - &running_mean) * &inv_std;
    let y = &x_hat * &gamma + beta;
    (
        y,
        BnCache {
            x_hat,
            inv_std,
            batch_stats: false,
        },
    )
}

/// Backward of either forward. With `g = dy` and per-feature sums over the batch:
///
/// ```text
/// dβ = Σ_n g[n]        dγ = Σ_n g[n] ⊙ x̂[n]
/// batch statistics:    dx = γ ⊙ inv_std / N ⊙ (N g − dβ − x̂ ⊙ dγ)
/// running statistics:  dx = γ ⊙ inv_std ⊙ g
/// ```
///
/// Shapes: `dy: N x h`, `gamma: h` → `(dx: N x h, dγ: h, dβ: h)`.
pub(crate) fn batchnorm_backward<F: Real>(
    dy: ArrayView2<'_, F>,
    gamma: ArrayView1<'_, F>,
    cache: &BnCache<F>,
) -> (Array2<F>, Array1<F>, Array1<F>) {
    let dbeta = dy.sum_axis(Axis(0));
    let dgamma = (&dy * &cache.x_hat).sum_axis(Axis(0));
    let scale = &gamma * &cache.inv_std;
    let dx = if cache.batch_stats {
        let n = F::c(dy.nrows() as f64);
        let mut dx = Array2::zeros(dy.raw_dim());
        // the formula above, element by element; rows in parallel
        Zip::from(dx.rows_mut())
            .and(dy.rows())
            .and(cache.x_hat.rows())
            .par_for_each(|mut dx, g, xh| {
                Zip::from(&mut dx)
                    .and(&g)
                    .and(&xh)
                    .and(&scale)
                    .and(&dbeta)
                    .and(&dgamma)
                    .for_each(|d, &g, &xh, &s, &db, &dg| *d = s / n * (n * g - db - xh * dg));
            });
        dx
    } else {
        &dy * &scale
    };
    (dx, dgamma, dbeta)
}

/// One BatchNorm1d: affine parameters and running statistics (its momentum
/// and `eps_bn` are the encoder's [`crate::encoder::MlpConfig`]'s).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm1d<F> {
    /// `γ` (PyTorch `weight`), initialised to 1.
    pub gamma: Array1<F>,
    /// `β` (PyTorch `bias`), initialised to 0.
    pub beta: Array1<F>,
    /// Running mean, initialised to 0.
    pub running_mean: Array1<F>,
    /// Running (unbiased) variance, initialised to 1.
    pub running_var: Array1<F>,
}

impl<F: Real> BatchNorm1d<F> {
    /// PyTorch's initial state for `h` features.
    pub(crate) fn new(h: usize) -> Self {
        BatchNorm1d {
            gamma: Array1::ones(h),
            beta: Array1::zeros(h),
            running_mean: Array1::zeros(h),
            running_var: Array1::ones(h),
        }
    }

    /// PyTorch's update with momentum `m`, `running = (1 − m) running + m
    /// stat`, with the unbiased variance for `running_var`, returned as new
    /// `(running_mean, running_var)` (the caller checks and commits them).
    pub(crate) fn running_after(
        &self,
        stats: &BnStats<F>,
        momentum: f64,
    ) -> (Array1<F>, Array1<F>) {
        let m = F::c(momentum);
        let keep = F::one() - m;
        let update = |running: &Array1<F>, stat: &Array1<F>| {
            Zip::from(running)
                .and(stat)
                .map_collect(|&r, &s| m * s + keep * r)
        };
        (
            update(&self.running_mean, &stats.mean),
            update(&self.running_var, &stats.var_unbiased),
        )
    }
}

/// Two independent BatchNorm1d layers (AdvProp-style): `clean` for clean
/// inputs (and evaluation), `adv` for adversarial inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct DualBatchNorm1d<F> {
    /// Branch for clean views, momentum 0.1 by default.
    pub clean: BatchNorm1d<F>,
    /// Branch for adversarial views, momentum 0.01 by default.
    pub adv: BatchNorm1d<F>,
}

impl<F> DualBatchNorm1d<F> {
    /// The branch `branch`.
    pub fn branch(&self, branch: crate::encoder::Branch) -> &BatchNorm1d<F> {
        match branch {
            crate::encoder::Branch::Clean => &self.clean,
            crate::encoder::Branch::Adv => &self.adv,
        }
    }

    /// The branch `branch`, mutably.
    pub fn branch_mut(&mut self, branch: crate::encoder::Branch) -> &mut BatchNorm1d<F> {
        match branch {
            crate::encoder::Branch::Clean => &mut self.clean,
            crate::encoder::Branch::Adv => &mut self.adv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn small_cases() {
        let (y, cache, stats) = batchnorm_forward_train(
            array![[1.0], [3.0]].view(),
            array![1.0].view(),
            array![0.0].view(),
            0.0,
        );
        assert_eq!(y, array![[-1.0], [1.0]]);
        assert_eq!(stats.var_unbiased, array![2.0]);
        // a gradient equal to a constant shift is annihilated by the mean subtraction
        let (dx, _, dbeta) =
            batchnorm_backward(array![[1.0], [1.0]].view(), array![1.0].view(), &cache);
        assert_eq!(dx, array![[0.0], [0.0]]);
        assert_eq!(dbeta, array![2.0]);
        let (y, _) = batchnorm_forward_eval(
            array![[3.0]].view(),
            array![2.0].view(),
            array![1.0].view(),
            array![1.0].view(),
            array![4.0].view(),
            0.0,
        );
        assert_eq!(y, array![[3.0]]); // 2 * (3 - 1) / 2 + 1
    }

    #[test]
    fn running_update_is_pytorch_rule() {
        let bn = BatchNorm1d::<f64>::new(1);
        let (mean, var) = bn.running_after(
            &BnStats {
                mean: array![2.0],
                var_unbiased: array![3.0],
            },
            0.1,
        );
        assert!((mean[0] - 0.2).abs() < 1e-15);
        assert!((var[0] - 1.2).abs() < 1e-15);
    }
}
