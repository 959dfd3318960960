//! Summary statistics over seeds and Welch's two-sample t-test.
//!
//! "Is the difference between plain and CLAE larger than the seed noise?"
//! is answered with Welch's t-test (unequal variances):
//!
//! ```text
//! t  = (m_b − m_a) / sqrt(s_a²/n_a + s_b²/n_b)
//! ν  = (s_a²/n_a + s_b²/n_b)² / ( (s_a²/n_a)²/(n_a−1) + (s_b²/n_b)²/(n_b−1) )
//! p  = P(|T_ν| ≥ |t|) = I_{ν/(ν+t²)}(ν/2, 1/2)       (two-sided)
//! ```
//!
//! with `s` the sample standard deviation (`n − 1` in the denominator) and
//! `I` the regularised incomplete beta function.

/// Mean and sample standard deviation of a set of values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanStd {
    /// Arithmetic mean (NaN for no values).
    pub mean: f64,
    /// Sample standard deviation, `n − 1` in the denominator (0 for one value).
    pub std: f64,
    /// Number of values.
    pub n: usize,
}

impl MeanStd {
    /// Summarises `xs`.
    ///
    /// ```
    /// use clae_replication::digits::stats::MeanStd;
    /// let s = MeanStd::of(&[1.0, 2.0, 3.0]);
    /// assert_eq!((s.mean, s.std, s.n), (2.0, 1.0, 3));
    /// ```
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len();
        if n == 0 {
            return MeanStd {
                mean: f64::NAN,
                std: f64::NAN,
                n,
            };
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        MeanStd { mean, std, n }
    }
}

/// Result of Welch's t-test of `b` against `a`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Welch {
    /// `mean(b) − mean(a)`.
    pub diff: f64,
    /// The t statistic (±inf when both samples have zero variance and the
    /// means differ; 0 when they do not).
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
}

/// Welch's t-test of sample `b` against sample `a`; `None` unless both
/// have at least two values.
///
/// ```
/// use clae_replication::digits::stats::welch;
/// let w = welch(&[1.0, 2.0, 3.0, 4.0], &[3.0, 4.0, 5.0, 6.0]).unwrap();
/// assert_eq!(w.diff, 2.0);
/// assert!((w.t - 2.190890).abs() < 1e-6 && (w.df - 6.0).abs() < 1e-12);
/// assert!((w.p - 0.0710).abs() < 1e-3);
/// ```
pub fn welch(a: &[f64], b: &[f64]) -> Option<Welch> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (sa, sb) = (MeanStd::of(a), MeanStd::of(b));
    let va = sa.std * sa.std / sa.n as f64;
    let vb = sb.std * sb.std / sb.n as f64;
    let diff = sb.mean - sa.mean;
    let se2 = va + vb;
    if se2 == 0.0 {
        let (t, p) = if diff == 0.0 {
            (0.0, 1.0)
        } else {
            (diff.signum() * f64::INFINITY, 0.0)
        };
        let df = (sa.n + sb.n - 2) as f64;
        return Some(Welch { diff, t, df, p });
    }
    let t = diff / se2.sqrt();
    let df = se2 * se2 / (va * va / (sa.n - 1) as f64 + vb * vb / (sb.n - 1) as f64);
    Some(Welch {
        diff,
        t,
        df,
        p: student_t_two_sided(t, df),
    })
}

/// `P(|T| >= |t|)` for Student's t with `df` degrees of freedom.
///
/// ```
/// use clae_replication::digits::stats::student_t_two_sided;
/// assert!((student_t_two_sided(2.306004, 8.0) - 0.05).abs() < 1e-6);
/// assert!((student_t_two_sided(1.0, 1.0) - 0.5).abs() < 1e-12); // Cauchy
/// ```
pub fn student_t_two_sided(t: f64, df: f64) -> f64 {
    if !(t.is_finite() && df > 0.0) {
        return if t.is_infinite() { 0.0 } else { f64::NAN };
    }
    incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
}

/// The `q` quantile of Student's t with `df` degrees of freedom, for
/// `q` in `[0.5, 1)`: the `t >= 0` with `P(T <= t) = q` (bisection on
/// [`student_t_two_sided`], to ~1e-12). NaN outside that domain.
///
/// ```
/// use clae_replication::digits::stats::student_t_quantile;
/// assert!((student_t_quantile(0.975, 8.0) - 2.306004).abs() < 1e-5);
/// assert_eq!(student_t_quantile(0.5, 3.0), 0.0);
/// ```
pub fn student_t_quantile(q: f64, df: f64) -> f64 {
    if !((0.5..1.0).contains(&q) && df > 0.0 && df.is_finite()) {
        return f64::NAN;
    }
    if q == 0.5 {
        return 0.0; // the median, by symmetry
    }
    let upper = |t: f64| student_t_two_sided(t, df) / 2.0; // P(T > t), decreasing
    let target = 1.0 - q;
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while upper(hi) > target {
        hi *= 2.0;
        if hi > 1e12 {
            return f64::INFINITY;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if upper(mid) > target {
            lo = mid
        } else {
            hi = mid
        }
        if hi - lo <= 1e-13 * hi.max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// The smallest true mean difference a two-sided paired t-test at level
/// `alpha` detects with probability `power`, given `n` paired differences
/// with standard deviation `sd`: `(t_{1−alpha/2, n−1} + t_{power, n−1}) sd / √n`
/// (the usual Student-t approximation to the noncentral t; for small `n` it
/// is slightly optimistic). NaN for `n < 2`.
///
/// ```
/// use clae_replication::digits::stats::detectable_difference;
/// // n = 3: (4.3027 + 1.0607) / √3 ≈ 3.097 standard deviations
/// assert!((detectable_difference(1.0, 3, 0.05, 0.8) - 3.0966).abs() < 1e-3);
/// ```
pub fn detectable_difference(sd: f64, n: usize, alpha: f64, power: f64) -> f64 {
    if n < 2 {
        return f64::NAN;
    }
    let df = (n - 1) as f64;
    (student_t_quantile(1.0 - alpha / 2.0, df) + student_t_quantile(power, df)) * sd
        / (n as f64).sqrt()
}

/// Two-sided exact sign test: the probability, under a fair coin, of a
/// split of `n` signs at least as uneven as `wins` of `n`
/// (`min(1, 2 P(X >= max(wins, n - wins)))`, `X ~ Binomial(n, 1/2)`). NaN for
/// `n = 0` or `wins > n`.
///
/// ```
/// use clae_replication::digits::stats::sign_test_two_sided;
/// assert_eq!(sign_test_two_sided(9, 9), 2.0 / 512.0);
/// assert_eq!(sign_test_two_sided(3, 3), 0.25);
/// ```
pub fn sign_test_two_sided(wins: usize, n: usize) -> f64 {
    if n == 0 || wins > n {
        return f64::NAN;
    }
    let k = wins.max(n - wins);
    // P(X >= k) = sum_{j >= k} C(n, j) / 2^n, in f64 (exact for n < 54)
    let mut c = 1.0f64; // C(n, 0)
    let mut tail = 0.0f64;
    for j in 0..=n {
        if j >= k {
            tail += c;
        }
        c = c * (n - j) as f64 / (j + 1) as f64;
    }
    (2.0 * tail / 2f64.powi(n as i32)).min(1.0)
}

/// Natural log of the gamma function (Lanczos, g = 7, n = 9; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // reflection
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised incomplete beta `I_x(a, b)` by its continued fraction
/// (modified Lentz), using the symmetry `I_x(a,b) = 1 − I_{1−x}(b,a)` where
/// the fraction converges faster.
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        for num in [
            m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0)),
        ] {
            d = 1.0 + num * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + num / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut fact = 1.0f64;
        for n in 1..20 {
            // Γ(n) = (n-1)!
            assert!((ln_gamma(n as f64) - fact.ln()).abs() < 1e-12, "n = {n}");
            fact *= n as f64;
        }
        // Γ(1/2) = sqrt(pi)
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
    }

    #[test]
    fn t_distribution_matches_tables() {
        // Two-sided 5% and 1% critical values from standard tables.
        for (t, df, p) in [
            (12.706205, 1.0, 0.05),
            (2.776445, 4.0, 0.05),
            (2.228139, 10.0, 0.05),
            (3.169273, 10.0, 0.01),
            (1.959964, 1e7, 0.05),
        ] {
            let got = student_t_two_sided(t, df);
            assert!((got - p).abs() < 1e-5, "t={t} df={df}: {got} vs {p}");
        }
        assert_eq!(student_t_two_sided(0.0, 5.0), 1.0);
    }

    #[test]
    fn t_quantiles_match_tables() {
        // One-sided quantiles from standard tables (0.975: the two-sided 5%
        // critical values; 0.80: the power column of sample-size tables).
        for (q, df, t) in [
            (0.975, 2.0, 4.302653),
            (0.975, 4.0, 2.776445),
            (0.975, 10.0, 2.228139),
            (0.80, 2.0, 1.060660),
            (0.80, 4.0, 0.940965),
            (0.995, 1.0, 63.656741),
        ] {
            let got = student_t_quantile(q, df);
            assert!((got - t).abs() < 1e-5, "q={q} df={df}: {got} vs {t}");
        }
        assert!(student_t_quantile(0.3, 2.0).is_nan());
        assert!(student_t_quantile(1.0, 2.0).is_nan());
    }

    #[test]
    fn sign_test_matches_the_binomial() {
        // 2 * sum C(n, j) / 2^n by hand: n = 6, k = 5: 2 * (6 + 1) / 64
        assert_eq!(sign_test_two_sided(5, 6), 14.0 / 64.0);
        assert_eq!(sign_test_two_sided(1, 6), 14.0 / 64.0);
        // an even split is as even as it gets
        assert_eq!(sign_test_two_sided(5, 10), 1.0);
        // n = 10, k = 9: 2 * (10 + 1) / 1024
        assert_eq!(sign_test_two_sided(9, 10), 22.0 / 1024.0);
        assert!(sign_test_two_sided(0, 0).is_nan());
        assert!(sign_test_two_sided(4, 3).is_nan());
    }

    #[test]
    fn welch_degenerate_cases() {
        assert!(welch(&[1.0], &[1.0, 2.0]).is_none());
        let same = welch(&[1.0, 1.0], &[1.0, 1.0]).unwrap();
        assert_eq!((same.t, same.p), (0.0, 1.0));
        let apart = welch(&[1.0, 1.0], &[2.0, 2.0]).unwrap();
        assert_eq!((apart.t, apart.p), (f64::INFINITY, 0.0));
    }
}
