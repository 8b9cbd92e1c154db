//! Image preprocessing (decode + resize + crop + normalise, a 640x480 JPEG to 336x336 for CLIP) on
//! one core and on all cores, and a vision-tower forward pass on the `bench-small` CLIP shape.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use image_processing::{ImageProcessor, ProcessorConfig, decode};
use llava_benches::{bench_small_clip, sample_jpeg};
use tch::{Device, Kind, Tensor, nn::VarStore};
use vision_encoders::{FeatureSelect, VisionConfig, VisionTower};

fn preprocessing(c: &mut Criterion) {
    let jpeg = sample_jpeg();
    let mut group = c.benchmark_group("preprocess_640x480_jpeg_to_336");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_only", |b| {
        b.iter(|| decode(&jpeg, "bench.jpg").expect("valid JPEG"))
    });
    for (label, processor) in [
        ("clip_336", ImageProcessor::new(ProcessorConfig::clip_336())),
        (
            "clip_336_pad",
            ImageProcessor::new(ProcessorConfig::clip_336().with_pad_to_square()),
        ),
    ] {
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{label}/one_core"), |b| {
            b.iter(|| processor.preprocess(&decode(&jpeg, "bench.jpg").expect("valid JPEG")))
        });
        let batch = 32;
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("{label}/all_cores_batch_{batch}"), |b| {
            b.iter(|| {
                processor
                    .process_batch(batch, |_| decode(&jpeg, "bench.jpg"))
                    .expect("fixed size")
            })
        });
    }
    group.finish();
}

fn vision_forward(c: &mut Criterion) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let tower = VisionTower::new(&vs.root(), &VisionConfig::Clip(bench_small_clip()))
        .expect("valid config");
    let pixels = Tensor::randn([4, 3, 112, 112], (Kind::Float, Device::Cpu));
    let mut group = c.benchmark_group("vision_forward");
    group.throughput(Throughput::Elements(4));
    group.bench_function("bench_small_clip/batch_4", |b| {
        b.iter(|| {
            tower
                .features(&pixels, FeatureSelect::default())
                .expect("forward")
        })
    });
    group.finish();
}

criterion_group!(benches, preprocessing, vision_forward);
criterion_main!(benches);
