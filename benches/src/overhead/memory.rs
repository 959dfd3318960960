//! Peak memory of a training step, one fresh process per member.
//!
//! Members must not pollute each other's peaks (an allocator keeps what an
//! earlier member freed, libtorch caches, Python's heap), so every member
//! is probed in a process of its own:
//!
//! * the reference and libtorch members: `overhead-report` runs itself again
//!   with the hidden option `--memory-probe SPEC` ([`probe_spec`] writes
//!   `SPEC`, [`parse_probe_spec`] reads it back): the child builds that one
//!   workload, runs a warm-up step, reads the pre-step resident set `VmRSS`,
//!   resets the kernel's peak-RSS counter (`5` written to
//!   `/proc/self/clear_refs` sets `VmHWM` to the current `VmRSS`), runs a
//!   few more steps and prints `VmHWM` ([`probe_here`]);
//! * PyTorch eager: `benches/python/eager.py memory` does the same in its
//!   own process.
//!
//! Per member the report shows the peak over the steps, its increase over
//! the pre-step resident set (what the step itself allocates: activations,
//! gradients, workspaces), and both as ratios to the plain step of the same
//! implementation. Where `/proc` cannot be read or the counter cannot be
//! reset (not Linux, a restricted container), a member is
//! [`MemoryOutcome::NotMeasured`] with the reason — never a panic.

use crate::flops::StepKind;
use crate::overhead::cli::CliError;
use crate::overhead::measure::Workload;
use crate::overhead::plan::{Member, Model, StepConfig, Task};
use crate::overhead::workloads::{build, Built};
use crate::overhead::{Backend, Impl, Precision};
use clae_reference::encoder::MlpConfig;
use clae_reference::loss::LossKind;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The hidden option that makes `overhead-report` a memory probe.
pub const PROBE_OPTION: &str = "--memory-probe";

/// Steps run after the peak counter is reset (the warm-up step is extra).
pub const DEFAULT_STEPS: usize = 1;

/// The C allocator's settings of every probe (`GLIBC_TUNABLES`): blocks of
/// 128 KiB and more are mapped and unmapped on their own, and free memory at
/// the heap's top goes back to the kernel beyond 128 KiB, so what a step
/// frees leaves the resident set before the next step and the increase over
/// the pre-step resident set is the step's own transient memory. (The timed
/// runs keep freed memory instead, to spare page faults; with their
/// settings the warm-up step's memory would stay resident and every
/// increase would read about zero.)
pub const PROBE_MALLOC: &str =
    "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072";

/// A probe that has not answered after this long is stopped.
const PROBE_TIMEOUT: Duration = Duration::from_secs(180);

/// A member to probe, with the group it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryProbe {
    /// The step group the member comes from (for `--only`).
    pub group_id: String,
    /// A step task on a CPU implementation.
    pub member: Member,
}

/// The resident set of a probed process around its steps, KiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryReading {
    /// `VmRSS` after the warm-up step, before the measured steps.
    pub before_kb: u64,
    /// `VmHWM` after the measured steps (the counter was reset to
    /// `before_kb` just before them).
    pub peak_kb: u64,
}

impl MemoryReading {
    /// What the steps added on top of the pre-step resident set, KiB.
    pub fn increase_kb(&self) -> u64 {
        self.peak_kb.saturating_sub(self.before_kb)
    }
}

/// A member's memory, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum MemoryOutcome {
    /// Read from `/proc/<probe>/status`.
    Measured(MemoryReading),
    /// Not measured here, with the reason.
    NotMeasured(String),
}

/// One probed member.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryResult {
    /// What was probed.
    pub probe: MemoryProbe,
    /// Steps run after the reset.
    pub steps: usize,
    /// The reading.
    pub outcome: MemoryOutcome,
}

impl MemoryResult {
    /// The reading, when measured.
    pub fn reading(&self) -> Option<MemoryReading> {
        match self.outcome {
            MemoryOutcome::Measured(r) => Some(r),
            MemoryOutcome::NotMeasured(_) => None,
        }
    }
}

/// `(VmRSS, VmHWM)` in KiB from the text of `/proc/<pid>/status`.
///
/// ```
/// use clae_benches::overhead::memory::parse_status;
/// let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
/// assert_eq!(parse_status(s), Some((1024, 2048)));
/// assert_eq!(parse_status("Name:\tx\n"), None);
/// ```
pub fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// This process's `(VmRSS, VmHWM)` in KiB, or why they cannot be read.
pub fn read_status() -> Result<(u64, u64), String> {
    let text = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status is not readable ({e})"))?;
    parse_status(&text).ok_or_else(|| "/proc/self/status has no VmRSS/VmHWM".to_string())
}

/// Resets this process's peak resident set (`VmHWM`) to its current one.
pub fn reset_peak() -> Result<(), String> {
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| format!("cannot reset the peak-RSS counter via /proc/self/clear_refs ({e})"))
}

/// Steps of `work`, framed as the module docs say: warm-up, read, reset,
/// `steps` steps, read. An error of the workload is a "not measured".
pub fn measure_workload(work: &mut dyn Workload, steps: usize) -> MemoryOutcome {
    let mut inner = || -> Result<MemoryReading, String> {
        read_status()?;
        work.run()
            .map_err(|e| format!("warm-up step failed: {e}"))?;
        let (before_kb, _) = read_status()?;
        reset_peak()?;
        let (now, hwm) = read_status()?;
        // After a reset the peak equals the resident set (give or take the
        // pages touched in between); a stale peak means no reset happened.
        if hwm > now.max(before_kb) + 1024 {
            return Err(format!(
                "the kernel did not reset VmHWM ({hwm} kB after the reset, VmRSS {now} kB)"
            ));
        }
        for _ in 0..steps.max(1) {
            work.run().map_err(|e| format!("step failed: {e}"))?;
        }
        let (_, peak_kb) = read_status()?;
        Ok(MemoryReading { before_kb, peak_kb })
    };
    match inner() {
        Ok(r) => MemoryOutcome::Measured(r),
        Err(why) => MemoryOutcome::NotMeasured(why),
    }
}

/// The probe's side: builds `member` in this process and measures it.
pub fn probe_here(member: &Member, steps: usize) -> MemoryOutcome {
    if !cfg!(target_os = "linux") {
        return MemoryOutcome::NotMeasured("peak RSS is read from Linux's /proc".into());
    }
    match build(member) {
        Ok(Built::Ready(mut w)) => measure_workload(w.as_mut(), steps),
        Ok(Built::Skipped(why)) => MemoryOutcome::NotMeasured(why),
        Err(e) => MemoryOutcome::NotMeasured(format!("could not be set up: {e}")),
    }
}

/// The one-line JSON reply of a probe (`{"before_kb": .., "peak_kb": ..}`
/// or `{"not_measured": ".."}`).
pub fn reply_line(outcome: &MemoryOutcome) -> String {
    match outcome {
        MemoryOutcome::Measured(r) => {
            format!(
                "{{\"before_kb\": {}, \"peak_kb\": {}}}",
                r.before_kb, r.peak_kb
            )
        }
        MemoryOutcome::NotMeasured(why) => {
            let esc: String = why
                .chars()
                .map(|c| match c {
                    '"' | '\\' => '\'',
                    c if c.is_control() => ' ',
                    c => c,
                })
                .collect();
            format!("{{\"not_measured\": \"{esc}\"}}")
        }
    }
}

/// Reads a probe's reply (the last line that parses, so stray output
/// before it does not matter).
///
/// ```
/// use clae_benches::overhead::memory::{parse_reply, MemoryOutcome, MemoryReading};
/// assert_eq!(
///     parse_reply("noise\n{\"before_kb\": 10, \"peak_kb\": 25}\n"),
///     MemoryOutcome::Measured(MemoryReading { before_kb: 10, peak_kb: 25 })
/// );
/// assert!(matches!(parse_reply("{\"not_measured\": \"no proc\"}"), MemoryOutcome::NotMeasured(w) if w == "no proc"));
/// assert!(matches!(parse_reply(""), MemoryOutcome::NotMeasured(_)));
/// ```
pub fn parse_reply(text: &str) -> MemoryOutcome {
    let number = |line: &str, key: &str| -> Option<u64> {
        let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
        let rest = line[at..].trim_start();
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        let v: f64 = rest[..end].trim().parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v as u64)
    };
    for line in text.lines().rev() {
        if let (Some(before_kb), Some(peak_kb)) =
            (number(line, "before_kb"), number(line, "peak_kb"))
        {
            return MemoryOutcome::Measured(MemoryReading { before_kb, peak_kb });
        }
        if let Some(at) = line.find("\"not_measured\":") {
            let rest = line[at + 15..].trim_start().trim_start_matches('"');
            let why = rest.rsplit_once('"').map(|(w, _)| w).unwrap_or(rest);
            return MemoryOutcome::NotMeasured(why.to_string());
        }
    }
    MemoryOutcome::NotMeasured(format!(
        "the probe gave no reading (its output: {:?})",
        text.chars().take(200).collect::<String>()
    ))
}

fn backend_from(name: &str) -> Option<Backend> {
    [
        Backend::Reference,
        Backend::TchCpu,
        Backend::TchCuda,
        Backend::EagerCpu,
        Backend::EagerCuda,
    ]
    .into_iter()
    .find(|b| b.name() == name)
}

fn static_size(name: &str) -> &'static str {
    [
        "tiny", "small", "medium", "large", "resnet18", "scaling", "custom",
    ]
    .into_iter()
    .find(|s| *s == name)
    .unwrap_or("custom")
}

fn encoder_spec(model: &Model) -> String {
    match model {
        Model::Mlp(c) => format!("mlp:{},{},{},{}", c.d_in, c.hidden, c.depth, c.d),
        Model::ResNet18 { d } => format!("resnet18:{d}"),
    }
}

/// `BACKEND/PRECISION/SIZE/ENCODER/N/LOSS/KIND` of a step member
/// (`tch-cpu/f32/medium/mlp:784,1024,2,128/256/plain/acl`); `None` for
/// other tasks, or a peer step with other than its default attack.
///
/// ```
/// use clae_benches::overhead::memory::{parse_probe_spec, probe_spec};
/// use clae_benches::overhead::plan::Plan;
/// let plan = Plan::cpu();
/// for probe in &plan.memory {
///     let spec = probe_spec(&probe.member).unwrap();
///     assert_eq!(parse_probe_spec(&spec).unwrap(), probe.member);
/// }
/// assert!(parse_probe_spec("tch-cpu/f32/tiny/mlp:1,2/8/plain/lean").is_err());
/// ```
pub fn probe_spec(member: &Member) -> Option<String> {
    let Task::Step { config, kind } = member.task else {
        return None;
    };
    if !StepKind::ALL.contains(&kind) {
        return None;
    }
    Some(format!(
        "{}/{}/{}/{}/{}/{}/{}",
        member.imp.backend.name(),
        member.imp.precision.name(),
        config.size,
        encoder_spec(&config.model),
        config.n,
        config.loss.name(),
        kind.name()
    ))
}

/// Reads a [`probe_spec`] back.
pub fn parse_probe_spec(spec: &str) -> Result<Member, CliError> {
    let bad = |what: &str| CliError::InvalidValue {
        option: PROBE_OPTION.into(),
        value: spec.into(),
        expected: format!("BACKEND/PRECISION/SIZE/ENCODER/N/LOSS/KIND ({what})"),
    };
    let f: Vec<&str> = spec.split('/').collect();
    let [backend, precision, size, encoder, n, loss, kind] = f[..] else {
        return Err(bad("seven fields separated by /"));
    };
    let backend = backend_from(backend).ok_or_else(|| bad("unknown backend"))?;
    let precision = match precision {
        "f32" => Precision::F32,
        "f64" => Precision::F64,
        _ => return Err(bad("precision f32 or f64")),
    };
    let model = match encoder.split_once(':') {
        Some(("mlp", dims)) => {
            let v: Vec<usize> = dims
                .split(',')
                .map(|x| x.parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad("mlp:D_IN,HIDDEN,DEPTH,D"))?;
            let [d_in, hidden, depth, d] = v[..] else {
                return Err(bad("mlp:D_IN,HIDDEN,DEPTH,D"));
            };
            Model::Mlp(MlpConfig::new(d_in, hidden, depth, d))
        }
        Some(("resnet18", d)) => Model::ResNet18 {
            d: d.parse().map_err(|_| bad("resnet18:D"))?,
        },
        _ => return Err(bad("encoder mlp:.. or resnet18:..")),
    };
    let n: usize = n.parse().map_err(|_| bad("batch size N"))?;
    let loss = LossKind::ALL
        .into_iter()
        .find(|l| l.name() == loss)
        .ok_or_else(|| bad("loss plain, simclr or uel"))?;
    let kind = StepKind::ALL
        .into_iter()
        .find(|k| k.name() == kind)
        .ok_or_else(|| bad("step plain, lean, authors, acl or rocl"))?;
    Ok(Member {
        imp: Impl { backend, precision },
        task: Task::Step {
            config: StepConfig {
                size: static_size(size),
                model,
                n,
                loss,
            },
            kind,
        },
    })
}

/// Runs `cmd`, waits at most [`PROBE_TIMEOUT`], and reads its reply.
fn run_probe_command(mut cmd: Command) -> MemoryOutcome {
    let mut child = match cmd
        .env("GLIBC_TUNABLES", PROBE_MALLOC)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return MemoryOutcome::NotMeasured(format!("cannot start the probe: {e}")),
    };
    let mut stdout = match child.stdout.take() {
        Some(s) => s,
        None => return MemoryOutcome::NotMeasured("the probe has no stdout".into()),
    };
    // The reply is one short line: read it on a thread, so a hung probe
    // can be stopped after the timeout.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() < PROBE_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = reader.join().unwrap_or_default();
    match status {
        None => MemoryOutcome::NotMeasured(format!(
            "the probe did not finish within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
        Some(s) if !s.success() => match parse_reply(&text) {
            MemoryOutcome::NotMeasured(why) => {
                MemoryOutcome::NotMeasured(format!("the probe exited with {s}: {why}"))
            }
            m => m,
        },
        Some(_) => parse_reply(&text),
    }
}

/// Probes `member` in a fresh process: `exe` (an `overhead-report` binary)
/// for the reference and libtorch, `eager.py memory` for PyTorch eager.
/// `threads` is passed on (libtorch's intra-op threads).
pub fn probe_in_child(member: &Member, steps: usize, exe: &Path, threads: usize) -> MemoryOutcome {
    if !cfg!(target_os = "linux") {
        return MemoryOutcome::NotMeasured("peak RSS is read from Linux's /proc".into());
    }
    let Task::Step { config, kind } = member.task else {
        return MemoryOutcome::NotMeasured("only training steps are probed".into());
    };
    match member.imp.backend {
        Backend::TchCuda | Backend::EagerCuda => {
            MemoryOutcome::NotMeasured("CUDA memory is not a resident set; not probed".into())
        }
        Backend::EagerCpu => {
            let (python, script) = match crate::overhead::eager::locate() {
                Ok(found) => found,
                Err(why) => return MemoryOutcome::NotMeasured(format!("PyTorch eager: {why}")),
            };
            let mut cmd = Command::new(python);
            cmd.arg(script)
                .arg("memory")
                .args(["--encoder", &encoder_spec(&config.model)])
                .args(["--n", &config.n.to_string()])
                .args(["--loss", config.loss.name()])
                .args(["--steps", kind.name()])
                .args(["--threads", &threads.max(1).to_string()])
                .args(["--device", "cpu"])
                .args(["--probe-steps", &steps.max(1).to_string()]);
            run_probe_command(cmd)
        }
        Backend::Reference | Backend::TchCpu => {
            let Some(spec) = probe_spec(member) else {
                return MemoryOutcome::NotMeasured("not a default step kind".into());
            };
            let mut cmd = Command::new(exe);
            cmd.args([PROBE_OPTION, &spec])
                .args(["--memory-steps", &steps.max(1).to_string()])
                .args(["--threads", &threads.max(1).to_string()]);
            run_probe_command(cmd)
        }
    }
}

/// Memory probes of every CPU step member of `groups` (every step kind, every
/// implementation), in plan order.
pub fn probes_of(groups: &[crate::overhead::plan::Group]) -> Vec<MemoryProbe> {
    groups
        .iter()
        .filter(|g| matches!(g.kind, crate::overhead::plan::GroupKind::Step(_)))
        .flat_map(|g| {
            g.members
                .iter()
                .filter(|m| {
                    matches!(
                        m.imp.backend,
                        Backend::Reference | Backend::TchCpu | Backend::EagerCpu
                    ) && matches!(m.task, Task::Step { .. })
                })
                .map(|m| MemoryProbe {
                    group_id: g.id.clone(),
                    member: *m,
                })
        })
        .collect()
}

/// The plain step's result for the same configuration and implementation
/// as `r` (from `all`).
pub fn plain_of<'a>(all: &'a [MemoryResult], r: &MemoryResult) -> Option<&'a MemoryResult> {
    let Task::Step { config, .. } = r.probe.member.task else {
        return None;
    };
    all.iter().find(|x| {
        x.probe.member.imp == r.probe.member.imp
            && matches!(x.probe.member.task, Task::Step { config: c, kind: StepKind::Plain } if c == config)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Grow;
    impl Workload for Grow {
        fn run(&mut self) -> crate::overhead::Result<()> {
            // 32 MiB touched and freed each run: the peak must see it.
            let mut v = vec![0u8; 32 << 20];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            std::hint::black_box(&v);
            Ok(())
        }
    }

    #[test]
    fn a_step_that_allocates_raises_the_peak_or_is_not_measured() {
        match measure_workload(&mut Grow, 2) {
            MemoryOutcome::Measured(r) => {
                assert!(r.before_kb > 0 && r.peak_kb >= r.before_kb, "{r:?}");
                // glibc serves 32 MiB by mmap (or, with a raised threshold,
                // from a heap trimmed afterwards): either way the pages are
                // new at the peak unless the allocator kept them.
                assert!(r.increase_kb() <= 40 << 10, "{r:?}");
            }
            MemoryOutcome::NotMeasured(why) => {
                // only the kernel's side may be missing, never the workload's
                assert!(why.contains("/proc") || why.contains("VmHWM"), "{why}");
            }
        }
    }

    #[test]
    fn replies_round_trip() {
        let m = MemoryOutcome::Measured(MemoryReading {
            before_kb: 7,
            peak_kb: 9,
        });
        assert_eq!(parse_reply(&reply_line(&m)), m);
        let n = MemoryOutcome::NotMeasured("no \"proc\" here".into());
        assert_eq!(
            parse_reply(&reply_line(&n)),
            MemoryOutcome::NotMeasured("no 'proc' here".into())
        );
    }

    #[test]
    fn bad_specs_are_typed_errors() {
        for s in [
            "",
            "x/f32/tiny/mlp:1,2,3,4/8/plain/lean",
            "tch-cpu/f16/tiny/mlp:1,2,3,4/8/plain/lean",
            "tch-cpu/f32/tiny/mlp:1,2,3,4/eight/plain/lean",
            "tch-cpu/f32/tiny/mlp:1,2,3,4/8/plain/fgsm",
            "tch-cpu/f32/tiny/conv:3/8/plain/lean",
        ] {
            assert!(
                matches!(parse_probe_spec(s), Err(CliError::InvalidValue { .. })),
                "{s}"
            );
        }
    }
}
