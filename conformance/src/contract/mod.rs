//! The API contract suite (docs/SPEC.md §7.1): hostile input through the
//! public API of both crates, and for every call
//!
//! * a typed error or an all-finite result (outputs, parameters, running
//!   statistics, optimizer state) — never a panic, never an untyped error;
//! * after an error, the encoder, its running statistics and the optimizer
//!   bit-identical to before, and a normal batch then trains;
//! * the reference and libtorch in the same precision agree: both succeed,
//!   or both fail with the same [`ErrorKind`](clae_reference::error::ErrorKind) (an `Overflow` on one side
//!   against success on the other is allowed, and counted: where an overflow
//!   starts depends on rounding — docs/SPEC.md §7.1).
//!
//! [`calls`] generates the hostile input: scalars from `1e-320` to
//! `f64::MAX`, NaN and infinities, zero, negative, tiny and huge
//! hyper-parameters (`tau`, `eps`, `alpha`, `eta`, pixel ranges, `lr`,
//! momentum, Adam's betas and `eps`, weight decay, BatchNorm constants, the
//! ACL-/RoCL-style attacks' `eps`, `eta`, `k`, pixel range and RoCL weight),
//! batches of `N = 0, 1, 2, …` rows with magnitudes up to `1e300` and a NaN
//! or infinity anywhere, misshapen views, encoders with a corrupted
//! parameter or buffer, and encoder sizes near `usize::MAX`. [`run`]
//! executes one call on each implementation and judges it.

mod exec;

pub use exec::{run, Tally};

use clae_reference::adversarial::{AdvConfig, Attack, QStart, Recipe};
use clae_reference::encoder::{Branch, MlpConfig, Mode};
use clae_reference::loss::LossKind;
use clae_reference::optim::OptimizerConfig;
use clae_reference::peers::{AttackBn, PeerConfig, PeerMethod, PeerPgd};
use clae_reference::rng::Rng;
use clae_reference::step::ClaeConfig;
use ndarray::Array2;
use proptest::prelude::*;

/// Values that break naive code: signed zeros, subnormals, the ends of
/// `f32`'s and `f64`'s ranges, NaN and infinities.
pub const EXTREMES: [f64; 24] = [
    0.0,
    -0.0,
    1e-320,
    1e-300,
    1.4e-45,
    1e-40,
    1e-30,
    1e-12,
    0.999_999_999,
    1.0,
    1e10,
    1e19,
    1e30,
    3.0e38,
    1e39,
    1e160,
    1e300,
    f64::MAX,
    -1.0,
    -1e-30,
    -1e30,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
];

/// A hyper-parameter: one time in six an extreme value, otherwise a
/// plausible one, log-uniform in `[lo, hi]` (so that most calls get past
/// validation with one hostile value, and reach the computation).
pub fn scalar(lo: f64, hi: f64) -> BoxedStrategy<f64> {
    prop_oneof![
        5 => (lo.ln()..hi.ln()).prop_map(f64::exp),
        1 => prop::sample::select(EXTREMES.to_vec()),
    ]
    .boxed()
}

/// The rows of a second view: mostly those of the first.
fn rows_like(n: usize) -> BoxedStrategy<usize> {
    prop_oneof![9 => Just(n), 1 => batch_rows()].boxed()
}

/// A batch to materialise: `n x cols` standard normals times `scale`,
/// optionally with one entry replaced by `poison`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batch {
    /// Rows `N`.
    pub n: usize,
    /// Columns.
    pub cols: usize,
    /// Magnitude of the entries.
    pub scale: f64,
    /// Seed of the values.
    pub seed: u64,
    /// `(flat position, value)`: one entry replaced (NaN, an infinity, a huge value).
    pub poison: Option<(usize, f64)>,
}

impl Batch {
    /// The values, in `f64`.
    pub fn array(&self) -> Array2<f64> {
        let mut rng = Rng::new(self.seed);
        let mut a = Array2::from_shape_simple_fn((self.n, self.cols), || rng.normal() * self.scale);
        if let Some((at, v)) = self.poison {
            let len = a.len();
            if len > 0 {
                a.as_slice_mut().expect("standard layout")[at % len] = v;
            }
        }
        a
    }

    /// A well-behaved batch of `n x cols` (what recovery trains on).
    pub fn normal(n: usize, cols: usize, seed: u64) -> Self {
        Batch {
            n,
            cols,
            scale: 1.0,
            seed,
            poison: None,
        }
    }
}

/// `n x cols` batches: mostly `N >= 2` and `scale` near 1, often extreme.
fn batch(n: BoxedStrategy<usize>, cols: usize) -> BoxedStrategy<Batch> {
    let poison = prop_oneof![
        12 => Just(None),
        1 => (any::<usize>(), prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e39, 1e300]))
            .prop_map(Some),
    ];
    (n, prop_oneof![2 => Just(1.0), 1 => scalar(1e-3, 1e3), 1 => prop::sample::select(vec![1e10, 1e19, 1e30, 1e38, 1e160, 1e300])], any::<u64>(), poison)
        .prop_map(move |(n, scale, seed, poison)| Batch {
            n,
            cols,
            scale,
            seed,
            poison,
        })
        .boxed()
}

fn batch_rows() -> BoxedStrategy<usize> {
    prop_oneof![1 => Just(0usize), 1 => Just(1usize), 8 => 2usize..7].boxed()
}

/// An encoder to build (sizes small and valid; BatchNorm constants valid in
/// both precisions) and, optionally, one entry of one of its tensors to
/// overwrite afterwards: `(tensor index in layout order, entry, value)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderSpec {
    /// Shape and BatchNorm constants.
    pub config: MlpConfig,
    /// Initialisation seed.
    pub seed: u64,
    /// A parameter or buffer entry to corrupt.
    pub corrupt: Option<(usize, usize, f64)>,
}

fn encoder() -> BoxedStrategy<EncoderSpec> {
    let bn_eps = prop::sample::select(vec![1e-5, 1e-3, 1e-30, 0.5]);
    let momentum = prop::sample::select(vec![0.0, 0.01, 0.1, 1.0]);
    let corrupt = prop_oneof![
        8 => Just(None),
        1 => (any::<usize>(), any::<usize>(), prop::sample::select(vec![f64::NAN, f64::INFINITY, 1e38, 1e300]))
            .prop_map(Some),
    ];
    (
        prop::sample::select(vec![3usize, 5]),
        prop::sample::select(vec![1usize, 4, 6]),
        0usize..3,
        prop::sample::select(vec![1usize, 2, 3]),
        bn_eps,
        momentum.clone(),
        momentum,
        any::<u64>(),
        corrupt,
    )
        .prop_map(
            |(d_in, hidden, depth, d, bn_eps, m_clean, m_adv, seed, corrupt)| EncoderSpec {
                config: MlpConfig {
                    bn_eps,
                    bn_momentum_clean: m_clean,
                    bn_momentum_adv: m_adv,
                    ..MlpConfig::new(d_in, hidden, depth, d)
                },
                seed,
                corrupt,
            },
        )
        .boxed()
}

/// Columns of an encoder's input: usually `D_in`, sometimes one off.
fn input_cols(d_in: usize) -> BoxedStrategy<usize> {
    prop_oneof![18 => Just(d_in), 1 => Just(d_in + 1), 1 => Just(d_in.saturating_sub(1))].boxed()
}

fn loss_kind() -> BoxedStrategy<LossKind> {
    prop::sample::select(LossKind::ALL.to_vec()).boxed()
}

fn tau() -> BoxedStrategy<f64> {
    scalar(0.01, 2.0)
}

fn adv_config() -> BoxedStrategy<AdvConfig> {
    let attack = prop_oneof![
        3 => Just(Attack::Fgsm),
        1 => (prop::sample::select(vec![0usize, 1, 1, 3, 3, 1 << 40, usize::MAX]), scalar(1e-3, 0.1))
            .prop_map(|(steps, eta)| Attack::Pgd { steps, eta }),
    ];
    let clamp = prop_oneof![
        3 => Just(None),
        1 => (scalar(1e-3, 1.0), scalar(1e-3, 1.0)).prop_map(|(a, b)| Some((-a, b))),
        1 => (scalar(1e-3, 1.0), scalar(1e-3, 1.0)).prop_map(Some),
    ];
    (
        scalar(1e-3, 0.1),
        prop::sample::select(vec![QStart::P, QStart::Q]),
        attack,
        clamp,
    )
        .prop_map(|(eps, start, attack, clamp)| AdvConfig {
            eps,
            start,
            attack,
            clamp,
        })
        .boxed()
}

fn optimizer() -> BoxedStrategy<OptimizerConfig> {
    prop_oneof![
        (scalar(1e-3, 0.1), scalar(0.5, 0.99), scalar(1e-6, 1e-2)).prop_map(
            |(lr, momentum, weight_decay)| {
                OptimizerConfig::Sgd {
                    lr,
                    momentum,
                    weight_decay,
                }
            }
        ),
        (
            scalar(1e-4, 1e-2),
            scalar(0.5, 0.95),
            scalar(0.9, 0.9999),
            scalar(1e-10, 1e-6),
            scalar(1e-8, 1e-3)
        )
            .prop_map(
                |(lr, beta1, beta2, eps, weight_decay)| OptimizerConfig::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                }
            ),
    ]
    .boxed()
}

/// An ACL- or RoCL-style configuration (docs/SPEC.md §6.1) with hostile
/// hyper-parameters: `tau`, the RoCL weight, the attack's `eps`, `eta`, pixel
/// range and `k = 0` (an error). `k` stays small here: `peer_views` and
/// `peer_step` keep only the views, so their memory does not grow with `k`
/// and a huge `k` is a long run, not an error (docs/SPEC.md §7.1); only
/// `peer_attack_trace` gets huge `k` (see [`calls`]).
fn peer_config() -> BoxedStrategy<PeerConfig> {
    let method = prop_oneof![
        1 => Just(PeerMethod::Acl),
        1 => scalar(1e-3, 1.0).prop_map(|weight| PeerMethod::Rocl { weight }),
    ];
    let clamp = prop_oneof![
        2 => Just(Some((0.0, 1.0))),
        2 => Just(None),
        1 => (scalar(1e-3, 1.0), scalar(1e-3, 1.0)).prop_map(|(a, b)| Some((-a, b))),
        1 => (scalar(1e-3, 1.0), scalar(1e-3, 1.0)).prop_map(Some),
    ];
    let pgd = (
        scalar(1e-3, 0.1),
        scalar(1e-3, 0.05),
        prop::sample::select(vec![0usize, 1, 2, 3]),
        prop::option::of(any::<u64>()),
        prop::sample::select(vec![AttackBn::Eval, AttackBn::Train]),
        clamp,
    )
        .prop_map(|(eps, eta, steps, random_start, bn, clamp)| PeerPgd {
            eps,
            eta,
            steps,
            random_start,
            bn,
            clamp,
        });
    (method, loss_kind(), tau(), pgd)
        .prop_map(|(method, loss, tau, pgd)| PeerConfig {
            method,
            loss,
            tau,
            pgd,
        })
        .boxed()
}

/// Which peer function a [`Call::Peer`] calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PeerCall {
    /// `peer_views` (no side effects).
    Views,
    /// `peer_attack_trace` (no side effects).
    Trace,
    /// `Optimizer::new`, then `peer_step`.
    Step(OptimizerConfig),
}

/// Which training step a [`Call::Step`] makes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepSpec {
    /// `plain_step(loss, tau)`.
    Plain(LossKind, f64),
    /// `clae_step(cfg)`.
    Clae(ClaeConfig),
}

/// One public call with hostile arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `Mlp::new` with any sizes and BatchNorm constants.
    NewEncoder(MlpConfig),
    /// `forward` (no side effects) in a mode.
    Forward(EncoderSpec, Batch, Mode),
    /// `forward_train` (updates the running statistics).
    ForwardTrain(EncoderSpec, Batch, Branch),
    /// `embed` (evaluation mode).
    Embed(EncoderSpec, Batch),
    /// `loss_forward_backward` on embedding batches.
    Loss(LossKind, Batch, Batch, f64),
    /// `input_gradient`.
    InputGradient(EncoderSpec, Batch, Batch, LossKind, f64),
    /// `adversarial_view` / `adversarial_view_authors`.
    View(EncoderSpec, Batch, Batch, LossKind, f64, AdvConfig, Recipe),
    /// `Optimizer::new`, then a step.
    Step(EncoderSpec, Batch, Batch, OptimizerConfig, StepSpec),
    /// An ACL- or RoCL-style attack or step (docs/SPEC.md §6.1).
    Peer(EncoderSpec, Batch, Batch, PeerConfig, PeerCall),
    /// The reference's `uniformity(z, t)` and `alignment(z_p, z_q, alpha)`
    /// diagnostics (reference only).
    Diagnostics(Batch, Batch, f64),
    /// `from_state_dict` / `load_state_dict` of an encoder's `f64` state
    /// with one entry changed: `(entry, position, value)` (NaN, a value
    /// beyond `f32`, a negative running variance), or the entry dropped.
    LoadState(EncoderSpec, usize, usize, Option<f64>),
    /// A forward pass, then the reference's `backward`, `backward_input` and
    /// `backward_with_input` with `dz` scaled by the factor (reference only).
    Backward(EncoderSpec, Batch, f64),
}

impl Call {
    /// A short name for the tally.
    pub fn name(&self) -> &'static str {
        match self {
            Call::NewEncoder(_) => "Mlp::new",
            Call::Forward(..) => "forward",
            Call::ForwardTrain(..) => "forward_train",
            Call::Embed(..) => "embed",
            Call::Loss(..) => "loss_forward_backward",
            Call::InputGradient(..) => "input_gradient",
            Call::View(.., Recipe::Lean) => "adversarial_view",
            Call::View(.., Recipe::Authors) => "adversarial_view_authors",
            Call::Step(.., StepSpec::Plain(..)) => "plain_step",
            Call::Step(.., StepSpec::Clae(c)) if c.recipe == Recipe::Lean => "clae_step (lean)",
            Call::Step(..) => "clae_step (authors)",
            Call::Peer(.., PeerCall::Views) => "peer_views",
            Call::Peer(.., PeerCall::Trace) => "peer_attack_trace",
            Call::Peer(_, _, _, c, PeerCall::Step(_)) => match c.method {
                PeerMethod::Acl => "peer_step (ACL)",
                PeerMethod::Rocl { .. } => "peer_step (RoCL)",
            },
            Call::Diagnostics(..) => "uniformity, alignment",
            Call::LoadState(..) => "from_state_dict",
            Call::Backward(..) => "backward (reference)",
        }
    }
}

/// Encoder sizes near `usize::MAX`, zero, and ordinary ones.
fn any_size() -> BoxedStrategy<usize> {
    prop_oneof![
        4 => 1usize..6,
        1 => Just(0usize),
        1 => prop::sample::select(vec![1usize << 40, 1 << 62, usize::MAX / 3, usize::MAX]),
    ]
    .boxed()
}

/// Every kind of [`Call`], each with hostile arguments.
pub fn calls() -> BoxedStrategy<Call> {
    let new_encoder = (
        any_size(),
        any_size(),
        prop_oneof![4 => 0usize..3, 1 => prop::sample::select(vec![1usize << 40, usize::MAX])],
        any_size(),
        scalar(1e-6, 1e-2),
        scalar(1e-3, 0.5),
        scalar(1e-3, 0.5),
    )
        .prop_map(|(d_in, hidden, depth, d, bn_eps, m_clean, m_adv)| {
            Call::NewEncoder(MlpConfig {
                bn_eps,
                bn_momentum_clean: m_clean,
                bn_momentum_adv: m_adv,
                ..MlpConfig::new(d_in, hidden, depth, d)
            })
        });
    let forward = encoder()
        .prop_flat_map(|e| {
            let x = input_cols(e.config.d_in).prop_flat_map(|c| batch(batch_rows(), c));
            let mode = prop::sample::select(vec![
                Mode::Train(Branch::Clean),
                Mode::Train(Branch::Adv),
                Mode::Eval,
            ]);
            (Just(e), x, mode)
        })
        .prop_map(|(e, x, mode)| match mode {
            Mode::Eval => Call::Embed(e, x),
            m => Call::Forward(e, x, m),
        });
    let forward_train = encoder()
        .prop_flat_map(|e| {
            let x = input_cols(e.config.d_in).prop_flat_map(|c| batch(batch_rows(), c));
            (
                Just(e),
                x,
                prop::sample::select(vec![Branch::Clean, Branch::Adv]),
            )
        })
        .prop_map(|(e, x, b)| Call::ForwardTrain(e, x, b));
    let loss = (
        prop::sample::select(vec![1usize, 2, 4]),
        loss_kind(),
        tau(),
        batch_rows(),
    )
        .prop_flat_map(|(d, k, t, n)| {
            let z = prop_oneof![9 => Just(d), 1 => Just(d + 1)]
                .prop_flat_map(move |c| batch(rows_like(n), c));
            (batch(Just(n).boxed(), d), z, Just(k), Just(t))
        })
        .prop_map(|(z_p, z_q, k, t)| Call::Loss(k, z_p, z_q, t));
    let views = (encoder(), batch_rows())
        .prop_flat_map(|(e, n)| {
            let d_in = e.config.d_in;
            let p = batch(Just(n).boxed(), d_in);
            let q = input_cols(d_in).prop_flat_map(move |c| batch(rows_like(n), c));
            (Just(e), p, q, loss_kind(), tau())
        })
        .boxed();
    let input_gradient = views
        .clone()
        .prop_map(|(e, p, q, k, t)| Call::InputGradient(e, p, q, k, t));
    let view = (
        views.clone(),
        adv_config(),
        prop::sample::select(vec![Recipe::Lean, Recipe::Authors]),
    )
        .prop_map(|((e, p, q, k, t), adv, recipe)| Call::View(e, p, q, k, t, adv, recipe));
    let step_spec = prop_oneof![
        1 => (loss_kind(), tau()).prop_map(|(k, t)| StepSpec::Plain(k, t)),
        3 => (loss_kind(), tau(), scalar(0.1, 2.0), adv_config(), prop::sample::select(vec![Recipe::Lean, Recipe::Authors]))
            .prop_map(|(loss, tau, alpha, adv, recipe)| StepSpec::Clae(ClaeConfig { loss, tau, alpha, adv, recipe })),
    ];
    let step = (views.clone(), optimizer(), step_spec)
        .prop_map(|((e, p, q, _, _), opt, spec)| Call::Step(e, p, q, opt, spec));
    let peer_call = prop_oneof![
        1 => Just(PeerCall::Views),
        1 => Just(PeerCall::Trace),
        2 => optimizer().prop_map(PeerCall::Step),
    ];
    // a trace keeps every iterate, so a huge `k` must be `TooLarge` in both
    let huge_k = prop_oneof![
        4 => Just(None),
        1 => prop::sample::select(vec![1usize << 40, usize::MAX / 3, usize::MAX]).prop_map(Some),
    ];
    let peer = (views, peer_config(), peer_call, huge_k).prop_map(
        |((e, p, q, _, _), mut cfg, which, huge_k)| {
            if let (PeerCall::Trace, Some(k)) = (which, huge_k) {
                cfg.pgd.steps = k;
            }
            Call::Peer(e, p, q, cfg, which)
        },
    );
    let diagnostics = (
        prop::sample::select(vec![1usize, 3]),
        scalar(0.5, 4.0),
        batch_rows(),
    )
        .prop_flat_map(|(d, t, n)| (batch(Just(n).boxed(), d), batch(rows_like(n), d), Just(t)))
        .prop_map(|(a, b, t)| Call::Diagnostics(a, b, t));
    let load_state = (encoder(), any::<usize>(), any::<usize>(), prop_oneof![
        1 => Just(None),
        4 => prop::sample::select(vec![f64::NAN, f64::INFINITY, 1e300, -1.0, -1e-30, 0.5]).prop_map(Some),
    ])
        .prop_map(|(e, i, j, v)| Call::LoadState(e, i, j, v));
    let backward = encoder()
        .prop_flat_map(|e| {
            (
                Just(e),
                batch(
                    prop_oneof![1 => Just(1usize), 6 => 2usize..6].boxed(),
                    e.config.d_in,
                ),
                prop::sample::select(vec![1.0, 1e30, 1e300, f64::NAN, 0.0]),
            )
        })
        .prop_map(|(e, x, s)| Call::Backward(e, x, s));
    prop_oneof![
        1 => load_state,
        1 => backward,
        2 => new_encoder,
        2 => forward,
        1 => forward_train,
        2 => loss,
        1 => input_gradient,
        2 => view,
        4 => step,
        2 => peer,
        1 => diagnostics,
    ]
    .boxed()
}
