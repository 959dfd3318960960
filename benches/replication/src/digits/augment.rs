//! The random views of an 8x8 digit (seeded, in Rust).
//!
//! Per image, in this order, with draws from one [`Rng`] in this order:
//!
//! 1. translation by `(dx, dy)`, each uniform in `-max_shift..=max_shift`
//!    (two draws): pixel `(r, c)` moves to `(r + dy, c + dx)`; pixels shifted
//!    out are lost and vacated pixels are 0 (zero fill, the background);
//! 2. intensity scaling by `s ~ U[scale_lo, scale_hi)` (one draw);
//! 3. additive Gaussian noise `N(0, noise_std²)` per pixel (64 draws,
//!    row-major), skipped when `noise_std = 0`;
//! 4. clamping to `[0, 1]` if `clamp` is set, so views stay in the pixel
//!    range of the clean images.

use super::data::{PIXELS, SIDE};
use super::{DigitsError, Result};
use clae_reference::rng::Rng;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

/// Augmentation strengths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentConfig {
    /// Largest translation in pixels along each axis.
    pub max_shift: usize,
    /// Lower end of the intensity scale factor.
    pub scale_lo: f32,
    /// Upper end of the intensity scale factor.
    pub scale_hi: f32,
    /// Standard deviation of the additive noise, in `[0, 1]` pixel units.
    pub noise_std: f32,
    /// Clamp the view to `[0, 1]` at the end.
    pub clamp: bool,
}

impl AugmentConfig {
    /// The replication's setting: shift ≤ 1 px, scale in `[0.7, 1.3)`,
    /// noise σ = 0.1 (1.6 grey levels of the 17), clamped to `[0, 1]`.
    pub fn digits() -> Self {
        AugmentConfig {
            max_shift: 1,
            scale_lo: 0.7,
            scale_hi: 1.3,
            noise_std: 0.1,
            clamp: true,
        }
    }

    /// Checks the ranges: `max_shift < 8`, `0 <= scale_lo <= scale_hi`,
    /// `noise_std >= 0`, all finite.
    pub fn validate(&self) -> Result<()> {
        if self.max_shift >= SIDE {
            return Err(DigitsError::config(
                "max_shift",
                format!("must be below {SIDE}, got {}", self.max_shift),
            ));
        }
        let ok_scale = self.scale_lo.is_finite()
            && self.scale_hi.is_finite()
            && self.scale_lo >= 0.0
            && self.scale_lo <= self.scale_hi;
        if !ok_scale {
            return Err(DigitsError::config(
                "intensity scale range",
                format!(
                    "must be finite with 0 <= lo <= hi, got [{}, {})",
                    self.scale_lo, self.scale_hi
                ),
            ));
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            return Err(DigitsError::config(
                "noise_std",
                format!("must be finite and >= 0, got {}", self.noise_std),
            ));
        }
        Ok(())
    }
}

/// Translates one flattened 8x8 image: output pixel `(r, c)` is input pixel
/// `(r - dy, c - dx)`, or 0 where that lies outside the image.
///
/// ```
/// use clae_replication::digits::augment::translate;
/// let mut img = ndarray::Array1::<f32>::zeros(64);
/// img[3 * 8 + 4] = 1.0;                       // row 3, column 4
/// let moved = translate(img.view(), 1, -1).unwrap();
/// assert_eq!(moved[2 * 8 + 5], 1.0);            // row 2, column 5
/// assert_eq!(moved.sum(), 1.0);
/// ```
pub fn translate(image: ArrayView1<'_, f32>, dx: i64, dy: i64) -> Result<Array1<f32>> {
    if image.len() != PIXELS {
        return Err(DigitsError::config(
            "image",
            format!("expected {PIXELS} pixels, got {}", image.len()),
        ));
    }
    let side = SIDE as i64;
    let mut out = Array1::zeros(PIXELS);
    for r in 0..side {
        for c in 0..side {
            let (sr, sc) = (r - dy, c - dx);
            if (0..side).contains(&sr) && (0..side).contains(&sc) {
                out[(r * side + c) as usize] = image[(sr * side + sc) as usize];
            }
        }
    }
    Ok(out)
}

/// One random view of every row of `images` (`n x 64`), drawing from `rng`
/// as described in the module docs. The same `rng` state always gives the
/// same view.
pub fn augment_batch(
    images: ArrayView2<'_, f32>,
    cfg: &AugmentConfig,
    rng: &mut Rng,
) -> Result<Array2<f32>> {
    cfg.validate()?;
    if images.ncols() != PIXELS {
        return Err(DigitsError::config(
            "images",
            format!("expected n x {PIXELS}, got {:?}", images.dim()),
        ));
    }
    let mut out = Array2::zeros(images.raw_dim());
    let span = 2 * cfg.max_shift + 1;
    for (src, mut dst) in images.outer_iter().zip(out.outer_iter_mut()) {
        let dx = rng.below(span) as i64 - cfg.max_shift as i64;
        let dy = rng.below(span) as i64 - cfg.max_shift as i64;
        let scale = rng.uniform_in(cfg.scale_lo as f64, cfg.scale_hi as f64) as f32;
        let mut view = translate(src, dx, dy)?;
        view.mapv_inplace(|v| v * scale);
        if cfg.noise_std > 0.0 {
            view.mapv_inplace(|v| v + cfg.noise_std * rng.normal() as f32);
        }
        if cfg.clamp {
            view.mapv_inplace(|v| v.clamp(0.0, 1.0));
        }
        dst.assign(&view);
    }
    Ok(out)
}
