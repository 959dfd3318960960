//! The measurement harness: interleaved rounds and medians.
//!
//! A group's members are timed in the same rounds. In round `r` the members
//! run in the order `r, r+1, …` (rotated), so no member always follows the
//! same neighbour, and a slow patch of the machine (another process
//! compiling) lands on every member of the round rather than on one. Each
//! member's per-run time is the median over rounds; ratios are formed from
//! those medians.
//!
//! Fast members (a loss at `N = 64` takes well under a millisecond) run
//! several times per sample so that a sample is long enough to time; the
//! number of runs per sample is calibrated during the warm-up.

use crate::overhead::Result;
use std::time::Instant;

/// Something that can be run repeatedly and timed.
pub trait Workload {
    /// One run (one step, one loss evaluation, one product). Runs on a
    /// device must wait for the device before returning.
    fn run(&mut self) -> Result<()>;
}

impl<W: Workload + ?Sized> Workload for Box<W> {
    fn run(&mut self) -> Result<()> {
        (**self).run()
    }
}

/// Summary of one member's samples (seconds per run).
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Seconds per run, one entry per round, in round order.
    pub samples: Vec<f64>,
    /// Runs timed together in each sample.
    pub runs_per_sample: usize,
    /// Median of `samples`.
    pub median: f64,
    /// First quartile.
    pub q1: f64,
    /// Third quartile.
    pub q3: f64,
    /// Fastest sample.
    pub min: f64,
}

impl Stats {
    /// Summarises per-run seconds (at least one sample).
    ///
    /// ```
    /// use clae_benches::overhead::measure::Stats;
    /// let s = Stats::from_samples(vec![3.0, 1.0, 2.0, 10.0, 2.5], 1);
    /// assert_eq!((s.median, s.min), (2.5, 1.0));
    /// assert_eq!((s.q1, s.q3), (2.0, 3.0));
    /// ```
    pub fn from_samples(samples: Vec<f64>, runs_per_sample: usize) -> Self {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        Stats {
            median: quantile(&sorted, 0.5),
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
            min: sorted.first().copied().unwrap_or(f64::NAN),
            samples,
            runs_per_sample,
        }
    }

    /// Interquartile range relative to the median.
    pub fn relative_spread(&self) -> f64 {
        (self.q3 - self.q1) / self.median
    }
}

/// Linear-interpolation quantile of sorted data (NaN when empty).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        len => {
            let pos = q * (len - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            let frac = pos - lo as f64;
            sorted[lo] * (1.0 - frac) + sorted[hi] * frac
        }
    }
}

/// The median of unsorted data (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

/// How long to measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundPolicy {
    /// Seconds of timed rounds to aim for.
    pub budget_s: f64,
    /// At least this many rounds.
    pub min_rounds: usize,
    /// At most this many rounds.
    pub max_rounds: usize,
    /// A sample lasts at least this long (fast members run several times).
    pub min_sample_s: f64,
}

/// What the harness reports while it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// Warm-up done; `rounds` timed rounds of about `round_s` seconds follow.
    Calibrated {
        /// Planned rounds.
        rounds: usize,
        /// Estimated seconds per round.
        round_s: f64,
    },
    /// Round `done` of `rounds` finished.
    Round {
        /// Rounds finished.
        done: usize,
        /// Planned rounds.
        rounds: usize,
    },
}

fn time_runs(w: &mut dyn Workload, runs: usize) -> Result<f64> {
    let start = Instant::now();
    for _ in 0..runs {
        w.run()?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Times `workloads` side by side: one warm-up run each, a calibration
/// sample each, then interleaved rounds. Returns one [`Stats`] per workload,
/// in order. The first error of any run aborts the group.
pub fn measure_interleaved(
    workloads: &mut [&mut dyn Workload],
    policy: &RoundPolicy,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<Stats>> {
    let k = workloads.len();
    if k == 0 {
        return Ok(Vec::new());
    }
    // Warm-up: first runs allocate, fault pages in, spin up thread pools.
    let mut first = Vec::with_capacity(k);
    for w in workloads.iter_mut() {
        first.push(time_runs(*w, 1)?);
    }
    let runs: Vec<usize> = first
        .iter()
        .map(|&t| ((policy.min_sample_s / t.max(1e-9)).ceil() as usize).clamp(1, 10_000))
        .collect();
    // Calibration sample at the chosen runs-per-sample (also a second
    // warm-up) — only where a member runs several times per sample; slow
    // members' first runs already say how long a round takes (if anything
    // too long: first runs fault their memory in, so rounds are not overplanned).
    let mut round_s = 0.0;
    for ((w, &r), &t) in workloads.iter_mut().zip(&runs).zip(&first) {
        round_s += if r > 1 { time_runs(*w, r)? } else { t };
    }
    let rounds = ((policy.budget_s / round_s.max(1e-9)).floor() as usize)
        .clamp(policy.min_rounds.max(1), policy.max_rounds.max(1));
    progress(Progress::Calibrated { rounds, round_s });
    let mut samples = vec![Vec::with_capacity(rounds); k];
    for r in 0..rounds {
        for j in 0..k {
            let i = (r + j) % k;
            let t = time_runs(workloads[i], runs[i])?;
            samples[i].push(t / runs[i] as f64);
        }
        progress(Progress::Round {
            done: r + 1,
            rounds,
        });
    }
    Ok(samples
        .into_iter()
        .zip(runs)
        .map(|(s, r)| Stats::from_samples(s, r))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(usize);
    impl Workload for Counter {
        fn run(&mut self) -> Result<()> {
            self.0 += 1;
            Ok(())
        }
    }

    #[test]
    fn every_member_runs_every_round() {
        let (mut a, mut b) = (Counter(0), Counter(0));
        let policy = RoundPolicy {
            budget_s: 0.0,
            min_rounds: 4,
            max_rounds: 4,
            min_sample_s: 0.0,
        };
        let mut seen = Vec::new();
        let stats =
            measure_interleaved(&mut [&mut a, &mut b], &policy, &mut |p| seen.push(p)).unwrap();
        assert_eq!(stats.len(), 2);
        assert!(stats.iter().all(|s| s.samples.len() == 4));
        // min_sample_s = 0: one run per sample, so no calibration sample;
        // warm-up 1 + 4 rounds
        assert_eq!((a.0, b.0), (5, 5));
        assert_eq!(seen.last(), Some(&Progress::Round { done: 4, rounds: 4 }));
    }

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert_eq!(median(&[4.0, 1.0, 3.0]), 3.0);
        assert!(median(&[]).is_nan());
    }
}
