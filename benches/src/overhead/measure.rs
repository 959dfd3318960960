//! The measurement harness: interleaved rounds and medians.
//!
//! A group's members are timed in the same rounds. Each round runs every
//! member once, in an order shuffled afresh (fixed seed), so a slow patch of
//! the machine lands on every member of the round rather than on one, and no
//! member always follows the same neighbour. Each member's per-run time is
//! the median over rounds; ratios are formed from those medians.
//!
//! Two things keep members from disturbing each other and keep other
//! processes out of the numbers, which matters on a small shared machine:
//!
//! * a short untimed pause before every sample ([`RoundPolicy::cooldown_s`]):
//!   libtorch's OpenMP threads keep spinning for a few milliseconds after
//!   their last parallel region (libgomp's default wait policy), which would
//!   otherwise be charged to whichever member runs next;
//! * the CPU time that *other* processes used during each round is read from
//!   `/proc/stat` and `/proc/self/stat` ([`CpuMeter`]); a round during which
//!   they kept more than [`RoundPolicy::max_foreign_cpus`] CPUs busy is
//!   discarded and run again, within a time limit. Kept and discarded rounds
//!   are reported.
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

    /// `runs` consecutive runs timed by the workload itself, seconds; `None`
    /// (the default) lets the harness time [`Workload::run`]. A workload in
    /// another process times its own runs, so the round trip to it is not
    /// charged to it.
    fn run_timed(&mut self, runs: usize) -> Result<Option<f64>> {
        let _ = runs;
        Ok(None)
    }
}

impl<W: Workload + ?Sized> Workload for Box<W> {
    fn run(&mut self) -> Result<()> {
        (**self).run()
    }

    fn run_timed(&mut self, runs: usize) -> Result<Option<f64>> {
        (**self).run_timed(runs)
    }
}

/// Child processes whose CPU time counts as this process's own in
/// [`CpuMeter`] (the PyTorch eager worker): they are members, not
/// foreign load.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Counts `pid`'s CPU time as this process's own from now on.
pub fn register_child(pid: u32) {
    if let Ok(mut c) = CHILDREN.lock() {
        c.push(pid);
    }
}

/// Stops counting `pid` (it exited).
pub fn unregister_child(pid: u32) {
    if let Ok(mut c) = CHILDREN.lock() {
        c.retain(|&p| p != pid);
    }
}

/// utime + stime of a process, in clock ticks, from `/proc/<pid>/stat`.
fn process_ticks(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the parenthesised command name: utime is field 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
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
    /// Untimed pause before every sample, seconds.
    pub cooldown_s: f64,
    /// Discard a round during which other processes kept more than this many
    /// CPUs busy on average (None: keep every round).
    pub max_foreign_cpus: Option<f64>,
    /// Give up re-running discarded rounds after this many seconds of rounds
    /// (the kept rounds are used, and too few is reported).
    pub time_limit_s: f64,
}

/// What a group's measurement returns besides the per-member statistics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoundLog {
    /// Rounds kept.
    pub kept: usize,
    /// Rounds discarded because other processes were busy.
    pub discarded: usize,
    /// Rounds kept although other processes were busy, because the group's
    /// time limit was reached.
    pub kept_busy: usize,
    /// CPUs other processes kept busy, per kept round (NaN where unknown).
    pub foreign_cpus: Vec<f64>,
}

/// Reads how much CPU time the whole machine and this process have used,
/// to tell how busy *other* processes were over an interval (Linux; elsewhere
/// every reading is unknown).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuMeter {
    busy: f64,
    own: f64,
    at: Instant,
}

impl CpuMeter {
    /// `USER_HZ`, the unit of `/proc/stat` (100 on every Linux we know of).
    const TICKS: f64 = 100.0;

    /// A reading now, or None where `/proc` is not readable.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<f64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        if cpu.len() < 8 {
            return None;
        }
        let busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7];
        let children = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
        let own = process_ticks("/proc/self/stat")?
            + children
                .iter()
                .filter_map(|pid| process_ticks(&format!("/proc/{pid}/stat")))
                .sum::<f64>();
        Some(CpuMeter {
            busy,
            own,
            at: Instant::now(),
        })
    }

    /// CPUs that other processes kept busy on average since `earlier`.
    pub fn foreign_cpus_since(&self, earlier: &CpuMeter) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        let foreign = ((self.busy - earlier.busy) - (self.own - earlier.own)) / Self::TICKS;
        (foreign / wall.max(1e-9)).max(0.0)
    }
}

/// A small deterministic generator for the round orders.
struct Shuffle(u64);

impl Shuffle {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A fresh permutation of `0..k` (Fisher–Yates).
    fn order(&mut self, k: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..k).collect();
        for i in (1..k).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }
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
        /// Rounds kept so far.
        done: usize,
        /// Planned rounds.
        rounds: usize,
    },
    /// A round was discarded: other processes kept `foreign_cpus` CPUs busy.
    Discarded {
        /// CPUs other processes used on average during the round.
        foreign_cpus: f64,
    },
}

fn time_runs(w: &mut dyn Workload, runs: usize, cooldown_s: f64) -> Result<f64> {
    if cooldown_s > 0.0 {
        std::thread::sleep(std::time::Duration::from_secs_f64(cooldown_s));
    }
    if let Some(seconds) = w.run_timed(runs)? {
        return Ok(seconds);
    }
    let start = Instant::now();
    for _ in 0..runs {
        w.run()?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Times `workloads` side by side: one warm-up run each, a calibration
/// sample each where several runs make a sample, then interleaved rounds in
/// shuffled order (see the module docs). Returns one [`Stats`] per workload,
/// in order, and the round log. The first error of any run aborts the group.
pub fn measure_interleaved(
    workloads: &mut [&mut dyn Workload],
    policy: &RoundPolicy,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Vec<Stats>, RoundLog)> {
    let k = workloads.len();
    if k == 0 {
        return Ok((Vec::new(), RoundLog::default()));
    }
    let cool = policy.cooldown_s;
    // Warm-up: first runs allocate, fault pages in, spin up thread pools.
    let mut first = Vec::with_capacity(k);
    for w in workloads.iter_mut() {
        first.push(time_runs(*w, 1, cool)?);
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
        round_s += if r > 1 { time_runs(*w, r, cool)? } else { t };
    }
    let rounds = ((policy.budget_s / round_s.max(1e-9)).floor() as usize)
        .clamp(policy.min_rounds.max(1), policy.max_rounds.max(1));
    progress(Progress::Calibrated { rounds, round_s });
    let mut samples = vec![Vec::with_capacity(rounds); k];
    let mut log = RoundLog::default();
    let mut shuffle = Shuffle(0x9E37_79B9_7F4A_7C15);
    let start = Instant::now();
    while log.kept < rounds {
        let before = CpuMeter::read();
        let mut round = vec![0.0; k];
        for i in shuffle.order(k) {
            round[i] = time_runs(workloads[i], runs[i], cool)? / runs[i] as f64;
        }
        let foreign = match (before, CpuMeter::read()) {
            (Some(b), Some(a)) => a.foreign_cpus_since(&b),
            _ => f64::NAN,
        };
        let too_busy = policy.max_foreign_cpus.is_some_and(|m| foreign > m);
        let out_of_time = start.elapsed().as_secs_f64() > policy.time_limit_s;
        if too_busy && !out_of_time {
            log.discarded += 1;
            progress(Progress::Discarded {
                foreign_cpus: foreign,
            });
            continue;
        }
        for (s, t) in samples.iter_mut().zip(round) {
            s.push(t);
        }
        log.kept += 1;
        log.kept_busy += usize::from(too_busy);
        log.foreign_cpus.push(foreign);
        progress(Progress::Round {
            done: log.kept,
            rounds,
        });
    }
    let stats = samples
        .into_iter()
        .zip(runs)
        .map(|(s, r)| Stats::from_samples(s, r))
        .collect();
    Ok((stats, log))
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
            cooldown_s: 0.0,
            max_foreign_cpus: None,
            time_limit_s: 10.0,
        };
        let mut seen = Vec::new();
        let (stats, log) =
            measure_interleaved(&mut [&mut a, &mut b], &policy, &mut |p| seen.push(p)).unwrap();
        assert_eq!((log.kept, log.discarded, log.foreign_cpus.len()), (4, 0, 4));
        assert_eq!(stats.len(), 2);
        assert!(stats.iter().all(|s| s.samples.len() == 4));
        // min_sample_s = 0: one run per sample, so no calibration sample;
        // warm-up 1 + 4 rounds
        assert_eq!((a.0, b.0), (5, 5));
        assert_eq!(seen.last(), Some(&Progress::Round { done: 4, rounds: 4 }));
    }

    #[test]
    fn shuffled_orders_are_permutations_and_vary() {
        let mut sh = Shuffle(1);
        let orders: Vec<Vec<usize>> = (0..20).map(|_| sh.order(6)).collect();
        for o in &orders {
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, (0..6).collect::<Vec<_>>());
        }
        // Member 0's predecessor is not always the same one.
        let preds: std::collections::HashSet<Option<usize>> = orders
            .iter()
            .map(|o| {
                o.iter()
                    .position(|&x| x == 0)
                    .and_then(|p| p.checked_sub(1).map(|q| o[q]))
            })
            .collect();
        assert!(preds.len() > 2);
    }

    #[test]
    fn cpu_meter_reads_proc_on_linux() {
        if let (Some(a), Some(b)) = (CpuMeter::read(), CpuMeter::read()) {
            assert!(b.foreign_cpus_since(&a) >= 0.0);
        }
    }

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert_eq!(median(&[4.0, 1.0, 3.0]), 3.0);
        assert!(median(&[]).is_nan());
    }
}
