//! The data pipeline, JSON record to padded batch: CC3M-style samples (a 640x480 JPEG and a caption,
//! Gemma template, 576 image tokens, CLIP-336 preprocessing), on one worker and on all cores.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use data::{Dataset, ImageSource, Loader, Template, Templater, collate, read_records};
use image_processing::{ImageProcessor, ProcessorConfig};
use llava_benches::sample_jpeg;

const SAMPLES: usize = 64;
const BATCH: usize = 16;

fn dataset(dir: &std::path::Path) -> Arc<Dataset> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).expect("temp dir");
    let jpeg = sample_jpeg();
    let mut records = Vec::new();
    for i in 0..SAMPLES {
        let name = format!("GCC_train_{i:09}.jpg");
        std::fs::write(images.join(&name), &jpeg).expect("temp dir");
        records.push(serde_json::json!({
            "id": format!("GCC_train_{i:09}"),
            "image": name,
            "conversations": [
                {"from": "human", "value": "Provide a brief description of the given image.\n<image>"},
                {"from": "gpt", "value": "olive oil is a healthy ingredient used liberally ."}
            ]
        }));
    }
    let file = dir.join("chat.json");
    std::fs::write(&file, serde_json::Value::Array(records).to_string()).expect("temp dir");
    let read = read_records(&file).expect("valid records");
    let mut tokenizer = data::builtin_tokenizer();
    let image_token = tokenizer.add_special_token("<image>");
    Arc::new(Dataset {
        records: read.records,
        bad_records: read.bad,
        images: Some(ImageSource::open(&images).expect("folder")),
        templater: Templater {
            tokenizer,
            template: Template::Gemma,
            image_token,
            tokens_per_image: 576,
            max_length: 2048,
        },
        processor: ImageProcessor::new(ProcessorConfig::clip_336()),
    })
}

fn pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let dataset = dataset(dir.path());
    let order: Vec<usize> = (0..SAMPLES).collect();
    let mut group = c.benchmark_group("data_pipeline_cc3m_336");
    group.throughput(Throughput::Elements(SAMPLES as u64));
    group.sample_size(10);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a pool");
    group.bench_function("one_worker", |b| {
        b.iter(|| {
            one.install(|| {
                for chunk in order.chunks(BATCH) {
                    let samples = chunk
                        .iter()
                        .map(|&i| dataset.sample(i).expect("valid sample"))
                        .collect();
                    std::hint::black_box(collate(samples, 0, &dataset.processor));
                }
            })
        })
    });
    group.bench_function("all_workers_prefetch", |b| {
        b.iter(|| Loader::new(dataset.clone(), order.clone(), 0, BATCH, 2).count())
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
