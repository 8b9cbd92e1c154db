//! Gemma on CPU: a forward pass, a training step (forward + backward), one cached decoding step,
//! a short greedy generation, on the `bench-small` shapes with random weights; and the loss over
//! Gemma's 256k vocabulary at the labelled positions only, against all positions.

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

fn train_step(c: &mut Criterion) {
    let (vs, model) = model();
    let mut group = c.benchmark_group("gemma_train_step");
    group.sample_size(10);
    let (batch, len, labelled) = (4i64, 256i64, 96i64);
    let ids = Tensor::randint(32000, [batch, len], (Kind::Int64, Device::Cpu));
    let labels = ids.copy();
    let _ = labels.narrow(1, 0, len - labelled).fill_(-100);
    group.throughput(Throughput::Elements((batch * len) as u64));
    group.bench_function("forward_backward/4x256_loss_on_96", |b| {
        b.iter(|| {
            let out = model.forward(&ids, None, None, false).expect("forward");
            let (loss, _) = model.loss(&out.last_hidden_state, &labels).expect("loss");
            loss.backward();
            for mut t in vs.trainable_variables() {
                t.zero_grad();
            }
        })
    });
    group.finish();
}

/// The loss of a Gemma-vocabulary head (256,128 tokens, tied embeddings, hidden 256 to keep the
/// CPU run short) for 4 x 512 positions of which the last 96 of each row are labelled: the logits
/// only where labels are, as `Gemma::loss` computes them, against logits everywhere.
fn loss_256k(c: &mut Criterion) {
    tch::manual_seed(0);
    let config = gemma_lm::GemmaConfig {
        vocab_size: 256_128,
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 1,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        head_dim: 64,
        ..bench_small_lm()
    };
    let vs = VarStore::new(Device::Cpu);
    let model = Gemma::new(&vs.root(), &config).expect("valid config");
    let (batch, len, labelled) = (4i64, 512i64, 96i64);
    let hidden =
        Tensor::randn([batch, len, 256], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let ids = Tensor::randint(256_000, [batch, len], (Kind::Int64, Device::Cpu));
    let labels = ids.copy();
    let _ = labels.narrow(1, 0, len - labelled).fill_(-100);
    let mut group = c.benchmark_group("loss_256k_vocab");
    group.sample_size(10);
    group.bench_function("labelled_positions_only/4x512_96_labelled", |b| {
        b.iter(|| {
            let (loss, _) = model.loss(&hidden, &labels).expect("loss");
            loss.backward();
        })
    });
    group.bench_function("all_positions/4x512", |b| {
        b.iter(|| {
            let logits = model.logits(&hidden).view([-1, 256_128]);
            let loss = logits.cross_entropy_loss::<Tensor>(
                &labels.view([-1]),
                None,
                tch::Reduction::Mean,
                -100,
                0.0,
            );
            loss.backward();
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    forward,
    train_step,
    decode_step,
    greedy_generation,
    loss_256k
);
criterion_main!(benches);
