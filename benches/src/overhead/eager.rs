//! PyTorch eager as a third implementation: `benches/python/eager.py serve`,
//! a plain PyTorch script (torch.nn layers, `torch.optim`, `F.cross_entropy`,
//! `torch.autograd.grad` for the lean pass) run with the project's torch
//! venv — the same libtorch as `clae-accelerated` — as a child process.
//!
//! The harness decides when each sample runs, so eager members join the
//! group's interleaved rounds like any other; the child times its own steps
//! (`run KIND COUNT` → seconds), so the pipe's round trip is not charged to
//! PyTorch. The child's CPU time counts as this process's own in the
//! busy-round detection ([`crate::overhead::measure::CpuMeter`]).
//!
//! The interpreter is `CLAE_PYTHON` (written into `.cargo/config.toml` by
//! `scripts/setup.sh`), the script `CLAE_EAGER_SCRIPT` or this crate's
//! `python/eager.py`. Without them the members are skipped with the reason.

use crate::flops::StepKind;
use crate::overhead::measure::{register_child, unregister_child, Workload};
use crate::overhead::plan::{Model, StepConfig};
use crate::overhead::{BenchError, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::rc::{Rc, Weak};

/// The Python interpreter and the script, or why they are not there.
pub fn locate() -> std::result::Result<(String, String), String> {
    let python = std::env::var("CLAE_PYTHON")
        .ok()
        .or_else(|| option_env!("CLAE_PYTHON").map(str::to_string))
        .ok_or("CLAE_PYTHON is not set (scripts/setup.sh writes it into .cargo/config.toml)")?;
    let script = std::env::var("CLAE_EAGER_SCRIPT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/python/eager.py").to_string());
    if !std::path::Path::new(&python).exists() {
        return Err(format!("the PyTorch interpreter {python} does not exist"));
    }
    if !std::path::Path::new(&script).exists() {
        return Err(format!("the eager baseline {script} does not exist"));
    }
    Ok((python, script))
}

/// One `eager.py serve` process for one step configuration.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// What the worker said when it started (torch version, threads).
    pub banner: String,
}

fn protocol(msg: impl Into<String>) -> BenchError {
    BenchError::Torch(format!("PyTorch eager worker: {}", msg.into()))
}

impl Worker {
    /// Starts a worker for `config` on `device` (`cpu` or `cuda`) with
    /// `threads` intra-op threads.
    pub fn start(config: &StepConfig, device: &str, threads: usize) -> Result<Self> {
        let (python, script) = locate().map_err(protocol)?;
        let encoder = match config.model {
            Model::Mlp(c) => format!("mlp:{},{},{},{}", c.d_in, c.hidden, c.depth, c.d),
            Model::ResNet18 { d } => format!("resnet18:{d}"),
        };
        let mut child = Command::new(&python)
            .arg(&script)
            .arg("serve")
            .args(["--encoder", &encoder])
            .args(["--n", &config.n.to_string()])
            .args(["--loss", config.loss.name()])
            .args(["--threads", &threads.to_string()])
            .args(["--device", device])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| protocol(format!("cannot start {python} {script}: {e}")))?;
        register_child(child.id());
        let stdin = child.stdin.take().ok_or_else(|| protocol("no stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| protocol("no stdout"))?);
        let mut w = Worker {
            child,
            stdin,
            stdout,
            banner: String::new(),
        };
        w.banner = w.reply()?;
        if !w.banner.contains("\"ready\": true") {
            return Err(protocol(format!("unexpected banner {}", w.banner)));
        }
        Ok(w)
    }

    fn reply(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| protocol(e.to_string()))?;
        if n == 0 {
            return Err(protocol("the worker exited (see its message above)"));
        }
        Ok(line.trim().to_string())
    }

    /// `count` steps of `kind`, timed by the worker; seconds.
    pub fn run(&mut self, kind: StepKind, count: usize) -> Result<f64> {
        writeln!(self.stdin, "run {} {count}", kind.name()).map_err(|e| protocol(e.to_string()))?;
        self.stdin.flush().map_err(|e| protocol(e.to_string()))?;
        let line = self.reply()?;
        json_number(&line, "seconds").ok_or_else(|| protocol(format!("unexpected reply {line}")))
    }

    /// The worker's peak resident set, KiB.
    pub fn peak_rss_kb(&mut self) -> Result<f64> {
        writeln!(self.stdin, "rss").map_err(|e| protocol(e.to_string()))?;
        self.stdin.flush().map_err(|e| protocol(e.to_string()))?;
        let line = self.reply()?;
        json_number(&line, "peak_rss_kb")
            .ok_or_else(|| protocol(format!("unexpected reply {line}")))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
        unregister_child(self.child.id());
    }
}

/// The number after `"key": ` in a one-line JSON object.
fn json_number(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = line[at..].trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

thread_local! {
    /// Workers alive, one per (configuration, device): a group's three
    /// eager members share one process (three models, as the Rust members
    /// have three), and it ends when the group's workloads are dropped.
    static WORKERS: RefCell<HashMap<String, Weak<RefCell<Worker>>>> = RefCell::new(HashMap::new());
}

/// One eager step kind, a member of a group.
pub struct EagerStep {
    worker: Rc<RefCell<Worker>>,
    kind: StepKind,
}

impl EagerStep {
    /// The member for `kind` of `config` on `device`, sharing the worker of
    /// the group's other eager members.
    pub fn new(config: &StepConfig, kind: StepKind, device: &str, threads: usize) -> Result<Self> {
        let key = format!("{config:?}/{device}/{threads}");
        let existing = WORKERS.with(|w| w.borrow().get(&key).and_then(Weak::upgrade));
        let worker = match existing {
            Some(w) => w,
            None => {
                let w = Rc::new(RefCell::new(Worker::start(config, device, threads)?));
                WORKERS.with(|m| m.borrow_mut().insert(key, Rc::downgrade(&w)));
                w
            }
        };
        Ok(EagerStep { worker, kind })
    }
}

impl Workload for EagerStep {
    fn run(&mut self) -> Result<()> {
        self.worker.borrow_mut().run(self.kind, 1).map(|_| ())
    }

    fn run_timed(&mut self, runs: usize) -> Result<Option<f64>> {
        self.worker.borrow_mut().run(self.kind, runs).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::json_number;

    #[test]
    fn replies_are_parsed() {
        assert_eq!(json_number(r#"{"seconds": 0.25}"#, "seconds"), Some(0.25));
        assert_eq!(
            json_number(r#"{"a": 1, "peak_rss_kb": 624752}"#, "peak_rss_kb"),
            Some(624752.0)
        );
        assert_eq!(json_number(r#"{"error": "x"}"#, "seconds"), None);
    }
}
