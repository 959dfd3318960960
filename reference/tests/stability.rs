//! Numerical stability (docs/SPEC.md §3, 7): the three losses stay finite in `f32`
//! for `tau` down to `0.01` and agree with `f64` to `1e-4` (docs/SPEC.md §8's f32
//! tolerance), on random unit rows, aligned views (near-duplicate
//! positives), near-duplicate rows inside a batch (hard negatives) and zero
//! rows; a zero embedding produces no NaN anywhere in a CLAE step.

mod common;

use clae_reference::ErrorKind;

use clae_reference::encoder::{Branch, Mlp, MlpConfig, Mode};
use clae_reference::loss::{loss_forward_backward, LossKind};
use clae_reference::optim::{Optimizer, OptimizerConfig};
use clae_reference::rng::Rng;
use clae_reference::step::{clae_step, plain_step, ClaeConfig};
use common::*;
use ndarray::Array2;

fn normalize_rows(mut z: Array2<f64>) -> Array2<f64> {
    for mut row in z.rows_mut() {
        let norm = row.dot(&row).sqrt();
        if norm > 0.0 {
            row /= norm;
        }
    }
    z
}

/// Named `(Z_P, Z_Q)` pairs, already rounded to what `f32` can hold.
fn cases() -> Vec<(&'static str, Array2<f64>, Array2<f64>)> {
    let mut rng = Rng::new(51);
    let (n, d) = (12, 8);
    let mut out = Vec::new();
    // independent random unit rows
    out.push((
        "random unit rows",
        unit_rows(&mut rng, n, d),
        unit_rows(&mut rng, n, d),
    ));
    // aligned views: each positive a near-duplicate of its anchor
    let z = unit_rows(&mut rng, n, d);
    let zq = normalize_rows(&z + &randn(&mut rng, n, d).mapv(|v| 1e-3 * v));
    out.push(("aligned views (near-duplicate positives)", z, zq));
    // hard negatives: rows 2k and 2k+1 of Z_P are near-duplicates, and the
    // positives are far, so a negative dominates each softmax row
    let base = unit_rows(&mut rng, n / 2, d);
    let mut zp = Array2::zeros((n, d));
    for k in 0..n / 2 {
        zp.row_mut(2 * k).assign(&base.row(k));
        zp.row_mut(2 * k + 1).assign(&base.row(k));
    }
    let zp = normalize_rows(&zp + &randn(&mut rng, n, d).mapv(|v| 1e-3 * v));
    let zq = normalize_rows(&zp + &randn(&mut rng, n, d).mapv(|v| 0.8 * v));
    out.push((
        "near-duplicate rows in a batch (hard negatives)",
        zp.clone(),
        zq,
    ));
    // duplicates exactly, positives opposite: the extreme of the above
    let zq = zp.mapv(|v| -v);
    let mut zp_dup = zp.clone();
    let row0 = zp_dup.row(0).to_owned();
    zp_dup.row_mut(1).assign(&row0);
    out.push(("exact duplicate rows, antipodal positives", zp_dup, zq));
    // zero rows in both views
    let mut zp = unit_rows(&mut rng, n, d);
    let mut zq = unit_rows(&mut rng, n, d);
    zp.row_mut(0).fill(0.0);
    zq.row_mut(3).fill(0.0);
    zq.row_mut(0).fill(0.0);
    out.push(("zero rows", zp, zq));
    out.into_iter()
        .map(|(name, a, b)| {
            let r = |x: Array2<f64>| x.mapv(|v| v as f32 as f64);
            (name, r(a), r(b))
        })
        .collect()
}

#[test]
fn losses_are_finite_in_f32_and_agree_with_f64() {
    let mut worst = 0.0f64;
    for (name, z_p, z_q) in cases() {
        for kind in LossKind::ALL {
            for tau in [0.01, 0.05, kind.default_tau()] {
                let o64 = loss_forward_backward(kind, z_p.view(), z_q.view(), tau).unwrap();
                let (p32, q32) = (z_p.mapv(|v| v as f32), z_q.mapv(|v| v as f32));
                let o32 = loss_forward_backward(kind, p32.view(), q32.view(), tau).unwrap();
                let label = format!("{kind} tau {tau} on {name}");
                // f64 itself is finite
                assert!(o64.value.is_finite(), "{label}: f64 value");
                assert!(o64
                    .grad_z_p
                    .iter()
                    .chain(&o64.grad_z_q)
                    .all(|v| v.is_finite()));
                // f32 finite
                assert!(o32.value.is_finite(), "{label}: f32 value {}", o32.value);
                assert!(
                    o32.grad_z_p
                        .iter()
                        .chain(&o32.grad_z_q)
                        .all(|v| v.is_finite()),
                    "{label}: f32 gradient not finite"
                );
                // and within 1e-4 of f64
                let ev = rel_err_scalar(o32.value as f64, o64.value);
                let ep = rel_err(&o32.grad_z_p.mapv(|v| v as f64), &o64.grad_z_p);
                let eq = rel_err(&o32.grad_z_q.mapv(|v| v as f64), &o64.grad_z_q);
                println!(
                    "F32-VS-F64 {label:<70} value {ev:.1e}  dZ_P {ep:.1e}  dZ_Q {eq:.1e}  (L = {:.3e})",
                    o64.value
                );
                assert!(ev < 1e-4, "{label}: f32 value off by {ev:e}");
                assert!(ep < 1e-4, "{label}: f32 dL/dZ_P off by {ep:e}");
                assert!(eq < 1e-4, "{label}: f32 dL/dZ_Q off by {eq:e}");
                worst = nan_max(nan_max(nan_max(worst, ev), ep), eq);
            }
        }
    }
    println!("F32-VS-F64 worst relative error over all cases: {worst:.2e}");
}

/// An encoder (no BatchNorm) whose embedding of any row with `x_0 <= 0` is
/// exactly zero: the head's hidden layer only fires on `x_0 > 0`, and the
/// last bias is 0.
fn zero_embedding_encoder<F: clae_reference::Real>() -> Mlp<F> {
    let mut mlp = Mlp::<F>::new(MlpConfig::new(3, 4, 0, 2), 9).unwrap();
    for (k, mut row) in mlp.head[0].weight.rows_mut().into_iter().enumerate() {
        row.fill(F::zero());
        row[0] = F::c(1.0 + k as f64);
    }
    mlp.head[0].bias.fill(F::zero());
    mlp.head[1].bias.fill(F::zero());
    mlp
}

fn zero_embedding_pass<F: clae_reference::Real>() {
    let mlp = zero_embedding_encoder::<F>();
    let p = Array2::from_shape_fn((4, 3), |(i, j)| {
        F::c(if i == 0 && j == 0 {
            -1.0
        } else {
            0.3 + 0.1 * (i * 3 + j) as f64
        })
    });
    let q = p.mapv(|v| v * F::c(1.1));
    let z = mlp.forward(p.view(), Mode::Train(Branch::Clean)).unwrap().z;
    assert!(
        z.row(0).iter().all(|&v| v == F::zero()),
        "row 0 must embed to 0"
    );
    assert!(z.row(1).iter().any(|&v| v != F::zero()));
    for kind in LossKind::ALL {
        for tau in [0.01, kind.default_tau()] {
            for opt in [
                OptimizerConfig::authors_sgd(),
                OptimizerConfig::authors_adam(),
            ] {
                let mut m = mlp.clone();
                let mut o = Optimizer::new(opt, &m).unwrap();
                let mut cfg = ClaeConfig::paper(kind);
                cfg.tau = tau;
                let label = format!("{} {kind} tau {tau} {}", F::NAME, opt.name());
                // Each step either succeeds with everything finite — the
                // report, the encoder and the optimizer state — or, when a
                // value is not representable (in f32 the SimCLR gradient of a
                // zero row is ~1e20: through 1/1e-8 and 1/1e-12 clamps, and
                // Adam's v = g² overflows), returns Overflow and changes
                // nothing. Never a NaN.
                let mut outcomes = Vec::new();
                for plain in [false, true] {
                    let (m0, o0) = (m.clone(), o.clone());
                    let r = if plain {
                        plain_step(&mut m, &mut o, p.view(), q.view(), kind, tau)
                    } else {
                        clae_step(&mut m, &mut o, p.view(), q.view(), &cfg)
                    };
                    match r {
                        Ok(r) => {
                            assert!(r.total.is_finite() && r.loss_clean.is_finite(), "{label}");
                            assert!(r.q_adv.iter().flatten().all(|v| v.is_finite()), "{label}");
                            m.validate().unwrap_or_else(|e| panic!("{label}: {e}"));
                            let state = o.state_dict(&m);
                            assert!(
                                state
                                    .entries
                                    .iter()
                                    .all(|e| e.value.iter().all(|v| v.is_finite())),
                                "{label}: optimizer state"
                            );
                            outcomes.push("ok");
                        }
                        Err(e) => {
                            assert_eq!(e.kind(), ErrorKind::Overflow, "{label}: {e}");
                            assert!(
                                m == m0 && o == o0,
                                "{label}: a failed step changed something"
                            );
                            outcomes.push("overflow");
                        }
                    }
                }
                println!("ZERO-EMBEDDING {label}: {outcomes:?}");
            }
        }
    }
}

#[test]
fn a_zero_embedding_gives_no_nan_anywhere() {
    zero_embedding_pass::<f64>();
    zero_embedding_pass::<f32>();
}

#[test]
fn one_clae_step_in_f32_agrees_with_f64() {
    // docs/SPEC.md §8: f32 vs f64 within 1e-4 relative on the values and gradients of
    // one step; Q_adv compared with the f32 sign rule (only where
    // |g_f64| > 1e-3 max|g_f64|).
    use clae_reference::adversarial::input_gradient;
    use clae_reference::step::clae_gradients;
    let config = MlpConfig::new(10, 16, 2, 6);
    let m64 = distinct_branch_mlp(config, 55);
    let m32 =
        Mlp::<f32>::from_state_dict(config, &m64.state_dict().cast::<f32>().unwrap()).unwrap();
    let m64 =
        Mlp::<f64>::from_state_dict(config, &m32.state_dict().cast::<f64>().unwrap()).unwrap();
    let mut rng = Rng::new(56);
    let p = randn(&mut rng, 12, 10).mapv(|v| v as f32 as f64);
    let q = (&p + &randn(&mut rng, 12, 10).mapv(|v| 0.3 * v)).mapv(|v| v as f32 as f64);
    let (p32, q32) = (p.mapv(|v| v as f32), q.mapv(|v| v as f32));
    for (kind, tau) in LossKind::ALL
        .iter()
        .flat_map(|&k| [(k, k.default_tau()), (k, 0.01)])
    {
        let cfg = ClaeConfig {
            tau,
            ..ClaeConfig::paper(kind)
        };
        let cfg32 = cfg;
        let (r64, g64) = clae_gradients(&mut m64.clone(), p.view(), q.view(), &cfg).unwrap();
        let (r32, g32) = clae_gradients(&mut m32.clone(), p32.view(), q32.view(), &cfg32).unwrap();
        let g_ref = input_gradient(&m64, p.view(), p.view(), kind, cfg.tau).unwrap();
        let gmax = max_abs(&g_ref);
        let (qa64, qa32) = (r64.q_adv.unwrap(), r32.q_adv.unwrap());
        let mut excused = 0;
        for ((a, b), g) in qa32.iter().zip(&qa64).zip(&g_ref) {
            if g.abs() > 1e-3 * gmax {
                assert!(
                    ((*a as f64) - b).abs() < 1e-6,
                    "{kind}: sign differs at |g| = {g:e}"
                );
            } else {
                excused += 1;
            }
        }
        let ev = rel_err_scalar(r32.total as f64, r64.total);
        let widened: Vec<_> = owned(&g32)
            .iter()
            .map(|t| t.as_ref().map(|t| t.mapv(|v| v as f64)))
            .collect();
        let eg = grad_set_err(&widened, &owned(&g64));
        println!(
            "F32-VS-F64 one CLAE step, {kind} tau {tau}: L_total {ev:.1e}, parameter gradients {eg:.1e}, {excused} Q_adv entries excused"
        );
        assert!(excused * 100 <= qa64.len());
        assert!(ev < 1e-4, "{kind}: L_total {ev:e}");
        assert!(eg < 1e-4, "{kind}: gradients {eg:e}");
    }
}

/// UEL with tied logits far beyond `2^53` (tau = 1e-30): `P` rows zero, `Q`
/// rows 0.5 (d = 1). Each `Q` row's two other `Q` rows tie at
/// `S = 0.25 / tau`, each with probability 1/2 (not 1, which `exp(s − lse)`
/// gave once `m + ln 2` rounded to `m`); its row loss is `S + 3 ln 2` to
/// within `e^-S`, the `P` rows' `ln 5 − 4 ln(4/5)`, so the value is
/// `(3 (ln 5 − 4 ln 0.8) + 3 (S + 3 ln 2)) / 6`, about `S / 2`.
#[test]
fn uel_with_tied_huge_logits_is_finite_and_right() {
    let tau = 1e-30;
    let s = 0.25 / tau;
    let want = (3.0 * (5f64.ln() - 4.0 * 0.8f64.ln()) + 3.0 * (s + 3.0 * 2f64.ln())) / 6.0;
    let p = Array2::<f64>::zeros((3, 1));
    let q = Array2::<f64>::from_elem((3, 1), 0.5);
    let out = loss_forward_backward(LossKind::Uel, p.view(), q.view(), tau).unwrap();
    assert!(
        (out.value - want).abs() <= 1e-12 * want,
        "{} vs {want}",
        out.value
    );
    assert!(out
        .grad_z_p
        .iter()
        .chain(out.grad_z_q.iter())
        .all(|v| v.is_finite()));
    let (p32, q32) = (p.mapv(|v| v as f32), q.mapv(|v| v as f32));
    let out32 = loss_forward_backward(LossKind::Uel, p32.view(), q32.view(), tau).unwrap();
    assert!(((out32.value as f64) - want).abs() <= 1e-6 * want);
}
