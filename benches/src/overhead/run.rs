//! The `overhead-report` main loop: plan, measure group by group with
//! progress on stderr, profile, write the report folder.

use crate::machine::{load_average, Machine};
use crate::overhead::analysis::{GroupResult, MemberResult, Outcome, RunResult};
use crate::overhead::cli::{Options, PlanName, HELP};
use crate::overhead::measure::{measure_interleaved, Progress, RoundPolicy, Workload};
use crate::overhead::memory::{
    probe_here, probe_in_child, reply_line, MemoryOutcome, MemoryResult,
};
use crate::overhead::plan::{GroupKind, Plan};
use crate::overhead::profile::profile_reference;
use crate::overhead::report::{summary_markdown, write_report};
use crate::overhead::workloads::{build, cuda_available, Built};
use crate::overhead::{Backend, Result};
use std::time::Instant;

/// Seconds as `1m23s`.
pub fn clock(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The plan the options select.
pub fn plan_for(opts: &Options) -> Plan {
    let mut plan = match opts.plan {
        PlanName::Cpu => Plan::cpu(),
        PlanName::Full => Plan::full(),
        PlanName::Quick => Plan::quick(),
    };
    plan.retain_groups(&opts.only);
    plan.scale_budgets(opts.time_scale);
    let profile_selected =
        opts.only.is_empty() || opts.only.iter().any(|p| "profile".contains(p.as_str()));
    if opts.no_profile || !profile_selected {
        plan.profile = None;
    }
    if opts.no_memory {
        plan.memory.clear();
    }
    plan
}

/// A rough forecast of one memory probe's seconds (process start, libtorch
/// or Python start, the workload's setup and steps).
fn memory_forecast(m: &crate::overhead::plan::Member) -> f64 {
    let step_s = match m.task {
        crate::overhead::plan::Task::Step { config, kind } => config.step_flops(kind) as f64 / 30e9,
        _ => 0.0,
    };
    let start = if m.imp.backend == Backend::EagerCpu {
        3.0
    } else {
        1.0
    };
    start + 3.0 * step_s
}

/// A rough forecast of a group's seconds (budget plus warm-up and calibration).
fn forecast(budget_s: f64) -> f64 {
    budget_s * 1.35 + 2.0
}

/// Runs `opts` and returns the result, printing progress to stderr.
pub fn run(opts: &Options, command: String) -> Result<RunResult> {
    if let Some(n) = opts.threads {
        // matrixmultiply reads this once, at its first product.
        std::env::set_var("MATMUL_NUM_THREADS", n.to_string());
        tch::set_num_threads(n as i32);
    }
    let plan = plan_for(opts);
    let mut notices = Vec::new();
    let cuda = if plan.uses_cuda() {
        if cuda_available() {
            let tf32 = clae_accelerated::device::tf32_allowed()
                .map(|b| if b { "TF32 allowed" } else { "TF32 off" })
                .unwrap_or("TF32 state unknown");
            format!(
                "{} device(s); libtorch defaults ({tf32})",
                clae_accelerated::device::cuda_device_count()
            )
        } else {
            let n = plan
                .groups
                .iter()
                .flat_map(|g| &g.members)
                .filter(|m| m.imp.backend == Backend::TchCuda)
                .count();
            let msg = format!("CUDA is not available on this machine: the {n} CUDA members of the `{}` plan are skipped", plan.name);
            eprintln!("notice: {msg}");
            notices.push(msg);
            "not available".to_string()
        }
    } else {
        "not used by this plan".to_string()
    };
    let mut machine = Machine::detect(cuda);
    if let Some(load) = crate::machine::load_1min() {
        if load > machine.logical_cpus as f64 && std::env::var_os("OMP_WAIT_POLICY").is_none() {
            let msg = format!(
                "the machine is busy (load {load:.1} on {} CPUs): libtorch's OpenMP threads spin-wait by default and lose whole time slices to other processes, which can make small libtorch operations 10-100x slower; for a fair libtorch measurement on a busy machine run with OMP_WAIT_POLICY=PASSIVE, or wait for a quiet machine",
                machine.logical_cpus
            );
            eprintln!("warning: {msg}");
            notices.push(msg);
        }
    }
    let start = Instant::now();
    let total_forecast: f64 = plan
        .groups
        .iter()
        .map(|g| forecast(g.budget_s))
        .sum::<f64>()
        + if plan.profile.is_some() { 25.0 } else { 0.0 }
        + plan
            .memory
            .iter()
            .map(|p| memory_forecast(&p.member))
            .sum::<f64>();
    eprintln!(
        "overhead-report: plan `{}`, {} groups, about {} of measurement (load average {}); output to {}",
        plan.name,
        plan.groups.len(),
        clock(total_forecast),
        machine.load_before,
        opts.out.display()
    );
    let mut remaining = total_forecast;
    let mut groups = Vec::new();
    let ngroups = plan.groups.len();
    for (gi, group) in plan.groups.iter().enumerate() {
        let g_start = Instant::now();
        let load = load_average();
        eprintln!(
            "[{}/{ngroups}] {} — {} ({} members, ~{}; total {} elapsed, ~{} left; load {load})",
            gi + 1,
            group.id,
            group.title,
            group.members.len(),
            clock(forecast(group.budget_s)),
            clock(start.elapsed().as_secs_f64()),
            clock(remaining)
        );
        let mut results: Vec<MemberResult> = Vec::new();
        let mut ready: Vec<(usize, Box<dyn Workload>)> = Vec::new();
        for m in &group.members {
            let flops = m.task.flops();
            let outcome = match build(m) {
                Ok(Built::Ready(w)) => {
                    ready.push((results.len(), w));
                    None
                }
                Ok(Built::Skipped(why)) => {
                    let msg = format!("{} / {}: skipped — {why}", group.id, m.label());
                    eprintln!("  notice: {msg}");
                    notices.push(msg);
                    Some(Outcome::Skipped(why))
                }
                Err(e) => {
                    let msg = format!("{} / {}: could not be set up — {e}", group.id, m.label());
                    eprintln!("  notice: {msg}");
                    notices.push(msg);
                    Some(Outcome::Failed(e.to_string()))
                }
            };
            results.push(MemberResult {
                member: *m,
                flops,
                outcome: outcome.unwrap_or(Outcome::Skipped(String::new())),
            });
        }
        let policy = RoundPolicy {
            budget_s: group.budget_s,
            min_rounds: group.min_rounds,
            max_rounds: group.max_rounds,
            min_sample_s: 0.05,
            cooldown_s: opts.cooldown_s,
            max_foreign_cpus: opts.max_foreign_cpus,
            time_limit_s: group.budget_s + 20.0,
        };
        let mut rounds = 0;
        let mut discarded = 0;
        let mut foreign_cpus = f64::NAN;
        if !ready.is_empty() {
            let mut refs: Vec<&mut dyn Workload> = ready
                .iter_mut()
                .map(|(_, w)| w.as_mut() as &mut dyn Workload)
                .collect();
            let mut report = |p: Progress| {
                match p {
                Progress::Calibrated { rounds, round_s } => {
                    eprintln!("  warm-up done: {rounds} rounds of ~{round_s:.2} s")
                }
                Progress::Round { done, rounds } => {
                    if done == rounds || done % 5 == 0 || rounds <= 8 {
                        eprintln!(
                            "  round {done}/{rounds} ({} in this group)",
                            clock(g_start.elapsed().as_secs_f64())
                        );
                    }
                }
                Progress::Discarded { foreign_cpus } => eprintln!(
                    "  round discarded: other processes kept {foreign_cpus:.2} CPUs busy; running it again"
                ),
            }
            };
            match measure_interleaved(&mut refs, &policy, &mut report) {
                Ok((stats, log)) => {
                    rounds = log.kept;
                    discarded = log.discarded;
                    if log.kept_busy > 0 {
                        let msg = format!(
                            "{}: {} of {} rounds were kept although other processes were busy (the group's time limit was reached); its numbers are less reliable",
                            group.id, log.kept_busy, log.kept
                        );
                        eprintln!("  notice: {msg}");
                        notices.push(msg);
                    }
                    foreign_cpus = crate::overhead::measure::median(&log.foreign_cpus);
                    for ((idx, _), st) in ready.iter().zip(stats) {
                        results[*idx].outcome = Outcome::Measured(st);
                    }
                }
                Err(e) => {
                    let msg = format!("{}: measurement failed — {e}", group.id);
                    eprintln!("  notice: {msg}");
                    notices.push(msg);
                    for (idx, _) in &ready {
                        results[*idx].outcome = Outcome::Failed(e.to_string());
                    }
                }
            }
        }
        drop(ready);
        let wall_s = g_start.elapsed().as_secs_f64();
        remaining = (remaining - forecast(group.budget_s)).max(0.0);
        print_group_line(group, &results);
        groups.push(GroupResult {
            group: group.clone(),
            members: results,
            wall_s,
            rounds,
            load,
            discarded,
            foreign_cpus,
        });
    }
    let profile = match &plan.profile {
        Some(pp) => {
            eprintln!(
                "[profile] where the reference step's time goes ({} elapsed)",
                clock(start.elapsed().as_secs_f64())
            );
            let loss_ns: Vec<usize> = plan
                .groups
                .iter()
                .filter_map(|g| match g.kind {
                    GroupKind::Loss { n, .. } if n >= 256 => Some(n),
                    _ => None,
                })
                .collect();
            match profile_reference(pp, &loss_ns, true, &mut |line| eprintln!("  {line}")) {
                Ok(p) => Some(p),
                Err(e) => {
                    let msg = format!("profile failed — {e}");
                    eprintln!("  notice: {msg}");
                    notices.push(msg);
                    None
                }
            }
        }
        None => None,
    };
    let memory = measure_memory(&plan, opts, &start, &mut notices);
    machine.load_after = load_average();
    let result = RunResult {
        plan_name: plan.name.clone(),
        command,
        machine,
        groups,
        profile,
        wall_s: start.elapsed().as_secs_f64(),
        notices,
        memory,
    };
    Ok(result)
}

/// Runs the plan's memory probes one after the other, each in a fresh
/// process ([`crate::overhead::memory`]), with progress on stderr.
fn measure_memory(
    plan: &Plan,
    opts: &Options,
    start: &Instant,
    notices: &mut Vec<String>,
) -> Vec<MemoryResult> {
    if plan.memory.is_empty() {
        return Vec::new();
    }
    eprintln!(
        "[memory] peak RSS per step, {} members, one process each ({} elapsed)",
        plan.memory.len(),
        clock(start.elapsed().as_secs_f64())
    );
    let exe = opts
        .probe_exe
        .clone()
        .or_else(|| std::env::current_exe().ok());
    let threads = opts
        .threads
        .unwrap_or_else(|| tch::get_num_threads().max(1) as usize);
    let mut out = Vec::with_capacity(plan.memory.len());
    for probe in &plan.memory {
        let outcome = match &exe {
            Some(exe) => probe_in_child(&probe.member, opts.memory_steps, exe, threads),
            None => MemoryOutcome::NotMeasured("this program's own path is unknown".into()),
        };
        match &outcome {
            MemoryOutcome::Measured(r) => eprintln!(
                "  {} / {}: peak {:.1} MiB, +{:.1} MiB over the step",
                probe.group_id,
                probe.member.label(),
                r.peak_kb as f64 / 1024.0,
                r.increase_kb() as f64 / 1024.0
            ),
            MemoryOutcome::NotMeasured(why) => {
                let msg = format!(
                    "{} / {}: memory not measured — {why}",
                    probe.group_id,
                    probe.member.label()
                );
                eprintln!("  notice: {msg}");
                notices.push(msg);
            }
        }
        out.push(MemoryResult {
            probe: probe.clone(),
            steps: opts.memory_steps,
            outcome,
        });
    }
    out
}

fn print_group_line(group: &crate::overhead::plan::Group, results: &[MemberResult]) {
    let parts: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.median()
                .map(|m| format!("{} {:.2} ms", r.member.label(), m * 1e3))
        })
        .collect();
    if !parts.is_empty() {
        eprintln!("  {}: {}", group.id, parts.join(", "));
    }
}

/// Restarts this process once with the settings every measurement runs
/// under, each only if unset (recorded in the report's machine table; the
/// PyTorch eager child inherits them). Returns only when nothing needed
/// setting or the restart failed (then it says so and the run goes on).
pub fn restart_with_settings(args: &[String]) {
    // Two settings are read when the process starts, so the report restarts
    // itself once with them (each only if unset; both are recorded in the
    // report's machine table, and the PyTorch eager child inherits them):
    //
    // * OpenBLAS (the reference's f32 GEMM on AVX-512 CPUs) keeps its worker
    //   threads spinning for 2^28 cycles after every product by default: in
    //   a harness that runs libtorch right after, they would steal its cores.
    //   OPENBLAS_THREAD_TIMEOUT=4 lets them sleep after 2^4.
    // * glibc malloc returns freed memory at the top of its heap to the
    //   kernel once it exceeds a threshold that adapts to each process's
    //   history, and every later step pays page faults to get it back: on
    //   the large MLP that is 20k-28k faults per libtorch step here, a
    //   per-process accident, not a cost of the step. Fixed thresholds
    //   (32 MiB, the largest mmap threshold; trim at 4 GiB) give every
    //   implementation the same allocator. `GLIBC_TUNABLES=` (set, empty)
    //   measures with glibc's defaults instead.
    let wanted = [
        ("OPENBLAS_THREAD_TIMEOUT", "4"),
        (
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296",
        ),
    ];
    let missing: Vec<_> = wanted
        .iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .collect();
    if !missing.is_empty() {
        use std::os::unix::process::CommandExt;
        if let Ok(me) = std::env::current_exe() {
            let mut cmd = std::process::Command::new(me);
            cmd.args(args);
            for (k, v) in &missing {
                cmd.env(k, v);
            }
            let err = cmd.exec();
            eprintln!("overhead-report: could not restart with {missing:?} ({err}); continuing");
        }
    }
}

/// The binary's entry point: parse, run, write, print the summary. Returns
/// the process exit code.
pub fn main_with_args(args: Vec<String>) -> Result<i32> {
    let opts = crate::overhead::cli::parse(&args)?;
    if let Some(member) = &opts.memory_probe {
        // A memory probe (a child of a report run): one member, one line.
        if let Some(n) = opts.threads {
            tch::set_num_threads(n as i32);
        }
        println!("{}", reply_line(&probe_here(member, opts.memory_steps)));
        return Ok(0);
    }
    if opts.help {
        print!("{HELP}");
        return Ok(0);
    }
    if opts.list {
        let plan = plan_for(&opts);
        println!("plan `{}`:", plan.name);
        for g in &plan.groups {
            println!(
                "  {:<24} {} ({} members, budget {:.0} s)",
                g.id,
                g.title,
                g.members.len(),
                g.budget_s
            );
            for m in &g.members {
                println!("      {}", m.label());
            }
        }
        if !plan.memory.is_empty() {
            println!(
                "  memory: peak RSS per step of {} members, one process each",
                plan.memory.len()
            );
        }
        if let Some(p) = plan.profile {
            println!(
                "  profile: reference f32 MLP {}-{}x{}-{} at N {}",
                p.config.d_in, p.config.hidden, p.config.depth, p.config.d, p.n
            );
        }
        return Ok(0);
    }
    let command = std::iter::once("overhead-report".to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let result = run(&opts, command)?;
    let files = write_report(&result, &opts.out)?;
    println!("\n{}", summary_markdown(&result));
    println!("wrote:");
    for f in files {
        println!("  {}", f.display());
    }
    Ok(0)
}
