//! Evaluation of frozen embeddings: weighted kNN, a linear probe, and the
//! reference's representation diagnostics.
//!
//! The kNN classifier is the InstDisc/UEL protocol (Wu et al. 2018; Ye et al.
//! 2019), the one the CLAE paper reports:
//!
//! ```text
//! s_j     = cos(z_test, z_train[j])              cosine similarity
//! N_k     = the k training rows with the largest s_j
//! w_j     = exp(s_j / T)                         T = 0.1
//! score_c = Σ_{j ∈ N_k, y_j = c} w_j
//! ŷ       = argmax_c score_c                     (ties: the smallest class)
//! ```
//!
//! With `k = 1` the weights do not matter: it is the nearest neighbour.

use super::{DigitsError, Result};
use clae_reference::diagnostics::{alignment, effective_rank, uniformity};
use ndarray::{Array1, Array2, ArrayView2, Axis};

/// The kNN protocol's `k`.
pub const KNN_K: usize = 200;
/// The kNN protocol's temperature.
pub const KNN_T: f64 = 0.1;

fn check_labelled(
    what: &str,
    x: ArrayView2<'_, f32>,
    labels: &[usize],
    classes: usize,
) -> Result<()> {
    if x.nrows() == 0 || x.ncols() == 0 {
        return Err(DigitsError::config(
            what,
            "needs at least one row and one column",
        ));
    }
    if x.nrows() != labels.len() {
        return Err(DigitsError::config(
            what,
            format!("{} rows but {} labels", x.nrows(), labels.len()),
        ));
    }
    if let Some(&bad) = labels.iter().find(|&&y| y >= classes) {
        return Err(DigitsError::config(
            what,
            format!("label {bad} is not below the number of classes {classes}"),
        ));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(DigitsError::config(what, "contains NaN or infinity"));
    }
    Ok(())
}

/// Rows scaled to unit L2 norm (zero rows stay zero), in `f64`.
fn unit_rows(x: ArrayView2<'_, f32>) -> Array2<f64> {
    let mut out = x.mapv(|v| v as f64);
    for mut row in out.outer_iter_mut() {
        let norm = row.dot(&row).sqrt();
        if norm > 0.0 {
            row.mapv_inplace(|v| v / norm);
        }
    }
    out
}

/// Top-1 accuracy of the weighted kNN classifier in the module docs
/// (`k` is capped at the number of training rows). Features need not be
/// normalised: similarities are cosines.
///
/// ```
/// use ndarray::array;
/// use clae_replication::digits::eval::knn_top1;
/// let train = array![[1.0f32, 0.0], [0.9, 0.1], [0.0, 1.0]];
/// let test = array![[1.0f32, 0.2], [0.1, 1.0]];
/// let acc = knn_top1(train.view(), &[0, 0, 1], test.view(), &[0, 1], 2, 1, 0.1).unwrap();
/// assert_eq!(acc, 1.0);
/// ```
pub fn knn_top1(
    train: ArrayView2<'_, f32>,
    train_labels: &[usize],
    test: ArrayView2<'_, f32>,
    test_labels: &[usize],
    classes: usize,
    k: usize,
    temperature: f64,
) -> Result<f64> {
    check_labelled("kNN test set", test, test_labels, classes)?;
    let pred = knn_predict(train, train_labels, test, classes, k, temperature)?;
    let hits = pred.iter().zip(test_labels).filter(|(p, y)| p == y).count();
    Ok(hits as f64 / test_labels.len() as f64)
}

/// Predicted class of every test row by the weighted kNN classifier.
pub fn knn_predict(
    train: ArrayView2<'_, f32>,
    train_labels: &[usize],
    test: ArrayView2<'_, f32>,
    classes: usize,
    k: usize,
    temperature: f64,
) -> Result<Vec<usize>> {
    check_labelled("kNN training set", train, train_labels, classes)?;
    if test.ncols() != train.ncols() || test.iter().any(|v| !v.is_finite()) {
        return Err(DigitsError::config(
            "kNN test set",
            format!(
                "needs {} finite columns like the training set, got {:?}",
                train.ncols(),
                test.dim()
            ),
        ));
    }
    if k == 0 || !(temperature.is_finite() && temperature > 0.0) {
        return Err(DigitsError::config(
            "kNN",
            format!("needs k >= 1 and a finite temperature > 0, got k = {k}, T = {temperature}"),
        ));
    }
    let k = k.min(train.nrows());
    let sims = unit_rows(test).dot(&unit_rows(train).t());
    let mut order: Vec<usize> = (0..train.nrows()).collect();
    let mut pred = Vec::with_capacity(test.nrows());
    for row in sims.outer_iter() {
        // Descending similarity; ties broken by training index, so the
        // result does not depend on the sort's internals.
        let by_sim = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, by_sim);
        }
        let mut score = vec![0.0f64; classes];
        for &j in &order[..k] {
            score[train_labels[j]] += ((row[j] - 1.0) / temperature).exp();
        }
        // exp((s - 1)/T) is exp(s/T) scaled by a constant: same argmax, no overflow.
        let best = (0..classes).fold(0, |b, c| if score[c] > score[b] { c } else { b });
        pred.push(best);
    }
    Ok(pred)
}

/// Settings of the linear probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeConfig {
    /// Full-batch gradient steps.
    pub steps: usize,
    /// Learning rate.
    pub lr: f64,
    /// Heavy-ball momentum.
    pub momentum: f64,
    /// L2 penalty on the weights (not the biases).
    pub weight_decay: f64,
}

impl Default for ProbeConfig {
    /// 300 steps of gradient descent, lr 0.5, momentum 0.9, L2 1e-4.
    fn default() -> Self {
        ProbeConfig {
            steps: 300,
            lr: 0.5,
            momentum: 0.9,
            weight_decay: 1e-4,
        }
    }
}

/// Test accuracy of a linear probe: multinomial logistic regression on the
/// frozen features, standardised with the training set's per-column mean
/// and standard deviation, trained from zero by full-batch gradient descent
/// with heavy-ball momentum on the mean cross-entropy plus
/// `weight_decay/2 ‖W‖²`. Deterministic (the problem is convex; zero init).
///
/// ```
/// use ndarray::array;
/// use clae_replication::digits::eval::{linear_probe, ProbeConfig};
/// let x = array![[0.0f32, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.2]];
/// let acc = linear_probe(x.view(), &[0, 0, 1, 1], x.view(), &[0, 0, 1, 1], 2, &ProbeConfig::default()).unwrap();
/// assert_eq!(acc, 1.0);
/// ```
pub fn linear_probe(
    train: ArrayView2<'_, f32>,
    train_labels: &[usize],
    test: ArrayView2<'_, f32>,
    test_labels: &[usize],
    classes: usize,
    cfg: &ProbeConfig,
) -> Result<f64> {
    check_labelled("probe training set", train, train_labels, classes)?;
    check_labelled("probe test set", test, test_labels, classes)?;
    if test.ncols() != train.ncols() {
        return Err(DigitsError::config(
            "probe test set",
            format!(
                "has {} columns, training set {}",
                test.ncols(),
                train.ncols()
            ),
        ));
    }
    let x = train.mapv(|v| v as f64);
    let (n, d) = x.dim();
    let mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(d));
    let std = x
        .std_axis(Axis(0), 0.0)
        .mapv(|s| if s > 1e-8 { s } else { 1.0 });
    let standardise = |a: &Array2<f64>| (a - &mean) / &std;
    let xs = standardise(&x);
    let mut onehot = Array2::<f64>::zeros((n, classes));
    for (i, &y) in train_labels.iter().enumerate() {
        onehot[[i, y]] = 1.0;
    }
    let mut w = Array2::<f64>::zeros((d, classes));
    let mut b = Array1::<f64>::zeros(classes);
    let mut vw = w.clone();
    let mut vb = b.clone();
    for _ in 0..cfg.steps {
        let mut p = xs.dot(&w) + &b;
        softmax_rows(&mut p);
        let delta = (p - &onehot) / n as f64; // dL/dlogits
        let gw = xs.t().dot(&delta) + &w * cfg.weight_decay;
        let gb = delta.sum_axis(Axis(0));
        vw = &vw * cfg.momentum + &gw;
        vb = &vb * cfg.momentum + &gb;
        w = w - &vw * cfg.lr;
        b = b - &vb * cfg.lr;
    }
    let logits = standardise(&test.mapv(|v| v as f64)).dot(&w) + &b;
    let hits = logits
        .outer_iter()
        .zip(test_labels)
        .filter(|(row, &y)| {
            let best = (0..classes).fold(0, |m, c| if row[c] > row[m] { c } else { m });
            best == y
        })
        .count();
    Ok(hits as f64 / test_labels.len() as f64)
}

fn softmax_rows(a: &mut Array2<f64>) {
    for mut row in a.outer_iter_mut() {
        let m = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row.mapv_inplace(|v| v / s);
    }
}

/// Representation diagnostics of a test set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Diagnostics {
    /// Effective rank of the clean test embeddings (exp of the entropy of
    /// the normalised singular values).
    pub effective_rank: f64,
    /// Wang & Isola's alignment `E‖z − z'‖²` between two augmented views of
    /// each test image (lower: more invariant).
    pub alignment: f64,
    /// Wang & Isola's uniformity `log E exp(−2‖z_i − z_j‖²)` of the clean
    /// test embeddings (lower: more uniform).
    pub uniformity: f64,
}

/// Computes [`Diagnostics`] from the clean test embeddings `z` and the
/// embeddings `z_a`, `z_b` of two augmented views of the same images.
pub fn diagnostics(
    z: ArrayView2<'_, f32>,
    z_a: ArrayView2<'_, f32>,
    z_b: ArrayView2<'_, f32>,
) -> Result<Diagnostics> {
    Ok(Diagnostics {
        effective_rank: effective_rank(z)?,
        alignment: alignment(z_a, z_b, 2.0)?,
        uniformity: uniformity(z, 2.0)?,
    })
}
