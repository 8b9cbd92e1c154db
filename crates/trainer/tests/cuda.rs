//! The optimizer's one-pass AdamW kernel against libtorch's path (gradient cast to f32, fused
//! AdamW on the f32 master, master copied into the bf16 weight), on CUDA. One test alone in its
//! binary: it switches the kernels off and on through `LLAVA_CUDA_KERNELS`, which the process
//! shares. SKIPPED (and passes) without a GPU or without the kernels built in.

use tch::{Device, Kind, Tensor};
use trainer::{AdamW, AdamWConfig};

fn run(device: Device, kernels: bool) -> Vec<Tensor> {
    // SAFETY: the only test of this binary, so no other thread reads the environment meanwhile.
    unsafe { std::env::set_var("LLAVA_CUDA_KERNELS", if kernels { "1" } else { "0" }) };
    tch::manual_seed(5);
    let params: Vec<(String, Tensor)> = [vec![64i64, 33], vec![17]]
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let p = Tensor::randn(shape.as_slice(), (Kind::Float, device))
                .to_kind(Kind::BFloat16)
                .set_requires_grad(true);
            (format!("p{i}"), p)
        })
        .collect();
    let config = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let shared = params
        .iter()
        .map(|(n, p)| (n.clone(), p.shallow_clone()))
        .collect();
    let mut opt = AdamW::new(shared, config);
    opt.set_lr_scale(|name| name == "p1", 0.5);
    for step in 0..4 {
        for (_, p) in &params {
            let grad =
                Tensor::randn(p.size().as_slice(), (Kind::Float, device)).to_kind(Kind::BFloat16);
            trainer::optim::fused::set_grad(p, &grad).unwrap();
        }
        if step % 2 == 1 {
            let _norm = opt.clip_grad_norm(0.5).unwrap();
        }
        opt.step(1e-2).unwrap();
    }
    // The weights, then the f32 masters and moments.
    let mut out: Vec<Tensor> = params.into_iter().map(|(_, p)| p.detach().copy()).collect();
    out.extend(opt.master_weights().into_iter().map(|(_, t)| t.copy()));
    out.extend(
        opt.state()
            .into_iter()
            .filter(|(name, _)| name.starts_with("exp_avg"))
            .map(|(_, t)| t.copy()),
    );
    out
}

#[test]
fn one_pass_adamw_kernel_equals_libtorch_fused_adamw_with_casts() {
    if !tch::Cuda::is_available() || !foundation::cuda::kernels_built() {
        eprintln!("SKIPPED adamw kernel: no CUDA device, or the kernels are not built in");
        return;
    }
    let device = Device::Cuda(0);
    let theirs = run(device, false);
    let ours = run(device, true);
    assert_eq!(ours.len(), 2 + 2 + 4, "weights, masters, two moments each");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        let same = a
            .eq_tensor(b)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        let err = (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[]);
        eprintln!(
            "tensor {i}: {:.2}% bit-identical, max difference {err:.2e}",
            same * 100.0
        );
        // ATen's expressions one for one in f32, so bit-identical but where the compilers
        // contract a multiply-add differently (the last bit of a rare element); the bf16 weights
        // round the same masters.
        let scale = b
            .to_kind(Kind::Float)
            .abs()
            .max()
            .double_value(&[])
            .max(1e-30);
        assert!(
            same > 0.999 && err / scale < 1e-6,
            "tensor {i}: {same} identical, max difference {err}"
        );
    }
}
