//! Criterion benches of every workload at tiny and at real widths, on the CPU backend with
//! random weights.
//!
//! `cargo bench -p diffusers-bench` measures both scales (the real widths take minutes: the
//! FLUX.1 blocks are ~300 GFLOP each); `cargo bench -p diffusers-bench -- tiny` only the tiny
//! ones. In criterion's `--test` mode (`cargo test --benches`, CI's smoke run) each tiny bench
//! runs once and the real widths are skipped.
#![allow(missing_docs)]

use std::time::Duration;

use burn::tensor::DType;
use criterion::{Criterion, criterion_group, criterion_main};
use diffusers_bench::{Scale, Source, WORKLOADS, prepare};
use diffusers_core::backend::Cpu;

fn components(c: &mut Criterion) {
    // criterion runs each bench once when cargo does not pass `--bench` (`cargo test`) or
    // when asked with `--test`.
    let args: Vec<String> = std::env::args().collect();
    let test_mode = args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench");
    let device = Default::default();
    for (scale, label) in [(Scale::Tiny, "tiny"), (Scale::Real, "real")] {
        if test_mode && scale == Scale::Real {
            continue;
        }
        let mut group = c.benchmark_group(label);
        if scale == Scale::Real {
            group
                .sample_size(10)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(10));
        } else {
            group
                .sample_size(20)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(2));
        }
        for name in WORKLOADS {
            // The tiny pipeline has one size: it is the committed fixture.
            if *name == "tiny_pipeline" && scale == Scale::Real {
                continue;
            }
            let mut w = match prepare::<Cpu>(name, &Source::Random(scale), DType::F32, &device) {
                Ok(w) => w,
                Err(e) => panic!("preparing {label}/{name}: {e:#}"),
            };
            group.bench_function(*name, |b| {
                b.iter(|| {
                    if let Err(e) = w.run() {
                        panic!("{label}/{name}: {e:#}");
                    }
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, components);
criterion_main!(benches);
