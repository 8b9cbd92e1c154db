//! The data pipeline, JSON record to padded batch: CC3M-style samples (a 640x480 JPEG and a caption,
//! Gemma template, 576 image tokens, CLIP-336 preprocessing), on one worker and on all cores; and
//! the scale case, a file shaped like the 665K mix (`LLAVA_BENCH_MIX_RECORDS` records, 20,000 by
//! default; 665000 for the real size): indexing it and checking every record, in records/s.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use data::{Dataset, ImageSource, Loader, RecordFile, Template, Templater, collate};
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
    Arc::new(open_dataset(
        &file,
        Some(ImageSource::open(&images).expect("folder")),
    ))
}

/// The records of `file` with the built-in tokenizer, the Gemma template, 576 image tokens and
/// CLIP-336 preprocessing.
fn open_dataset(file: &std::path::Path, images: Option<ImageSource>) -> Dataset {
    let (records, bad_records) = RecordFile::open(file).expect("valid records");
    let mut tokenizer = data::builtin_tokenizer();
    let image_token = tokenizer.add_special_token("<image>");
    Dataset {
        records,
        bad_records,
        images,
        templater: Templater {
            tokenizer,
            template: Template::Gemma,
            image_token,
            tokens_per_image: 576,
            max_length: 2048,
        },
        processor: ImageProcessor::new(ProcessorConfig::clip_336()),
    }
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

fn mix_scale(c: &mut Criterion) {
    let records: usize = std::env::var("LLAVA_BENCH_MIX_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("llava_v1_5_mix665k_like.json");
    data::mix::write_mix_like(&file, records, 0).expect("temp dir");
    let mut group = c.benchmark_group("mix665k_scale");
    group.throughput(Throughput::Elements(records as u64));
    group.sample_size(10);
    group.bench_function("index", |b| {
        b.iter(|| RecordFile::open(&file).expect("valid records").0.len())
    });
    let dataset = open_dataset(&file, None);
    group.bench_function("check_no_decode", |b| {
        b.iter(|| data::check(&dataset, false).records)
    });
    group.finish();
}

criterion_group!(benches, pipeline, mix_scale);
criterion_main!(benches);
