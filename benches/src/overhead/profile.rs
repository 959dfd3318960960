//! Where a reference step's time goes.
//!
//! The step's public pieces are timed one by one, in interleaved rounds (the
//! same calls `plain_step` makes): the parameter check, a forward pass, the
//! loss, a backward pass into the parameters, the gradient accumulation and
//! the optimizer update — and, inside the passes, the matrix products alone
//! (made with the same shapes, operand layouts and `Real::matmul` calls as the
//! reference's `linear_forward` / `linear_backward`). A pass minus its
//! products is its elementwise work and bookkeeping (BatchNorm, ReLU, bias,
//! normalisation, copies). The same products are also timed in libtorch,
//! which shows how much of a gap to libtorch is GEMM speed and how much is
//! everything else.
//!
//! For the losses, the reference's loss-and-gradient time is set against its
//! matrix products alone (the similarity matrix and the gradient product):
//! the rest is the `O(N²)` scalar loop over the logits.

use crate::flops::{gemm, loss_flops, EncoderFlops, LayerKind};
use crate::overhead::measure::median;
use crate::overhead::plan::ProfilePlan;
use crate::overhead::workloads::{embeddings, views};
use crate::overhead::{BenchError, Result};
use clae_reference::encoder::{Branch, Mlp, MlpGrads, Mode};
use clae_reference::loss::{loss_forward_backward, LossKind};
use clae_reference::optim::{Optimizer, OptimizerConfig};
use clae_reference::real::Real;
use clae_reference::step::plain_step;
use ndarray::Array2;
use std::hint::black_box;
use std::time::Instant;

/// One timed piece of a reference step.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// What it is.
    pub name: String,
    /// How many times a plain step runs it.
    pub per_plain_step: f64,
    /// Median seconds per call.
    pub seconds: f64,
    /// FLOPs per call under [`crate::flops`]'s convention (0 when not arithmetic).
    pub flops: u64,
}

/// The loss profile of one loss kind and `N`.
#[derive(Debug, Clone, PartialEq)]
pub struct LossPiece {
    /// Which loss.
    pub kind: LossKind,
    /// Batch size.
    pub n: usize,
    /// Embedding dimension.
    pub d: usize,
    /// Median seconds of the reference's loss and gradients (f32).
    pub total_s: f64,
    /// Median seconds of its matrix products alone.
    pub gemm_s: f64,
    /// FLOPs of those products.
    pub gemm_flops: u64,
    /// FLOPs of the whole evaluation.
    pub total_flops: u64,
}

/// Everything [`profile_reference`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The encoder profiled.
    pub model: String,
    /// Batch size.
    pub n: usize,
    /// The pieces of a plain step, in step order.
    pub pieces: Vec<Piece>,
    /// Median seconds of a whole `plain_step`, timed in the same rounds.
    pub plain_step_s: f64,
    /// Median seconds of the reference's products of one forward pass.
    pub ref_gemm_forward_s: f64,
    /// Median seconds of the reference's products of one `B_w` backward pass.
    pub ref_gemm_backward_s: f64,
    /// Median seconds of libtorch's products of one forward pass (same shapes), if measured.
    pub tch_gemm_forward_s: Option<f64>,
    /// Median seconds of libtorch's products of one `B_w` backward pass, if measured.
    pub tch_gemm_backward_s: Option<f64>,
    /// Median seconds of the lean recipe's input-only backward (`B_x`).
    pub backward_input_s: f64,
    /// Median seconds of its products alone.
    pub ref_gemm_backward_input_s: f64,
    /// Loss profiles.
    pub losses: Vec<LossPiece>,
}

impl Profile {
    /// Seconds per plain step of the pieces that are not matrix products
    /// (all pieces minus the products).
    pub fn non_gemm_per_step(&self) -> f64 {
        let total: f64 = self
            .pieces
            .iter()
            .map(|p| p.seconds * p.per_plain_step)
            .sum();
        total - 2.0 * (self.ref_gemm_forward_s + self.ref_gemm_backward_s)
    }

    /// Seconds per plain step of the matrix products.
    pub fn gemm_per_step(&self) -> f64 {
        2.0 * (self.ref_gemm_forward_s + self.ref_gemm_backward_s)
    }

    /// The same for libtorch's products, if measured.
    pub fn tch_gemm_per_step(&self) -> Option<f64> {
        Some(2.0 * (self.tch_gemm_forward_s? + self.tch_gemm_backward_s?))
    }

    /// A piece by name prefix.
    pub fn piece(&self, prefix: &str) -> Option<&Piece> {
        self.pieces.iter().find(|p| p.name.starts_with(prefix))
    }
}

fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed().as_secs_f64(), out)
}

/// A product as the reference computes it, by operand shapes.
#[derive(Debug, Clone, Copy)]
enum Product {
    /// `x · Wᵀ`: `x: m x k`, `W: n x k` (forward).
    XWt { m: usize, k: usize, n: usize },
    /// `dy · W`: `dy: m x n`, `W: n x k` (input gradient).
    DyW { m: usize, n: usize, k: usize },
    /// `dyᵀ · x`: `dy: m x n`, `x: m x k` (weight gradient).
    DytX { m: usize, n: usize, k: usize },
}

/// Operands of a product, allocated once.
struct Operands {
    product: Product,
    a: Array2<f32>,
    b: Array2<f32>,
    ta: Option<tch::Tensor>,
    tb: Option<tch::Tensor>,
}

impl Operands {
    fn new(product: Product, with_tch: bool) -> Result<Self> {
        let mut rng = clae_reference::rng::Rng::new(5);
        let (sa, sb) = match product {
            Product::XWt { m, k, n } => ((m, k), (n, k)),
            Product::DyW { m, n, k } => ((m, n), (n, k)),
            Product::DytX { m, n, k } => ((m, n), (m, k)),
        };
        let a = crate::overhead::workloads::normal_matrix::<f32>(sa.0, sa.1, &mut rng);
        let b = crate::overhead::workloads::normal_matrix::<f32>(sb.0, sb.1, &mut rng);
        let (ta, tb) = if with_tch {
            let t = |x: &Array2<f32>| -> Result<tch::Tensor> {
                let flat: Vec<f32> = x.iter().copied().collect();
                Ok(tch::Tensor::f_from_slice(&flat)?
                    .f_reshape([x.nrows() as i64, x.ncols() as i64])?)
            };
            (Some(t(&a)?), Some(t(&b)?))
        } else {
            (None, None)
        };
        Ok(Operands {
            product,
            a,
            b,
            ta,
            tb,
        })
    }

    fn run_reference(&self) {
        let c = match self.product {
            Product::XWt { .. } => f32::matmul(self.a.view(), self.b.t()),
            Product::DyW { .. } => f32::matmul(self.a.view(), self.b.view()),
            Product::DytX { .. } => f32::matmul(self.a.t(), self.b.view()),
        };
        black_box(c);
    }

    fn run_tch(&self) -> Result<()> {
        let (Some(a), Some(b)) = (&self.ta, &self.tb) else {
            return Ok(());
        };
        let _guard = tch::no_grad_guard();
        let c = match self.product {
            Product::XWt { .. } => a.f_matmul(&b.tr())?,
            Product::DyW { .. } => a.f_matmul(b)?,
            Product::DytX { .. } => a.tr().f_matmul(b)?,
        };
        let _ = black_box(c);
        Ok(())
    }
}

/// The products of one forward pass and of each backward kind, by layer.
fn products(
    mlp_cfg: &clae_reference::encoder::MlpConfig,
    n: usize,
) -> (Vec<Product>, Vec<Product>, Vec<Product>) {
    let enc = EncoderFlops::mlp(mlp_cfg, n);
    let mut dims = Vec::new();
    let mut fan_in = mlp_cfg.d_in;
    for _ in 0..mlp_cfg.depth {
        dims.push((fan_in, mlp_cfg.hidden));
        fan_in = mlp_cfg.hidden;
    }
    dims.push((fan_in, mlp_cfg.hidden));
    dims.push((mlp_cfg.hidden, mlp_cfg.d));
    debug_assert_eq!(
        dims.len(),
        enc.layers
            .iter()
            .filter(|l| l.kind == LayerKind::Linear)
            .count()
    );
    let forward = dims
        .iter()
        .map(|&(k, out)| Product::XWt { m: n, k, n: out })
        .collect();
    let mut backward_w = Vec::new();
    let mut backward_x = Vec::new();
    for (i, &(k, out)) in dims.iter().enumerate() {
        backward_w.push(Product::DytX { m: n, n: out, k });
        let dx = Product::DyW { m: n, n: out, k };
        if i > 0 {
            backward_w.push(dx);
        }
        backward_x.push(dx);
    }
    (forward, backward_w, backward_x)
}

fn time_products(ops: &[Operands], tch: bool) -> Result<f64> {
    let start = Instant::now();
    for o in ops {
        if tch {
            o.run_tch()?;
        } else {
            o.run_reference();
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Profiles a reference `f32` plain step of `plan.config` at `plan.n`, and
/// the three losses at `N` in `loss_ns` (`d = 128`). `with_tch` also times
/// libtorch on the same products. `progress` receives a line per stage.
pub fn profile_reference(
    plan: &ProfilePlan,
    loss_ns: &[usize],
    with_tch: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<Profile> {
    let cfg = plan.config;
    let n = plan.n;
    let reps = plan.reps.max(1);
    let enc = EncoderFlops::mlp(&cfg, n);
    let mut mlp = Mlp::<f32>::new(cfg, 0)?;
    let mut step_mlp = mlp.clone();
    let mut opt = Optimizer::new(OptimizerConfig::authors_sgd(), &mlp)?;
    let mut step_opt = opt.clone();
    let (p, q) = views::<f32>(n, cfg.d_in, 1);
    let (fwd_prods, bw_prods, bx_prods) = products(&cfg, n);
    let mk = |ps: &[Product]| -> Result<Vec<Operands>> {
        ps.iter().map(|&p| Operands::new(p, with_tch)).collect()
    };
    let (fwd_ops, bw_ops, bx_ops) = (mk(&fwd_prods)?, mk(&bw_prods)?, mk(&bx_prods)?);
    progress("profiling a reference plain step");

    let names = [
        "parameter check (Mlp::validate)",
        "forward pass (without the check)",
        "loss + gradients",
        "backward pass into the parameters (B_w)",
        "gradient accumulation (MlpGrads::accumulate, 2 passes)",
        "optimizer update (incl. gradient finiteness check)",
        "running-statistics update",
    ];
    let mut t: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let (mut t_step, mut t_gf, mut t_gb, mut t_gx, mut t_bx) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut t_tf, mut t_tb) = (vec![], vec![]);
    for r in 0..=reps {
        let (validate, v) = time(|| mlp.validate());
        v?;
        let (fwd_total, fwd) = time(|| mlp.forward(p.view(), Mode::Train(Branch::Clean)));
        let fwd_p = fwd?;
        let fwd_q = mlp.forward(q.view(), Mode::Train(Branch::Clean))?;
        let (loss_t, out) =
            time(|| loss_forward_backward(LossKind::Plain, fwd_p.z.view(), fwd_q.z.view(), 0.1));
        let out = out?;
        let (bw_t, b1) = time(|| mlp.backward(&fwd_p, out.grad_z_p.view()));
        let b1 = b1?;
        let b2 = mlp.backward(&fwd_q, out.grad_z_q.view())?;
        let (bx_t, bx) = time(|| mlp.backward_input(&fwd_p, out.grad_z_p.view()));
        black_box(bx?);
        let (acc_t, grads) = time(|| -> Result<MlpGrads<f32>> {
            let mut g = MlpGrads::none(&mlp);
            g.accumulate(&b1)?;
            g.accumulate(&b2)?;
            Ok(g)
        });
        let grads = grads?;
        let (opt_t, o) = time(|| opt.step(&mut mlp, &grads));
        o?;
        let (run_t, u) = time(|| -> Result<()> {
            mlp.update_running_stats(&fwd_p)?;
            mlp.update_running_stats(&fwd_q)?;
            Ok(())
        });
        u?;
        let gf = time_products(&fwd_ops, false)?;
        let gb = time_products(&bw_ops, false)?;
        let gx = time_products(&bx_ops, false)?;
        let (tf, tb) = if with_tch {
            (
                Some(time_products(&fwd_ops, true)?),
                Some(time_products(&bw_ops, true)?),
            )
        } else {
            (None, None)
        };
        let (step_t, s) = time(|| {
            plain_step(
                &mut step_mlp,
                &mut step_opt,
                p.view(),
                q.view(),
                LossKind::Plain,
                0.1,
            )
        });
        s?;
        if r == 0 {
            continue; // warm-up round
        }
        for (v, x) in t.iter_mut().zip([
            validate,
            fwd_total - validate,
            loss_t,
            bw_t,
            acc_t,
            opt_t,
            run_t,
        ]) {
            v.push(x);
        }
        t_step.push(step_t);
        t_gf.push(gf);
        t_gb.push(gb);
        t_gx.push(gx);
        t_bx.push(bx_t);
        if let (Some(a), Some(b)) = (tf, tb) {
            t_tf.push(a);
            t_tb.push(b);
        }
        progress(&format!("profile round {r}/{reps}"));
    }
    let enc_fwd = enc.forward();
    let enc_bw = enc.backward(crate::flops::BackwardKind::Weights);
    let loss_f = loss_flops(LossKind::Plain, n, cfg.d);
    let flops = [0, enc_fwd, loss_f, enc_bw, 0, 6 * enc.parameters, 0];
    let per_step = [1.0, 2.0, 1.0, 2.0, 1.0, 1.0, 1.0];
    let pieces = names
        .iter()
        .zip(&t)
        .zip(flops.iter().zip(per_step))
        .map(|((name, ts), (&flops, per))| Piece {
            name: name.to_string(),
            per_plain_step: per,
            seconds: median(ts),
            flops,
        })
        .collect();
    let opt_med = |v: &Vec<f64>| (!v.is_empty()).then(|| median(v));
    let losses = profile_losses(loss_ns, 128, reps, progress)?;
    Ok(Profile {
        model: enc.name,
        n,
        pieces,
        plain_step_s: median(&t_step),
        ref_gemm_forward_s: median(&t_gf),
        ref_gemm_backward_s: median(&t_gb),
        tch_gemm_forward_s: opt_med(&t_tf),
        tch_gemm_backward_s: opt_med(&t_tb),
        backward_input_s: median(&t_bx),
        ref_gemm_backward_input_s: median(&t_gx),
        losses,
    })
}

/// Reference loss time against its matrix products alone (f32).
fn profile_losses(
    ns: &[usize],
    d: usize,
    reps: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<LossPiece>> {
    let mut out = Vec::new();
    for &n in ns {
        progress(&format!("profiling the reference losses at N {n}"));
        for kind in LossKind::ALL {
            let (z_p, z_q) = embeddings::<f32>(n, d, 2);
            // The products the reference computes: Plain S = Z_P Z_Qᵀ (N x N) and
            // two N x N by N x d gradient products; SimCLR/UEL the 2N x 2N
            // similarity of the stacked rows and one 2N x 2N by 2N x d product.
            let (rows, grad_products) = match kind {
                LossKind::Plain => (n, 2),
                LossKind::SimClr | LossKind::Uel => (2 * n, 1),
            };
            let mut rng = clae_reference::rng::Rng::new(9);
            let x = crate::overhead::workloads::normal_matrix::<f32>(rows, d, &mut rng);
            let g = crate::overhead::workloads::normal_matrix::<f32>(rows, rows, &mut rng);
            let gemm_flops = gemm(rows, d, rows) + grad_products as u64 * gemm(rows, rows, d);
            let tau = kind.default_tau();
            let (mut tt, mut tg) = (Vec::new(), Vec::new());
            for r in 0..=reps {
                let (a, o) = time(|| loss_forward_backward(kind, z_p.view(), z_q.view(), tau));
                black_box(o.map_err(BenchError::from)?);
                let (b, _) = time(|| {
                    black_box(f32::matmul(x.view(), x.t()));
                    for _ in 0..grad_products {
                        black_box(f32::matmul(g.view(), x.view()));
                    }
                });
                if r > 0 {
                    tt.push(a);
                    tg.push(b);
                }
            }
            out.push(LossPiece {
                kind,
                n,
                d,
                total_s: median(&tt),
                gemm_s: median(&tg),
                gemm_flops,
                total_flops: loss_flops(kind, n, d),
            });
        }
    }
    Ok(out)
}
