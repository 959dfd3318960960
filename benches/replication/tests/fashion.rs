//! Tests of the Fashion-MNIST replication: the IDX loader and its errors
//! (files the tests write themselves), the augmentations, the validated
//! probe and its gradient, PGD on a hand-made toy, the encoder's input
//! gradient, the paired design, the resumable CSV, and the whole pipeline
//! end to end on synthetic IDX files (always) and on the real data (when
//! installed).

use clae_reference::loss::LossKind;
use clae_reference::rng::Rng;
use clae_replication::digits::eval::knn_predict;
use clae_replication::fashion::augment::{
    augment_batch, draw_crop, hflip, resized_crop, AugmentConfig, CropBox,
};
use clae_replication::fashion::cnn_trainer;
use clae_replication::fashion::data::{self, encode_idx, parse_idx, PIXELS, SIDE};
use clae_replication::fashion::eval::{
    knn_accuracy, knn_predict_f32, knn_temperature, robust_accuracy, validated_probe, Features,
    Labelled, PgdConfig, ProbeConfig,
};
use clae_replication::fashion::report;
use clae_replication::fashion::run::{self, equal_time_epochs, read_finished, Cell, Options};
use clae_replication::fashion::train::{
    train_run, EncoderKind, Method, ModelConfig, ReferenceTrainer, TrainConfig, Trainer,
};
use clae_replication::fashion::FashionError;
use indicatif::ProgressBar;
use ndarray::{array, Array1, Array2};
use std::io::Write;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("clae-fashion-test-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn corrupt(bytes: &[u8]) -> String {
    match parse_idx(bytes, "test") {
        Err(FashionError::DataCorrupt { message, .. }) => message,
        other => panic!("expected DataCorrupt, got {other:?}"),
    }
}

/// A synthetic labelled image set: class `c` lights rows `2c..2c+3` of the
/// image (0..=255 bytes with some noise), so it is learnable.
fn synthetic(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let mut pixels = Vec::with_capacity(n * PIXELS);
    for &y in &labels {
        for p in 0..PIXELS {
            let row = p / SIDE;
            let lit = (2 * y as usize..2 * y as usize + 3).contains(&row);
            let base = if lit { 200.0 } else { 20.0 };
            pixels.push((base + 40.0 * rng.uniform()) as u8);
        }
    }
    (pixels, labels)
}

fn write_split(dir: &Path, prefix: &str, n: usize, seed: u64, gz: bool) {
    let (pixels, labels) = synthetic(n, seed);
    let images = encode_idx(&[n, SIDE, SIDE], &pixels).unwrap();
    let labels = encode_idx(&[n], &labels).unwrap();
    for (name, bytes) in [
        (format!("{prefix}-images-idx3-ubyte"), images),
        (format!("{prefix}-labels-idx1-ubyte"), labels),
    ] {
        if gz {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn loads_gzipped_and_raw_idx_files() {
    let dir = temp_dir("load");
    write_split(&dir, "train", 30, 1, true);
    write_split(&dir, "t10k", 20, 2, false); // raw, no .gz
    let d = data::load(&dir).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (30, 20));
    let (pixels, labels) = synthetic(30, 1);
    assert_eq!(
        d.train.labels,
        labels.iter().map(|&y| y as usize).collect::<Vec<_>>()
    );
    for (k, &b) in pixels.iter().enumerate().step_by(97) {
        assert_eq!(d.train.images[[k / PIXELS, k % PIXELS]], b as f32 / 255.0);
    }
    assert!(d.test.images.iter().all(|v| (0.0..=1.0).contains(v)));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_files_are_typed_errors() {
    let dir = temp_dir("missing");
    match data::load(&dir) {
        Err(FashionError::DataMissing { path }) => {
            assert_eq!(path, dir.join("train-images-idx3-ubyte.gz"))
        }
        other => panic!("expected DataMissing, got {other:?}"),
    }
    let msg = data::load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("apt-get install -y dataset-fashion-mnist")
            && msg.contains("CLAE_FASHION_DIR"),
        "{msg}"
    );
    // Images present, labels missing.
    write_split(&dir, "train", 10, 1, true);
    std::fs::remove_file(dir.join("train-labels-idx1-ubyte.gz")).unwrap();
    assert!(matches!(
        data::load(&dir),
        Err(FashionError::DataMissing { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn corrupt_idx_files_are_typed_errors() {
    let good = encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]).unwrap();
    assert_eq!(parse_idx(&good, "t").unwrap().dims, vec![2, 3]);
    assert_eq!(
        parse_idx(&gzip(&good), "t").unwrap().data,
        vec![1, 2, 3, 4, 5, 6]
    );
    // Truncated data, raw and gzipped.
    assert!(corrupt(&good[..good.len() - 1]).contains("truncated"));
    assert!(corrupt(&gzip(&good[..good.len() - 2])).contains("truncated"));
    // Several concatenated gzip members (as `cat a.gz b.gz` makes) are one
    // stream: all members are read, not just the first.
    let mut two = gzip(&good[..good.len() / 2]);
    two.extend(gzip(&good[good.len() / 2..]));
    assert_eq!(
        parse_idx(&two, "t").unwrap(),
        parse_idx(&good, "t").unwrap()
    );
    // A gzip stream cut in half.
    let gz = gzip(&encode_idx(&[100], &[7; 100]).unwrap());
    assert!(corrupt(&gz[..gz.len() / 2]).contains("gzip"));
    // Trailing bytes.
    let mut long = good.clone();
    long.push(0);
    assert!(corrupt(&long).contains("trailing"));
    // Bad magic, other element types, zero dims, truncated header, empty.
    assert!(corrupt(&[0x12, 0x34, 0x08, 0x01, 0, 0, 0, 0]).contains("magic"));
    assert!(corrupt(&[0, 0, 0x0d, 0x01, 0, 0, 0, 0]).contains("0x0d"));
    assert!(corrupt(&[0, 0, 0x08, 0x00]).contains("zero dimensions"));
    assert!(corrupt(&[0, 0, 0x08, 0x03, 0, 0, 0, 1]).contains("header"));
    assert!(corrupt(&[]).contains("shorter"));
    // Structurally valid files of the wrong shape or with bad labels.
    let dir = temp_dir("corrupt");
    let img = encode_idx(&[2, SIDE, SIDE], &vec![0; 2 * PIXELS]).unwrap();
    let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
        (img.clone(), encode_idx(&[2], &[1, 10]).unwrap(), "label 10"),
        (
            img.clone(),
            encode_idx(&[3], &[1, 2, 3]).unwrap(),
            "2 images but 3 labels",
        ),
        (
            encode_idx(&[2, 27, 29], &vec![0; 2 * 27 * 29]).unwrap(),
            encode_idx(&[2], &[1, 2]).unwrap(),
            "28, 28",
        ),
        (img, encode_idx(&[1, 2], &[1, 2]).unwrap(), "expected [n]"),
    ];
    for (images, labels, needle) in cases {
        std::fs::write(dir.join("train-images-idx3-ubyte"), &images).unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), &labels).unwrap();
        match data::load_split(&dir, "train") {
            Err(FashionError::DataCorrupt { message, .. }) => {
                assert!(message.contains(needle), "{message} lacks {needle}")
            }
            other => panic!("expected DataCorrupt ({needle}), got {other:?}"),
        }
    }
    // Garbage in a file.
    std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), b"\x1f\x8b not gzip").unwrap();
    assert!(matches!(
        data::load_split(&dir, "t10k"),
        Err(FashionError::DataCorrupt { .. })
    ));
    assert!(encode_idx(&[2, 2], &[1, 2, 3]).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

fn column_ramp() -> Array1<f32> {
    Array1::from_shape_fn(PIXELS, |k| (k % SIDE) as f32 / 27.0)
}

#[test]
fn crops_flips_and_jitter() {
    let img = Array1::from_shape_fn(PIXELS, |k| ((k * 37) % 256) as f32 / 255.0);
    let whole = CropBox {
        top: 0,
        left: 0,
        height: SIDE,
        width: SIDE,
    };
    assert_eq!(resized_crop(img.view(), whole).unwrap(), img);
    // Flip: the mirror, and twice is the identity.
    let f = hflip(img.view()).unwrap();
    assert_eq!(f[3 * SIDE], img[3 * SIDE + 27]);
    assert_eq!(hflip(f.view()).unwrap(), img);
    // Bilinear resampling of the left half of a column ramp c/27: output
    // column j samples column j/2 − 1/4 (clamped at 0), so its value is
    // max(0, j/2 − 1/4)/27 in every row.
    let ramp = column_ramp();
    let left = CropBox { width: 14, ..whole };
    let v = resized_crop(ramp.view(), left).unwrap();
    for k in 0..PIXELS {
        let j = (k % SIDE) as f32;
        let want = (j / 2.0 - 0.25).max(0.0) / 27.0;
        assert!((v[k] - want).abs() < 1e-6, "pixel {k}: {} vs {want}", v[k]);
    }
    // A constant image stays constant under any crop.
    let flat = Array1::from_elem(PIXELS, 0.3f32);
    let c = resized_crop(
        flat.view(),
        CropBox {
            top: 5,
            left: 7,
            height: 9,
            width: 13,
        },
    )
    .unwrap();
    assert!(c.iter().all(|&x| (x - 0.3).abs() < 1e-6));
    for bad in [
        CropBox {
            top: 20,
            height: 9,
            ..whole
        },
        CropBox { width: 0, ..whole },
    ] {
        assert!(resized_crop(img.view(), bad).is_err());
    }
    assert!(hflip(Array1::<f32>::zeros(10).view()).is_err());

    // Crops drawn by the config stay inside the image with the configured area.
    let cfg = AugmentConfig::fashion();
    let mut rng = Rng::new(4);
    for _ in 0..500 {
        let b = draw_crop(&cfg, &mut rng);
        assert!(b.top + b.height <= SIDE && b.left + b.width <= SIDE);
        let area = (b.height * b.width) as f64 / PIXELS as f64;
        // rounding each side to whole pixels moves the area a little
        assert!((0.15..=1.0).contains(&area), "{b:?}");
    }

    // Batches: seeded, in [0, 1], identity config is the identity.
    let batch = Array2::from_shape_fn((5, PIXELS), |(n, k)| {
        ((n * 11 + k * 7) % 256) as f32 / 255.0
    });
    let a = augment_batch(batch.view(), &cfg, &mut Rng::new(9)).unwrap();
    assert_eq!(
        a,
        augment_batch(batch.view(), &cfg, &mut Rng::new(9)).unwrap()
    );
    assert_ne!(
        a,
        augment_batch(batch.view(), &cfg, &mut Rng::new(10)).unwrap()
    );
    assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
    let same = augment_batch(batch.view(), &AugmentConfig::identity(), &mut Rng::new(1)).unwrap();
    assert_eq!(same, batch);
    // Flip only (p = 1): every view is the mirror.
    let flip = AugmentConfig {
        flip: 1.0,
        ..AugmentConfig::identity()
    };
    let m = augment_batch(batch.view(), &flip, &mut Rng::new(1)).unwrap();
    assert_eq!(m.row(2), hflip(batch.row(2)).unwrap());
    // Brightness only, strength 0.4, always: every view is b x with b in
    // [0.6, 1.4), clamped.
    let bright = AugmentConfig {
        jitter_p: 1.0,
        brightness: 0.4,
        ..AugmentConfig::identity()
    };
    let half = Array2::from_elem((50, PIXELS), 0.5f32);
    let bv = augment_batch(half.view(), &bright, &mut Rng::new(3)).unwrap();
    for row in bv.outer_iter() {
        let b = row[0] / 0.5;
        assert!((0.6..1.4).contains(&b) && row.iter().all(|&x| x == row[0]));
    }
    for bad in [
        AugmentConfig {
            scale_lo: 0.0,
            ..cfg
        },
        AugmentConfig {
            scale_lo: 0.9,
            scale_hi: 0.5,
            ..cfg
        },
        AugmentConfig {
            ratio_lo: -1.0,
            ..cfg
        },
        AugmentConfig { flip: 1.5, ..cfg },
        AugmentConfig {
            contrast: f64::NAN,
            ..cfg
        },
    ] {
        assert!(matches!(
            augment_batch(batch.view(), &bad, &mut Rng::new(0)),
            Err(FashionError::InvalidConfig { .. })
        ));
    }
    assert!(augment_batch(Array2::<f32>::zeros((2, 10)).view(), &cfg, &mut Rng::new(0)).is_err());
}

fn blobs(n: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
    let x = Array2::from_shape_fn((n, 4), |(i, j)| {
        ((if j == labels[i] { 3.0 } else { 0.0 }) + 0.3 * rng.normal()) as f32
    });
    (x, labels)
}

#[test]
fn validated_probe_and_its_gradient() {
    let (xtr, ytr) = blobs(60, 1);
    let (xva, yva) = blobs(30, 2);
    let (xte, yte) = blobs(30, 3);
    let cfg = ProbeConfig::default();
    let r = validated_probe(
        Labelled {
            x: xtr.view(),
            y: &ytr,
        },
        Labelled {
            x: xva.view(),
            y: &yva,
        },
        Labelled {
            x: xte.view(),
            y: &yte,
        },
        &cfg,
    )
    .unwrap();
    assert_eq!((r.val, r.test), (1.0, 1.0), "separable blobs");
    assert!(r.best_test >= r.test);
    assert!(cfg.weight_decays.contains(&r.weight_decay));
    assert!(
        cfg.lrs.contains(&r.lr),
        "chosen lr {} from {:?}",
        r.lr,
        cfg.lrs
    );
    assert!(r.epoch >= 1 && r.epoch <= cfg.epochs && r.epoch % cfg.eval_every == 0);

    // The probe's z-gradient of the summed cross-entropy against central
    // differences of the cross-entropy computed from its logits.
    let ce = |z: &Array2<f32>| -> f64 {
        let l = r.probe.logits(z.view()).unwrap();
        l.outer_iter()
            .zip(&ytr)
            .map(|(row, &y)| {
                let m = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                m + row.mapv(|v| (v - m).exp()).sum().ln() - row[y]
            })
            .sum()
    };
    let z = xtr.slice(ndarray::s![0..6, ..]).to_owned();
    let g = r.probe.loss_gradient(z.view(), &ytr[..6]).unwrap();
    let mut ytr6 = ytr.clone();
    ytr6.truncate(6);
    let ce6 = |z: &Array2<f32>| -> f64 {
        let l = r.probe.logits(z.view()).unwrap();
        l.outer_iter()
            .zip(&ytr6)
            .map(|(row, &y)| {
                let m = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                m + row.mapv(|v| (v - m).exp()).sum().ln() - row[y]
            })
            .sum()
    };
    let _ = ce;
    let h = 1e-2f32;
    for (i, j) in [(0, 0), (1, 2), (4, 3), (5, 1)] {
        let (mut up, mut down) = (z.clone(), z.clone());
        up[[i, j]] += h;
        down[[i, j]] -= h;
        let fd = (ce6(&up) - ce6(&down)) / (2.0 * h as f64);
        let an = g[[i, j]] as f64;
        assert!(
            (fd - an).abs() <= 1e-3 * (1.0 + an.abs()),
            "({i},{j}): {fd} vs {an}"
        );
    }

    // A label outside 0..10, a label count other than the rows, and a
    // column count other than the probe's are typed errors, not panics.
    for labels in [vec![0, 1, 2, 3, 4, 10], vec![0, 1, 2, 3, 4, usize::MAX]] {
        match r.probe.loss_gradient(z.view(), &labels) {
            Err(FashionError::InvalidConfig { message, .. }) => {
                assert!(message.contains("label"), "{message}")
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }
    assert!(matches!(
        r.probe.loss_gradient(z.view(), &ytr[..5]),
        Err(FashionError::InvalidConfig { .. })
    ));
    let wide = Array2::<f32>::zeros((6, z.ncols() + 1));
    assert!(matches!(
        r.probe.loss_gradient(wide.view(), &ytr[..6]),
        Err(FashionError::InvalidConfig { .. })
    ));
    let no_lr = ProbeConfig {
        lrs: vec![],
        ..ProbeConfig::default()
    };
    let t0 = Labelled {
        x: xtr.view(),
        y: &ytr,
    };
    assert!(matches!(
        validated_probe(t0, t0, t0, &no_lr),
        Err(FashionError::InvalidConfig { .. })
    ));

    // Bad inputs are typed errors.
    let bad_cfg = ProbeConfig {
        weight_decays: vec![],
        ..ProbeConfig::default()
    };
    let t = Labelled {
        x: xtr.view(),
        y: &ytr,
    };
    assert!(matches!(
        validated_probe(t, t, t, &bad_cfg),
        Err(FashionError::InvalidConfig { .. })
    ));
    let short = Labelled {
        x: xtr.view(),
        y: &ytr[..10],
    };
    assert!(validated_probe(short, t, t, &cfg).is_err());
    let nan = Array2::from_elem((3, 4), f32::NAN);
    let n = Labelled {
        x: nan.view(),
        y: &[0, 1, 2],
    };
    assert!(validated_probe(t, n, t, &cfg).is_err());
}

#[test]
fn pgd_on_a_hand_made_toy() {
    // Two classes on the first coordinate of 2-D "pixels": 0.3 (class 0)
    // and 0.7 (class 1), the second coordinate constant. By symmetry the
    // probe's boundary is at 0.5, 0.2 from every point: an L-inf attack of
    // radius 0.1 cannot cross it, one of 0.3 crosses it for every point
    // (the sign steps move straight at it, 2.5 eps in total).
    let x = array![[0.3f32, 0.5], [0.7, 0.5], [0.3, 0.5], [0.7, 0.5]];
    let y = [0usize, 1, 0, 1];
    let set = Labelled { x: x.view(), y: &y };
    let r = validated_probe(set, set, set, &ProbeConfig::default()).unwrap();
    assert_eq!(r.test, 1.0);
    let attack = |eps: f64| {
        robust_accuracy(
            Features::Pixels,
            &r.probe,
            x.view(),
            &y,
            &PgdConfig {
                eps,
                steps: 10,
                seed: 1,
                batch: 3,
            },
        )
        .unwrap()
    };
    assert_eq!(attack(0.0), 1.0);
    assert_eq!(attack(0.1), 1.0);
    assert_eq!(attack(0.3), 0.0);
    assert!(robust_accuracy(
        Features::Pixels,
        &r.probe,
        x.view(),
        &y,
        &PgdConfig {
            eps: -1.0,
            steps: 10,
            seed: 1,
            batch: 3
        }
    )
    .is_err());
}

#[test]
fn knn_with_the_authors_temperatures() {
    assert_eq!(knn_temperature(LossKind::SimClr), 0.5);
    assert_eq!(knn_temperature(LossKind::Plain), 0.1);
    assert_eq!(knn_temperature(LossKind::Uel), 0.1);
    // More queries than one chunk: the chunked accuracy is the fraction
    // of hits, here every query is its class's direction.
    let bank = array![[1.0f32, 0.0], [0.0, 1.0]];
    let q = Array2::from_shape_fn((2500, 2), |(i, j)| if j == i % 2 { 1.0 } else { 0.1 });
    let labels: Vec<usize> = (0..2500).map(|i| i % 2).collect();
    assert_eq!(
        knn_accuracy(bank.view(), &[0, 1], q.view(), &labels, 1, 0.1).unwrap(),
        1.0
    );
    let wrong: Vec<usize> = labels.iter().map(|&l| if l == 0 { 1 } else { 0 }).collect();
    assert_eq!(
        knn_accuracy(bank.view(), &[0, 1], q.view(), &wrong, 1, 0.1).unwrap(),
        0.0
    );
    assert!(knn_accuracy(bank.view(), &[0, 1], q.view(), &labels[..3], 1, 0.1).is_err());
    assert!(knn_accuracy(bank.view(), &[0, 1], q.view(), &labels, 0, 0.1).is_err());
    assert!(knn_accuracy(bank.view(), &[0, 11], q.view(), &labels, 1, 0.1).is_err());

    // The f32 kNN predicts what the digits' f64 kNN predicts on random
    // features (well-separated similarities: ties within f32 rounding are
    // vanishingly rare among 300 x 1500 Gaussian cosines).
    let mut rng = Rng::new(8);
    let bank = Array2::from_shape_fn((1500, 16), |_| rng.normal() as f32);
    let bank_labels: Vec<usize> = (0..1500).map(|_| rng.below(10)).collect();
    let q = Array2::from_shape_fn((300, 16), |_| rng.normal() as f32);
    for (k, t) in [(1, 0.1), (200, 0.1), (200, 0.5), (20, 10.0)] {
        let ours = knn_predict_f32(bank.view(), &bank_labels, q.view(), k, t).unwrap();
        let digits = knn_predict(bank.view(), &bank_labels, q.view(), 10, k, t).unwrap();
        let same = ours.iter().zip(&digits).filter(|(a, b)| a == b).count();
        assert!(same >= 298, "k {k}, T {t}: {same} of 300 agree");
    }
}

fn tiny_config(loss: LossKind, method: Method) -> TrainConfig {
    let mut c = TrainConfig::fashion(loss, method);
    c.model = ModelConfig {
        hidden: 8,
        depth: 1,
        d: 4,
    };
    c.batch_size = 10;
    c.epochs = 1;
    c
}

#[test]
fn encoder_input_gradient_matches_finite_differences() {
    let cfg = tiny_config(LossKind::Plain, Method::Plain);
    let t = ReferenceTrainer::new(&cfg, 3).unwrap();
    let (pixels, _) = synthetic(3, 5);
    let x = Array2::from_shape_vec(
        (3, PIXELS),
        pixels.iter().map(|&b| b as f32 / 255.0).collect(),
    )
    .unwrap();
    // Scalar s(x) = sum(c * z(x)) for a fixed c: dz = c.
    let c = Array2::from_shape_fn((3, 4), |(i, j)| ((i * 4 + j) as f32 * 0.7).sin());
    let mut dz = |_: ndarray::ArrayView2<'_, f32>| Ok(c.clone());
    let (z, dx) = t.embed_eval_vjp(x.view(), &mut dz).unwrap();
    assert_eq!(z, t.embed_eval(x.view()).unwrap());
    let s = |x: &Array2<f32>| -> f64 {
        let z = t.embed_eval(x.view()).unwrap();
        z.iter()
            .zip(&c)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum()
    };
    let scale = dx.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    let h = 1e-2f32;
    for (i, k) in [(0, 100), (1, 400), (2, 700), (0, 391), (2, 10)] {
        let (mut up, mut down) = (x.clone(), x.clone());
        up[[i, k]] += h;
        down[[i, k]] -= h;
        let fd = (s(&up) - s(&down)) / (2.0 * h as f64);
        let an = dx[[i, k]] as f64;
        assert!(
            (fd - an).abs() <= 2e-2 * scale,
            "({i},{k}): {fd} vs {an} (scale {scale})"
        );
    }
}

fn tiny_images(n: usize, seed: u64) -> data::Images {
    let (pixels, labels) = synthetic(n, seed);
    data::Images {
        images: Array2::from_shape_vec(
            (n, PIXELS),
            pixels.iter().map(|&b| b as f32 / 255.0).collect(),
        )
        .unwrap(),
        labels: labels.iter().map(|&y| y as usize).collect(),
    }
}

#[test]
fn mismatched_images_and_labels_are_typed_errors() {
    let good = tiny_images(20, 3);
    assert_eq!(
        data::Images::new(good.images.clone(), good.labels.clone()).unwrap(),
        good
    );
    let short = data::Images {
        images: good.images.clone(),
        labels: good.labels[..15].to_vec(),
    };
    let is_config = |r: Result<data::Images, FashionError>| {
        matches!(r, Err(FashionError::InvalidConfig { .. }))
    };
    // `len()` is the label count: index 3 is in range, yet the rows do not
    // match, which used to panic inside select.
    assert!(is_config(short.select(&[3])));
    let long = data::Images {
        images: good.images.slice(ndarray::s![..10, ..]).to_owned(),
        labels: good.labels.clone(),
    };
    assert!(is_config(long.select(&[12])));
    assert!(is_config(data::Images::new(
        good.images.clone(),
        good.labels[..19].to_vec()
    )));
    let mut bad_label = good.labels.clone();
    bad_label[4] = 10;
    assert!(is_config(data::Images::new(good.images.clone(), bad_label)));
    assert!(is_config(data::Images::new(
        Array2::zeros((20, PIXELS - 1)),
        good.labels.clone()
    )));
    // train_run checks before training.
    let cfg = tiny_config(LossKind::Uel, Method::Plain);
    let mut t = cfg.trainer(1).unwrap();
    let mut curve = |_: &dyn Trainer| Ok(0.0);
    let long_train = data::Images {
        images: good.images.slice(ndarray::s![..10, ..]).to_owned(),
        labels: good.labels.clone(),
    };
    assert!(matches!(
        train_run(
            t.as_mut(),
            &cfg,
            1,
            &long_train,
            1,
            &mut curve,
            &ProgressBar::hidden()
        ),
        Err(FashionError::InvalidConfig { .. })
    ));
}

#[test]
fn every_method_of_one_seed_starts_from_the_same_encoder() {
    let train = tiny_images(40, 7);
    let mut starts = Vec::new();
    for method in Method::ALL {
        let cfg = tiny_config(LossKind::SimClr, method);
        let mut t = ReferenceTrainer::new(&cfg, 11).unwrap();
        let z0 = t.embed_eval(train.view()).unwrap();
        let mut eval = |_: &dyn Trainer| Ok(0.5);
        let r = train_run(
            &mut t,
            &cfg,
            11,
            &train,
            1,
            &mut eval,
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert_eq!(r.curve.len(), 2);
        assert!(r.curve[1].loss.is_finite(), "{method:?}");
        assert_ne!(
            t.embed_eval(train.view()).unwrap(),
            z0,
            "{method:?} trained"
        );
        starts.push(z0);
    }
    assert!(starts.windows(2).all(|w| w[0] == w[1]));
    // The control differs from CLAE only in eps; the peers' attacks are in
    // normalised units.
    let c = tiny_config(LossKind::SimClr, Method::ClaeEps0);
    assert_eq!(c.clae_config().adv.eps, 0.0);
    let c = tiny_config(LossKind::SimClr, Method::Clae);
    assert_eq!(c.clae_config().adv.eps, 0.03);
    let acl = tiny_config(LossKind::SimClr, Method::Acl)
        .peer_config()
        .unwrap();
    assert!((acl.pgd.eps * data::STD - 8.0 / 255.0).abs() < 1e-12);
    let (lo, hi) = acl.pgd.clamp.unwrap();
    assert!(
        (lo * data::STD + data::MEAN).abs() < 1e-12
            && (hi * data::STD + data::MEAN - 1.0).abs() < 1e-12
    );
}

#[test]
fn options_cells_and_equal_time() {
    let o = Options::parse(Vec::<String>::new()).unwrap().unwrap();
    assert_eq!(
        (o.seeds, o.epochs, o.train, o.quick),
        (3, 20, 10_000, false)
    );
    // 3 losses x (plain, CLAE, control) + for SimCLR 2 more sweep values,
    // plain at CLAE's wall-clock, ACL and RoCL; per seed.
    let cells = o.cells();
    assert_eq!(cells.len(), o.seeds * (3 * 3 + 2 + 1 + 2));
    let keys: std::collections::HashSet<String> = cells.iter().map(Cell::key).collect();
    assert_eq!(keys.len(), cells.len(), "keys are unique");
    // Plain at CLAE's wall-clock comes after its seed's plain and CLAE.
    for (i, c) in cells.iter().enumerate() {
        if c.method == Method::PlainLong {
            for m in [Method::Plain, Method::Clae] {
                assert!(cells[..i]
                    .iter()
                    .any(|p| p.method == m && p.seed == c.seed && p.loss == c.loss));
            }
        }
    }
    let o2 = Options::parse(["--no-peers", "--no-equal-time", "--losses", "uel"].map(String::from))
        .unwrap()
        .unwrap();
    // UEL's three, and SimCLR (the focus) plain, CLAE, its eps = 0 control
    // and the two other eps.
    assert_eq!(o2.cells().len(), o2.seeds * (3 + 5));
    for seed in 0..o2.seeds as u64 {
        assert!(o2
            .cells()
            .iter()
            .any(|c| c.loss == LossKind::SimClr && c.method == Method::ClaeEps0 && c.seed == seed));
    }
    // A 0 in the sweep is rejected (the control covers it).
    match Options::parse(["--sweep", "0,0.1"].map(String::from)) {
        Err(FashionError::InvalidConfig { what, .. }) => assert_eq!(what, "--sweep"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(Options::parse(["--seeds", "1"].map(String::from)).is_err());
    assert!(Options::parse(["--sweep", "0.1,x"].map(String::from)).is_err());
    assert!(Options::parse(["--bogus"].map(String::from)).is_err());
    assert!(Options::parse(["--help"].map(String::from))
        .unwrap()
        .is_none());
    assert_ne!(o.fingerprint(), Options::quick().fingerprint());
    // The fingerprint covers the format version, the probe's settings and
    // the data folder, and holds no comma (it is a CSV field).
    assert!(o
        .fingerprint()
        .starts_with(&format!("v{}-", run::FORMAT_VERSION)));
    assert!(!o.fingerprint().contains(','));
    let mut p = o.clone();
    p.probe.lrs = vec![0.1];
    assert_ne!(p.fingerprint(), o.fingerprint());
    let mut p = o.clone();
    p.probe.momentum = 0.5;
    assert_ne!(p.fingerprint(), o.fingerprint());
    let mut p = o.clone();
    p.data = Some(PathBuf::from("/nonexistent/other-fashion-dir"));
    assert_ne!(p.fingerprint(), o.fingerprint());
    assert!(p
        .fingerprint_details()
        .contains("/nonexistent/other-fashion-dir"));
}

fn synthetic_options(dir: &Path, out: &Path) -> Options {
    Options {
        data: Some(dir.to_path_buf()),
        out: out.to_path_buf(),
        progress: false,
        seeds: 2,
        train: 200,
        val: 100,
        bank: 0,
        test: 0,
        curve_test: 50,
        robust: 20,
        ..Options::quick()
    }
}

#[test]
fn end_to_end_on_synthetic_idx_files_and_resume() {
    let dir = temp_dir("e2e-data");
    write_split(&dir, "train", 400, 21, true);
    write_split(&dir, "t10k", 100, 22, true);
    let out = temp_dir("e2e-out");
    let mut o = synthetic_options(&dir, &out);
    o.losses = vec![LossKind::Plain];
    o.focus = LossKind::Plain;
    o.sweep = vec![0.1];
    let rep = run::run(&o).unwrap();
    report::write(&rep).unwrap();
    assert_eq!(rep.sizes, (200, 100, 300, 100));
    assert_eq!(rep.runs.len(), o.cells().len());
    assert_eq!(rep.reused, 0);
    for r in &rep.runs {
        for acc in [r.knn200, r.probe_test, r.probe_best_test] {
            assert!((0.0..=1.0).contains(&acc));
        }
        assert!(r.probe_best_test >= r.probe_test);
        // Radius 0 (clean accuracy on the attacked subset) and every radius.
        assert_eq!(r.robust.len(), o.attack_eps.len() + 1);
        assert_eq!(r.robust[0].0, 0.0);
        // The radius-0 point bounds every attacked one (same images).
        assert!(r.robust.iter().all(|(_, a)| *a <= r.robust[0].1));
        for (_, a) in &r.robust {
            assert!((0.0..=1.0).contains(a), "robust accuracy {a}");
        }
        assert_eq!(r.curve.len(), r.epochs + 1);
    }
    // The synthetic classes are separable by rows: raw pixels get them all.
    assert_eq!(rep.baseline.knn200, 1.0);
    // Every file is there.
    for name in [
        "report.md",
        "runs.csv",
        "curves.csv",
        "accuracy.svg",
        "accuracy_vs_eps.svg",
        "robustness.svg",
        "learning_curves.svg",
    ] {
        let text = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(!text.is_empty(), "{name}");
        if name.ends_with(".svg") {
            assert!(text.starts_with("<svg") && text.contains("<text"), "{name}");
        }
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.starts_with("# Does the adversarial view help? Fashion-MNIST\n\n**Result.**"));
    assert!(md.contains("Welch") && md.contains("quick smoke run"));
    // Every sweep value with its pixel-unit size, from STD.
    assert_eq!(
        report::sweep_pixels(&[0.01, 0.03, 0.1]),
        "0.01 (0.0035 = 0.90/255 pixels), 0.03 (0.0106 = 2.70/255 pixels), 0.1 (0.0353 = 9.00/255 pixels)"
    );
    assert!(md.contains(&report::sweep_pixels(&o.sweep)));
    assert!(md.contains("chosen learning rates"));
    // The CSV reads back to the same records.
    let back = read_finished(&out, &o.fingerprint()).unwrap();
    // (Debug text: NaN marks the epochs without a loss or a curve point.)
    assert_eq!(format!("{back:?}"), format!("{:?}", rep.runs));
    // A rerun skips every finished cell and appends nothing.
    let lines = std::fs::read_to_string(out.join("runs.csv"))
        .unwrap()
        .lines()
        .count();
    let again = run::run(&o).unwrap();
    assert_eq!(again.reused, rep.runs.len());
    assert_eq!(again.baseline, rep.baseline, "baseline.csv read back");
    assert_eq!(format!("{:?}", again.runs), format!("{:?}", rep.runs));
    assert_eq!(
        std::fs::read_to_string(out.join("runs.csv"))
            .unwrap()
            .lines()
            .count(),
        lines
    );
    // Other sizes do not reuse those rows.
    let other = Options {
        epochs: 1,
        ..o.clone()
    };
    assert!(read_finished(&out, &other.fingerprint())
        .unwrap()
        .is_empty());
    // Equal time reads its seed's plain and CLAE seconds.
    let long = rep
        .runs
        .iter()
        .find(|r| r.cell.method == Method::PlainLong)
        .unwrap();
    assert_eq!(
        long.epochs,
        equal_time_epochs(&rep.runs, LossKind::Plain, long.cell.seed, o.epochs)
    );
    assert!(long.epochs >= o.epochs);

    // Resume after a crash: a cell whose curve rows were written but whose
    // runs.csv row (the commit marker) was not is not read back, and when
    // it is run again the duplicate curve rows collapse to one per epoch,
    // the last written.
    let fp = o.fingerprint();
    let first = rep.runs[0].clone();
    let mut redo = first.clone();
    for c in &mut redo.curve {
        c.2 += 1000.0;
    }
    let orphan = run::RunRecord {
        cell: Cell {
            seed: 99,
            ..first.cell
        },
        ..first.clone()
    };
    let curves = out.join("curves.csv");
    let mut extra = run::curve_rows(&fp, &orphan);
    extra.push_str(&run::curve_rows(&fp, &redo));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&curves)
        .unwrap()
        .write_all(extra.as_bytes())
        .unwrap();
    let back = read_finished(&out, &fp).unwrap();
    assert_eq!(back.len(), rep.runs.len(), "the orphan curve is dropped");
    assert!(back.iter().all(|r| r.cell.seed != 99));
    let b0 = back
        .iter()
        .find(|r| r.cell.key() == first.cell.key())
        .unwrap();
    assert_eq!(b0.curve.len(), first.curve.len(), "one row per epoch");
    for (a, b) in b0.curve.iter().zip(&redo.curve) {
        assert_eq!((a.0, a.2), (b.0, b.2), "the last written row wins");
    }
    assert!(
        b0.curve.windows(2).all(|w| w[0].0 < w[1].0),
        "sorted by epoch"
    );
    // append_record writes the curve before the runs row.
    let fresh = temp_dir("e2e-append");
    run::append_record(&fresh, &fp, &first).unwrap();
    assert_eq!(
        format!("{:?}", read_finished(&fresh, &fp).unwrap()),
        format!("{:?}", vec![first.clone()])
    );
    std::fs::remove_dir_all(&fresh).ok();
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn equal_time_epochs_from_measured_seconds() {
    let dir = temp_dir("et-data");
    write_split(&dir, "train", 400, 21, false);
    write_split(&dir, "t10k", 100, 22, false);
    let out = temp_dir("et-out");
    let mut o = synthetic_options(&dir, &out);
    o.losses = vec![LossKind::Uel];
    o.focus = LossKind::Uel;
    o.sweep = vec![];
    o.peers = false;
    o.equal_time = false;
    let mut runs = run::run(&o).unwrap().runs;
    let set = |runs: &mut Vec<run::RunRecord>, m: Method, s: f64| {
        for r in runs.iter_mut().filter(|r| r.cell.method == m) {
            r.seconds_per_epoch = s;
        }
    };
    set(&mut runs, Method::Plain, 1.0);
    set(&mut runs, Method::Clae, 1.8);
    assert_eq!(equal_time_epochs(&runs, LossKind::Uel, 0, 20), 36);
    set(&mut runs, Method::Clae, 0.5); // never fewer epochs than plain's own
    assert_eq!(equal_time_epochs(&runs, LossKind::Uel, 0, 20), 20);
    assert_eq!(
        equal_time_epochs(&runs, LossKind::Plain, 0, 20),
        20,
        "no such cells"
    );
    // A nonsense plain time (as a hand-edited CSV could hold) is capped at
    // MAX_EQUAL_TIME_RATIO x the epochs instead of saturating.
    set(&mut runs, Method::Plain, 1e-300);
    set(&mut runs, Method::Clae, 1.0);
    assert_eq!(
        equal_time_epochs(&runs, LossKind::Uel, 0, 20),
        20 * run::MAX_EQUAL_TIME_RATIO as usize
    );
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn quick_end_to_end_on_the_real_data() {
    let dir = data::default_dir();
    if !dir.join("train-images-idx3-ubyte.gz").exists()
        && !dir.join("train-images-idx3-ubyte").exists()
    {
        println!("SKIPPED quick_end_to_end_on_the_real_data: Fashion-MNIST not found in {} (scripts/setup.sh as root installs it)", dir.display());
        return;
    }
    let all = data::load(&dir).unwrap();
    assert_eq!((all.train.len(), all.test.len()), (60_000, 10_000));
    // The normalisation constants are the training set's statistics.
    let px = all.train.images.mapv(|v| v as f64);
    let mean = px.mean().unwrap();
    let std = px.std(0.0);
    assert!(
        (mean - data::MEAN).abs() < 5e-4 && (std - data::STD).abs() < 5e-4,
        "{mean} {std}"
    );
    for c in 0..10 {
        assert_eq!(all.train.labels.iter().filter(|&&y| y == c).count(), 6000);
    }
    let out = temp_dir("real-quick");
    let o = Options {
        out: out.clone(),
        progress: false,
        ..Options::quick()
    };
    let rep = run::run(&o).unwrap();
    report::write(&rep).unwrap();
    assert_eq!(rep.runs.len(), o.cells().len());
    // Far above chance (10%) even at toy sizes.
    assert!(
        rep.baseline.knn200 > 0.5 && rep.baseline.probe_test > 0.5,
        "{:?}",
        rep.baseline
    );
    for r in &rep.runs {
        assert!(r.knn200 > 0.2, "{}: {}", r.cell.key(), r.knn200);
    }
    std::fs::remove_dir_all(&out).ok();
}

fn tiny_cnn(loss: LossKind, method: Method) -> TrainConfig {
    TrainConfig {
        encoder: EncoderKind::Cnn {
            width: 4,
            blocks: 2,
        },
        ..tiny_config(loss, method)
    }
}

#[test]
fn cnn_input_gradient_matches_finite_differences() {
    let cfg = tiny_cnn(LossKind::Uel, Method::Plain);
    let t = cfg.trainer(5).unwrap();
    assert!(t.backend().starts_with("tch-cpu-f32 CNN"));
    let x = tiny_images(3, 9).images;
    let c = Array2::from_shape_fn((3, 4), |(i, j)| ((i * 4 + j) as f32 * 1.3).cos());
    let mut dz = |_: ndarray::ArrayView2<'_, f32>| Ok(c.clone());
    let (z, dx) = t.embed_eval_vjp(x.view(), &mut dz).unwrap();
    let z_eval = t.embed_eval(x.view()).unwrap();
    let zdiff = z
        .iter()
        .zip(&z_eval)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(zdiff < 1e-6, "{zdiff}");
    // Embedding more rows than one chunk gives the rows' own embeddings.
    let n = cnn_trainer::EMBED_CHUNK + 5;
    let big = tiny_images(n, 10).images;
    let z_big = t.embed_eval(big.view()).unwrap();
    assert_eq!(z_big.dim(), (n, 4));
    let tail = t.embed_eval(big.slice(ndarray::s![n - 7.., ..])).unwrap();
    let head = t.embed_eval(big.slice(ndarray::s![..3, ..])).unwrap();
    let d = z_big
        .slice(ndarray::s![n - 7.., ..])
        .iter()
        .zip(&tail)
        .chain(z_big.slice(ndarray::s![..3, ..]).iter().zip(&head))
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(d < 1e-5, "chunked embedding differs by {d}");
    let s = |x: &Array2<f32>| -> f64 {
        let z = t.embed_eval(x.view()).unwrap();
        z.iter()
            .zip(&c)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum()
    };
    assert!(dx.iter().any(|v| *v != 0.0));
    // Directional derivatives along random sign directions over all
    // pixels (a single pixel's is too small for f32 central differences
    // across the conv's ReLU kinks; h = 1e-3 still crosses enough of them
    // to be 12% off, h = 1e-4 was 0.2% off).
    let h = 1e-4f32;
    for seed in 0..4 {
        let mut rng = Rng::new(seed);
        let v = Array2::from_shape_fn(x.dim(), |_| if rng.uniform() < 0.5 { -1.0f32 } else { 1.0 });
        let fd = (s(&(&x + &(&v * h))) - s(&(&x - &(&v * h)))) / (2.0 * h as f64);
        let an: f64 = dx
            .iter()
            .zip(&v)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        // f32 rounding of each of the two evaluations of s: at most a few
        // units of 2^-24 per |z| <= 1 entry, weighted by |c|.
        let rounding =
            8.0 * c.iter().map(|v| v.abs() as f64).sum::<f64>() * 2f64.powi(-24) / (2.0 * h as f64);
        assert!(
            (fd - an).abs() <= 0.03 * an.abs() + rounding,
            "direction {seed}: {fd} vs {an} (rounding {rounding})"
        );
    }
}

#[test]
fn cnn_methods_of_one_seed_start_from_the_same_encoder_and_train() {
    let train = tiny_images(20, 3);
    let mut starts = Vec::new();
    for method in [
        Method::Plain,
        Method::Clae,
        Method::ClaeEps0,
        Method::Acl,
        Method::Rocl,
    ] {
        let cfg = tiny_cnn(LossKind::SimClr, method);
        let mut t = cfg.trainer(4).unwrap();
        let z0 = t.embed_eval(train.view()).unwrap();
        let mut eval = |_: &dyn Trainer| Ok(0.5);
        let r = train_run(
            t.as_mut(),
            &cfg,
            4,
            &train,
            1,
            &mut eval,
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert!(r.curve[1].loss.is_finite(), "{method:?}");
        assert_ne!(
            t.embed_eval(train.view()).unwrap(),
            z0,
            "{method:?} trained"
        );
        starts.push(z0);
    }
    assert!(starts.windows(2).all(|w| w[0] == w[1]));
    // A CNN that cannot be built is a typed error, not a panic.
    let bad = TrainConfig {
        encoder: EncoderKind::Cnn {
            width: 0,
            blocks: 2,
        },
        ..tiny_config(LossKind::SimClr, Method::Plain)
    };
    assert!(bad.trainer(0).is_err());
    let o = Options::parse(["--quick", "--encoder", "cnn", "--cnn-width", "8"].map(String::from))
        .unwrap()
        .unwrap();
    assert_eq!(
        o.encoder,
        EncoderKind::Cnn {
            width: 8,
            blocks: 3
        }
    );
    assert_ne!(o.fingerprint(), Options::quick().fingerprint());
    assert!(Options::parse(["--encoder", "resnet"].map(String::from)).is_err());
}
