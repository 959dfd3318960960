//! The committed conformance vectors: complete, and reproduced by the
//! reference (bit for bit on a CPU with the generating matmul kernel).

use clae_conformance::json::{NamedTensor, Tensor};
use clae_conformance::vectors::{
    compute_expected, cpu_features, load_dir, Expected, Vector, NUM_CASES,
};
use std::collections::BTreeSet;
use std::path::Path;

fn vectors() -> Vec<Vector> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    load_dir(&dir).unwrap_or_else(|e| panic!("cannot read the committed vectors: {e}"))
}

/// `max|a − b| / max|b|` (SPEC 8); `a` must be exactly zero where `b` is.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f64, clae_conformance::metrics::nan_max);
    if scale == 0.0 {
        if diff == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        diff / scale
    }
}

fn tensors(e: &Expected) -> Vec<(&'static str, &Tensor)> {
    vec![
        ("Z_P", &e.z_p),
        ("Z_Q", &e.z_q),
        ("dL_dZ_P", &e.grad_z_p),
        ("dL_dZ_Q", &e.grad_z_q),
        ("g", &e.g),
        ("Q_adv", &e.q_adv),
    ]
}

fn named<'a>(
    label: &'static str,
    a: &'a [NamedTensor],
) -> impl Iterator<Item = (String, &'a [f64])> {
    a.iter()
        .map(move |t| (format!("{label}:{}", t.name), t.data.as_slice()))
}

#[test]
fn the_committed_set_covers_every_case_kind() {
    let v = vectors();
    assert_eq!(v.len(), NUM_CASES, "expected {NUM_CASES} vector files");
    let set = |f: fn(&Vector) -> String| v.iter().map(f).collect::<BTreeSet<_>>();
    assert_eq!(set(|v| v.config.loss.clone()).len(), 3, "all three losses");
    assert_eq!(
        set(|v| v.config.optimizer.kind.clone()).len(),
        2,
        "SGD and Adam"
    );
    assert_eq!(
        set(|v| v.config.attack.kind.clone()).len(),
        2,
        "FGSM and PGD"
    );
    assert_eq!(
        set(|v| v.config.q_start.clone()).len(),
        2,
        "Q_start = P and Q"
    );
    assert_eq!(set(|v| v.config.recipe.clone()).len(), 2, "both recipes");
    assert_eq!(
        set(|v| format!("{:?}", v.config.clamp.is_some())).len(),
        2,
        "clamp on and off"
    );
    assert_eq!(
        set(|v| v.config.encoder.depth.to_string()).len(),
        4,
        "depths 0..=3"
    );
    let ns: Vec<usize> = v.iter().map(|v| v.config.n).collect();
    assert_eq!(ns.iter().min(), Some(&2));
    assert_eq!(ns.iter().max(), Some(&64));
    let total: u64 = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        total < 2_000_000,
        "vectors take {total} bytes, the budget is 2 MB"
    );
}

#[test]
fn the_reference_reproduces_every_vector() {
    let here = cpu_features();
    let mut worst = 0.0f64;
    for v in vectors() {
        let (mlp, p, q) = v.reference_inputs().unwrap();
        let got = compute_expected(&v.config, &mlp, &p, &q).unwrap();
        let want = &v.expected;
        // Same matmul kernel: bit for bit. Another kernel (no FMA, say) changes
        // rounding only, so 1e-12 relative is then the honest bar.
        let exact = v.generator.cpu_features == here;
        let mut check = |what: String, a: &[f64], b: &[f64]| {
            let e = rel_err(a, b);
            worst = worst.max(e);
            if exact {
                assert!(
                    a == b,
                    "{}: {what} differs from the file (rel err {e:e})",
                    v.name
                );
            } else {
                assert!(e <= 1e-12, "{}: {what} rel err {e:e} > 1e-12", v.name);
            }
        };
        for ((name, a), (_, b)) in tensors(&got).into_iter().zip(tensors(want)) {
            assert_eq!(a.shape, b.shape, "{}: shape of {name}", v.name);
            check(name.to_string(), &a.data, &b.data);
        }
        check("loss".into(), &[got.loss], &[want.loss]);
        check("loss_adv".into(), &[got.loss_adv], &[want.loss_adv]);
        check("L_total".into(), &[got.l_total], &[want.l_total]);
        for (list_got, list_want, label) in [
            (&got.state_after_step, &want.state_after_step, "state"),
            (
                &got.optimizer_state_after_step,
                &want.optimizer_state_after_step,
                "optimizer",
            ),
        ] {
            assert_eq!(
                list_got.len(),
                list_want.len(),
                "{}: number of {label} tensors",
                v.name
            );
            for ((name, a), (name_b, b)) in named(label, list_got).zip(named(label, list_want)) {
                assert_eq!(name, name_b, "{}: tensor order", v.name);
                check(name, a, b);
            }
        }
    }
    println!("reference vs committed vectors: max relative error {worst:e} (cpu {here})");
}
