//! Command-line options of `overhead-report`, parsed without panics: every
//! bad argument is a [`CliError`] that says what was wrong and what was
//! expected.

use std::path::PathBuf;
use thiserror::Error;

/// A bad command line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CliError {
    /// An option this program does not have.
    #[error("unknown option `{0}` (try --help)")]
    UnknownOption(String),
    /// An option that needs a value came last.
    #[error("option `{0}` needs a value (try --help)")]
    MissingValue(String),
    /// A value outside the option's domain.
    #[error("invalid value `{value}` for `{option}`: expected {expected}")]
    InvalidValue {
        /// The option.
        option: String,
        /// What was given.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// Two options that exclude each other.
    #[error("`{0}` and `{1}` cannot be combined")]
    Conflict(String, String),
}

/// Which selection to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanName {
    /// The CPU selection (default).
    Cpu,
    /// CPU plus CUDA configurations.
    Full,
    /// A seconds-long smoke run with tiny sizes.
    Quick,
}

/// Parsed options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Which selection.
    pub plan: PlanName,
    /// Output folder.
    pub out: PathBuf,
    /// Keep only groups whose id contains one of these.
    pub only: Vec<String>,
    /// Multiplies every group's time budget.
    pub time_scale: f64,
    /// Skip the reference-step profile.
    pub no_profile: bool,
    /// Thread count for libtorch and the reference's GEMM (None: their defaults).
    pub threads: Option<usize>,
    /// Untimed pause before every sample, seconds.
    pub cooldown_s: f64,
    /// Discard rounds during which other processes kept more CPUs busy (None: keep all).
    pub max_foreign_cpus: Option<f64>,
    /// Print the plan and exit.
    pub list: bool,
    /// Print the help and exit.
    pub help: bool,
    /// Skip the peak-memory probes.
    pub no_memory: bool,
    /// Steps each memory probe runs after its warm-up step (1..=100).
    pub memory_steps: usize,
    /// Hidden (`--memory-probe SPEC`): be one memory probe for this member
    /// and print its reading ([`crate::overhead::memory`]).
    pub memory_probe: Option<crate::overhead::plan::Member>,
    /// The `overhead-report` executable the memory probes run (not an
    /// option; `None`: this process's own executable).
    pub probe_exe: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            plan: PlanName::Cpu,
            out: PathBuf::from("report-out/overhead"),
            only: Vec::new(),
            time_scale: 1.0,
            no_profile: false,
            threads: None,
            cooldown_s: 0.02,
            max_foreign_cpus: Some(0.5),
            list: false,
            help: false,
            no_memory: false,
            memory_steps: crate::overhead::memory::DEFAULT_STEPS,
            memory_probe: None,
            probe_exe: None,
        }
    }
}

/// The `--help` text.
pub const HELP: &str = "\
overhead-report: what CLAE's adversarial views cost in training time, measured
side by side with plain steps and set against the exact FLOP model.

USAGE:
    overhead-report [OPTIONS]

OPTIONS:
    --full               also run the CUDA configurations (GEMM, losses, large
                         MLP, ResNet-18 at N 256 and 512); skipped with a notice
                         when no CUDA device is present
    --quick              a seconds-long smoke run with tiny sizes (numbers meaningless)
    --out DIR            output folder [default: report-out/overhead]
    --only ID[,ID..]     run only groups whose id contains one of these
                         (e.g. gemm, loss-n256, large; `profile` for the
                         reference profile); see --list
    --time-scale X       multiply every group's time budget by X > 0 [default: 1]
    --threads N          threads for libtorch and the reference's GEMM (1..=4096)
    --no-profile         skip the profile of the reference step
    --no-memory          skip the peak-memory probes (one process per member)
    --memory-steps K     steps per memory probe after its warm-up step (1..=100) [default: 1]
    --max-foreign X      discard and rerun a round during which other processes
                         kept more than X CPUs busy (X >= 0, or `off`) [default: 0.5]
    --cooldown MS        untimed pause before every sample, in ms (0..=1000) [default: 20]
    --list               print the selected groups and exit
    -h, --help           print this help
";

fn value<'a>(
    option: &str,
    it: &mut impl Iterator<Item = &'a String>,
) -> Result<&'a String, CliError> {
    it.next()
        .ok_or_else(|| CliError::MissingValue(option.to_string()))
}

/// Parses the arguments (without the program name).
///
/// ```
/// use clae_benches::overhead::cli::{parse, CliError, PlanName};
/// let o = parse(&["--full".into(), "--time-scale".into(), "0.5".into()]).unwrap();
/// assert_eq!((o.plan, o.time_scale), (PlanName::Full, 0.5));
/// assert!(matches!(parse(&["--time-scale".into(), "-1".into()]), Err(CliError::InvalidValue { .. })));
/// assert!(matches!(parse(&["--bogus".into()]), Err(CliError::UnknownOption(_))));
/// ```
pub fn parse(args: &[String]) -> Result<Options, CliError> {
    let mut o = Options::default();
    let mut plan_flag: Option<&str> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let take = |it: &mut std::slice::Iter<'_, String>| -> Result<String, CliError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => value(name, it).cloned(),
            }
        };
        match name {
            "--full" | "--quick" => {
                if let Some(prev) = plan_flag {
                    if prev != name {
                        return Err(CliError::Conflict(prev.to_string(), name.to_string()));
                    }
                }
                plan_flag = Some(if name == "--full" {
                    "--full"
                } else {
                    "--quick"
                });
                o.plan = if name == "--full" {
                    PlanName::Full
                } else {
                    PlanName::Quick
                };
            }
            "--out" => {
                let v = take(&mut it)?;
                if v.is_empty() {
                    return Err(CliError::InvalidValue {
                        option: name.into(),
                        value: v,
                        expected: "a folder path".into(),
                    });
                }
                o.out = PathBuf::from(v);
            }
            "--only" => {
                let v = take(&mut it)?;
                let ids: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if ids.is_empty() {
                    return Err(CliError::InvalidValue {
                        option: name.into(),
                        value: v,
                        expected: "a comma-separated list of group ids".into(),
                    });
                }
                o.only.extend(ids);
            }
            "--time-scale" => {
                let v = take(&mut it)?;
                match v.parse::<f64>() {
                    Ok(x) if x.is_finite() && x > 0.0 => o.time_scale = x,
                    _ => {
                        return Err(CliError::InvalidValue {
                            option: name.into(),
                            value: v,
                            expected: "a finite number > 0".into(),
                        })
                    }
                }
            }
            "--threads" => {
                let v = take(&mut it)?;
                match v.parse::<usize>() {
                    Ok(n) if (1..=4096).contains(&n) => o.threads = Some(n),
                    _ => {
                        return Err(CliError::InvalidValue {
                            option: name.into(),
                            value: v,
                            expected: "an integer in 1..=4096".into(),
                        })
                    }
                }
            }
            "--max-foreign" => {
                let v = take(&mut it)?;
                o.max_foreign_cpus = match v.as_str() {
                    "off" => None,
                    _ => match v.parse::<f64>() {
                        Ok(x) if x.is_finite() && x >= 0.0 => Some(x),
                        _ => {
                            return Err(CliError::InvalidValue {
                                option: name.into(),
                                value: v,
                                expected: "a number of CPUs >= 0, or `off`".into(),
                            })
                        }
                    },
                };
            }
            "--cooldown" => {
                let v = take(&mut it)?;
                match v.parse::<f64>() {
                    Ok(x) if (0.0..=1000.0).contains(&x) => o.cooldown_s = x / 1000.0,
                    _ => {
                        return Err(CliError::InvalidValue {
                            option: name.into(),
                            value: v,
                            expected: "milliseconds in 0..=1000".into(),
                        })
                    }
                }
            }
            "--memory-steps" => {
                let v = take(&mut it)?;
                match v.parse::<usize>() {
                    Ok(n) if (1..=100).contains(&n) => o.memory_steps = n,
                    _ => {
                        return Err(CliError::InvalidValue {
                            option: name.into(),
                            value: v,
                            expected: "an integer in 1..=100".into(),
                        })
                    }
                }
            }
            "--memory-probe" => {
                let v = take(&mut it)?;
                o.memory_probe = Some(crate::overhead::memory::parse_probe_spec(&v)?);
            }
            "--no-memory" => o.no_memory = true,
            "--no-profile" => o.no_profile = true,
            "--list" => o.list = true,
            "-h" | "--help" => o.help = true,
            _ => return Err(CliError::UnknownOption(arg.clone())),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_every_option() {
        let o = parse(&args(
            "--out /tmp/x --only gemm,loss --only large --threads 2 --no-profile --list --no-memory --memory-steps 3",
        ))
        .unwrap();
        assert!(o.no_memory && o.memory_steps == 3 && o.memory_probe.is_none());
        let probe = parse(&args(
            "--memory-probe reference/f32/medium/mlp:784,1024,2,128/256/simclr/rocl",
        ))
        .unwrap();
        assert!(probe.memory_probe.is_some());
        assert_eq!(o.out, PathBuf::from("/tmp/x"));
        assert_eq!(o.only, vec!["gemm", "loss", "large"]);
        assert_eq!(o.threads, Some(2));
        assert!(o.no_profile && o.list);
        assert_eq!(parse(&args("--out=/y")).unwrap().out, PathBuf::from("/y"));
        assert_eq!(parse(&[]).unwrap(), Options::default());
    }

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        assert_eq!(
            parse(&args("--out")),
            Err(CliError::MissingValue("--out".into()))
        );
        assert!(matches!(
            parse(&args("--threads 0")),
            Err(CliError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&args("--threads two")),
            Err(CliError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&args("--time-scale nan")),
            Err(CliError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&args("--only ,")),
            Err(CliError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&args("--full --quick")),
            Err(CliError::Conflict(..))
        ));
        assert!(matches!(
            parse(&args("--memory-steps 0")),
            Err(CliError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&args("--memory-probe tch-cpu/f32")),
            Err(CliError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&args("full")),
            Err(CliError::UnknownOption(_))
        ));
    }
}
