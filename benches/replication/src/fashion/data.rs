//! Fashion-MNIST from its IDX files, and the input normalisation.
//!
//! Debian's `dataset-fashion-mnist` installs the four files of Zalando's
//! release under `/usr/share/datasets/fashion-mnist/`, gzipped:
//! `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz` (60 000) and
//! `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz` (10 000).
//! [`load`] reads `NAME.gz` or, failing that, the uncompressed `NAME`.
//!
//! The IDX format (LeCun's MNIST page): a 4-byte magic number — two zero
//! bytes, a type byte (`0x08` = unsigned byte, the only type used here), the
//! number of dimensions — then each dimension as a big-endian `u32`, then
//! the data, row-major, exactly `prod(dims)` elements. Images are
//! `n x 28 x 28` (magic `0x00000803`), labels `n` (magic `0x00000801`).
//!
//! Pixels are divided by 255, so images live in `[0, 1]` (the unit of the
//! robustness budgets). The encoders see them normalised as the CLAE
//! authors normalise CIFAR-10 — per-channel `(x − mean) / std` with the
//! training set's statistics — here [`MEAN`] and [`STD`] of the 60 000
//! training images; CLAE's `eps` is then in normalised units, `STD` times
//! that in pixel units.

use super::{FashionError, Result};
use flate2::read::MultiGzDecoder;
use ndarray::{Array2, ArrayView2, Axis};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Side of an image in pixels.
pub const SIDE: usize = 28;
/// Pixels per image, `D_in`.
pub const PIXELS: usize = SIDE * SIDE;
/// Number of classes.
pub const CLASSES: usize = 10;
/// Mean pixel of the training set in `[0, 1]` units (0.2860; checked
/// against the loaded data by the end-to-end test).
pub const MEAN: f64 = 0.2860;
/// Standard deviation of the training set's pixels in `[0, 1]` units (0.3530).
pub const STD: f64 = 0.3530;
/// Environment variable naming the folder of the four IDX files.
pub const ENV_VAR: &str = "CLAE_FASHION_DIR";
/// Where Debian's package puts the files.
pub const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Class names, in label order.
pub const CLASS_NAMES: [&str; CLASSES] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// A labelled set of flattened images in `[0, 1]` pixel units.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    /// `n x 784`, values in `[0, 1]`.
    pub images: Array2<f32>,
    /// `n` labels in `0..CLASSES`.
    pub labels: Vec<usize>,
}

impl Images {
    /// Images and labels checked against each other: `images` must be
    /// `n x 784` and `labels` `n` values below [`CLASSES`]; anything else is
    /// [`FashionError::InvalidConfig`].
    pub fn new(images: Array2<f32>, labels: Vec<usize>) -> Result<Images> {
        let set = Images { images, labels };
        set.check()?;
        Ok(set)
    }

    /// Checks what [`Images::new`] checks (the fields are public, so a
    /// value built directly may be inconsistent).
    pub fn check(&self) -> Result<()> {
        if self.images.nrows() != self.labels.len() || self.images.ncols() != PIXELS {
            return Err(FashionError::config(
                "images",
                format!(
                    "{:?} pixels with {} labels: need n x {PIXELS} with n labels",
                    self.images.dim(),
                    self.labels.len()
                ),
            ));
        }
        if let Some((i, &bad)) = self.labels.iter().enumerate().find(|(_, &y)| y >= CLASSES) {
            return Err(FashionError::config(
                "images",
                format!("label {bad} of image {i} is not below {CLASSES}"),
            ));
        }
        Ok(())
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images and labels at `indices`, in that order (an index out of
    /// range, or images and labels that do not match as [`Images::check`]
    /// wants, is [`FashionError::InvalidConfig`]).
    pub fn select(&self, indices: &[usize]) -> Result<Images> {
        self.check()?;
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(FashionError::config(
                "row index",
                format!("{bad} is out of range for {} images", self.len()),
            ));
        }
        Ok(Images {
            images: self.images.select(Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        })
    }

    /// The images as a view.
    pub fn view(&self) -> ArrayView2<'_, f32> {
        self.images.view()
    }
}

/// The two official splits.
#[derive(Debug, Clone, PartialEq)]
pub struct Fashion {
    /// 60 000 training images.
    pub train: Images,
    /// 10 000 test images.
    pub test: Images,
}

/// Normalises `[0, 1]` pixels for the encoders: `(x − MEAN) / STD`.
///
/// ```
/// use clae_replication::fashion::data::{normalise, MEAN, STD};
/// let x = ndarray::array![[MEAN as f32, 1.0]];
/// let n = normalise(x.view());
/// assert!(n[[0, 0]].abs() < 1e-6 && (n[[0, 1]] - ((1.0 - MEAN) / STD) as f32).abs() < 1e-6);
/// ```
pub fn normalise(x: ArrayView2<'_, f32>) -> Array2<f32> {
    let (m, s) = (MEAN as f32, STD as f32);
    x.mapv(|v| (v - m) / s)
}

/// The pixel range `[0, 1]` in normalised units.
pub fn normalised_range() -> (f64, f64) {
    (-MEAN / STD, (1.0 - MEAN) / STD)
}

/// The folder of the IDX files: `$CLAE_FASHION_DIR` if set and non-empty,
/// else [`DEBIAN_DIR`].
pub fn default_dir() -> PathBuf {
    match std::env::var_os(ENV_VAR).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(DEBIAN_DIR),
    }
}

/// A parsed IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    /// The dimensions.
    pub dims: Vec<usize>,
    /// `prod(dims)` bytes, row-major.
    pub data: Vec<u8>,
}

/// Parses an IDX file held in memory; gzip (first bytes `1f 8b`, one or
/// several concatenated members) is decompressed first. `source_name` is used in errors.
///
/// ```
/// use clae_replication::fashion::data::parse_idx;
/// let bytes = [0u8, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6];
/// let idx = parse_idx(&bytes, "example").unwrap();
/// assert_eq!((idx.dims, idx.data), (vec![2, 3], vec![1, 2, 3, 4, 5, 6]));
/// assert!(parse_idx(&bytes[..17], "example").is_err()); // truncated
/// ```
pub fn parse_idx(bytes: &[u8], source_name: &str) -> Result<Idx> {
    let corrupt = |message: String| FashionError::DataCorrupt {
        source_name: source_name.to_string(),
        message,
    };
    let inflated;
    let raw: &[u8] = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| corrupt(format!("not a valid gzip stream: {e}")))?;
        inflated = out;
        &inflated
    } else {
        bytes
    };
    if raw.len() < 4 {
        return Err(corrupt(format!(
            "{} bytes, shorter than the 4-byte IDX magic number",
            raw.len()
        )));
    }
    if raw[0] != 0 || raw[1] != 0 {
        return Err(corrupt(format!(
            "bad magic number {:02x}{:02x}{:02x}{:02x}: an IDX file starts with two zero bytes",
            raw[0], raw[1], raw[2], raw[3]
        )));
    }
    if raw[2] != 0x08 {
        return Err(corrupt(format!(
            "IDX element type 0x{:02x} is not 0x08 (unsigned byte)",
            raw[2]
        )));
    }
    let ndims = raw[3] as usize;
    if ndims == 0 {
        return Err(corrupt("IDX file with zero dimensions".into()));
    }
    let header = 4 + 4 * ndims;
    if raw.len() < header {
        return Err(corrupt(format!(
            "truncated header: {ndims} dimensions need {header} bytes, file has {}",
            raw.len()
        )));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|k| {
            let b = &raw[4 + 4 * k..8 + 4 * k];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| corrupt(format!("dimensions {dims:?} overflow")))?;
    let body = raw.len() - header;
    if body != expected {
        return Err(corrupt(format!(
            "dimensions {dims:?} need {expected} data bytes, file has {body} ({})",
            if body < expected {
                "truncated"
            } else {
                "trailing bytes"
            }
        )));
    }
    Ok(Idx {
        dims,
        data: raw[header..].to_vec(),
    })
}

/// Builds [`Images`] from a parsed image file (`n x 28 x 28`) and a label
/// file (`n`, labels `< 10`).
pub fn images_from_idx(images: &Idx, labels: &Idx, source_name: &str) -> Result<Images> {
    let corrupt = |message: String| FashionError::DataCorrupt {
        source_name: source_name.to_string(),
        message,
    };
    if images.dims.len() != 3 || images.dims[1] != SIDE || images.dims[2] != SIDE {
        return Err(corrupt(format!(
            "image file has dimensions {:?}, expected [n, 28, 28]",
            images.dims
        )));
    }
    if labels.dims.len() != 1 {
        return Err(corrupt(format!(
            "label file has dimensions {:?}, expected [n]",
            labels.dims
        )));
    }
    let n = images.dims[0];
    if labels.dims[0] != n {
        return Err(corrupt(format!("{n} images but {} labels", labels.dims[0])));
    }
    if n == 0 {
        return Err(corrupt("no images".into()));
    }
    if let Some((i, &bad)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, &y)| y as usize >= CLASSES)
    {
        return Err(corrupt(format!("label {bad} of image {i} is not in 0..=9")));
    }
    let pixels: Vec<f32> = images.data.iter().map(|&b| b as f32 / 255.0).collect();
    let images = Array2::from_shape_vec((n, PIXELS), pixels)
        .map_err(|e| corrupt(format!("internal shape error: {e}")))?;
    Ok(Images {
        images,
        labels: labels.data.iter().map(|&y| y as usize).collect(),
    })
}

/// Reads `dir/NAME.gz`, or `dir/NAME` when there is no `.gz`.
pub fn read_idx_file(dir: &Path, name: &str) -> Result<Idx> {
    let gz = dir.join(format!("{name}.gz"));
    let plain = dir.join(name);
    let path = if gz.exists() {
        gz
    } else if plain.exists() {
        plain
    } else {
        return Err(FashionError::DataMissing { path: gz });
    };
    let bytes = std::fs::read(&path).map_err(|e| FashionError::Io {
        what: "reading a Fashion-MNIST file".into(),
        path: path.clone(),
        source: e,
    })?;
    parse_idx(&bytes, &path.display().to_string())
}

/// Loads one split: `prefix` is `train` or `t10k`.
pub fn load_split(dir: &Path, prefix: &str) -> Result<Images> {
    let images = read_idx_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels = read_idx_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    images_from_idx(
        &images,
        &labels,
        &dir.join(format!("{prefix}-*-idx?-ubyte"))
            .display()
            .to_string(),
    )
}

/// Loads both splits from `dir` (see the module docs for the file names).
pub fn load(dir: &Path) -> Result<Fashion> {
    Ok(Fashion {
        train: load_split(dir, "train")?,
        test: load_split(dir, "t10k")?,
    })
}

/// Writes an IDX file of unsigned bytes (used by the tests and by anyone
/// preparing a small data set): magic, big-endian dims, data.
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    let n: usize = dims.iter().product();
    if dims.is_empty() || dims.len() > 255 || n != data.len() {
        return Err(FashionError::config(
            "IDX contents",
            format!(
                "{} dimensions {dims:?} for {} bytes",
                dims.len(),
                data.len()
            ),
        ));
    }
    let mut out = vec![0u8, 0, 0x08, dims.len() as u8];
    for &d in dims {
        let d = u32::try_from(d).map_err(|_| {
            FashionError::config("IDX dimension", format!("{d} does not fit in 32 bits"))
        })?;
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}
