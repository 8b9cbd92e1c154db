//! LLaVA on CPU, `bench-small` shapes, random weights: a forward pass over one image and 64 text
//! tokens (logits at the last position), and one cached generation step after such a prompt.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gemma_lm::KvCache;
use llava_benches::{BENCH_SMALL_IMAGE_TOKEN, bench_small_llava};
use llava_model::LlavaModel;
use tch::{Device, Kind, Tensor};

fn prompt(model: &LlavaModel) -> Tensor {
    let text: Vec<i64> = (0..64).map(|i| 100 + i).collect();
    let mut ids = vec![2, BENCH_SMALL_IMAGE_TOKEN];
    ids.extend(text);
    let ids = model.expand_image_tokens(&ids, 64);
    let n = ids.len() as i64;
    Tensor::from_slice(&ids).view([1, n])
}

fn llava(c: &mut Criterion) {
    tch::manual_seed(0);
    let model =
        LlavaModel::new(&bench_small_llava(), Device::Cpu, Kind::Float).expect("valid config");
    let ids = prompt(&model);
    let len = ids.size()[1];
    let pixels = Tensor::randn([1, 3, 112, 112], (Kind::Float, Device::Cpu));
    let mut group = c.benchmark_group("llava");
    group.throughput(Throughput::Elements(len as u64));
    group.bench_function("forward/1_image+64_tokens", |b| {
        b.iter(|| {
            tch::no_grad(|| {
                let hidden = model.forward(&ids, Some(&pixels), None).expect("forward");
                model.logits(&hidden.narrow(1, len - 1, 1))
            })
        })
    });
    let next = Tensor::from_slice(&[42i64]).view([1, 1]);
    group.throughput(Throughput::Elements(1));
    group.bench_function("generation_step/after_1_image+64_tokens", |b| {
        b.iter_batched(
            || {
                let mut cache = KvCache::for_model(&model.lm, 1, len + 1);
                tch::no_grad(|| {
                    let embeds = model.embed(&ids, Some(&pixels)).expect("embed");
                    model
                        .lm
                        .forward_embeds(&embeds, None, Some(&mut cache), false)
                        .expect("prefill");
                });
                cache
            },
            |mut cache| {
                tch::no_grad(|| {
                    let out = model
                        .lm
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

criterion_group!(benches, llava);
criterion_main!(benches);
