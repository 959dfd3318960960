//! The 8x8 digits: parsing the gzipped CSV and a seeded, stratified split.
//!
//! File format (scikit-learn's `sklearn/datasets/data/digits.csv.gz`): no
//! header; one image per line; 65 comma-separated numbers — 64 pixel values
//! in `0..=16` (row-major, 8 rows of 8) and then the class label `0..=9`.
//! Pixels are divided by 16 so images live in `[0, 1]`, the unit in which
//! docs/SPEC.md's FGSM step `eps` is measured.

use super::{DigitsError, Result};
use clae_reference::rng::Rng;
use flate2::read::GzDecoder;
use ndarray::{Array2, ArrayView2, Axis};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Side of an image in pixels.
pub const SIDE: usize = 8;
/// Pixels per image, `D_in`.
pub const PIXELS: usize = SIDE * SIDE;
/// Number of classes.
pub const CLASSES: usize = 10;
/// Largest raw pixel value in the CSV; pixels are divided by it.
pub const MAX_PIXEL: f64 = 16.0;
/// Environment variable that names the data file.
pub const ENV_VAR: &str = "CLAE_DIGITS_CSV";

/// A labelled set of flattened images.
#[derive(Debug, Clone, PartialEq)]
pub struct Digits {
    /// `n x 64`, values in `[0, 1]`.
    pub images: Array2<f32>,
    /// `n` labels in `0..CLASSES`.
    pub labels: Vec<usize>,
}

impl Digits {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images and labels at `indices`, in that order (an index out of
    /// range is an [`DigitsError::InvalidConfig`] error).
    pub fn select(&self, indices: &[usize]) -> Result<Digits> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DigitsError::config(
                "row index",
                format!("{bad} is out of range for {} images", self.len()),
            ));
        }
        Ok(Digits {
            images: self.images.select(Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        })
    }

    /// The images as a view.
    pub fn view(&self) -> ArrayView2<'_, f32> {
        self.images.view()
    }
}

/// Where the data file is: `$CLAE_DIGITS_CSV` if set (the generated
/// `.cargo/config.toml` sets it for `cargo run`/`cargo test`), else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/clae/digits.csv.gz`, where
/// `scripts/setup.sh` puts it.
pub fn default_path() -> Result<PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = non_empty(ENV_VAR) {
        return Ok(PathBuf::from(p));
    }
    let cache = match (non_empty("XDG_CACHE_HOME"), non_empty("HOME")) {
        (Some(x), _) => PathBuf::from(x),
        (None, Some(h)) => PathBuf::from(h).join(".cache"),
        (None, None) => return Err(DigitsError::NoDataPath),
    };
    Ok(cache.join("clae").join("digits.csv.gz"))
}

/// Loads and parses the gzipped CSV at `path`.
///
/// A missing file is [`DigitsError::DataMissing`]; an unreadable, non-gzip or
/// malformed one is [`DigitsError::DataCorrupt`].
pub fn load(path: &Path) -> Result<Digits> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DigitsError::DataMissing {
            path: path.to_path_buf(),
        },
        _ => DigitsError::Io {
            what: "opening the digits data".into(),
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    parse_gz(file, &path.display().to_string())
}

/// Parses gzipped CSV from any reader (`source_name` is used in errors).
///
/// ```
/// use std::io::Write;
/// use clae_replication::digits::data::parse_gz;
/// let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
/// let row: Vec<String> = (0..64).map(|i| (i % 17).to_string()).chain(["3".into()]).collect();
/// writeln!(gz, "{}", row.join(",")).unwrap();
/// let digits = parse_gz(&gz.finish().unwrap()[..], "example").unwrap();
/// assert_eq!((digits.len(), digits.labels[0]), (1, 3));
/// assert_eq!(digits.images[[0, 16]], 16.0 / 16.0);
/// assert!(parse_gz(&b"not gzip"[..], "example").is_err());
/// ```
pub fn parse_gz<R: Read>(reader: R, source_name: &str) -> Result<Digits> {
    parse_csv(BufReader::new(GzDecoder::new(reader)), source_name)
}

/// Parses the (already decompressed) CSV. Blank lines are skipped; every
/// other line must hold exactly 65 numbers as described in the module docs.
pub fn parse_csv<R: BufRead>(reader: R, source_name: &str) -> Result<Digits> {
    let corrupt = |message: String| DigitsError::DataCorrupt {
        source_name: source_name.to_string(),
        message,
    };
    let mut pixels: Vec<f32> = Vec::new();
    let mut labels = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let lineno = index + 1;
        let line = line.map_err(|e| corrupt(format!("read error at line {lineno}: {e}")))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != PIXELS + 1 {
            return Err(corrupt(format!(
                "line {lineno} has {} fields, expected {} (64 pixels and a label)",
                fields.len(),
                PIXELS + 1
            )));
        }
        for (col, field) in fields[..PIXELS].iter().enumerate() {
            let v = parse_number(field)
                .filter(|v| (0.0..=MAX_PIXEL).contains(v))
                .ok_or_else(|| {
                    corrupt(format!(
                        "line {lineno}, column {}: pixel {field:?} is not a number in [0, 16]",
                        col + 1
                    ))
                })?;
            pixels.push((v / MAX_PIXEL) as f32);
        }
        let label_field = fields[PIXELS];
        let label = parse_number(label_field)
            .filter(|v| v.fract() == 0.0 && (0.0..CLASSES as f64).contains(v))
            .ok_or_else(|| {
                corrupt(format!(
                    "line {lineno}: label {label_field:?} is not an integer in 0..=9"
                ))
            })?;
        labels.push(label as usize);
    }
    if labels.is_empty() {
        return Err(corrupt("no rows".into()));
    }
    let images = Array2::from_shape_vec((labels.len(), PIXELS), pixels)
        .map_err(|e| corrupt(format!("internal shape error: {e}")))?;
    Ok(Digits { images, labels })
}

fn parse_number(field: &str) -> Option<f64> {
    field.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Row indices of a train/test split, each sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Training rows.
    pub train: Vec<usize>,
    /// Test rows.
    pub test: Vec<usize>,
}

/// A stratified split: within each class, the rows are shuffled by one
/// [`Rng`] seeded with `seed` (classes visited in order `0, 1, ...`) and the
/// first `round(n_c * test_fraction)` go to the test set. The same labels and
/// seed always give the same split.
///
/// ```
/// use clae_replication::digits::data::stratified_split;
/// let labels: Vec<usize> = (0..40).map(|i| i % 4).collect();
/// let s = stratified_split(&labels, 0.25, 1).unwrap();
/// assert_eq!((s.train.len(), s.test.len()), (28, 12)); // 3 of each class's 10
/// assert_eq!(s, stratified_split(&labels, 0.25, 1).unwrap());
/// ```
pub fn stratified_split(labels: &[usize], test_fraction: f64, seed: u64) -> Result<Split> {
    if !(test_fraction.is_finite() && test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(DigitsError::config(
            "test fraction",
            format!("must be in (0, 1), got {test_fraction}"),
        ));
    }
    let classes = labels.iter().max().map_or(0, |&m| m + 1);
    let mut rng = Rng::new(seed);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for class in 0..classes {
        let rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        let perm = rng.permutation(rows.len());
        let n_test = (rows.len() as f64 * test_fraction).round() as usize;
        for (k, &p) in perm.iter().enumerate() {
            if k < n_test {
                test.push(rows[p]);
            } else {
                train.push(rows[p]);
            }
        }
    }
    train.sort_unstable();
    test.sort_unstable();
    if train.is_empty() || test.is_empty() {
        return Err(DigitsError::config(
            "test fraction",
            format!(
                "{test_fraction} of {} rows leaves an empty train or test set",
                labels.len()
            ),
        ));
    }
    Ok(Split { train, test })
}
