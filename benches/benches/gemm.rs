//! `cargo bench --bench gemm`: the matmul peak the report divides by — one
//! 2048x2048 by 2048x2048 product on the reference's own GEMM path
//! (`ndarray::dot`, matrixmultiply with threading; f32 and f64) and on
//! libtorch (CPU f32 and f64; CUDA f32 when a device is present, skipped with
//! a printed notice otherwise). Throughput is in FLOP/s (`2n³` per product).

use clae_benches::overhead::plan::{Member, Task};
use clae_benches::overhead::workloads::{build, Built};
use clae_benches::overhead::Impl;
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use std::time::Duration;

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(5));
    let size = 2048;
    for imp in [
        Impl::REF_F32,
        Impl::REF_F64,
        Impl::TCH_CPU_F32,
        Impl::TCH_CPU_F64,
        Impl::TCH_CUDA_F32,
    ] {
        let member = Member {
            imp,
            task: Task::Gemm { size },
        };
        let mut w = match build(&member).expect("benchmark set-up failed") {
            Built::Ready(w) => w,
            Built::Skipped(why) => {
                println!("notice: {} skipped: {why}", member.label());
                continue;
            }
        };
        group.throughput(Throughput::Elements(member.task.flops()));
        group.bench_function(BenchmarkId::new(imp.to_string(), size), |b| {
            b.iter(|| w.run().expect("product failed"))
        });
    }
    group.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
