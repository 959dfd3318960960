//! Writes a run as Markdown, CSV and SVG into a folder.
//!
//! Files: `report.md` (everything, for people), `summary.md` (the summary
//! table the README shows), `measurements.csv` (one row per measured member),
//! `steps.csv` (one row per step configuration and implementation, with the
//! ratios), `targets.csv`, `memory.csv` (peak memory per step and member),
//! `scaling.csv` (the scaling series), and the charts `ratios.svg`,
//! `peak_fraction.svg`, `cost.svg` and `scaling.svg` (see
//! [`crate::overhead::charts`]).

use crate::flops::{BackwardKind, StepKind};
use crate::overhead::analysis::{
    check_targets, gemm_peaks, loss_rows, loss_share, loss_share_crossing, model_table,
    scale_points, step_rows, Outcome, Ratio, RunResult, Status, StepRow,
};
use crate::overhead::charts;
use crate::overhead::memory::{plain_of, MemoryOutcome, MemoryResult};
use crate::overhead::plan::{GroupKind, Task};
use crate::overhead::{BenchError, Impl, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Names of the files [`write_report`] writes, in order.
pub const FILES: [&str; 11] = [
    "report.md",
    "summary.md",
    "measurements.csv",
    "steps.csv",
    "targets.csv",
    "memory.csv",
    "scaling.csv",
    "ratios.svg",
    "peak_fraction.svg",
    "cost.svg",
    "scaling.svg",
];

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|source| BenchError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(path)
}

/// Writes every file of [`FILES`] into `dir` (created if needed) and returns their paths.
pub fn write_report(run: &RunResult, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut out = vec![
        write(dir, FILES[0], &markdown(run))?,
        write(dir, FILES[1], &summary_markdown(run))?,
        write(dir, FILES[2], &measurements_csv(run))?,
        write(dir, FILES[3], &steps_csv(run))?,
        write(dir, FILES[4], &targets_csv(run))?,
        write(dir, FILES[5], &memory_csv(run))?,
        write(dir, FILES[6], &scaling_csv(run))?,
    ];
    let rows = step_rows(run);
    let p = dir.join(FILES[7]);
    charts::ratio_chart(&rows, &p)?;
    out.push(p);
    let p = dir.join(FILES[8]);
    charts::peak_fraction_chart(&rows, &p)?;
    out.push(p);
    let p = dir.join(FILES[9]);
    charts::cost_chart(&rows, &p)?;
    out.push(p);
    let p = dir.join(FILES[10]);
    charts::scaling_chart(&scale_points(run), &p)?;
    out.push(p);
    Ok(out)
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map(f).unwrap_or_else(|| "—".into())
}

fn ms(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

fn ratio_cell(r: &Ratio) -> String {
    format!(
        "{} ({:.2})",
        opt(r.measured, |m| format!("**{m:.2}**")),
        r.model
    )
}

fn ratio_cell_spread(r: &Ratio) -> String {
    match r.spread {
        Some((q1, q3)) => format!(
            "{} [{q1:.2}–{q3:.2}] ({:.2})",
            opt(r.measured, |m| format!("**{m:.2}**")),
            r.model
        ),
        None => ratio_cell(r),
    }
}

/// `1.02, 0.98, 1.01`: each step kind's per-round time over PyTorch
/// eager's (`—` where there is none; `1` for PyTorch itself).
fn vs_eager_cell(r: &StepRow) -> String {
    if matches!(
        r.imp.backend,
        crate::overhead::Backend::EagerCpu | crate::overhead::Backend::EagerCuda
    ) {
        return "1".into();
    }
    if r.vs_eager.iter().all(Option::is_none) {
        return "—".into();
    }
    r.vs_eager
        .iter()
        .map(|x| opt(x.map(|(m, _)| m), |m| format!("{m:.2}")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn short_config(r: &StepRow) -> String {
    format!("{} N{} {}", r.config.size, r.config.n, r.config.loss)
}

/// The summary table: one line per step configuration and implementation,
/// with the measured ratios next to the FLOP model's, and the targets tally.
pub fn summary_markdown(run: &RunResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} on {} ({} threads for libtorch), plan `{}`. Ratios: median over interleaved rounds of the per-round ratio; the exact FLOP model's ratio in parentheses.\n",
        run.machine.date, run.machine.cpu_model, run.machine.torch_threads, run.plan_name
    );
    s.push_str("| configuration | implementation | plain step | lean / plain | authors / plain | ACL / plain | RoCL / plain | authors / lean | vs PyTorch eager: plain, lean, authors, ACL, RoCL | plain step, % of GEMM peak |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in step_rows(run) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.config,
            r.imp,
            opt(r.median(StepKind::Plain), ms),
            ratio_cell(&r.lean_over_plain),
            ratio_cell(&r.authors_over_plain),
            ratio_cell(r.over_plain(StepKind::ACL)),
            ratio_cell(r.over_plain(StepKind::ROCL)),
            ratio_cell(&r.authors_over_lean),
            vs_eager_cell(&r),
            opt(r.peak_fraction(StepKind::Plain), |f| format!(
                "{:.0}%",
                f * 100.0
            )),
        );
    }
    let targets = check_targets(run);
    let count = |st: Status| targets.iter().filter(|t| t.status == st).count();
    let _ = writeln!(
        s,
        "\nTargets: {} met, {} missed, {} not measured (details and reasons in the report).",
        count(Status::Met),
        count(Status::Missed),
        count(Status::NotMeasured)
    );
    s
}

/// The full Markdown report.
pub fn markdown(run: &RunResult) -> String {
    let m = &run.machine;
    let mut s = String::new();
    let _ = writeln!(s, "# CLAE overhead report (`{}`)\n", run.plan_name);
    let _ = writeln!(
        s,
        "What an adversarial view costs: plain, CLAE lean-recipe and authors'-recipe, ACL-style and RoCL-style training steps measured side by side, against the exact FLOP model (docs/SPEC.md §6).\n"
    );
    let _ = writeln!(s, "* date: {} UTC; whole run {:.0} s", m.date, run.wall_s);
    let _ = writeln!(s, "* command: `{}`", run.command);
    s.push_str("\n## Machine\n\n| | |\n|---|---|\n");
    let _ = writeln!(
        s,
        "| CPU | {} ({} logical CPUs) |",
        m.cpu_model, m.logical_cpus
    );
    let _ = writeln!(s, "| reference threads | {} |", m.reference_threads);
    let _ = writeln!(s, "| libtorch threads | {} |", m.torch_threads);
    let _ = writeln!(s, "| OMP_WAIT_POLICY | {} |", m.omp_wait_policy);
    let _ = writeln!(s, "| C allocator | {} |", m.malloc);
    let _ = writeln!(s, "| CUDA | {} |", m.cuda);
    let _ = writeln!(s, "| kernel | {} |", m.kernel);
    let _ = writeln!(s, "| source | {} |", m.source);
    let _ = writeln!(s, "| rustc | {} |", m.rustc);
    for (k, v) in &m.versions {
        let _ = writeln!(s, "| {k} (locked) | {v} |");
    }
    let _ = writeln!(
        s,
        "| load average (1, 5, 15 min) | before {}; after {} |",
        m.load_before, m.load_after
    );

    s.push_str("\n## Summary\n\n");
    s.push_str(&summary_markdown(run));

    s.push_str(
        "\n## Targets\n\n| target | where | measured | status | reason |\n|---|---|---|---|---|\n",
    );
    for t in check_targets(run) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            t.target,
            t.scope,
            t.measured,
            t.status.label(),
            if t.reason.is_empty() {
                "—"
            } else {
                &t.reason
            }
        );
    }

    let rows = step_rows(run);
    s.push_str("\n## Step time against the FLOP model\n\n");
    s.push_str("Median per step, with the interquartile range over rounds. Ratios: measured (**bold**: the median over rounds of the per-round ratio, so that slow patches of the machine cancel; quartiles in brackets) and the exact FLOP model (plain); docs/SPEC.md §6's idealised 1.83 / 2.5 / 3.0 (and the peers' 5.33 / 4.0) are in the model section. ACL and RoCL are the peer methods' steps with their public defaults (ACL: PGD-5 on both views, eps 8/255, step 2/255; RoCL: PGD-7 on one view, eps 0.0314, step 0.007, weight 1/256; both attack in eval mode from a random start and clamp to [0, 1]) and the configuration's loss and optimizer.\n\n");
    s.push_str("| configuration | implementation | plain | lean | authors | ACL | RoCL | lean / plain | authors / plain | ACL / plain | RoCL / plain | authors / lean | rounds |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &rows {
        let cell = |k: StepKind| {
            opt(r.median(k), |med| {
                let st = r.stats(k).expect("median implies stats");
                format!("{} [{}–{}]", ms(med), ms(st.q1), ms(st.q3))
            })
        };
        let rounds = r
            .stats(StepKind::Plain)
            .map(|s| s.samples.len().to_string())
            .unwrap_or_else(|| "—".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.config,
            r.imp,
            cell(StepKind::Plain),
            cell(StepKind::Lean),
            cell(StepKind::Authors),
            cell(StepKind::ACL),
            cell(StepKind::ROCL),
            ratio_cell_spread(&r.lean_over_plain),
            ratio_cell_spread(&r.authors_over_plain),
            ratio_cell_spread(r.over_plain(StepKind::ACL)),
            ratio_cell_spread(r.over_plain(StepKind::ROCL)),
            ratio_cell_spread(&r.authors_over_lean),
            rounds
        );
    }
    s.push_str("\n![measured and modelled overhead ratios](ratios.svg)\n");
    s.push_str("\nThe same ratios per encoder and method, one dot per implementation, the FLOP model's ratio as a black bar:\n\n![step cost relative to plain, per encoder](cost.svg)\n");
    scaling_markdown(run, &mut s);
    memory_markdown(run, &mut s);

    s.push_str("\n## Achieved GFLOP/s as a fraction of the GEMM peak\n\n");
    let _ = write!(
        s,
        "GEMM peak: one square product, the fastest sample of the GEMM group, per implementation (the reference's is `Real::matmul`, the path its linear layers take: {} for f32, matrixmultiply for f64).\n\n| implementation | size | GFLOP/s |\n|---|---:|---:|\n",
        clae_reference::gemm::f32_backend()
    );
    let peaks = gemm_peaks(run);
    for (imp, size, gf) in &peaks {
        let _ = writeln!(s, "| {imp} | {size} | {gf:.1} |");
    }
    s.push_str("\nSteps (exact FLOPs of [the model](#flop-model) over the median time); \"extra\" is the GFLOP/s of the adversarial work alone, `(FLOPs(step) − FLOPs(plain)) / (t(step) − t(plain))`.\n\n");
    s.push_str("| configuration | implementation | plain GFLOP/s (% peak) | lean GFLOP/s (% peak) | authors GFLOP/s (% peak) | ACL GFLOP/s (% peak) | RoCL GFLOP/s (% peak) | lean extra | authors extra | ACL extra | RoCL extra |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &rows {
        let cell = |k: StepKind| {
            opt(r.gflops(k), |g| {
                format!(
                    "{g:.1} ({})",
                    opt(r.peak_fraction(k), |f| format!("{:.0}%", f * 100.0))
                )
            })
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.config,
            r.imp,
            cell(StepKind::Plain),
            cell(StepKind::Lean),
            cell(StepKind::Authors),
            cell(StepKind::ACL),
            cell(StepKind::ROCL),
            opt(r.marginal_gflops(StepKind::Lean), |g| format!("{g:.1}")),
            opt(r.marginal_gflops(StepKind::Authors), |g| format!("{g:.1}")),
            opt(r.marginal_gflops(StepKind::ACL), |g| format!("{g:.1}")),
            opt(r.marginal_gflops(StepKind::ROCL), |g| format!("{g:.1}")),
        );
    }
    s.push_str("\n![achieved fraction of the GEMM peak](peak_fraction.svg)\n");

    let losses = loss_rows(run);
    if !losses.is_empty() {
        let mut imps: Vec<Impl> = losses
            .iter()
            .flat_map(|r| r.results.iter().map(|x| x.0))
            .collect();
        imps.sort();
        imps.dedup();
        s.push_str("\n## Loss + gradients w.r.t. both embedding sets\n\nMedian per evaluation (GFLOP/s in parentheses).\n\n| loss | N | d |");
        for i in &imps {
            let _ = write!(s, " {i} |");
        }
        s.push_str(" reference f32 / tch-cpu f32 (per round) |\n|---|---:|---:|");
        for _ in &imps {
            s.push_str("---:|");
        }
        s.push_str("---:|\n");
        for r in &losses {
            let _ = write!(s, "| {} | {} | {} |", r.kind, r.n, r.d);
            for i in &imps {
                let cell = r
                    .results
                    .iter()
                    .find(|x| x.0 == *i)
                    .map(|x| match (&x.1.outcome, x.1.gflops()) {
                        (Outcome::Measured(st), Some(g)) => format!("{} ({g:.1})", ms(st.median)),
                        _ => "—".into(),
                    })
                    .unwrap_or_else(|| "—".into());
                let _ = write!(s, " {cell} |");
            }
            let x = r
                .stats(Impl::REF_F32)
                .zip(r.stats(Impl::TCH_CPU_F32))
                .map(|(a, b)| crate::overhead::analysis::paired_ratio(a, b).0);
            let _ = writeln!(s, " {} |", opt(x, |v| format!("{v:.2}x")));
        }
    }

    if let Some(p) = &run.profile {
        s.push_str("\n## Where the reference step's time goes\n\n");
        let _ = writeln!(
            s,
            "Reference f32, {}, N {}, Plain loss, SGD; every piece timed in interleaved rounds (medians), a whole `plain_step` in the same rounds for comparison. The pieces are the public calls, and each validates its own input (`backward` its cache and gradients, `update_running_stats` the encoder, `accumulate` its sums), where `plain_step` checks everything once: their sum exceeds the step by that repeated validation.\n",
            p.model, p.n
        );
        s.push_str("| piece | calls per plain step | per call | per step | share of step | GFLOP/s |\n|---|---:|---:|---:|---:|---:|\n");
        let mut sum = 0.0;
        for x in &p.pieces {
            let per_step = x.seconds * x.per_plain_step;
            sum += per_step;
            let gf = if x.flops > 0 {
                format!("{:.1}", x.flops as f64 / x.seconds / 1e9)
            } else {
                "—".into()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1}% | {} |",
                x.name,
                x.per_plain_step,
                ms(x.seconds),
                ms(per_step),
                100.0 * per_step / p.plain_step_s,
                gf
            );
        }
        let _ = writeln!(
            s,
            "| **sum of pieces** | | | {} | {:.1}% | |\n| **whole `plain_step`** | 1 | {} | {} | 100% | |",
            ms(sum),
            100.0 * sum / p.plain_step_s,
            ms(p.plain_step_s),
            ms(p.plain_step_s)
        );
        s.push_str("\nInside the passes: the matrix products alone (same shapes, same `Real::matmul` calls), and libtorch on the same products.\n\n| | reference, whole pass | reference, products only | elementwise + bookkeeping | libtorch, products only |\n|---|---:|---:|---:|---:|\n");
        let fwd = p.piece("forward").map(|x| x.seconds).unwrap_or(f64::NAN);
        let bw = p.piece("backward").map(|x| x.seconds).unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "| forward | {} | {} | {} | {} |",
            ms(fwd),
            ms(p.ref_gemm_forward_s),
            ms(fwd - p.ref_gemm_forward_s),
            opt(p.tch_gemm_forward_s, ms)
        );
        let _ = writeln!(
            s,
            "| backward into the parameters (B_w) | {} | {} | {} | {} |",
            ms(bw),
            ms(p.ref_gemm_backward_s),
            ms(bw - p.ref_gemm_backward_s),
            opt(p.tch_gemm_backward_s, ms)
        );
        let _ = writeln!(
            s,
            "| backward to the input (B_x, lean recipe) | {} | {} | {} | — |",
            ms(p.backward_input_s),
            ms(p.ref_gemm_backward_input_s),
            ms(p.backward_input_s - p.ref_gemm_backward_input_s)
        );
        if !p.losses.is_empty() {
            s.push_str("\nReference losses (f32): the whole evaluation against its matrix products alone.\n\n| loss | N | whole | products only | products' share | whole GFLOP/s |\n|---|---:|---:|---:|---:|---:|\n");
            for l in &p.losses {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.0}% | {:.1} |",
                    l.kind,
                    l.n,
                    ms(l.total_s),
                    ms(l.gemm_s),
                    100.0 * l.gemm_s / l.total_s,
                    l.total_flops as f64 / l.total_s / 1e9
                );
            }
        }
    }

    s.push_str("\n## FLOP model\n\n");
    s.push_str("Exact counts from the layer shapes (`benches/src/flops.rs`: matrix products `2mkn`, elementwise ops one FLOP each). `F` is one forward pass of one view, `B_w` a backward pass into the parameters (every weight gradient, every input gradient but the first layer's), `B_x` a backward pass to the input only, `L` a loss evaluation with both gradients; `F_eval` and `B_x,eval` are the same passes with BatchNorm on running statistics (the peers' eval-mode attacks: an affine map, no batch statistics). The PGD update itself (sign, step, projection, clamp) is not counted, like CLAE's FGSM update.\n\n");
    s.push_str("| configuration | F | B_w / F | B_x / F | F_eval / F | step | passes | GFLOP | exact ratio | docs/SPEC.md §6 ratio |\n|---|---:|---:|---:|---:|---|---|---:|---:|---:|\n");
    let mut seen = Vec::new();
    for g in &run.groups {
        let GroupKind::Step(config) = g.group.kind else {
            continue;
        };
        if seen.contains(&g.group.id) {
            continue;
        }
        seen.push(g.group.id.clone());
        let enc = config.encoder_flops();
        let f = enc.forward() as f64;
        let table = model_table(&config);
        let plain = table[0].2 as f64;
        for (i, (k, passes, total, _)) in table.iter().enumerate() {
            let first = i == 0;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.3} | {:.3} |",
                if first {
                    config.to_string()
                } else {
                    String::new()
                },
                if first {
                    format!("{:.2} GFLOP", f / 1e9)
                } else {
                    String::new()
                },
                if first {
                    format!("{:.3}", enc.backward(BackwardKind::Weights) as f64 / f)
                } else {
                    String::new()
                },
                if first {
                    format!("{:.3}", enc.backward(BackwardKind::Input) as f64 / f)
                } else {
                    String::new()
                },
                if first {
                    format!("{:.3}", enc.forward_eval() as f64 / f)
                } else {
                    String::new()
                },
                k.label(),
                passes,
                *total as f64 / 1e9,
                *total as f64 / plain,
                k.spec_ratio(config.loss)
            );
        }
    }
    if let Some(config) = run.groups.iter().find_map(|g| match g.group.kind {
        GroupKind::Step(c) if c.size == "large" => Some(c),
        _ => None,
    }) {
        let enc = config.encoder_flops();
        let _ = writeln!(
            s,
            "\nPer layer, {} at N {} (MFLOP):\n\n| layer | kind | forward | backward-to-input | weight gradient |\n|---|---|---:|---:|---:|",
            config.model, config.n
        );
        for l in &enc.layers {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {}{:.1} | {:.1} |",
                l.name,
                l.kind.name(),
                l.cost.forward as f64 / 1e6,
                if l.reads_input { "(only for B_x) " } else { "" },
                l.cost.backward_input as f64 / 1e6,
                l.cost.weight_grad as f64 / 1e6
            );
        }
    }

    s.push_str("\n## Method\n\n");
    s.push_str("* Every group's members run in the same rounds, in an order shuffled each round; each member's time is the median over rounds, and every ratio is between medians of one group — never across groups or runs. Quartiles show the spread.\n");
    s.push_str("* Before every sample the harness pauses briefly (untimed), so that libtorch's OpenMP threads, which keep spinning for milliseconds after a parallel region, are asleep before the next member starts.\n");
    s.push_str("* Every implementation allocates through the same C allocator with the settings in the machine table. `overhead-report` fixes glibc's mmap and trim thresholds unless `GLIBC_TUNABLES` is set: with glibc's adaptive defaults, whether a step's freed memory goes back to the kernel (and the next step pays page faults to get it back) depends on each process's allocation history — timing the large MLP's plain step in standalone processes, our libtorch step took 192 ms with the defaults (20k–28k page faults per step) and 169 ms with fixed thresholds (none), the PyTorch script 171 ms either way. `GLIBC_TUNABLES= overhead-report …` measures with the defaults.\n");
    s.push_str("* The CPU time other processes used during each round is read from `/proc`; rounds during which they kept too many CPUs busy are discarded and rerun (within a time limit), see the table below.\n");
    s.push_str("* One warm-up run per member (and, for fast members, one calibration sample) precedes the timed rounds; fast members run several times per sample (at least ~50 ms per sample).\n");
    s.push_str("* Steps are real training steps on fixed random data (`P` standard normal, `Q = 0.9 P + 0.1 noise`), with the authors' optimizer for the loss (SGD for Plain/UEL, Adam for SimCLR) and the paper's `tau`, `eps`, `alpha = 1`. The authors' recipe for the Plain loss includes their recomputation of `f_clean(P)`. The peer steps use the same data, loss and optimizer with their own attacks' defaults; their pixel clamp to [0, 1] moves these standard-normal views, which changes values but not the work a step does.\n");
    s.push_str("* Timings are noisy on a shared machine; the load averages say how busy it was (a load above the number of CPUs means other processes competed for them; libtorch's OpenMP threads suffer most from that). Ratios inside a group are robust to slow patches that hit all members alike.\n");
    s.push_str("\n| group | members measured | rounds kept | rounds discarded (others busy) | CPUs used by other processes (median of kept rounds) | wall time | load average at start |\n|---|---:|---:|---:|---:|---:|---|\n");
    for g in &run.groups {
        let measured = g.members.iter().filter(|m| m.stats().is_some()).count();
        let _ = writeln!(
            s,
            "| {} | {measured} of {} | {} | {} | {} | {:.0} s | {} |",
            g.group.id,
            g.members.len(),
            g.rounds,
            g.discarded,
            if g.foreign_cpus.is_nan() {
                "—".to_string()
            } else {
                format!("{:.2}", g.foreign_cpus)
            },
            g.wall_s,
            g.load
        );
    }
    if !run.notices.is_empty() {
        s.push_str("\n## Notices\n\n");
        for n in &run.notices {
            let _ = writeln!(s, "* {n}");
        }
    }
    s
}

fn csv_field(x: &str) -> String {
    if x.contains([',', '"', '\n']) {
        format!("\"{}\"", x.replace('"', "\"\""))
    } else {
        x.to_string()
    }
}

fn csv_line(fields: &[String]) -> String {
    let mut line = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

fn num(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.6e}")).unwrap_or_default()
}

/// One row per member: timing, FLOPs, GFLOP/s, fraction of peak, outcome.
pub fn measurements_csv(run: &RunResult) -> String {
    let peaks = gemm_peaks(run);
    let mut s = csv_line(
        &[
            "group",
            "backend",
            "precision",
            "task",
            "variant",
            "model",
            "n",
            "loss",
            "flops",
            "rounds",
            "runs_per_sample",
            "median_s",
            "q1_s",
            "q3_s",
            "min_s",
            "gflops",
            "peak_gflops",
            "peak_fraction",
            "status",
            "note",
        ]
        .map(String::from),
    );
    for g in &run.groups {
        for m in &g.members {
            let (task, model, n, loss) = match m.member.task {
                Task::Step { config, .. } => (
                    "step",
                    config.model.to_string(),
                    config.n.to_string(),
                    config.loss.to_string(),
                ),
                Task::Loss { kind, n, d } => {
                    ("loss", format!("d {d}"), n.to_string(), kind.to_string())
                }
                Task::Gemm { size } => (
                    "gemm",
                    format!("{size}x{size}"),
                    size.to_string(),
                    String::new(),
                ),
            };
            let st = m.stats();
            let peak = crate::overhead::analysis::peak_for(&peaks, m.member.imp);
            let (status, note) = match &m.outcome {
                Outcome::Measured(_) => ("measured", String::new()),
                Outcome::Skipped(w) => ("skipped", w.clone()),
                Outcome::Failed(w) => ("failed", w.clone()),
            };
            s.push_str(&csv_line(&[
                g.group.id.clone(),
                m.member.imp.backend.name().into(),
                m.member.imp.precision.name().into(),
                task.into(),
                m.member.task.variant(),
                model,
                n,
                loss,
                m.flops.to_string(),
                st.map(|s| s.samples.len().to_string()).unwrap_or_default(),
                st.map(|s| s.runs_per_sample.to_string())
                    .unwrap_or_default(),
                num(st.map(|s| s.median)),
                num(st.map(|s| s.q1)),
                num(st.map(|s| s.q3)),
                num(st.map(|s| s.min)),
                num(m.gflops()),
                num(peak),
                num(m.gflops().zip(peak).map(|(a, b)| a / b)),
                status.into(),
                note,
            ]));
        }
    }
    s
}

/// One row per (step configuration, implementation) with every step kind's
/// time and ratios, measured, exact model and docs/SPEC.md.
pub fn steps_csv(run: &RunResult) -> String {
    let mut s = csv_line(
        &[
            "group",
            "config",
            "backend",
            "precision",
            "plain_s",
            "lean_s",
            "authors_s",
            "acl_s",
            "rocl_s",
            "lean_over_plain",
            "lean_over_plain_model",
            "lean_over_plain_spec",
            "authors_over_plain",
            "authors_over_plain_model",
            "authors_over_plain_spec",
            "authors_over_lean",
            "authors_over_lean_model",
            "authors_over_lean_spec",
            "acl_over_plain",
            "acl_over_plain_model",
            "acl_over_plain_spec",
            "rocl_over_plain",
            "rocl_over_plain_model",
            "rocl_over_plain_spec",
            "plain_gflops",
            "lean_gflops",
            "authors_gflops",
            "acl_gflops",
            "rocl_gflops",
            "peak_gflops",
        ]
        .map(String::from),
    );
    for r in step_rows(run) {
        s.push_str(&csv_line(&[
            r.group_id.clone(),
            short_config(&r),
            r.imp.backend.name().into(),
            r.imp.precision.name().into(),
            num(r.median(StepKind::Plain)),
            num(r.median(StepKind::Lean)),
            num(r.median(StepKind::Authors)),
            num(r.median(StepKind::ACL)),
            num(r.median(StepKind::ROCL)),
            num(r.lean_over_plain.measured),
            num(Some(r.lean_over_plain.model)),
            num(Some(r.lean_over_plain.spec)),
            num(r.authors_over_plain.measured),
            num(Some(r.authors_over_plain.model)),
            num(Some(r.authors_over_plain.spec)),
            num(r.authors_over_lean.measured),
            num(Some(r.authors_over_lean.model)),
            num(Some(r.authors_over_lean.spec)),
            num(r.over_plain(StepKind::ACL).measured),
            num(Some(r.over_plain(StepKind::ACL).model)),
            num(Some(r.over_plain(StepKind::ACL).spec)),
            num(r.over_plain(StepKind::ROCL).measured),
            num(Some(r.over_plain(StepKind::ROCL).model)),
            num(Some(r.over_plain(StepKind::ROCL).spec)),
            num(r.gflops(StepKind::Plain)),
            num(r.gflops(StepKind::Lean)),
            num(r.gflops(StepKind::Authors)),
            num(r.gflops(StepKind::ACL)),
            num(r.gflops(StepKind::ROCL)),
            num(r.peak_gflops),
        ]));
    }
    s
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// Memory results in table order: configuration, implementation, step kind.
fn sorted_memory(run: &RunResult) -> Vec<&MemoryResult> {
    let mut v: Vec<&MemoryResult> = run.memory.iter().collect();
    v.sort_by_key(|r| match r.probe.member.task {
        Task::Step { config, kind } => (
            crate::overhead::analysis::size_rank(config.size),
            config.n,
            config.loss.name(),
            r.probe.member.imp,
            kind.index(),
        ),
        _ => (usize::MAX, 0, "", r.probe.member.imp, 0),
    });
    v
}

/// `(increase / plain's increase, peak / plain's peak)` of a memory result.
fn memory_ratios(run: &RunResult, r: &MemoryResult) -> (Option<f64>, Option<f64>) {
    let (Some(m), Some(p)) = (
        r.reading(),
        plain_of(&run.memory, r).and_then(|p| p.reading()),
    ) else {
        return (None, None);
    };
    let inc = (p.increase_kb() > 0).then(|| m.increase_kb() as f64 / p.increase_kb() as f64);
    let peak = (p.peak_kb > 0).then(|| m.peak_kb as f64 / p.peak_kb as f64);
    (inc, peak)
}

fn memory_markdown(run: &RunResult, s: &mut String) {
    if run.memory.is_empty() {
        return;
    }
    let steps = run.memory.first().map(|r| r.steps).unwrap_or(0);
    let _ = write!(
        s,
        "\n## Peak memory per step\n\nEvery member in a fresh process of its own, so that members do not share allocator caches or libtorch's and Python's pools (the reference and libtorch: `overhead-report` runs itself again as a probe of that one workload; PyTorch eager: `eager.py memory`). Each probe builds its workload, runs one warm-up step, reads its resident set (*before*: `VmRSS`), resets the kernel's peak-RSS counter (`5` written to `/proc/self/clear_refs`), runs {steps} more step(s) and reads the peak (`VmHWM`). Probes allocate with `GLIBC_TUNABLES={}` (blocks from 128 KiB mapped and unmapped on their own, free heap top returned beyond 128 KiB), so that what a step frees leaves the resident set before the next one; the timed groups keep freed memory instead (machine table), under which the warm-up step's memory would stay resident and every increase read about zero. *Increase* = peak − before: what a step allocates beyond what stays resident between steps (parameters, optimizer state, the batch, libraries, allocator caches). Ratios are to the plain step of the same implementation and configuration. A resident set includes each runtime's code and caches (libtorch's libraries in every Rust probe, the interpreter and torch in PyTorch's), so compare across implementations by the increase, not the peak.\n\n",
        crate::overhead::memory::PROBE_MALLOC
    );
    s.push_str("| configuration | implementation | step | before | peak | increase | increase / plain | peak / plain |\n|---|---|---|---:|---:|---:|---:|---:|\n");
    for r in sorted_memory(run) {
        let Task::Step { config, kind } = r.probe.member.task else {
            continue;
        };
        let (inc_r, peak_r) = memory_ratios(run, r);
        let f = |x: Option<f64>| opt(x, |v| format!("{v:.2}"));
        match &r.outcome {
            MemoryOutcome::Measured(m) => {
                let _ = writeln!(
                    s,
                    "| {config} | {} | {} | {} | {} | {} | {} | {} |",
                    r.probe.member.imp,
                    kind.label(),
                    mib(m.before_kb),
                    mib(m.peak_kb),
                    mib(m.increase_kb()),
                    f(inc_r),
                    f(peak_r)
                );
            }
            MemoryOutcome::NotMeasured(why) => {
                let _ = writeln!(
                    s,
                    "| {config} | {} | {} | not measured: {} | — | — | — | — |",
                    r.probe.member.imp,
                    kind.label(),
                    why.replace('|', "/")
                );
            }
        }
    }
}

fn scaling_markdown(run: &RunResult, s: &mut String) {
    let points = scale_points(run);
    let Some(first) = points.first() else {
        return;
    };
    let mut imps: Vec<String> = points.iter().map(|p| p.imp.to_string()).collect();
    imps.dedup();
    imps.sort();
    imps.dedup();
    let n_base = points.iter().find(|p| p.on_n).map(|p| p.config);
    let w_base = points.iter().find(|p| p.on_width).map(|p| p.config.n);
    let _ = write!(
        s,
        "\n## Scaling with N and the encoder's width\n\nPlain, CLAE lean and ACL (PGD-5) steps with the {} loss (NT-Xent, the peers' own loss; the authors' Adam), {}: one group per point, its members measured side by side in interleaved rounds like every group; measured ratios in bold, the exact FLOP model's in parentheses. The series in `N` keeps the encoder{}; the series in the width keeps `N`{} and varies the hidden width `h` of every hidden layer.\n\n",
        first.config.loss,
        imps.join(" and "),
        n_base.map(|c| format!(" ({})", c.model)).unwrap_or_default(),
        w_base.map(|n| format!(" ({n})")).unwrap_or_default(),
    );
    s.push_str("| series | N | h | implementation | plain step | lean / plain | ACL / plain | loss share of the plain step's FLOPs (model) |\n|---|---:|---:|---|---:|---:|---:|---:|\n");
    for p in &points {
        let series = match (p.on_n, p.on_width) {
            (true, true) => "N and h",
            (true, false) => "N",
            (false, true) => "h",
            (false, false) => "—",
        };
        let _ = writeln!(
            s,
            "| {series} | {} | {} | {} | {} | {} | {} | {:.1}% |",
            p.config.n,
            p.hidden(),
            p.imp,
            opt(p.plain_s, ms),
            ratio_cell(&p.lean),
            ratio_cell(&p.acl),
            100.0 * p.loss_share
        );
    }
    if let Some(base) = n_base {
        let shares: Vec<String> = [64usize, 256, 1024, 4096, 16384]
            .iter()
            .map(|&n| {
                let c = crate::overhead::plan::StepConfig { n, ..base };
                format!(
                    "{:.1}% at N {n}",
                    100.0 * loss_share(&c, crate::flops::StepKind::Plain)
                )
            })
            .collect();
        let cross = |share: f64| {
            loss_share_crossing(&base, share)
                .map(|n| format!("N {n}"))
                .unwrap_or_else(|| "no N up to 2^20".into())
        };
        let _ = writeln!(
            s,
            "\nWhere the O(N²d) loss terms start to matter, from the FLOP model of this encoder ({}, {} loss): the loss evaluations (forward and both gradients) are {} of a plain step's FLOPs, against O(N) for the encoder passes; they first reach 5% at {}, 10% at {} and 50% at {}. While the share is small the model's ratios are set by the encoder passes and its curve is flat in `N`; as the share grows, each ratio moves toward the ratio of the steps' loss evaluations alone. The width series moves the other way: a wider encoder makes the loss terms relatively smaller. The adversarial steps' own loss evaluations (one per PGD step for ACL) are counted in their ratios.",
            base.model,
            base.loss,
            shares.join(", "),
            cross(0.05),
            cross(0.10),
            cross(0.5)
        );
    }
    s.push_str("\n![lean / plain and ACL / plain in N and in the width](scaling.svg)\n");
}

/// One row per memory probe: the reading, its ratios to the plain step of
/// the same implementation and configuration, or why there is none.
pub fn memory_csv(run: &RunResult) -> String {
    let mut s = csv_line(
        &[
            "group",
            "config",
            "backend",
            "precision",
            "step",
            "steps",
            "before_kb",
            "peak_kb",
            "increase_kb",
            "increase_over_plain",
            "peak_over_plain",
            "status",
            "note",
        ]
        .map(String::from),
    );
    for r in sorted_memory(run) {
        let Task::Step { config, kind } = r.probe.member.task else {
            continue;
        };
        let (inc_r, peak_r) = memory_ratios(run, r);
        let m = r.reading();
        let (status, note) = match &r.outcome {
            MemoryOutcome::Measured(_) => ("measured", String::new()),
            MemoryOutcome::NotMeasured(w) => ("not measured", w.clone()),
        };
        s.push_str(&csv_line(&[
            r.probe.group_id.clone(),
            format!("{} N{} {}", config.size, config.n, config.loss),
            r.probe.member.imp.backend.name().into(),
            r.probe.member.imp.precision.name().into(),
            kind.name().into(),
            r.steps.to_string(),
            m.map(|m| m.before_kb.to_string()).unwrap_or_default(),
            m.map(|m| m.peak_kb.to_string()).unwrap_or_default(),
            m.map(|m| m.increase_kb().to_string()).unwrap_or_default(),
            num(inc_r),
            num(peak_r),
            status.into(),
            note,
        ]));
    }
    s
}

/// One row per scaling point and implementation.
pub fn scaling_csv(run: &RunResult) -> String {
    let mut s = csv_line(
        &[
            "group",
            "model",
            "n",
            "hidden",
            "loss",
            "backend",
            "precision",
            "on_n",
            "on_width",
            "plain_s",
            "lean_over_plain",
            "lean_over_plain_model",
            "acl_over_plain",
            "acl_over_plain_model",
            "loss_share_plain_model",
        ]
        .map(String::from),
    );
    for p in scale_points(run) {
        s.push_str(&csv_line(&[
            p.group_id.clone(),
            p.config.model.to_string(),
            p.config.n.to_string(),
            p.hidden().to_string(),
            p.config.loss.to_string(),
            p.imp.backend.name().into(),
            p.imp.precision.name().into(),
            p.on_n.to_string(),
            p.on_width.to_string(),
            num(p.plain_s),
            num(p.lean.measured),
            num(Some(p.lean.model)),
            num(p.acl.measured),
            num(Some(p.acl.model)),
            num(Some(p.loss_share)),
        ]));
    }
    s
}

/// One row per checked target.
pub fn targets_csv(run: &RunResult) -> String {
    let mut s = csv_line(&["target", "scope", "measured", "status", "reason"].map(String::from));
    for t in check_targets(run) {
        s.push_str(&csv_line(&[
            t.target.into(),
            t.scope,
            t.measured,
            t.status.label().into(),
            t.reason,
        ]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Machine;
    use crate::overhead::analysis::{GroupResult, MemberResult};
    use crate::overhead::measure::Stats;
    use crate::overhead::plan::Plan;

    /// A run with made-up timings for every member of the CPU plan: each
    /// member's time is its FLOPs at a made-up rate, so the ratios equal the
    /// model's. No timing is measured or asserted.
    fn synthetic_run() -> RunResult {
        let plan = Plan::full();
        let groups = plan
            .groups
            .iter()
            .map(|g| GroupResult {
                group: g.clone(),
                members: g
                    .members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let flops = m.task.flops();
                        let rate = if m.imp == Impl::REF_F32 { 40e9 } else { 60e9 };
                        let t = flops as f64 / rate;
                        let outcome = if m.imp.backend == crate::overhead::Backend::TchCuda {
                            Outcome::Skipped("no CUDA device, with a comma".into())
                        } else {
                            Outcome::Measured(Stats::from_samples(
                                vec![t, t * 1.01, t * 0.99, t * (1.0 + i as f64 * 1e-3)],
                                1,
                            ))
                        };
                        MemberResult {
                            member: *m,
                            flops,
                            outcome,
                        }
                    })
                    .collect(),
                wall_s: 1.0,
                rounds: 4,
                load: "0.00 0.00 0.00".into(),
                discarded: 1,
                foreign_cpus: 0.05,
            })
            .collect();
        let machine = Machine {
            cpu_model: "Test CPU".into(),
            logical_cpus: 2,
            reference_threads: "2".into(),
            torch_threads: 2,
            malloc: "glibc defaults".into(),
            omp_wait_policy: "unset".into(),
            cuda: "none".into(),
            rustc: "rustc 1.0".into(),
            versions: vec![("tch".into(), "0.0".into())],
            kernel: "Linux".into(),
            source: "abc1234".into(),
            date: "2000-01-01 00:00:00".into(),
            load_before: "0 0 0".into(),
            load_after: "0 0 0".into(),
        };
        // Made-up memory: the peak grows with the step's FLOPs; the first
        // probe is not measured (with a comma and a bar in the reason).
        let memory = plan
            .memory
            .iter()
            .enumerate()
            .map(|(i, p)| MemoryResult {
                probe: p.clone(),
                steps: 2,
                outcome: if i == 0 {
                    MemoryOutcome::NotMeasured("no /proc, here | there".into())
                } else {
                    let before_kb = 100_000;
                    MemoryOutcome::Measured(crate::overhead::memory::MemoryReading {
                        before_kb,
                        peak_kb: before_kb + p.member.task.flops() / 1_000_000,
                    })
                },
            })
            .collect();
        RunResult {
            plan_name: "synthetic".into(),
            command: "overhead-report --synthetic".into(),
            machine,
            groups,
            profile: None,
            wall_s: 1.0,
            notices: vec!["a notice".into()],
            memory,
        }
    }

    fn columns(line: &str) -> usize {
        // Quoted fields may contain commas; count separators outside quotes.
        let mut inside = false;
        let mut n = 1;
        for c in line.chars() {
            match c {
                '"' => inside = !inside,
                ',' if !inside => n += 1,
                _ => {}
            }
        }
        n
    }

    #[test]
    fn writes_well_formed_files_from_synthetic_measurements() {
        let run = synthetic_run();
        let dir = std::env::temp_dir().join(format!("clae-report-test-{}", std::process::id()));
        let files = write_report(&run, &dir).unwrap();
        assert_eq!(files.len(), FILES.len());
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(!text.is_empty(), "{} is empty", f.display());
            let name = f.file_name().unwrap().to_str().unwrap();
            if name.ends_with(".csv") {
                let lines: Vec<&str> = text.lines().collect();
                assert!(lines.len() > 1, "{name} has no data rows");
                let width = columns(lines[0]);
                for l in &lines {
                    assert_eq!(columns(l), width, "{name}: ragged row {l}");
                }
            } else if name.ends_with(".svg") {
                assert!(text.trim_start().starts_with("<svg"), "{name}");
                assert!(text.trim_end().ends_with("</svg>"), "{name}");
                assert_eq!(text.matches("<svg").count(), 1);
            } else {
                // Markdown tables: every row of a table has as many cells as its header.
                let mut width = None;
                for l in text.lines() {
                    if l.starts_with('|') {
                        let cells = l.matches('|').count();
                        match width {
                            None => width = Some(cells),
                            Some(w) => assert_eq!(cells, w, "{name}: ragged table row {l}"),
                        }
                    } else {
                        width = None;
                    }
                }
            }
        }
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        for section in [
            "## Machine",
            "## Summary",
            "## Targets",
            "## FLOP model",
            "## Notices",
            "## Peak memory per step",
            "## Scaling with N and the encoder's width",
            "(cost.svg)",
            "(scaling.svg)",
        ] {
            assert!(md.contains(section), "missing {section}");
        }
        // Every probe has a row; the unmeasured one says so, and measured
        // ratios to plain are there (plain's own is 1).
        let memory = std::fs::read_to_string(dir.join("memory.csv")).unwrap();
        assert_eq!(memory.lines().count(), 1 + run.memory.len());
        assert!(memory.contains("not measured,\"no /proc, here | there\""));
        assert!(memory.contains(",plain,2,100000,"));
        assert!(md.contains("not measured: no /proc, here / there"));
        // 8 scaling points x 2 implementations, both series drawn
        let scaling = std::fs::read_to_string(dir.join("scaling.csv")).unwrap();
        assert_eq!(scaling.lines().count(), 1 + 16);
        let svg = std::fs::read_to_string(dir.join("scaling.svg")).unwrap();
        assert!(svg.contains("in N (") && svg.contains("in the hidden width"));
        let cost = std::fs::read_to_string(dir.join("cost.svg")).unwrap();
        assert!(cost.contains("ACL (PGD-5)") && cost.contains("FLOP model"));
        // Synthetic times follow the model exactly, so the lean target is met
        // and the CUDA members are reported as skipped, not silently dropped.
        let targets = std::fs::read_to_string(dir.join("targets.csv")).unwrap();
        assert!(targets.contains("met"));
        let csv = std::fs::read_to_string(dir.join("measurements.csv")).unwrap();
        assert!(csv.contains("skipped,\"no CUDA device, with a comma\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
