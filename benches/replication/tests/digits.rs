//! Tests of the digits replication (issue 6): data parsing and errors, the
//! stratified split, the augmentations, kNN and the probe on hand-made
//! toys, and a `--quick` end-to-end run on the real data when it is present.

use clae_reference::loss::LossKind;
use clae_reference::rng::Rng;
use clae_replication::digits::augment::{augment_batch, translate, AugmentConfig};
use clae_replication::digits::data::{self, parse_gz, stratified_split, Digits, PIXELS};
use clae_replication::digits::eval::{knn_predict, knn_top1, linear_probe, ProbeConfig};
use clae_replication::digits::report;
use clae_replication::digits::run::{self, make_trainer, Options};
use clae_replication::digits::train::{train_run, Backend, Method, TrainConfig};
use clae_replication::digits::DigitsError;
use indicatif::ProgressBar;
use ndarray::{array, Array1, Array2};
use std::io::Write;
use std::path::PathBuf;

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("clae-digits-test-{}-{name}", std::process::id()))
}

fn gzip(text: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes())
        .expect("writing to a Vec cannot fail");
    gz.finish()
        .expect("finishing a Vec-backed encoder cannot fail")
}

/// A CSV row: pixel `i` is `f(i)`, then the label.
fn row(f: impl Fn(usize) -> u32, label: &str) -> String {
    let mut fields: Vec<String> = (0..PIXELS).map(|i| f(i).to_string()).collect();
    fields.push(label.to_string());
    fields.join(",")
}

fn corrupt_message(bytes: &[u8]) -> String {
    match parse_gz(bytes, "test") {
        Err(DigitsError::DataCorrupt { message, .. }) => message,
        other => panic!("expected DataCorrupt, got {other:?}"),
    }
}

#[test]
fn parses_a_synthetic_gzip_file() {
    let text = format!(
        "{}\n{}\n\n",
        row(|i| (i % 17) as u32, "7"),
        row(|i| if i == 63 { 16 } else { 0 }, "0")
    );
    let path = temp_path("ok.csv.gz");
    std::fs::write(&path, gzip(&text)).unwrap();
    let d = data::load(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(d.labels, vec![7, 0]);
    assert_eq!(d.images.dim(), (2, 64));
    for i in 0..PIXELS {
        assert_eq!(d.images[[0, i]], (i % 17) as f32 / 16.0, "pixel {i}");
    }
    assert_eq!(d.images[[1, 63]], 1.0);
    assert_eq!(d.images.row(1).sum(), 1.0);
}

#[test]
fn missing_file_is_a_typed_error() {
    let path = temp_path("does-not-exist.csv.gz");
    match data::load(&path) {
        Err(DigitsError::DataMissing { path: p }) => assert_eq!(p, path),
        other => panic!("expected DataMissing, got {other:?}"),
    }
    let msg = data::load(&path).unwrap_err().to_string();
    assert!(msg.contains("scripts/setup.sh"), "{msg}");
}

#[test]
fn corrupt_inputs_are_typed_errors() {
    // Not gzip at all.
    let m = corrupt_message(b"0,1,2\n");
    assert!(m.contains("line 1") || m.contains("read error"), "{m}");
    // Truncated gzip stream.
    let good = gzip(&format!("{}\n", row(|_| 1, "3")));
    corrupt_message(&good[..good.len() / 2]);
    // Empty file (valid gzip of nothing).
    assert!(corrupt_message(&gzip("")).contains("no rows"));
    // Wrong number of fields, on line 2.
    let m = corrupt_message(&gzip(&format!("{}\n1,2,3\n", row(|_| 0, "1"))));
    assert!(m.contains("line 2") && m.contains("65"), "{m}");
    // Pixel out of range, not a number, label out of range or fractional.
    assert!(
        corrupt_message(&gzip(&row(|i| if i == 5 { 17 } else { 0 }, "1"))).contains("column 6")
    );
    assert!(corrupt_message(&gzip(&row(|_| 0, "1").replacen('0', "x", 1))).contains("pixel"));
    assert!(corrupt_message(&gzip(&row(|_| 0, "10"))).contains("label"));
    assert!(corrupt_message(&gzip(&row(|_| 0, "2.5"))).contains("label"));
    assert!(corrupt_message(&gzip(&row(|_| 0, "nan"))).contains("label"));
    // A header line is not data.
    let header: Vec<String> = (0..65).map(|i| format!("c{i}")).collect();
    corrupt_message(&gzip(&format!(
        "{}\n{}\n",
        header.join(","),
        row(|_| 0, "1")
    )));
    // Through a file, too.
    let path = temp_path("corrupt.csv.gz");
    std::fs::write(&path, b"\x1f\x8b garbage").unwrap();
    let e = data::load(&path);
    std::fs::remove_file(&path).ok();
    assert!(matches!(e, Err(DigitsError::DataCorrupt { .. })), "{e:?}");
}

#[test]
fn stratified_split_is_stratified_and_deterministic() {
    // Unbalanced classes: 40, 21, 7 and 12 rows, interleaved.
    let counts = [40usize, 21, 7, 12];
    let mut labels = Vec::new();
    for round in 0..40 {
        for (c, &n) in counts.iter().enumerate() {
            if round < n {
                labels.push(c);
            }
        }
    }
    let s = stratified_split(&labels, 0.25, 9).unwrap();
    // Disjoint, sorted, covering every row.
    let mut all: Vec<usize> = s.train.iter().chain(&s.test).cloned().collect();
    all.sort_unstable();
    assert_eq!(all, (0..labels.len()).collect::<Vec<_>>());
    assert!(s.train.windows(2).all(|w| w[0] < w[1]) && s.test.windows(2).all(|w| w[0] < w[1]));
    // Per class: round(n_c / 4) in test.
    for (c, &n) in counts.iter().enumerate() {
        let in_test = s.test.iter().filter(|&&i| labels[i] == c).count();
        assert_eq!(in_test, (n as f64 * 0.25).round() as usize, "class {c}");
    }
    assert_eq!(s, stratified_split(&labels, 0.25, 9).unwrap());
    assert_ne!(s.test, stratified_split(&labels, 0.25, 10).unwrap().test);
    for bad in [0.0, 1.0, f64::NAN, -0.1] {
        assert!(matches!(
            stratified_split(&labels, bad, 9),
            Err(DigitsError::InvalidConfig { .. })
        ));
    }
}

/// A hand-made 8x8 image with distinct values: pixel (r, c) = 1 + 8r + c.
fn ramp() -> Array1<f32> {
    Array1::from_shape_fn(64, |i| (i + 1) as f32)
}

#[test]
fn translation_moves_pixels_and_fills_with_zeros() {
    let img = ramp();
    let right = translate(img.view(), 1, 0).unwrap();
    for r in 0..8 {
        assert_eq!(right[r * 8], 0.0, "left column is zero-filled");
        for c in 1..8 {
            assert_eq!(right[r * 8 + c], img[r * 8 + c - 1], "({r}, {c})");
        }
    }
    let down = translate(img.view(), 0, 1).unwrap();
    for c in 0..8 {
        assert_eq!(down[c], 0.0, "top row is zero-filled");
        for r in 1..8 {
            assert_eq!(down[r * 8 + c], img[(r - 1) * 8 + c]);
        }
    }
    let up_left = translate(img.view(), -1, -1).unwrap();
    assert_eq!(up_left[0], img[9]);
    assert_eq!(up_left[7 * 8 + 3], 0.0, "bottom row is zero-filled");
    assert_eq!(up_left[2 * 8 + 7], 0.0, "right column is zero-filled");
    assert_eq!(translate(img.view(), 0, 0).unwrap(), img);
    // A single lit pixel in the corner falls off the image.
    let mut corner = Array1::<f32>::zeros(64);
    corner[7] = 1.0;
    assert_eq!(translate(corner.view(), 1, 0).unwrap().sum(), 0.0);
    assert!(translate(Array1::<f32>::zeros(63).view(), 1, 0).is_err());
}

#[test]
fn augmentations_are_seeded_and_correct() {
    let images = Array2::from_shape_fn((6, 64), |(n, i)| ((n * 7 + i) % 17) as f32 / 16.0);
    let cfg = AugmentConfig::digits();
    let a = augment_batch(images.view(), &cfg, &mut Rng::new(3)).unwrap();
    let b = augment_batch(images.view(), &cfg, &mut Rng::new(3)).unwrap();
    let c = augment_batch(images.view(), &cfg, &mut Rng::new(4)).unwrap();
    assert_eq!(a, b, "same seed, same views");
    assert_ne!(a, c, "another seed, other views");
    assert!(
        a.iter().all(|v| (0.0..=1.0).contains(v)),
        "clamped to [0, 1]"
    );

    // Shift only: every view is one of the nine translations of its image,
    // and over many draws all nine occur.
    let shift_only = AugmentConfig {
        scale_lo: 1.0,
        scale_hi: 1.0,
        noise_std: 0.0,
        clamp: false,
        ..cfg
    };
    let img = ramp().insert_axis(ndarray::Axis(0));
    let mut rng = Rng::new(11);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let v = augment_batch(img.view(), &shift_only, &mut rng).unwrap();
        let shift = (-1i64..=1)
            .flat_map(|dx| (-1i64..=1).map(move |dy| (dx, dy)))
            .find(|&(dx, dy)| translate(img.row(0), dx, dy).unwrap() == v.row(0));
        seen.insert(shift.expect("a view that is not a translation by at most one pixel"));
    }
    assert_eq!(seen.len(), 9);

    // Scale only: the image times one factor in [lo, hi).
    let scale_only = AugmentConfig {
        max_shift: 0,
        scale_lo: 0.5,
        scale_hi: 0.6,
        noise_std: 0.0,
        clamp: false,
    };
    let v = augment_batch(img.view(), &scale_only, &mut Rng::new(5)).unwrap();
    let s = v[[0, 0]] / img[[0, 0]];
    assert!((0.5..0.6).contains(&s));
    for i in 0..64 {
        assert!((v[[0, i]] - s * img[[0, i]]).abs() < 1e-5);
    }

    // Noise only: zero mean, the configured spread.
    let noise_only = AugmentConfig {
        max_shift: 0,
        scale_lo: 1.0,
        scale_hi: 1.0,
        noise_std: 0.1,
        clamp: false,
    };
    let zeros = Array2::<f32>::zeros((200, 64));
    let v = augment_batch(zeros.view(), &noise_only, &mut Rng::new(6)).unwrap();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!(
        mean.abs() < 0.005 && (sd - 0.1).abs() < 0.005,
        "mean {mean}, sd {sd}"
    );

    // Bad configurations are typed errors.
    for bad in [
        AugmentConfig {
            max_shift: 8,
            ..cfg
        },
        AugmentConfig {
            scale_lo: 1.5,
            scale_hi: 1.0,
            ..cfg
        },
        AugmentConfig {
            noise_std: f32::NAN,
            ..cfg
        },
    ] {
        assert!(matches!(
            augment_batch(images.view(), &bad, &mut Rng::new(0)),
            Err(DigitsError::InvalidConfig { .. })
        ));
    }
}

#[test]
fn knn_on_a_hand_made_toy() {
    // Training points on the unit circle at angles (degrees) 0 and 10 (class 0),
    // 90 and 100 (class 1), 200 (class 2).
    let deg = |a: f32| {
        let r = a.to_radians();
        [r.cos(), r.sin()]
    };
    let angles = [0.0, 10.0, 90.0, 100.0, 200.0];
    let train = Array2::from_shape_fn((5, 2), |(i, j)| deg(angles[i])[j]);
    let labels = [0, 0, 1, 1, 2];
    let test = Array2::from_shape_fn((3, 2), |(i, j)| deg([5.0, 80.0, 190.0][i])[j]);
    assert_eq!(
        knn_predict(train.view(), &labels, test.view(), 3, 1, 0.1).unwrap(),
        vec![0, 1, 2]
    );
    assert_eq!(
        knn_top1(train.view(), &labels, test.view(), &[0, 1, 2], 3, 1, 0.1).unwrap(),
        1.0
    );
    // Scale does not matter: similarities are cosines.
    let scaled = &test * 7.0;
    assert_eq!(
        knn_predict(train.view(), &labels, scaled.view(), 3, 1, 0.1).unwrap(),
        vec![0, 1, 2]
    );

    // Weighted vote vs majority: the query at 195 degrees has one very
    // close class-2 neighbour and two farther class-1 ones. With T = 0.1
    // the close neighbour dominates; with a huge T the vote is a plain
    // count among the k nearest.
    let train = Array2::from_shape_fn((3, 2), |(i, j)| deg([200.0, 150.0, 140.0][i])[j]);
    let labels = [2, 1, 1];
    let q = Array2::from_shape_fn((1, 2), |(_, j)| deg(195.0)[j]);
    // cos 5° = 0.996 (class 2); cos 45° = 0.707, cos 55° = 0.574 (class 1).
    // T = 0.1: exp(9.96) ≈ 21 000 > exp(7.07) + exp(5.74) ≈ 1 490.
    assert_eq!(
        knn_predict(train.view(), &labels, q.view(), 3, 3, 0.1).unwrap(),
        vec![2]
    );
    // T = 100: weights ≈ 1 each, two votes beat one.
    assert_eq!(
        knn_predict(train.view(), &labels, q.view(), 3, 3, 100.0).unwrap(),
        vec![1]
    );
    // k larger than the training set is capped, k = 1 is the nearest.
    assert_eq!(
        knn_predict(train.view(), &labels, q.view(), 3, 200, 100.0).unwrap(),
        vec![1]
    );
    assert_eq!(
        knn_predict(train.view(), &labels, q.view(), 3, 1, 100.0).unwrap(),
        vec![2]
    );

    // Bad input is a typed error.
    let e =
        |r: Result<Vec<usize>, DigitsError>| matches!(r, Err(DigitsError::InvalidConfig { .. }));
    assert!(e(knn_predict(train.view(), &[2, 1], q.view(), 3, 1, 0.1)));
    assert!(e(knn_predict(
        train.view(),
        &[2, 1, 3],
        q.view(),
        3,
        1,
        0.1
    )));
    assert!(e(knn_predict(train.view(), &labels, q.view(), 3, 0, 0.1)));
    assert!(e(knn_predict(train.view(), &labels, q.view(), 3, 1, 0.0)));
    assert!(e(knn_predict(
        train.view(),
        &labels,
        array![[f32::NAN, 0.0]].view(),
        3,
        1,
        0.1
    )));
    assert!(e(knn_predict(
        train.view(),
        &labels,
        array![[1.0f32, 0.0, 0.0]].view(),
        3,
        1,
        0.1
    )));
}

#[test]
fn linear_probe_separates_a_separable_toy_and_not_noise() {
    // Three Gaussian blobs far apart in 4-D: the probe gets all test points.
    let mut rng = Rng::new(1);
    let centres = [
        [3.0, 0.0, 0.0, 0.0],
        [0.0, 3.0, 0.0, 0.0],
        [0.0, 0.0, 3.0, 0.0],
    ];
    let mut make = |n: usize| {
        let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let x = Array2::from_shape_fn((n, 4), |(i, j)| {
            (centres[labels[i]][j] + 0.3 * rng.normal()) as f32
        });
        (x, labels)
    };
    let (xtr, ytr) = make(60);
    let (xte, yte) = make(30);
    let acc = linear_probe(
        xtr.view(),
        &ytr,
        xte.view(),
        &yte,
        3,
        &ProbeConfig::default(),
    )
    .unwrap();
    assert_eq!(acc, 1.0);
    // XOR is not linearly separable: a linear probe cannot get all four.
    let x = array![[0.0f32, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]];
    let y = [0, 0, 1, 1];
    let acc = linear_probe(x.view(), &y, x.view(), &y, 2, &ProbeConfig::default()).unwrap();
    assert!(acc < 1.0, "{acc}");
}

#[test]
fn replication_defaults_keep_spec_values() {
    for loss in LossKind::ALL {
        let c = TrainConfig::digits(loss, Method::Clae);
        assert_eq!(
            (c.tau, c.eps, c.alpha),
            (loss.default_tau(), loss.default_eps(), 1.0)
        );
        assert!(c.validate().is_ok());
    }
    let o = Options::parse(Vec::<String>::new()).unwrap().unwrap();
    assert_eq!((o.seeds, o.epochs, o.quick), (5, 30, false));
    assert_eq!(
        o.methods,
        vec![Method::Plain, Method::Clae, Method::ClaeEps0]
    );
    let o = Options::parse(["--no-control".to_string()])
        .unwrap()
        .unwrap();
    assert_eq!(o.methods, vec![Method::Plain, Method::Clae]);
    // The control differs from CLAE only in eps.
    let c = TrainConfig::digits(LossKind::Plain, Method::ClaeEps0);
    assert_eq!((c.effective_eps(), c.clae_config().adv.eps), (0.0, 0.0));
    let c = TrainConfig {
        method: Method::Clae,
        ..c
    };
    assert_eq!(c.clae_config().adv.eps, 0.03);
    assert!(Options::parse(["--seeds".to_string(), "1".to_string()]).is_err());
    assert!(Options::parse(["--bogus".to_string()]).is_err());
    assert!(Options::parse(["--losses".to_string(), "plain,nope".to_string()]).is_err());
    assert!(Options::parse(["--help".to_string()]).unwrap().is_none());
}

fn small_digits() -> Digits {
    // 40 synthetic "digits" of 4 classes: class c lights row 2c (with noise).
    let mut rng = Rng::new(2);
    let labels: Vec<usize> = (0..40).map(|i| i % 4).collect();
    let images = Array2::from_shape_fn((40, 64), |(i, p)| {
        let lit = p / 8 == 2 * labels[i];
        ((if lit { 0.8 } else { 0.05 }) + 0.05 * rng.uniform()) as f32
    });
    Digits { images, labels }
}

#[test]
fn plain_and_clae_runs_of_one_seed_start_from_the_same_encoder() {
    let d = small_digits();
    let s = stratified_split(&d.labels, 0.25, 0).unwrap();
    let (train, test) = (d.select(&s.train).unwrap(), d.select(&s.test).unwrap());
    assert!(d.select(&[0, 40]).is_err());
    let mut curves = Vec::new();
    for method in [Method::Plain, Method::Clae, Method::ClaeEps0] {
        let mut cfg = TrainConfig::digits(LossKind::Uel, method);
        cfg.model.hidden = 16;
        cfg.model.d = 8;
        cfg.batch_size = 10;
        cfg.epochs = 1;
        cfg.probe.steps = 5;
        let mut t = make_trainer(Backend::ReferenceF32, &cfg, 7).unwrap();
        let embed0 = t.embed_eval(test.view()).unwrap();
        let r = train_run(t.as_mut(), &cfg, 7, &train, &test, &ProgressBar::hidden()).unwrap();
        assert_eq!(r.curve.len(), 2);
        assert!(r.curve[1].loss.is_finite());
        assert_eq!(r.curve[1].loss_adv.is_nan(), method == Method::Plain);
        curves.push((embed0, r.curve[0].knn200));
    }
    assert_eq!(curves[0], curves[1]);
    assert_eq!(curves[0], curves[2]);
}

#[test]
fn quick_end_to_end_on_the_real_data() {
    let path = match data::default_path() {
        Ok(p) if p.exists() => p,
        other => {
            println!("SKIPPED quick_end_to_end_on_the_real_data: digits data not found ({other:?}); run scripts/setup.sh");
            return;
        }
    };
    let out = temp_path("report");
    let options = Options {
        out: Some(out.clone()),
        data: Some(path),
        progress: false,
        ..Options::quick()
    };
    let rep = run::run(&options).unwrap();
    report::write(&rep).unwrap();
    assert_eq!(rep.split_sizes.0 + rep.split_sizes.1, 1797);
    assert_eq!(
        rep.runs.len(),
        3 * 3 * options.seeds,
        "3 losses x (plain, CLAE, control)"
    );
    for r in &rep.runs {
        let f = r.final_eval;
        for acc in [f.knn200, f.knn1, f.probe] {
            // Far above chance (10%) after two epochs on the real digits.
            assert!(
                (0.5..=1.0).contains(&acc),
                "{} {}: {acc}",
                r.loss,
                r.method.name()
            );
        }
        assert!(f.diag.effective_rank >= 1.0 && f.diag.effective_rank <= 32.0);
        assert!(f.diag.alignment >= 0.0 && f.diag.alignment <= 4.0);
        assert!(f.diag.uniformity <= 0.0 && f.diag.uniformity >= -8.0);
        assert_eq!(r.curve.len(), options.epochs + 1);
    }
    // Raw pixels are a strong baseline on these images.
    assert!(rep.baseline.knn1 > 0.9, "{:?}", rep.baseline);
    for name in [
        "report.md",
        "runs.csv",
        "curves.csv",
        "learning_curves.svg",
        "final_accuracy.svg",
    ] {
        let text = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(!text.is_empty(), "{name}");
        if name.ends_with(".svg") {
            assert!(text.starts_with("<svg") && text.contains("<text"), "{name}");
        }
    }
    let csv = std::fs::read_to_string(out.join("runs.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + rep.runs.len());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("quick smoke run") && md.contains("Welch"));
    std::fs::remove_dir_all(&out).ok();
}

fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tch_backend_starts_where_the_reference_starts_and_takes_the_same_first_step() {
    let d = small_digits();
    let p = d.images.slice(ndarray::s![0..10, ..]).to_owned();
    let q = p.mapv(|v| 0.9 * v + 0.05);
    for method in [Method::Plain, Method::Clae] {
        let mut cfg = TrainConfig::digits(LossKind::Plain, method);
        cfg.model.hidden = 16;
        cfg.model.d = 8;
        let mut reference = make_trainer(Backend::ReferenceF32, &cfg, 7).unwrap();
        let mut torch = make_trainer(Backend::TchCpuF32, &cfg, 7).unwrap();
        assert_eq!(torch.backend(), "tch-cpu-f32");
        let before = max_abs_diff(
            &reference.embed_eval(d.view()).unwrap(),
            &torch.embed_eval(d.view()).unwrap(),
        );
        assert!(before < 1e-5, "initial embeddings differ by {before}");
        let (lr, lt) = match method {
            Method::Plain => (
                reference.plain_step(p.view(), q.view()).unwrap(),
                torch.plain_step(p.view(), q.view()).unwrap(),
            ),
            _ => (
                reference.clae_step(p.view(), q.view()).unwrap(),
                torch.clae_step(p.view(), q.view()).unwrap(),
            ),
        };
        // docs/SPEC.md §8: f32 values of one step agree to 1e-4 relative.
        for (a, b) in [(lr.total, lt.total), (lr.clean, lt.clean)] {
            assert!((a - b).abs() <= 1e-4 * a.abs(), "{method:?}: {a} vs {b}");
        }
        assert_eq!(lr.adv.is_some(), lt.adv.is_some());
        let after = max_abs_diff(
            &reference.embed_eval(d.view()).unwrap(),
            &torch.embed_eval(d.view()).unwrap(),
        );
        assert!(
            after < 1e-4,
            "{method:?}: embeddings after one step differ by {after}"
        );
    }
}
