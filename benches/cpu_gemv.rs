//! Decoding's matrix-vector products on the CPU (`foundation::cpu_gemv`) against libtorch's, on
//! Gemma-2B's shapes, one row of activations: weights in bf16, f16, f32 and int8 (a scale per
//! row). Throughput is the weight bytes read, so criterion reports the bandwidth each reaches;
//! decoding one token reads every weight once, so this is what bounds tokens per second.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use foundation::cpu_gemv::{self, Isa};
use tch::{Device, Kind, Tensor};

/// `(name, out features, in features)`: Gemma-2B's MLP projections and attention's query.
const SHAPES: [(&str, i64, i64); 3] = [
    ("gate_up_16384x2048", 16384, 2048),
    ("down_2048x16384", 2048, 16384),
    ("q_2048x2048", 2048, 2048),
];

fn dense(c: &mut Criterion) {
    let _guard = tch::no_grad_guard();
    let mut group = c.benchmark_group("cpu_gemv_dense");
    for (name, n, k) in SHAPES {
        for kind in [Kind::BFloat16, Kind::Half, Kind::Float] {
            let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu)).to_kind(kind);
            let x = Tensor::randn([1, k], (Kind::Float, Device::Cpu)).to_kind(kind);
            group.throughput(Throughput::Bytes(
                (n * k) as u64 * w.kind().elt_size_in_bytes() as u64,
            ));
            let id = |engine: &str| BenchmarkId::new(format!("{name}_{kind:?}"), engine);
            group.bench_function(id("libtorch"), |b| b.iter(|| x.linear::<&Tensor>(&w, None)));
            for level in Isa::ALL.into_iter().filter(|l| *l <= cpu_gemv::isa()) {
                if level == Isa::Avx512Vnni {
                    continue; // the same dense kernel as AVX-512
                }
                group.bench_function(id(&format!("ours_{level:?}")), |b| {
                    b.iter(|| cpu_gemv::dense_with(&x, &w, level).expect("one row"))
                });
            }
        }
    }
    group.finish();
}

fn int8(c: &mut Criterion) {
    let _guard = tch::no_grad_guard();
    let mut group = c.benchmark_group("cpu_gemv_int8");
    for (name, n, k) in SHAPES {
        let q = Tensor::randint_low(-127, 128, [n, k], (Kind::Int8, Device::Cpu));
        let scales = (Tensor::rand([n], (Kind::Float, Device::Cpu)) * 0.01).to_kind(Kind::BFloat16);
        let x = Tensor::randn([1, k], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        group.throughput(Throughput::Bytes((n * k) as u64));
        group.bench_function(BenchmarkId::new(name, "libtorch_int8pack_mm"), |b| {
            b.iter(|| x.internal_weight_int8pack_mm(&q, &scales))
        });
        for level in Isa::ALL.into_iter().filter(|l| *l <= cpu_gemv::isa()) {
            if level == Isa::Avx512 {
                continue; // the same int8 kernel as AVX2
            }
            group.bench_function(BenchmarkId::new(name, format!("ours_{level:?}")), |b| {
                b.iter(|| cpu_gemv::int8_with(&x, &q, &scales, level).expect("one row"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, dense, int8);
criterion_main!(benches);
