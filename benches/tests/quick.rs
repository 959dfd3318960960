//! The whole report pipeline on the `--quick` plan, into a temporary
//! folder: every file of the report is written and well formed, the
//! scaling series and the memory probes (one `overhead-report` child per
//! member) are there. No timing is checked — only that the numbers exist
//! and the files parse.

use clae_benches::overhead::cli::parse;
use clae_benches::overhead::memory::MemoryOutcome;
use clae_benches::overhead::report::{write_report, FILES};
use clae_benches::overhead::run::run;

fn columns(line: &str) -> usize {
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
fn the_quick_pipeline_writes_every_file_well_formed() {
    let dir = std::env::temp_dir().join(format!("clae-quick-test-{}", std::process::id()));
    let args: Vec<String> = ["--quick", "--no-profile", "--max-foreign", "off", "--out"]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.display().to_string()])
        .collect();
    let mut opts = parse(&args).unwrap();
    // the probes are the report binary, not this test harness
    opts.probe_exe = Some(env!("CARGO_BIN_EXE_overhead-report").into());
    let result = run(&opts, "overhead-report --quick (test)".into()).unwrap();
    let files = write_report(&result, &dir).unwrap();
    assert_eq!(files.len(), FILES.len());
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(!text.is_empty(), "{name} is empty");
        if name.ends_with(".csv") {
            let lines: Vec<&str> = text.lines().collect();
            assert!(lines.len() > 1, "{name} has no rows");
            let w = columns(lines[0]);
            assert!(lines.iter().all(|l| columns(l) == w), "{name} is ragged");
        } else if name.ends_with(".svg") {
            assert!(text.trim_start().starts_with("<svg"), "{name}");
            assert!(text.trim_end().ends_with("</svg>"), "{name}");
        }
    }
    // quick: 3 scaling points (N 16, 32 at h 128; h 64 at N 32), libtorch
    let scaling = std::fs::read_to_string(dir.join("scaling.csv")).unwrap();
    assert_eq!(scaling.lines().count(), 1 + 3, "{scaling}");
    // quick: plain and lean of each of the three implementations
    assert_eq!(result.memory.len(), 6);
    let memory = std::fs::read_to_string(dir.join("memory.csv")).unwrap();
    assert_eq!(memory.lines().count(), 1 + 6);
    // Where the kernel lets a process reset its peak-RSS counter, the
    // reference and libtorch probes must have measured something.
    if std::fs::write("/proc/self/clear_refs", "5").is_ok() {
        for r in &result.memory {
            let imp = r.probe.member.imp.backend.name();
            if imp == "reference" || imp == "tch-cpu" {
                match &r.outcome {
                    MemoryOutcome::Measured(m) => {
                        assert!(m.before_kb > 0 && m.peak_kb >= m.before_kb, "{m:?}")
                    }
                    MemoryOutcome::NotMeasured(why) => {
                        panic!("{}: not measured: {why}", r.probe.member.label())
                    }
                }
            }
        }
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for s in ["## Peak memory per step", "## Scaling with N", "cost.svg"] {
        assert!(md.contains(s), "report.md lacks {s}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
