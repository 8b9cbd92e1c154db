//! Decoding's matrix-vector products on the CPU (`foundation::cpu_gemv`) against libtorch's, on
//! Gemma-2B's shapes, one row of activations: weights in bf16, f16, f32, int8 (a scale per row)
//! and int4 (a scale and minimum per 32 inputs). Throughput is the weight bytes read, so
//! criterion reports the bandwidth each reaches; decoding one token reads every weight once, so
//! this is what bounds tokens per second. `cpu_gemm_prompt` times a 128-row prompt against one
//! MLP matrix in each form (throughput: rows).

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

/// A random int4 weight `[n, k]` in our layout (groups of 32) and in ATen's (its packed codes and
/// `[k / 32, n, 2]` scales and zeros), standing for weights of the same size.
struct Int4Pair {
    codes: Tensor,
    scales: Tensor,
    mins: Tensor,
    aten_packed: Tensor,
    aten_scales_and_zeros: Tensor,
}

impl Int4Pair {
    fn new(n: i64, k: i64) -> Self {
        let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu)) * 0.02;
        let quantized = foundation::quant::QuantizedWeight::quantize(
            &w,
            foundation::quant::Quantization::Int4 { group: 32 },
        )
        .expect("Gemma's shapes quantize");
        let foundation::quant::QuantizedWeight::Int4 {
            codes,
            scales,
            mins,
            ..
        } = quantized
        else {
            unreachable!()
        };
        let q = Tensor::randint_low(0, 16, [n, k], (Kind::Int, Device::Cpu));
        let aten_packed = q.internal_convert_weight_to_int4pack_for_cpu(1);
        let aten_scales_and_zeros = (Tensor::rand([k / 32, n, 2], (Kind::Float, Device::Cpu))
            * 0.01)
            .to_kind(Kind::BFloat16);
        Int4Pair {
            codes,
            scales,
            mins,
            aten_packed,
            aten_scales_and_zeros,
        }
    }

    fn ours(&self) -> cpu_gemv::Int4<'_> {
        cpu_gemv::Int4 {
            codes: &self.codes,
            scales: &self.scales,
            mins: &self.mins,
            group: 32,
        }
    }

    fn aten(&self, x: &Tensor) -> Tensor {
        x.internal_weight_int4pack_mm_for_cpu(&self.aten_packed, 32, &self.aten_scales_and_zeros)
    }
}

fn int4(c: &mut Criterion) {
    let _guard = tch::no_grad_guard();
    let mut group = c.benchmark_group("cpu_gemv_int4");
    // The tied head too: 327 MB of int4, more than a big L3 holds, so it streams from memory.
    for (name, n, k) in SHAPES
        .into_iter()
        .chain([("head_256000x2048", 256000, 2048)])
    {
        let w = Int4Pair::new(n, k);
        let x = Tensor::randn([1, k], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        // Codes, and a bf16 scale and minimum per 32 inputs.
        group.throughput(Throughput::Bytes((n * k / 2 + n * k / 8) as u64));
        group.bench_function(BenchmarkId::new(name, "libtorch_int4pack_mm"), |b| {
            b.iter(|| w.aten(&x))
        });
        for level in Isa::ALL.into_iter().filter(|l| *l <= cpu_gemv::isa()) {
            // One line for the path without VNNI: Avx512 where the CPU has it, else Avx2.
            if level == Isa::Scalar || (level == Isa::Avx2 && cpu_gemv::isa() >= Isa::Avx512) {
                continue;
            }
            group.bench_function(BenchmarkId::new(name, format!("ours_{level:?}")), |b| {
                b.iter(|| cpu_gemv::int4_with(&x, w.ours(), level).expect("one row"))
            });
        }
    }
    group.finish();
}

fn prompt(c: &mut Criterion) {
    let _guard = tch::no_grad_guard();
    let mut group = c.benchmark_group("cpu_gemm_prompt");
    group.sample_size(10);
    let (n, k, rows) = (16384, 2048, 128);
    let x = Tensor::randn([rows, k], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    group.throughput(Throughput::Elements(rows as u64));
    let w = (Tensor::randn([n, k], (Kind::Float, Device::Cpu)) * 0.02).to_kind(Kind::BFloat16);
    group.bench_function("bf16/libtorch", |b| {
        b.iter(|| x.linear::<&Tensor>(&w, None))
    });
    group.bench_function("bf16/ours_widened", |b| {
        b.iter(|| cpu_gemv::widened_with(&x, &w, cpu_gemv::isa(), false).expect("bf16"))
    });
    let q = Tensor::randint_low(-127, 128, [n, k], (Kind::Int8, Device::Cpu));
    let scales = (Tensor::rand([n], (Kind::Float, Device::Cpu)) * 0.01).to_kind(Kind::BFloat16);
    group.bench_function("int8/libtorch_dequantized", |b| {
        b.iter(|| x.matmul(&(q.to_kind(Kind::BFloat16) * scales.unsqueeze(1)).tr()))
    });
    group.bench_function("int8/ours", |b| {
        b.iter(|| cpu_gemv::int8(&x, &q, &scales).expect("int8"))
    });
    group.bench_function("int8/ours_widened", |b| {
        b.iter(|| cpu_gemv::int8_with(&x, &q, &scales, Isa::Avx512).expect("int8"))
    });
    // Gemma-2B's up_proj and down_proj: int4 through ours (with VNNI the integer GEMM), through
    // libtorch's f32 GEMM on our dequantized blocks (capped below VNNI), and ATen's int4 kernel.
    for (n, k) in [(n, k), (k, n)] {
        let x = Tensor::randn([rows, k], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let w4 = Int4Pair::new(n, k);
        let shape = format!("{n}x{k}");
        group.bench_function(BenchmarkId::new("int4/libtorch_int4pack_mm", &shape), |b| {
            b.iter(|| w4.aten(&x))
        });
        group.bench_function(BenchmarkId::new("int4/ours", &shape), |b| {
            b.iter(|| cpu_gemv::int4(&x, w4.ours()).expect("int4"))
        });
        group.bench_function(BenchmarkId::new("int4/ours_widened", &shape), |b| {
            b.iter(|| cpu_gemv::int4_with(&x, w4.ours(), Isa::Avx512).expect("int4"))
        });
    }
    group.finish();
}

criterion_group!(benches, dense, int8, int4, prompt);
criterion_main!(benches);
