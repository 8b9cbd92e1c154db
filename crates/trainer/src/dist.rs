//! Process groups on libtorch's c10d, the engine PyTorch DDP and FSDP stand on: a `TCPStore`
//! rendezvous and a Gloo or NCCL process group (`csrc/c10d.cpp`), with the collectives
//! data-parallel training needs, and the launch environment as `torchrun` and Slurm set it.
//!
//! CPU ranks use Gloo; CUDA ranks use NCCL where it is built in ([`nccl_built`]), so gradients
//! never leave the GPU ([`Backend::for_device`]).
//!
//! No collective here is ours: every reduction, scatter and gather is c10d's.

use std::ffi::{CString, c_char, c_void};
use std::time::Duration;

use tch::{Device, Tensor};

unsafe extern "C" {
    fn llava_dist_free_message(message: *mut c_char);
    fn llava_dist_open(
        host: *const c_char,
        port: i32,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        agent_store: i32,
        prefix: *const c_char,
        backend: i32,
        device: i32,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn llava_dist_nccl_built() -> i32;
    fn llava_dist_lost_ranks(group: *mut c_void, wait_ms: i64, lost: *mut u8) -> *mut c_char;
    fn llava_dist_close(group: *mut c_void);
    fn llava_dist_allreduce(group: *mut c_void, tensor: *const c_void, op: i32) -> *mut c_char;
    fn llava_dist_reduce_scatter(
        group: *mut c_void,
        output: *const c_void,
        input: *const c_void,
        op: i32,
    ) -> *mut c_char;
    fn llava_dist_allgather(
        group: *mut c_void,
        output: *const c_void,
        input: *const c_void,
    ) -> *mut c_char;
    fn llava_dist_broadcast(group: *mut c_void, tensor: *const c_void, root: i32) -> *mut c_char;
    fn llava_dist_barrier(group: *mut c_void) -> *mut c_char;
    fn llava_dist_store_set(
        group: *mut c_void,
        key: *const c_char,
        value: *const u8,
        len: i64,
    ) -> *mut c_char;
    fn llava_dist_store_get(
        group: *mut c_void,
        key: *const c_char,
        value: *mut *mut u8,
        len: *mut i64,
    ) -> *mut c_char;
}

/// A failed collective or rendezvous.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
pub struct DistError {
    /// What was being done (`allreduce`, `rendezvous at 10.0.0.1:29500`, …).
    pub op: String,
    /// c10d's message.
    pub message: String,
}

fn checked(op: impl FnOnce() -> String, message: *mut c_char) -> Result<(), DistError> {
    // SAFETY: the shim answers NULL or a message it strdup'd.
    unsafe { foundation::ffi::checked(message, llava_dist_free_message) }
        .map_err(|message| DistError { op: op(), message })
}

/// The reduction of a collective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// The sum over ranks.
    Sum,
    /// The mean over ranks.
    Avg,
    /// The largest value.
    Max,
    /// The smallest value.
    Min,
}

impl Reduce {
    fn code(self) -> i32 {
        match self {
            Reduce::Sum => 0,
            Reduce::Avg => 1,
            Reduce::Max => 2,
            Reduce::Min => 3,
        }
    }
}

/// Where this process sits in a launched job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank, from 0.
    pub rank: usize,
    /// Processes in the job.
    pub world: usize,
    /// This process's rank on its node (its CUDA device).
    pub local_rank: usize,
    /// Processes on this node.
    pub local_world: usize,
    /// The host rank 0's store listens on.
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// The launcher already serves the store on that port (torchrun's agent store,
    /// `TORCHELASTIC_USE_AGENT_STORE=True`): every rank connects as a client, under this key
    /// prefix (`/worker/attempt_<restart>`, as `torch.distributed` does), so a restarted job
    /// does not meet its previous attempt's keys.
    pub agent_store: Option<String>,
}

impl Launch {
    /// A job of one rank on this host, its store on `port`: for running the collectives of a
    /// world of one without a launcher.
    pub fn alone(port: u16) -> Self {
        Launch {
            rank: 0,
            world: 1,
            local_rank: 0,
            local_world: 1,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            agent_store: None,
        }
    }

    /// The launch `vars` describe: torchrun's (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
    /// `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), else Slurm's (`SLURM_PROCID`,
    /// `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_NTASKS_PER_NODE`, with `MASTER_ADDR` /
    /// `MASTER_PORT` or the first host of `SLURM_JOB_NODELIST` and port 29500); `None` when
    /// neither launched this process.
    pub fn from_vars(vars: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let number = |name: &str| -> Result<Option<usize>, DistError> {
            vars(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| DistError {
                        op: "reading the launch environment".into(),
                        message: format!("{name}={v} is not a number"),
                    })
                })
                .transpose()
        };
        let port = |default: Option<u16>| -> Result<u16, DistError> {
            match vars("MASTER_PORT") {
                Some(p) => p.trim().parse().map_err(|_| DistError {
                    op: "reading the launch environment".into(),
                    message: format!("MASTER_PORT={p} is not a port"),
                }),
                None => default.ok_or_else(|| DistError {
                    op: "reading the launch environment".into(),
                    message: "MASTER_PORT is not set".into(),
                }),
            }
        };
        let launch = if let Some(rank) = number("RANK")? {
            let world = number("WORLD_SIZE")?.unwrap_or(1);
            Launch {
                rank,
                world,
                local_rank: number("LOCAL_RANK")?.unwrap_or(rank),
                local_world: number("LOCAL_WORLD_SIZE")?.unwrap_or(world),
                master_addr: vars("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                master_port: port(None)?,
                agent_store: (vars("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"))
                    .then(|| {
                        let attempt = vars("TORCHELASTIC_RESTART_COUNT");
                        format!("/worker/attempt_{}", attempt.as_deref().unwrap_or("0"))
                    }),
            }
        } else if let Some(rank) = number("SLURM_PROCID")? {
            let world = number("SLURM_NTASKS")?.unwrap_or(1);
            // `SLURM_NTASKS_PER_NODE` may read `4(x2)`: the count comes first.
            let per_node = vars("SLURM_NTASKS_PER_NODE")
                .and_then(|v| v.split(['(', ',']).next()?.trim().parse().ok())
                .unwrap_or(world);
            let first_host = vars("SLURM_JOB_NODELIST").map(|list| first_host(&list));
            Launch {
                rank,
                world,
                local_rank: number("SLURM_LOCALID")?.unwrap_or(0),
                local_world: per_node,
                master_addr: vars("MASTER_ADDR")
                    .or(first_host)
                    .unwrap_or_else(|| "127.0.0.1".into()),
                master_port: port(Some(29500))?,
                agent_store: None,
            }
        } else {
            return Ok(None);
        };
        if launch.world == 0 || launch.rank >= launch.world {
            return Err(DistError {
                op: "reading the launch environment".into(),
                message: format!("rank {} in a world of {}", launch.rank, launch.world),
            });
        }
        Ok(Some(launch))
    }

    /// [`from_vars`](Self::from_vars) on this process's environment.
    pub fn from_env() -> Result<Option<Self>, DistError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }
}

/// The first host of a Slurm node list (`node[01-04,07],gpu5` → `node01`).
fn first_host(list: &str) -> String {
    let first = list.split(',').next().unwrap_or(list);
    match first.split_once('[') {
        Some((prefix, range)) => {
            let start = range.split(['-', ',', ']']).next().unwrap_or_default();
            format!("{prefix}{start}")
        }
        None => first.to_string(),
    }
}

/// Whether c10d's NCCL backend is built in (the build found the CUDA runtime's and NCCL's headers
/// beside libtorch).
pub fn nccl_built() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { llava_dist_nccl_built() != 0 }
}

/// The c10d backend that carries a group's collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo, over TCP in host memory: tensors elsewhere go through a host copy.
    Gloo,
    /// NCCL on CUDA device `n` (the rank's own GPU): host tensors go through a copy to it.
    Nccl(usize),
}

impl Backend {
    /// The backend for a rank that computes on `device`: NCCL on its GPU for a CUDA rank when
    /// NCCL is built in, Gloo otherwise. `LLAVA_DIST_BACKEND` (`gloo` or `nccl`) decides instead.
    pub fn for_device(device: Device) -> Result<Self, DistError> {
        let choice = std::env::var("LLAVA_DIST_BACKEND").ok();
        Self::choose(device, choice.as_deref(), nccl_built()).map_err(|mut e| {
            e.op.push_str(" from LLAVA_DIST_BACKEND");
            e
        })
    }

    /// The backend `name`d (`gloo` or `nccl`) for a rank that computes on `device`, or why it
    /// cannot serve it.
    pub fn named(device: Device, name: &str) -> Result<Self, DistError> {
        Self::choose(device, Some(name), nccl_built())
    }

    fn choose(device: Device, choice: Option<&str>, nccl: bool) -> Result<Self, DistError> {
        let unusable = |message: String| DistError {
            op: "choosing the process group's backend".into(),
            message,
        };
        match (choice.map(str::trim).filter(|c| !c.is_empty()), device) {
            (Some("gloo"), _) => Ok(Backend::Gloo),
            (Some("nccl"), Device::Cuda(n)) if nccl => Ok(Backend::Nccl(n)),
            (Some("nccl"), Device::Cuda(_)) => Err(unusable(
                "this build has no NCCL (it was compiled without the CUDA runtime's and NCCL's \
                 headers beside libtorch)"
                    .into(),
            )),
            (Some("nccl"), other) => Err(unusable(format!(
                "NCCL needs CUDA ranks; this rank computes on {other:?}"
            ))),
            (Some(other), _) => Err(unusable(format!(
                "`{other}` is no backend: use gloo or nccl"
            ))),
            (None, Device::Cuda(n)) if nccl => Ok(Backend::Nccl(n)),
            (None, _) => Ok(Backend::Gloo),
        }
    }

    /// Where the backend's collectives take their tensors.
    pub fn device(self) -> Device {
        match self {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl(n) => Device::Cuda(n),
        }
    }

    fn code(self) -> (i32, i32) {
        match self {
            Backend::Gloo => (0, 0),
            Backend::Nccl(n) => (1, n as i32),
        }
    }
}

/// A group of ranks on one of c10d's backends ([`Backend`]).
#[derive(Debug)]
pub struct ProcessGroup {
    ptr: *mut c_void,
    rank: usize,
    world: usize,
    backend: Backend,
}

// SAFETY: the c10d objects behind the pointer are used from one thread at a time (`&mut`-free API,
// but every call waits for its work before returning) and libtorch's process groups are
// thread-safe for sequential use from any thread.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the Gloo group of `world` ranks as `rank`, meeting at rank 0's store on
    /// `host:port`; collectives fail after `timeout` rather than hang.
    pub fn open(
        host: &str,
        port: u16,
        rank: usize,
        world: usize,
        timeout: Duration,
    ) -> Result<Self, DistError> {
        Self::open_with(host, port, rank, world, timeout, None, Backend::Gloo)
    }

    /// [`open`](Self::open) on `backend`, or with `agent_store` a client of the store a launcher
    /// serves on `host:port`, under that key prefix (see [`Launch::agent_store`]).
    pub fn open_with(
        host: &str,
        port: u16,
        rank: usize,
        world: usize,
        timeout: Duration,
        agent_store: Option<&str>,
        backend: Backend,
    ) -> Result<Self, DistError> {
        let op = || format!("rendezvous of rank {rank} of {world} at {host}:{port} ({backend:?})");
        let c_host = CString::new(host).map_err(|_| DistError {
            op: op(),
            message: "the host name has a NUL byte".into(),
        })?;
        let prefix = CString::new(agent_store.unwrap_or_default()).map_err(|_| DistError {
            op: op(),
            message: "the store prefix has a NUL byte".into(),
        })?;
        let mut ptr = std::ptr::null_mut();
        let (backend_code, device) = backend.code();
        // SAFETY: valid C strings and out-pointer; the shim checks rank, world and backend.
        checked(op, unsafe {
            llava_dist_open(
                c_host.as_ptr(),
                i32::from(port),
                rank as i32,
                world as i32,
                timeout.as_millis() as i64,
                i32::from(agent_store.is_some()),
                prefix.as_ptr(),
                backend_code,
                device,
                &mut ptr,
            )
        })?;
        Ok(ProcessGroup {
            ptr,
            rank,
            world,
            backend,
        })
    }

    /// Joins the group a launcher described, on `backend` (see [`Backend::for_device`]).
    pub fn from_launch(
        launch: &Launch,
        timeout: Duration,
        backend: Backend,
    ) -> Result<Self, DistError> {
        Self::open_with(
            &launch.master_addr,
            launch.master_port,
            launch.rank,
            launch.world,
            timeout,
            launch.agent_store.as_deref(),
            backend,
        )
    }

    /// The backend carrying this group's collectives.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A collective's outcome; a failure is [`explain`](Self::explain)ed, so that it names the
    /// ranks that were lost.
    fn collective(
        &self,
        op: impl FnOnce() -> String,
        message: *mut c_char,
    ) -> Result<(), DistError> {
        checked(op, message).map_err(|e| self.explain(e))
    }

    /// The ranks that stopped beating: every rank counts up a heartbeat in the store twice a
    /// second; this reads them all, waits `wait`, and answers those whose count did not move.
    /// `Err` when the store itself is unreachable, which means its host (rank 0, or the launcher
    /// serving it) is gone.
    pub fn lost_ranks(&self, wait: Duration) -> Result<Vec<usize>, DistError> {
        let mut lost = vec![0u8; self.world];
        // SAFETY: a live group and a buffer of `world` bytes.
        checked(|| "reading the heartbeats".into(), unsafe {
            llava_dist_lost_ranks(self.ptr, wait.as_millis() as i64, lost.as_mut_ptr())
        })?;
        Ok((0..self.world).filter(|&r| lost[r] == 1).collect())
    }

    /// `err` from a collective, explained (every collective here does this on failure): when
    /// ranks died, the error names them (gloo's own message names a peer's address only). Rank 0 then stays a little longer, so that the
    /// other survivors can still read the heartbeats in its store.
    pub fn explain(&self, err: DistError) -> DistError {
        let wait = Duration::from_millis(2500);
        let verdict = match self.lost_ranks(wait) {
            Ok(lost) if lost.is_empty() => return err,
            Ok(lost) => {
                let names: Vec<String> = lost.iter().map(usize::to_string).collect();
                let s = if lost.len() == 1 { "" } else { "s" };
                format!(
                    "lost rank{s} {} of {} (no heartbeat for {:.1} s)",
                    names.join(", "),
                    self.world,
                    wait.as_secs_f64()
                )
            }
            Err(_) => format!(
                "the job's store is unreachable: its host is gone (rank 0 of {}, or the node of \
                 torchrun's agent that serves it)",
                self.world
            ),
        };
        if self.rank == 0 {
            std::thread::sleep(wait + Duration::from_millis(500));
        }
        DistError {
            op: format!("rank {}: {verdict}; {}", self.rank, err.op),
            message: err.message,
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the group.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Replaces `tensor` with its reduction over the ranks.
    pub fn all_reduce(&self, tensor: &Tensor, op: Reduce) -> Result<(), DistError> {
        let staged = self.staged(tensor);
        // SAFETY: a live group and tensor.
        self.collective(|| "allreduce".into(), unsafe {
            llava_dist_allreduce(self.ptr, staged.as_ptr().cast(), op.code())
        })?;
        back(tensor, &staged);
        Ok(())
    }

    /// Writes into `output` (`input`'s elements / world) this rank's shard of the reduction of
    /// `input` over the ranks.
    pub fn reduce_scatter(
        &self,
        output: &Tensor,
        input: &Tensor,
        op: Reduce,
    ) -> Result<(), DistError> {
        let (out, inp) = (self.staged(output), self.staged(input));
        // SAFETY: live tensors; c10d checks their sizes.
        self.collective(|| "reduce_scatter".into(), unsafe {
            llava_dist_reduce_scatter(
                self.ptr,
                out.as_ptr().cast(),
                inp.as_ptr().cast(),
                op.code(),
            )
        })?;
        back(output, &out);
        Ok(())
    }

    /// Writes into `output` (`input`'s elements × world) every rank's `input`, in rank order.
    pub fn all_gather(&self, output: &Tensor, input: &Tensor) -> Result<(), DistError> {
        let (out, inp) = (self.staged(output), self.staged(input));
        // SAFETY: live tensors; c10d checks their sizes.
        self.collective(|| "allgather".into(), unsafe {
            llava_dist_allgather(self.ptr, out.as_ptr().cast(), inp.as_ptr().cast())
        })?;
        back(output, &out);
        Ok(())
    }

    /// Replaces `tensor` with rank `root`'s.
    pub fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<(), DistError> {
        let staged = self.staged(tensor);
        // SAFETY: a live group and tensor.
        self.collective(|| format!("broadcast from rank {root}"), unsafe {
            llava_dist_broadcast(self.ptr, staged.as_ptr().cast(), root as i32)
        })?;
        back(tensor, &staged);
        Ok(())
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: a live group.
        self.collective(|| "barrier".into(), unsafe { llava_dist_barrier(self.ptr) })
    }

    /// `tensor` where the backend takes it: itself, or a copy on the host (Gloo) or the rank's
    /// GPU (NCCL), which [`back`] copies back after the collective.
    fn staged(&self, tensor: &Tensor) -> Tensor {
        let device = self.backend.device();
        if tensor.device() == device {
            tensor.shallow_clone()
        } else {
            tensor.to_device(device)
        }
    }

    /// Sets `key` in the group's store.
    pub fn store_set(&self, key: &str, value: &[u8]) -> Result<(), DistError> {
        let c_key = CString::new(key).expect("store keys have no NUL byte");
        // SAFETY: valid pointers for the call's duration.
        checked(|| format!("store set `{key}`"), unsafe {
            llava_dist_store_set(self.ptr, c_key.as_ptr(), value.as_ptr(), value.len() as i64)
        })
    }

    /// `key`'s value in the group's store, waiting for another rank to set it (up to the timeout).
    pub fn store_get(&self, key: &str) -> Result<Vec<u8>, DistError> {
        let c_key = CString::new(key).expect("store keys have no NUL byte");
        let (mut value, mut len) = (std::ptr::null_mut(), 0i64);
        // SAFETY: valid out-pointers; the shim mallocs `value` on success.
        checked(|| format!("store get `{key}`"), unsafe {
            llava_dist_store_get(self.ptr, c_key.as_ptr(), &mut value, &mut len)
        })?;
        // SAFETY: `value` holds `len` bytes from malloc, freed here once.
        let bytes = unsafe { std::slice::from_raw_parts(value, len as usize) }.to_vec();
        unsafe { llava_dist_free_message(value.cast()) };
        Ok(bytes)
    }
}

/// Copies a collective's result back into `tensor` when [`ProcessGroup::staged`] moved it.
fn back(tensor: &Tensor, staged: &Tensor) {
    if tensor.device() != staged.device() {
        tch::no_grad(|| tensor.shallow_clone().copy_(staged));
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `llava_dist_open` and is released once.
        unsafe { llava_dist_close(self.ptr) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tch::{Device, Kind};

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn two_ranks_reduce_scatter_gather_and_broadcast_through_gloo() {
        let port = free_port();
        let ranks: Vec<_> = (0..2usize)
            .map(|rank| {
                std::thread::spawn(move || {
                    let g = ProcessGroup::open("127.0.0.1", port, rank, 2, Duration::from_secs(30))
                        .unwrap();
                    let r = rank as f64;
                    let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]) * (r + 1.0);
                    let sum = t.copy();
                    g.all_reduce(&sum, Reduce::Sum).unwrap();
                    let avg = t.copy();
                    g.all_reduce(&avg, Reduce::Avg).unwrap();
                    let shard = Tensor::zeros([2], (Kind::Float, Device::Cpu));
                    g.reduce_scatter(&shard, &t, Reduce::Sum).unwrap();
                    let gathered = Tensor::zeros([4], (Kind::Float, Device::Cpu));
                    g.all_gather(&gathered, &shard).unwrap();
                    let b = Tensor::from_slice(&[r as f32 + 10.0]);
                    g.broadcast(&b, 1).unwrap();
                    let bf = (Tensor::ones([3], (Kind::BFloat16, Device::Cpu)) * (r + 1.0))
                        .to_kind(Kind::BFloat16);
                    g.all_reduce(&bf, Reduce::Sum).unwrap();
                    g.store_set(&format!("hello/{rank}"), format!("rank {rank}").as_bytes())
                        .unwrap();
                    let other = g.store_get(&format!("hello/{}", 1 - rank)).unwrap();
                    g.barrier().unwrap();
                    let v = |t: &Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float)).unwrap();
                    let mut out = HashMap::new();
                    for (k, t) in [
                        ("sum", &sum),
                        ("avg", &avg),
                        ("shard", &shard),
                        ("gathered", &gathered),
                        ("broadcast", &b),
                        ("bf16", &bf),
                    ] {
                        out.insert(k, v(t));
                    }
                    (rank, out, String::from_utf8(other).unwrap())
                })
            })
            .collect();
        for handle in ranks {
            let (rank, out, other) = handle.join().unwrap();
            assert_eq!(out["sum"], [3.0, 6.0, 9.0, 12.0]);
            assert_eq!(out["avg"], [1.5, 3.0, 4.5, 6.0]);
            assert_eq!(
                out["shard"],
                if rank == 0 { [3.0, 6.0] } else { [9.0, 12.0] }
            );
            assert_eq!(out["gathered"], [3.0, 6.0, 9.0, 12.0]);
            assert_eq!(out["broadcast"], [11.0]);
            assert_eq!(out["bf16"], [3.0, 3.0, 3.0]);
            assert_eq!(other, format!("rank {}", 1 - rank));
        }
    }

    #[test]
    fn cuda_ranks_take_nccl_where_built_and_the_environment_decides_otherwise() {
        let cuda = Device::Cuda(3);
        assert_eq!(Backend::choose(cuda, None, true).unwrap(), Backend::Nccl(3));
        assert_eq!(Backend::choose(cuda, None, false).unwrap(), Backend::Gloo);
        assert_eq!(
            Backend::choose(Device::Cpu, None, true).unwrap(),
            Backend::Gloo
        );
        assert_eq!(
            Backend::choose(cuda, Some("gloo"), true).unwrap(),
            Backend::Gloo
        );
        assert_eq!(
            Backend::choose(cuda, Some(""), true).unwrap(),
            Backend::Nccl(3)
        );
        assert_eq!(Backend::Nccl(3).device(), cuda);
        for (device, choice, nccl, says) in [
            (cuda, "nccl", false, "no NCCL"),
            (Device::Cpu, "nccl", true, "CUDA ranks"),
            (cuda, "mpi", true, "`mpi` is no backend"),
        ] {
            let err = Backend::choose(device, Some(choice), nccl).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn a_rank_that_never_comes_is_an_error_within_the_timeout() {
        let port = free_port();
        let started = std::time::Instant::now();
        let err = ProcessGroup::open("127.0.0.1", port, 0, 2, Duration::from_secs(2)).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        assert!(err.op.contains("rank 0 of 2"), "{err}");
    }

    #[test]
    fn torchrun_and_slurm_environments() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Launch::from_vars(env(&[])).unwrap(), None);
        let torchrun = Launch::from_vars(env(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "8"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29400"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            torchrun,
            Launch {
                rank: 5,
                world: 16,
                local_rank: 1,
                local_world: 8,
                master_addr: "10.0.0.2".into(),
                master_port: 29400,
                agent_store: None,
            }
        );
        let slurm = Launch::from_vars(env(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "8(x2)"),
            ("SLURM_JOB_NODELIST", "gpu[03-04]"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (slurm.rank, slurm.world, slurm.local_rank, slurm.local_world),
            (9, 16, 1, 8)
        );
        assert_eq!(
            (slurm.master_addr.as_str(), slurm.master_port),
            ("gpu03", 29500)
        );
        for bad in [
            env(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]),
            env(&[("RANK", "x"), ("MASTER_PORT", "1")]),
            env(&[("RANK", "0"), ("WORLD_SIZE", "2")]),
        ] {
            assert!(Launch::from_vars(bad).is_err());
        }
    }
}
