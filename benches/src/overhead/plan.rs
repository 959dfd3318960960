//! What the report measures: groups of members that are timed side by side.
//!
//! A [`Group`] is the unit of comparison. Every ratio the report states
//! (lean / plain, authors / lean, reference / libtorch, achieved / peak) is
//! between members of one group, measured in the same interleaved rounds.

use crate::flops::{
    gemm, loss_flops, step_flops, EncoderFlops, OptimizerKind, ResNetShape, StepKind,
};
use crate::overhead::memory::MemoryProbe;
use crate::overhead::{Backend, Impl};
use clae_reference::encoder::MlpConfig;
use clae_reference::loss::LossKind;
use std::fmt;

/// An encoder architecture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    /// The dual-BN MLP of docs/SPEC.md §2.
    Mlp(MlpConfig),
    /// The dual-BN CIFAR ResNet-18 (libtorch only), `3 x 32 x 32` images.
    ResNet18 {
        /// Embedding dimension `d`.
        d: usize,
    },
}

impl Model {
    /// Cost model of one view of `n` images.
    pub fn flops(&self, n: usize) -> EncoderFlops {
        match self {
            Model::Mlp(c) => EncoderFlops::mlp(c, n),
            Model::ResNet18 { d } => EncoderFlops::resnet(&ResNetShape::cifar_resnet18(*d), n),
        }
    }

    /// Width of one flattened image.
    pub fn d_in(&self) -> usize {
        match self {
            Model::Mlp(c) => c.d_in,
            Model::ResNet18 { .. } => 3 * 32 * 32,
        }
    }

    /// Embedding dimension.
    pub fn d(&self) -> usize {
        match self {
            Model::Mlp(c) => c.d,
            Model::ResNet18 { d } => *d,
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Model::Mlp(c) => write!(f, "MLP {}-{}x{}-{}", c.d_in, c.hidden, c.depth, c.d),
            Model::ResNet18 { d } => write!(f, "ResNet-18 (32x32, d {d})"),
        }
    }
}

/// The MLP sizes of the report: `(name, config, N)`.
///
/// * small: a digits-scale encoder (8x8 images), where elementwise work and
///   bookkeeping weigh most;
/// * medium: MNIST-width input, `h 1024`;
/// * large: the issue's `D_in 3072, h 2048, L 2, d 128, N 256`.
pub fn mlp_sizes() -> [(&'static str, MlpConfig, usize); 3] {
    [
        ("small", MlpConfig::new(64, 256, 2, 64), 64),
        ("medium", MlpConfig::new(784, 1024, 2, 128), 256),
        ("large", MlpConfig::new(3072, 2048, 2, 128), 256),
    ]
}

/// A training-step configuration: encoder, batch and loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepConfig {
    /// Size name (`small`, `medium`, `large`, `resnet18`).
    pub size: &'static str,
    /// The encoder.
    pub model: Model,
    /// Batch size `N`.
    pub n: usize,
    /// The loss (also picks the authors' recipe and optimizer).
    pub loss: LossKind,
}

impl StepConfig {
    /// The authors' optimizer for this loss.
    pub fn optimizer(&self) -> OptimizerKind {
        OptimizerKind::for_loss(self.loss)
    }

    /// Cost model of one view.
    pub fn encoder_flops(&self) -> EncoderFlops {
        self.model.flops(self.n)
    }

    /// Exact FLOPs of one step of `kind`.
    pub fn step_flops(&self, kind: StepKind) -> u64 {
        step_flops(&self.encoder_flops(), kind, self.loss, self.optimizer()).total
    }
}

impl fmt::Display for StepConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, N {}, {} loss", self.model, self.n, self.loss)
    }
}

/// One measured thing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Task {
    /// A full training step (forward, backward, optimizer).
    Step {
        /// Encoder, batch and loss.
        config: StepConfig,
        /// Plain, lean, authors', ACL or RoCL.
        kind: StepKind,
    },
    /// A loss value and its gradients w.r.t. both embedding sets.
    Loss {
        /// Which loss.
        kind: LossKind,
        /// Batch size `N`.
        n: usize,
        /// Embedding dimension `d`.
        d: usize,
    },
    /// A square matrix product `size x size` by `size x size`.
    Gemm {
        /// The side.
        size: usize,
    },
}

impl Task {
    /// Exact FLOPs of one run (see [`crate::flops`]).
    pub fn flops(&self) -> u64 {
        match *self {
            Task::Step { config, kind } => config.step_flops(kind),
            Task::Loss { kind, n, d } => loss_flops(kind, n, d),
            Task::Gemm { size } => gemm(size, size, size),
        }
    }

    /// Short name of the variant: the step kind, the loss, or `gemm`.
    pub fn variant(&self) -> String {
        match self {
            Task::Step { kind, .. } => kind.name().to_string(),
            Task::Loss { kind, .. } => kind.name().to_string(),
            Task::Gemm { size } => format!("gemm {size}"),
        }
    }
}

/// A task on an implementation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    /// Which implementation.
    pub imp: Impl,
    /// What it runs.
    pub task: Task,
}

impl Member {
    /// `"reference f32 lean"` and the like.
    pub fn label(&self) -> String {
        format!("{} {}", self.imp, self.task.variant())
    }
}

/// What a group compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GroupKind {
    /// GEMM peaks of every implementation.
    Gemm {
        /// Matrix side.
        size: usize,
    },
    /// The three losses at one `N` and `d`.
    Loss {
        /// Batch size.
        n: usize,
        /// Embedding dimension.
        d: usize,
    },
    /// Plain, lean, authors', ACL and RoCL steps of one configuration.
    Step(StepConfig),
    /// One point of the scaling series ([`scaling_groups`]): plain, lean
    /// and ACL steps of one configuration.
    Scaling {
        /// Encoder, batch and loss.
        config: StepConfig,
        /// A point of the series in `N` (fixed encoder).
        on_n: bool,
        /// A point of the series in the hidden width (fixed `N`).
        on_width: bool,
    },
}

/// Members measured side by side in interleaved rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Stable identifier (`mlp-large-plain`, `loss-n256`, `gemm-2048`).
    pub id: String,
    /// Title for tables and progress lines.
    pub title: String,
    /// What is compared.
    pub kind: GroupKind,
    /// The members.
    pub members: Vec<Member>,
    /// Seconds of timed rounds to aim for (warm-up excluded).
    pub budget_s: f64,
    /// At least this many rounds, whatever the budget.
    pub min_rounds: usize,
    /// At most this many rounds.
    pub max_rounds: usize,
}

/// Options of the reference-step profile ([`crate::overhead::profile`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfilePlan {
    /// The encoder profiled.
    pub config: MlpConfig,
    /// Batch size.
    pub n: usize,
    /// Repetitions (medians are reported).
    pub reps: usize,
}

/// A whole run: groups in order and the optional profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `cpu`, `full` or `quick`.
    pub name: String,
    /// The groups, measured one after the other.
    pub groups: Vec<Group>,
    /// Where the reference step's time goes.
    pub profile: Option<ProfilePlan>,
    /// Peak-memory probes, one fresh process each
    /// ([`crate::overhead::memory`]).
    pub memory: Vec<MemoryProbe>,
}

/// The step kinds of a scaling group: plain, CLAE lean, ACL (PGD-5).
pub const SCALING_KINDS: [StepKind; 3] = [StepKind::Plain, StepKind::Lean, StepKind::ACL];

/// The loss of the scaling series: SimCLR (NT-Xent, the peers' own loss,
/// and the loss whose `2N x 2N` similarity grows fastest with `N`).
pub const SCALING_LOSS: LossKind = LossKind::SimClr;

/// One scaling series' points: `Ns` on the encoder `base` (hidden width
/// `base.hidden`), and hidden `widths` at `N = n_fixed` (the point at
/// `(base.hidden, n_fixed)` is measured once and belongs to both series).
/// Each group runs plain, lean and ACL steps ([`SCALING_KINDS`]) with
/// [`SCALING_LOSS`] on every implementation in `imps`; `budget_s(n, width)`
/// gives each group's budget.
pub fn scaling_groups(
    base: MlpConfig,
    ns: &[usize],
    widths: &[usize],
    n_fixed: usize,
    imps: &[Impl],
    budget_s: impl Fn(usize, usize) -> f64,
) -> Vec<Group> {
    let mut points: Vec<(usize, usize)> = ns.iter().map(|&n| (n, base.hidden)).collect();
    for &w in widths {
        if !points.contains(&(n_fixed, w)) {
            points.push((n_fixed, w));
        }
    }
    points
        .into_iter()
        .map(|(n, hidden)| {
            let model = Model::Mlp(MlpConfig { hidden, ..base });
            let config = StepConfig {
                size: "scaling",
                model,
                n,
                loss: SCALING_LOSS,
            };
            let members = imps
                .iter()
                .flat_map(|&imp| {
                    SCALING_KINDS.map(|kind| Member {
                        imp,
                        task: Task::Step { config, kind },
                    })
                })
                .collect();
            Group {
                id: format!("scale-h{hidden}-n{n}"),
                title: format!("scaling: {config}"),
                kind: GroupKind::Scaling {
                    config,
                    on_n: hidden == base.hidden && ns.contains(&n),
                    on_width: n == n_fixed && widths.contains(&hidden),
                },
                members,
                budget_s: budget_s(n, hidden),
                min_rounds: 5,
                max_rounds: 21,
            }
        })
        .collect()
}

fn step_group(
    config: StepConfig,
    imps: &[Impl],
    budget_s: f64,
    min_rounds: usize,
    max_rounds: usize,
) -> Group {
    let members = imps
        .iter()
        .flat_map(|&imp| {
            StepKind::ALL.map(|kind| Member {
                imp,
                task: Task::Step { config, kind },
            })
        })
        .collect();
    Group {
        id: format!("{}-{}-n{}", config.size, config.loss, config.n),
        title: config.to_string(),
        kind: GroupKind::Step(config),
        members,
        budget_s,
        min_rounds,
        max_rounds,
    }
}

fn loss_group(n: usize, d: usize, imps: &[Impl], budget_s: f64) -> Group {
    let members = LossKind::ALL
        .iter()
        .flat_map(|&kind| {
            imps.iter().map(move |&imp| Member {
                imp,
                task: Task::Loss { kind, n, d },
            })
        })
        .collect();
    Group {
        id: format!("loss-n{n}"),
        title: format!("loss + gradients, N {n}, d {d}"),
        kind: GroupKind::Loss { n, d },
        members,
        budget_s,
        min_rounds: 5,
        max_rounds: 41,
    }
}

fn gemm_group(size: usize, imps: &[Impl], budget_s: f64) -> Group {
    Group {
        id: format!("gemm-{size}"),
        title: format!("GEMM {size}x{size} by {size}x{size}"),
        kind: GroupKind::Gemm { size },
        members: imps
            .iter()
            .map(|&imp| Member {
                imp,
                task: Task::Gemm { size },
            })
            .collect(),
        budget_s,
        min_rounds: 3,
        max_rounds: 21,
    }
}

impl Plan {
    /// The CPU selection (about 17 minutes on two cores with the memory probes and scaling groups, build excluded):
    /// GEMM peaks at 2048 (reference and libtorch, f32 and f64); the three
    /// losses at `N` 64, 256, 1024 (`d` 128; reference f32 and f64, libtorch
    /// f32); plain, lean and authors' steps for the small, medium and large
    /// MLP with the Plain loss (reference f32 next to libtorch CPU f32), the
    /// large MLP once more with SimCLR (the authors' SimCLR/UEL recipe, Adam),
    /// and ResNet-18 on libtorch CPU at `N` 8 with SimCLR; the scaling
    /// series ([`scaling_groups`]: the medium MLP with SimCLR at `N` 64 to
    /// 1024 and hidden width 256 to 2048 at `N` 256, plain, lean and ACL on
    /// libtorch and the reference, 72 s of group budgets); and the peak
    /// memory of every step member, one probe process each.
    pub fn cpu() -> Self {
        // The groups whose ratios matter most run first, while the machine
        // is most likely to be as quiet as it was when the run started.
        let gemm = gemm_group(
            2048,
            &[
                Impl::REF_F32,
                Impl::REF_F64,
                Impl::TCH_CPU_F32,
                Impl::TCH_CPU_F64,
            ],
            20.0,
        );
        let step_imps = [Impl::REF_F32, Impl::TCH_CPU_F32, Impl::EAGER_CPU_F32];
        let mut steps: Vec<Group> = mlp_sizes()
            .into_iter()
            .zip([15.0, 25.0, 80.0])
            .map(|((size, cfg, n), budget)| {
                let config = StepConfig {
                    size,
                    model: Model::Mlp(cfg),
                    n,
                    loss: LossKind::Plain,
                };
                let min_rounds = if size == "large" { 9 } else { 5 };
                step_group(config, &step_imps, budget, min_rounds, 41)
            })
            .collect();
        let (size, cfg, n) = mlp_sizes()[2];
        steps.push(step_group(
            StepConfig {
                size,
                model: Model::Mlp(cfg),
                n,
                loss: LossKind::SimClr,
            },
            &step_imps,
            60.0,
            9,
            41,
        ));
        steps.push(step_group(
            StepConfig {
                size: "resnet18",
                model: Model::ResNet18 { d: 128 },
                n: 8,
                loss: LossKind::SimClr,
            },
            &[Impl::TCH_CPU_F32, Impl::EAGER_CPU_F32],
            45.0,
            5,
            21,
        ));
        // large (Plain, SimCLR), ResNet-18, then small and medium.
        steps.rotate_left(2);
        let mut groups = vec![gemm];
        groups.extend(steps);
        let loss_imps = [Impl::REF_F32, Impl::REF_F64, Impl::TCH_CPU_F32];
        for (n, budget) in [(1024, 25.0), (256, 10.0), (64, 6.0)] {
            groups.push(loss_group(n, 128, &loss_imps, budget));
        }
        let memory = crate::overhead::memory::probes_of(&groups);
        // Scaling: the medium MLP (784-1024x2-128) at N 64..1024, and its
        // hidden width 256..2048 at N 256; about two minutes of budget
        // (a round's time grows about linearly with N and with the
        // parameters, so the budgets do too).
        let (_, medium, _) = mlp_sizes()[1];
        groups.extend(scaling_groups(
            medium,
            &[64, 128, 256, 512, 1024],
            &[256, 512, 1024, 2048],
            256,
            &[Impl::TCH_CPU_F32, Impl::REF_F32],
            |n, h| match (n, h) {
                (_, 2048) => 16.0,
                (1024, _) => 18.0,
                (512, _) => 12.0,
                (256, 1024) => 8.0,
                (128, _) | (_, 512) => 5.0,
                _ => 4.0,
            },
        ));
        Plan {
            name: "cpu".into(),
            groups,
            profile: Some(ProfilePlan {
                config: cfg,
                n,
                reps: 7,
            }),
            memory,
        }
    }

    /// [`Plan::cpu`] plus CUDA: the CUDA GEMM peak, the losses on CUDA, the
    /// large MLP on CUDA (in its CPU groups, and alone at `N` 1024), and
    /// ResNet-18 on CUDA at `N` 256 and 512. CUDA members are skipped with a
    /// printed notice when no CUDA device is present.
    pub fn full() -> Self {
        let mut plan = Plan::cpu();
        plan.name = "full".into();
        for g in &mut plan.groups {
            let extra: Vec<Member> = match g.kind {
                GroupKind::Gemm { size } => vec![Member {
                    imp: Impl::TCH_CUDA_F32,
                    task: Task::Gemm { size },
                }],
                GroupKind::Loss { n, d } => LossKind::ALL
                    .iter()
                    .map(|&kind| Member {
                        imp: Impl::TCH_CUDA_F32,
                        task: Task::Loss { kind, n, d },
                    })
                    .collect(),
                GroupKind::Step(config) if config.size == "large" => {
                    [Impl::TCH_CUDA_F32, Impl::EAGER_CUDA_F32]
                        .into_iter()
                        .flat_map(|imp| {
                            StepKind::ALL.map(|kind| Member {
                                imp,
                                task: Task::Step { config, kind },
                            })
                        })
                        .collect()
                }
                GroupKind::Step(_) | GroupKind::Scaling { .. } => vec![],
            };
            g.members.extend(extra);
        }
        plan.groups
            .push(gemm_group(8192, &[Impl::TCH_CUDA_F32], 10.0));
        let (size, cfg, _) = mlp_sizes()[2];
        plan.groups.push(step_group(
            StepConfig {
                size,
                model: Model::Mlp(cfg),
                n: 1024,
                loss: LossKind::Plain,
            },
            &[Impl::TCH_CUDA_F32, Impl::EAGER_CUDA_F32],
            15.0,
            5,
            41,
        ));
        for n in [256, 512] {
            plan.groups.push(step_group(
                StepConfig {
                    size: "resnet18",
                    model: Model::ResNet18 { d: 128 },
                    n,
                    loss: LossKind::SimClr,
                },
                &[Impl::TCH_CUDA_F32, Impl::EAGER_CUDA_F32],
                30.0,
                5,
                41,
            ));
        }
        plan
    }

    /// A seconds-long smoke selection for trying the pipeline: tiny sizes,
    /// every kind of group, few rounds. Its numbers mean nothing.
    pub fn quick() -> Self {
        let cfg = MlpConfig::new(64, 128, 2, 32);
        let config = StepConfig {
            size: "tiny",
            model: Model::Mlp(cfg),
            n: 32,
            loss: LossKind::Plain,
        };
        let mut groups = vec![
            gemm_group(256, &[Impl::REF_F32, Impl::TCH_CPU_F32], 0.5),
            loss_group(64, 32, &[Impl::REF_F32, Impl::TCH_CPU_F32], 0.5),
            step_group(
                config,
                &[Impl::REF_F32, Impl::TCH_CPU_F32, Impl::EAGER_CPU_F32],
                1.0,
                3,
                9,
            ),
        ];
        // Memory: plain and lean of every implementation (one process each).
        let memory = crate::overhead::memory::probes_of(&groups)
            .into_iter()
            .filter(|p| {
                matches!(p.member.task, Task::Step { kind, .. } if matches!(kind, StepKind::Plain | StepKind::Lean))
            })
            .collect();
        groups.extend(scaling_groups(
            cfg,
            &[16, 32],
            &[64, 128],
            32,
            &[Impl::TCH_CPU_F32],
            |_, _| 0.3,
        ));
        for g in &mut groups[3..] {
            (g.min_rounds, g.max_rounds) = (3, 5);
        }
        Plan {
            name: "quick".into(),
            groups,
            profile: Some(ProfilePlan {
                config: cfg,
                n: 32,
                reps: 3,
            }),
            memory,
        }
    }

    /// Keeps only the groups whose id contains one of `patterns` (all when empty).
    ///
    /// Memory probes are kept when their step group's id matches, or when a
    /// pattern is part of `memory` (`--only memory` keeps them all).
    pub fn retain_groups(&mut self, patterns: &[String]) {
        if !patterns.is_empty() {
            self.groups
                .retain(|g| patterns.iter().any(|p| g.id.contains(p.as_str())));
            self.memory.retain(|m| {
                patterns
                    .iter()
                    .any(|p| m.group_id.contains(p.as_str()) || "memory".contains(p.as_str()))
            });
        }
    }

    /// Multiplies every group's time budget by `scale`.
    pub fn scale_budgets(&mut self, scale: f64) {
        for g in &mut self.groups {
            g.budget_s *= scale;
        }
    }

    /// Whether any member runs on CUDA.
    pub fn uses_cuda(&self) -> bool {
        self.groups
            .iter()
            .flat_map(|g| &g.members)
            .any(|m| matches!(m.imp.backend, Backend::TchCuda | Backend::EagerCuda))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_plan_has_the_issue_selection() {
        let plan = Plan::cpu();
        assert!(!plan.uses_cuda());
        let ids: Vec<&str> = plan.groups.iter().map(|g| g.id.as_str()).collect();
        for id in [
            "gemm-2048",
            "loss-n64",
            "loss-n256",
            "loss-n1024",
            "large-plain-n256",
        ] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        let large = plan
            .groups
            .iter()
            .find(|g| g.id == "large-plain-n256")
            .unwrap();
        // plain, lean, authors', ACL, RoCL for the reference, libtorch and PyTorch eager
        assert_eq!(large.members.len(), 15);
        assert!(large.members.iter().any(|m| m.imp == Impl::EAGER_CPU_F32));
        assert!(Plan::full().uses_cuda());
    }

    #[test]
    fn retain_filters_by_substring() {
        let mut plan = Plan::cpu();
        plan.retain_groups(&["loss".to_string()]);
        assert_eq!(plan.groups.len(), 3);
        assert!(plan.memory.is_empty());
        let mut plan = Plan::cpu();
        plan.retain_groups(&["memory".to_string()]);
        assert!(plan.groups.is_empty());
        assert_eq!(plan.memory.len(), Plan::cpu().memory.len());
    }

    #[test]
    fn memory_probes_cover_every_cpu_step_member() {
        let plan = Plan::cpu();
        let steps: usize = plan
            .groups
            .iter()
            .filter(|g| matches!(g.kind, GroupKind::Step(_)))
            .map(|g| g.members.len())
            .sum();
        assert_eq!(plan.memory.len(), steps);
        // 3 implementations x 5 kinds x 4 MLP configurations + 2 x 5 ResNet
        assert_eq!(steps, 70);
    }

    #[test]
    fn scaling_series_share_their_common_point() {
        let plan = Plan::cpu();
        let pts: Vec<(usize, usize, bool, bool)> = plan
            .groups
            .iter()
            .filter_map(|g| match g.kind {
                GroupKind::Scaling {
                    config:
                        StepConfig {
                            model: Model::Mlp(c),
                            n,
                            ..
                        },
                    on_n,
                    on_width,
                } => Some((n, c.hidden, on_n, on_width)),
                _ => None,
            })
            .collect();
        assert_eq!(pts.iter().filter(|p| p.2).count(), 5);
        assert_eq!(pts.iter().filter(|p| p.3).count(), 4);
        assert_eq!(pts.len(), 8);
        assert!(pts.contains(&(256, 1024, true, true)));
        let budget: f64 = plan
            .groups
            .iter()
            .filter(|g| matches!(g.kind, GroupKind::Scaling { .. }))
            .map(|g| g.budget_s)
            .sum();
        assert!(budget <= 150.0, "scaling budget {budget} s");
    }
}
