//! c10d's NCCL process group on one GPU (NCCL puts one rank on a GPU, so a world of one is what a
//! single GPU can run): the collectives of the Gloo tests on CUDA tensors, host tensors staged to
//! the GPU and back, and the sharded optimizer's steps through a group of one against no group.
//! The NCCL tests are SKIPPED (and pass) without a GPU or without NCCL built in; the same steps
//! through a Gloo group of one run on the CPU everywhere.

use std::rc::Rc;
use std::time::Duration;

use tch::{Device, Kind, Tensor};
use trainer::AdamWConfig;
use trainer::dist::{Backend, Launch, ProcessGroup, Reduce};
use trainer::parallel::Optimizer;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nccl_group() -> Option<ProcessGroup> {
    if !tch::Cuda::is_available() || !trainer::dist::nccl_built() {
        eprintln!("SKIPPED nccl: no CUDA device, or NCCL is not built in");
        return None;
    }
    let backend = Backend::for_device(Device::Cuda(0)).unwrap();
    assert_eq!(backend, Backend::Nccl(0), "CUDA ranks take NCCL by default");
    let launch = Launch::alone(free_port());
    Some(ProcessGroup::from_launch(&launch, Duration::from_secs(60), backend).unwrap())
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).to_device(Device::Cpu)).unwrap()
}

#[test]
fn collectives_of_one_nccl_rank_on_cuda_and_host_tensors() {
    let Some(g) = nccl_group() else { return };
    assert_eq!((g.rank(), g.world(), g.backend()), (0, 1, Backend::Nccl(0)));
    let cuda = Device::Cuda(0);
    let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).to_device(cuda);
    let sum = t.copy();
    g.all_reduce(&sum, Reduce::Sum).unwrap();
    // Read on the current stream without a host wait: the collective is ordered before it.
    let doubled = &sum * 2.0;
    assert_eq!(values(&doubled), [2.0, 4.0, 6.0, 8.0]);
    let avg = t.copy();
    g.all_reduce(&avg, Reduce::Avg).unwrap();
    assert_eq!(values(&avg), [1.0, 2.0, 3.0, 4.0]);
    let max = t.copy();
    g.all_reduce(&max, Reduce::Max).unwrap();
    assert_eq!(values(&max), [1.0, 2.0, 3.0, 4.0]);
    let shard = Tensor::zeros([4], (Kind::Float, cuda));
    g.reduce_scatter(&shard, &t, Reduce::Sum).unwrap();
    assert_eq!(values(&shard), [1.0, 2.0, 3.0, 4.0]);
    let gathered = Tensor::zeros([4], (Kind::Float, cuda));
    g.all_gather(&gathered, &(&shard + 1.0)).unwrap();
    assert_eq!(values(&gathered), [2.0, 3.0, 4.0, 5.0]);
    let b = Tensor::from_slice(&[10.0f32]).to_device(cuda);
    g.broadcast(&b, 0).unwrap();
    assert_eq!(values(&b), [10.0]);
    let bf = Tensor::ones([3], (Kind::BFloat16, cuda)) * 3.0;
    g.all_reduce(&bf, Reduce::Sum).unwrap();
    assert_eq!(values(&bf), [3.0, 3.0, 3.0]);
    // Host tensors (the step's counts, f64) go to the GPU and back.
    let host = Tensor::from_slice(&[1.5f64, 2.5]);
    g.all_reduce(&host, Reduce::Sum).unwrap();
    assert_eq!(host.device(), Device::Cpu);
    assert_eq!(Vec::<f64>::try_from(&host).unwrap(), [1.5, 2.5]);
    g.store_set("hello", b"nccl").unwrap();
    assert_eq!(g.store_get("hello").unwrap(), b"nccl");
    g.barrier().unwrap();
}

/// Four steps of the sharded optimizer (broadcast, reduce-scatter, all-reduce of the norm,
/// all-gather) through `group`, or the local optimizer without one.
fn train(device: Device, kind: Kind, group: Option<Rc<ProcessGroup>>) -> Vec<Tensor> {
    tch::manual_seed(11);
    let params: Vec<(String, Tensor)> = [vec![48i64, 40], vec![40], vec![7, 3]]
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let p = Tensor::randn(shape.as_slice(), (Kind::Float, device))
                .to_kind(kind)
                .set_requires_grad(true);
            (format!("p{i}"), p)
        })
        .collect();
    let shared = params
        .iter()
        .map(|(n, p)| (n.clone(), p.shallow_clone()))
        .collect();
    let config = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let sharded = group.is_some();
    let mut opt = Optimizer::new(shared, config, group, true).unwrap();
    assert_eq!(opt.is_sharded(), sharded);
    for _ in 0..4 {
        for (_, p) in &params {
            let grad = Tensor::randn(p.size().as_slice(), (Kind::Float, device)).to_kind(kind);
            trainer::optim::fused::set_grad(p, &grad).unwrap();
        }
        opt.reduce_gradients().unwrap();
        opt.clip_grad_norm(1.0).unwrap();
        opt.step(1e-2).unwrap();
        opt.zero_grad();
    }
    params.into_iter().map(|(_, p)| p.detach().copy()).collect()
}

/// The sharded steps through `group` against the local ones: f32 within 1e-5 (the norm is
/// summed in another order), bf16 within one bf16 step of weights below 8.
fn same_steps_through(device: Device, group: ProcessGroup) {
    let group = Rc::new(group);
    for (kind, tolerance) in [(Kind::Float, 1e-5), (Kind::BFloat16, 1.0 / 16.0)] {
        let alone = train(device, kind, None);
        let through = train(device, kind, Some(group.clone()));
        for (a, b) in alone.iter().zip(&through) {
            let diff = (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff <= tolerance, "{kind:?}: max difference {diff}");
        }
    }
}

#[test]
fn sharded_steps_through_one_nccl_rank_equal_steps_without_a_group() {
    let Some(g) = nccl_group() else { return };
    same_steps_through(Device::Cuda(0), g);
}

#[test]
fn sharded_steps_through_one_gloo_rank_equal_steps_without_a_group() {
    let launch = Launch::alone(free_port());
    let g = ProcessGroup::from_launch(&launch, Duration::from_secs(60), Backend::Gloo).unwrap();
    same_steps_through(Device::Cpu, g);
}
