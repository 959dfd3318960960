//! SimCLR-family views of 28x28 grey images (seeded, in Rust), the same for
//! every method.
//!
//! Per image, in this order, with draws from one [`Rng`] in this order:
//!
//! 1. **random resized crop** (torchvision's `RandomResizedCrop(28)`): up to
//!    ten attempts, each drawing an area fraction `s ~ U[scale_lo, scale_hi)`
//!    and a log aspect ratio `ln r ~ U[ln ratio_lo, ln ratio_hi)`; the crop is
//!    `w = round(sqrt(s A r))` by `h = round(sqrt(s A / r))` pixels
//!    (`A = 784`); the first that fits is placed with its top-left corner
//!    uniform (two draws), and if none fits the whole image is used. The crop
//!    is resized back to 28x28 bilinearly (pixel centres aligned, edges
//!    clamped, torchvision's `align_corners = False`);
//! 2. **horizontal flip** with probability `flip` (one draw);
//! 3. **brightness / contrast jitter** with probability `jitter_p` (one
//!    draw, then two): `x ← b x` with `b ~ U[1 − brightness, 1 + brightness)`,
//!    then `x ← c x + (1 − c) mean(x)` with `c ~ U[1 − contrast, 1 + contrast)`,
//!    each clamped to `[0, 1]` (torchvision's `ColorJitter` on one channel;
//!    saturation and hue do not exist in grey, and random grayscale is the
//!    identity, so SimCLR's colour distortion reduces to these two).
//!
//! Blur is left out, as SimCLR leaves it out for 32x32 CIFAR-10. Views stay
//! in `[0, 1]` pixel units; the encoders normalise them
//! ([`super::data::normalise`]).

use super::data::{PIXELS, SIDE};
use super::{FashionError, Result};
use clae_reference::rng::Rng;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

/// Augmentation strengths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentConfig {
    /// Smallest crop area fraction, in `(0, 1]`.
    pub scale_lo: f64,
    /// Largest crop area fraction, in `[scale_lo, 1]`.
    pub scale_hi: f64,
    /// Smallest aspect ratio `w / h`, `> 0`.
    pub ratio_lo: f64,
    /// Largest aspect ratio, `>= ratio_lo`.
    pub ratio_hi: f64,
    /// Probability of a horizontal flip, in `[0, 1]`.
    pub flip: f64,
    /// Probability of the brightness / contrast jitter, in `[0, 1]`.
    pub jitter_p: f64,
    /// Brightness strength, in `[0, 1]`.
    pub brightness: f64,
    /// Contrast strength, in `[0, 1]`.
    pub contrast: f64,
}

impl AugmentConfig {
    /// The replication's setting: crop area `[0.2, 1]` (InstDisc's and UEL's
    /// CIFAR setting; SimCLR's 0.08 leaves a few pixels of a 28x28 image),
    /// aspect ratio `[3/4, 4/3]`, flip ½, jitter with probability 0.8 and
    /// strength 0.4 (the CLAE authors' SimCLR `ColorJitter(0.4, 0.4, ...)`).
    pub fn fashion() -> Self {
        AugmentConfig {
            scale_lo: 0.2,
            scale_hi: 1.0,
            ratio_lo: 3.0 / 4.0,
            ratio_hi: 4.0 / 3.0,
            flip: 0.5,
            jitter_p: 0.8,
            brightness: 0.4,
            contrast: 0.4,
        }
    }

    /// No augmentation at all: every view is the image itself.
    pub fn identity() -> Self {
        AugmentConfig {
            scale_lo: 1.0,
            scale_hi: 1.0,
            ratio_lo: 1.0,
            ratio_hi: 1.0,
            flip: 0.0,
            jitter_p: 0.0,
            brightness: 0.0,
            contrast: 0.0,
        }
    }

    /// Checks every range (see the field docs).
    pub fn validate(&self) -> Result<()> {
        let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !(unit(self.scale_lo) && unit(self.scale_hi))
            || self.scale_lo <= 0.0
            || self.scale_lo > self.scale_hi
        {
            return Err(FashionError::config(
                "crop scale",
                format!(
                    "needs 0 < lo <= hi <= 1, got [{}, {}]",
                    self.scale_lo, self.scale_hi
                ),
            ));
        }
        if !(self.ratio_lo.is_finite() && self.ratio_hi.is_finite())
            || self.ratio_lo <= 0.0
            || self.ratio_lo > self.ratio_hi
        {
            return Err(FashionError::config(
                "crop aspect ratio",
                format!(
                    "needs finite 0 < lo <= hi, got [{}, {}]",
                    self.ratio_lo, self.ratio_hi
                ),
            ));
        }
        for (what, v) in [
            ("flip probability", self.flip),
            ("jitter probability", self.jitter_p),
            ("brightness", self.brightness),
            ("contrast", self.contrast),
        ] {
            if !unit(v) {
                return Err(FashionError::config(
                    what,
                    format!("must be in [0, 1], got {v}"),
                ));
            }
        }
        Ok(())
    }
}

/// A crop box in pixels: top-left corner and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

fn check_image(image: ArrayView1<'_, f32>) -> Result<()> {
    if image.len() != PIXELS {
        return Err(FashionError::config(
            "image",
            format!("expected {PIXELS} pixels, got {}", image.len()),
        ));
    }
    Ok(())
}

/// The crop `b` of a flattened 28x28 image resized to 28x28 bilinearly:
/// output pixel `(i, j)` samples the input at row
/// `top + (i + ½) h / 28 − ½`, column `left + (j + ½) w / 28 − ½`, clamped
/// to the image. The whole image as the box is the identity.
///
/// ```
/// use clae_replication::fashion::augment::{resized_crop, CropBox};
/// let img = ndarray::Array1::from_shape_fn(784, |i| (i % 28) as f32 / 27.0);
/// let same = resized_crop(img.view(), CropBox { top: 0, left: 0, height: 28, width: 28 }).unwrap();
/// assert_eq!(same, img);
/// ```
pub fn resized_crop(image: ArrayView1<'_, f32>, b: CropBox) -> Result<Array1<f32>> {
    check_image(image)?;
    if b.height == 0 || b.width == 0 || b.top + b.height > SIDE || b.left + b.width > SIDE {
        return Err(FashionError::config(
            "crop box",
            format!("{b:?} does not lie inside a {SIDE}x{SIDE} image"),
        ));
    }
    let max = (SIDE - 1) as f64;
    let coord = |start: usize, size: usize, k: usize| -> (usize, usize, f32) {
        let c = start as f64 + (k as f64 + 0.5) * size as f64 / SIDE as f64 - 0.5;
        let c = c.clamp(0.0, max);
        let lo = c.floor() as usize;
        let hi = (lo + 1).min(SIDE - 1);
        (lo, hi, (c - lo as f64) as f32)
    };
    let rows: Vec<_> = (0..SIDE).map(|i| coord(b.top, b.height, i)).collect();
    let cols: Vec<_> = (0..SIDE).map(|j| coord(b.left, b.width, j)).collect();
    let px = |r: usize, c: usize| image[r * SIDE + c];
    let mut out = Array1::zeros(PIXELS);
    for (i, &(r0, r1, fr)) in rows.iter().enumerate() {
        for (j, &(c0, c1, fc)) in cols.iter().enumerate() {
            let top = px(r0, c0) + fc * (px(r0, c1) - px(r0, c0));
            let bottom = px(r1, c0) + fc * (px(r1, c1) - px(r1, c0));
            out[i * SIDE + j] = top + fr * (bottom - top);
        }
    }
    Ok(out)
}

/// A flattened 28x28 image mirrored left to right.
pub fn hflip(image: ArrayView1<'_, f32>) -> Result<Array1<f32>> {
    check_image(image)?;
    Ok(Array1::from_shape_fn(PIXELS, |k| {
        let (r, c) = (k / SIDE, k % SIDE);
        image[r * SIDE + (SIDE - 1 - c)]
    }))
}

/// Draws a crop box as in step 1 of the module docs.
pub fn draw_crop(cfg: &AugmentConfig, rng: &mut Rng) -> CropBox {
    let area = PIXELS as f64;
    let (log_lo, log_hi) = (cfg.ratio_lo.ln(), cfg.ratio_hi.ln());
    for _ in 0..10 {
        let s = rng.uniform_in(cfg.scale_lo, cfg.scale_hi);
        let r = rng.uniform_in(log_lo, log_hi).exp();
        let w = (s * area * r).sqrt().round() as usize;
        let h = (s * area / r).sqrt().round() as usize;
        if (1..=SIDE).contains(&w) && (1..=SIDE).contains(&h) {
            let top = rng.below(SIDE - h + 1);
            let left = rng.below(SIDE - w + 1);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    CropBox {
        top: 0,
        left: 0,
        height: SIDE,
        width: SIDE,
    }
}

/// One random view of every row of `images` (`n x 784`, `[0, 1]` pixels),
/// drawing from `rng` as described in the module docs. The same `rng`
/// state always gives the same views.
pub fn augment_batch(
    images: ArrayView2<'_, f32>,
    cfg: &AugmentConfig,
    rng: &mut Rng,
) -> Result<Array2<f32>> {
    cfg.validate()?;
    if images.ncols() != PIXELS {
        return Err(FashionError::config(
            "images",
            format!("expected n x {PIXELS}, got {:?}", images.dim()),
        ));
    }
    let mut out = Array2::zeros(images.raw_dim());
    for (src, mut dst) in images.outer_iter().zip(out.outer_iter_mut()) {
        let b = draw_crop(cfg, rng);
        let mut view = resized_crop(src, b)?;
        if rng.uniform() < cfg.flip {
            view = hflip(view.view())?;
        }
        if rng.uniform() < cfg.jitter_p {
            let bright = rng.uniform_in(1.0 - cfg.brightness, 1.0 + cfg.brightness) as f32;
            let contrast = rng.uniform_in(1.0 - cfg.contrast, 1.0 + cfg.contrast) as f32;
            view.mapv_inplace(|v| (v * bright).clamp(0.0, 1.0));
            let mean = view.mean().unwrap_or(0.0);
            view.mapv_inplace(|v| (contrast * v + (1.0 - contrast) * mean).clamp(0.0, 1.0));
        }
        dst.assign(&view);
    }
    Ok(out)
}
