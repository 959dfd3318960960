//! `cargo bench --bench loss`: each loss's value and gradients w.r.t. both
//! embedding sets, for the three losses at N in {64, 256, 1024}, d = 128, on
//! the reference (f32, f64), libtorch CPU f32, and libtorch CUDA f32 when a
//! device is present (skipped with a printed notice otherwise). Throughput is
//! reported in FLOP/s under the counting convention of `clae_benches::flops`.

use clae_benches::overhead::plan::{Member, Task};
use clae_benches::overhead::workloads::{build, Built};
use clae_benches::overhead::Impl;
use clae_reference::loss::LossKind;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn losses(c: &mut Criterion) {
    let imps = [
        Impl::REF_F32,
        Impl::REF_F64,
        Impl::TCH_CPU_F32,
        Impl::TCH_CUDA_F32,
    ];
    for kind in LossKind::ALL {
        let mut group = c.benchmark_group(format!("loss/{kind}"));
        for n in [64, 256, 1024] {
            for imp in imps {
                let member = Member {
                    imp,
                    task: Task::Loss { kind, n, d: 128 },
                };
                let mut w = match build(&member).expect("benchmark set-up failed") {
                    Built::Ready(w) => w,
                    Built::Skipped(why) => {
                        println!("notice: {} N {n} skipped: {why}", member.label());
                        continue;
                    }
                };
                group.throughput(Throughput::Elements(member.task.flops()));
                group.bench_function(BenchmarkId::new(imp.to_string(), n), |b| {
                    b.iter(|| w.run().expect("loss evaluation failed"))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, losses);
criterion_main!(benches);
