//! `cargo bench --bench step`: a plain step, a CLAE step with the lean
//! recipe and one with the authors' recipe, for the dual-BN MLP at three
//! sizes (small; medium; large = D_in 3072, h 2048, L 2, d 128, N 256) on the
//! reference f32 and libtorch CPU f32, and for the dual-BN ResNet-18 on
//! libtorch (CPU at N 8; CUDA at N 256 and 512 when a device is present,
//! skipped with a printed notice otherwise). Throughput is in FLOP/s of the
//! exact model of `clae_benches::flops`.
//!
//! For ratios measured side by side (interleaved rounds, medians) run the
//! overhead report instead: `scripts/report.sh`.

use clae_benches::flops::StepKind;
use clae_benches::overhead::plan::{mlp_sizes, Member, Model, StepConfig, Task};
use clae_benches::overhead::workloads::{build, Built};
use clae_benches::overhead::Impl;
use clae_reference::loss::LossKind;
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use std::time::Duration;

fn bench_config(c: &mut Criterion, config: StepConfig, imps: &[Impl]) {
    let mut group = c.benchmark_group(format!("step/{}-n{}", config.size, config.n));
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(5));
    for &imp in imps {
        for kind in StepKind::ALL {
            let member = Member {
                imp,
                task: Task::Step { config, kind },
            };
            let mut w = match build(&member).expect("benchmark set-up failed") {
                Built::Ready(w) => w,
                Built::Skipped(why) => {
                    println!("notice: {} ({config}) skipped: {why}", member.label());
                    continue;
                }
            };
            group.throughput(Throughput::Elements(member.task.flops()));
            group.bench_function(BenchmarkId::new(imp.to_string(), kind), |b| {
                b.iter(|| w.run().expect("step failed"))
            });
        }
    }
    group.finish();
}

fn steps(c: &mut Criterion) {
    for (size, cfg, n) in mlp_sizes() {
        let config = StepConfig {
            size,
            model: Model::Mlp(cfg),
            n,
            loss: LossKind::Plain,
        };
        bench_config(c, config, &[Impl::REF_F32, Impl::TCH_CPU_F32]);
    }
    let resnet = |n| StepConfig {
        size: "resnet18",
        model: Model::ResNet18 { d: 128 },
        n,
        loss: LossKind::SimClr,
    };
    bench_config(c, resnet(8), &[Impl::TCH_CPU_F32]);
    for n in [256, 512] {
        bench_config(c, resnet(n), &[Impl::TCH_CUDA_F32]);
    }
}

criterion_group!(benches, steps);
criterion_main!(benches);
