//! Gemma on CPU: a forward pass, one cached decoding step, and a short greedy generation, on the
//! `bench-small` shapes with random weights.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gemma_lm::{Gemma, GenerationConfig, KvCache, generate};
use llava_benches::bench_small_lm;
use tch::{Device, Kind, Tensor, nn::VarStore};

fn model() -> (VarStore, Gemma) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let model = Gemma::new(&vs.root(), &bench_small_lm()).expect("bench-small config is valid");
    (vs, model)
}

fn forward(c: &mut Criterion) {
    let (_vs, model) = model();
    let mut group = c.benchmark_group("gemma_forward");
    for (batch, len) in [(1i64, 128i64), (4, 256)] {
        let ids = Tensor::randint(32000, [batch, len], (Kind::Int64, Device::Cpu));
        group.throughput(Throughput::Elements((batch * len) as u64));
        group.bench_with_input(
            BenchmarkId::new("tokens", format!("{batch}x{len}")),
            &ids,
            |b, ids| {
                b.iter(|| {
                    tch::no_grad(|| {
                        let out = model.forward(ids, None, None, false).expect("forward");
                        model.logits(&out.last_hidden_state.narrow(1, len - 1, 1))
                    })
                })
            },
        );
    }
    group.finish();
}

fn decode_step(c: &mut Criterion) {
    let (_vs, model) = model();
    let mut group = c.benchmark_group("gemma_decode_step");
    let context = 512;
    let prompt = Tensor::randint(32000, [1, context], (Kind::Int64, Device::Cpu));
    let next = Tensor::from_slice(&[42i64]).view([1, 1]);
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("after_{context}_tokens"), |b| {
        b.iter_batched(
            || {
                let mut cache = KvCache::for_model(&model, 1, context + 1);
                tch::no_grad(|| {
                    model
                        .forward(&prompt, None, Some(&mut cache), false)
                        .expect("prefill")
                });
                cache
            },
            |mut cache| {
                tch::no_grad(|| {
                    let out = model
                        .forward(&next, None, Some(&mut cache), false)
                        .expect("step");
                    model.logits(&out.last_hidden_state).argmax(-1, false)
                })
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn greedy_generation(c: &mut Criterion) {
    let (_vs, model) = model();
    let mut group = c.benchmark_group("gemma_generate");
    let new_tokens = 32;
    let prompt: Vec<i64> = (0..96).map(|i| (i * 37) % 32000).collect();
    let config = GenerationConfig {
        max_new_tokens: new_tokens,
        ..GenerationConfig::default()
    };
    group.throughput(Throughput::Elements(new_tokens as u64));
    group.sample_size(10);
    group.bench_function("greedy_96+32", |b| {
        b.iter(|| {
            generate(&model, std::slice::from_ref(&prompt), &config, |_, _| {}).expect("generate")
        })
    });
    group.finish();
}

criterion_group!(benches, forward, decode_step, greedy_generation);
criterion_main!(benches);
