//! The GPU path beyond tch: varlen flash attention, CUDA graphs, and our own kernels
//! (`csrc/kernels.cu`), through the C ABI of `csrc/cuda.cpp`.
//!
//! Graphs and kernels are built only where their tools were found at build time (the CUDA
//! headers; nvcc as well, for the kernels: `cargo xtask setup` installs both next to torch).
//! [`graphs_built`] and [`kernels_built`] say which are in; callers fall back to libtorch's
//! operations when one is not, or when the tensors are not on a GPU.

use std::ffi::{c_char, c_void};

use tch::{Device, Kind, TchError, Tensor};

unsafe extern "C" {
    fn llava_cuda_free_message(message: *mut c_char);
    fn llava_cuda_features() -> i32;
    fn llava_flash_varlen(
        q: *const c_void,
        k: *const c_void,
        v: *const c_void,
        cu_seqlens: *const c_void,
        max_len: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn llava_pin(t: *const c_void, out: *mut *mut c_void) -> *mut c_char;
    fn llava_graph_new(device: i64, graph: *mut *mut c_void) -> *mut c_char;
    fn llava_graph_free(graph: *mut c_void);
    fn llava_graph_side_stream(graph: *mut c_void, enter: bool) -> *mut c_char;
    fn llava_graph_capture_begin(graph: *mut c_void) -> *mut c_char;
    fn llava_graph_capture_end(graph: *mut c_void) -> *mut c_char;
    fn llava_graph_replay(graph: *mut c_void) -> *mut c_char;
    fn llava_gelu_mul(gate: *const c_void, up: *const c_void, out: *mut *mut c_void)
    -> *mut c_char;
    fn llava_rotary(
        x: *const c_void,
        cos: *const c_void,
        sin: *const c_void,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn llava_rotary_(x: *mut c_void, cos: *const c_void, sin: *const c_void) -> *mut c_char;
    fn llava_adamw_cast(
        master: *mut c_void,
        grad: *const c_void,
        exp_avg: *mut c_void,
        exp_avg_sq: *mut c_void,
        weight: *mut c_void,
        grad_scale: *const c_void,
        step: f64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> *mut c_char;
}

fn checked(message: *mut c_char) -> Result<(), TchError> {
    // SAFETY: the shim's answers are NULL or its own strdup'd messages.
    unsafe { crate::ffi::checked(message, llava_cuda_free_message) }.map_err(TchError::Torch)
}

/// A tensor the shim created and handed over, or its error.
fn new_tensor(message: *mut c_char, out: *mut c_void) -> Result<Tensor, TchError> {
    checked(message)?;
    // SAFETY: on success `out` is a new at::Tensor whose ownership passes to the Tensor.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// Whether CUDA graphs and streams are built in.
pub fn graphs_built() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { llava_cuda_features() & 1 != 0 }
}

/// Whether our CUDA kernels are built in.
pub fn kernels_built() -> bool {
    // SAFETY: as in `graphs_built`.
    unsafe { llava_cuda_features() & 2 != 0 }
}

/// Whether our kernels and CUDA graphs are used when nothing says otherwise. Off until a GPU run
/// of `scripts/gpu-check.sh` has passed their CUDA tests: untested device code must not change
/// what users' training and generation compute by default. `LLAVA_CUDA_KERNELS` and
/// `LLAVA_CUDA_GRAPHS` (`1` on, `0` off) decide for a process.
pub const ON_BY_DEFAULT: bool = false;

/// Whether our kernels serve tensors on `device` in `kind`: built in, a GPU, a dtype they take, and
/// switched on (`LLAVA_CUDA_KERNELS`, else [`ON_BY_DEFAULT`]).
pub fn kernels_for(device: Device, kind: Kind) -> bool {
    device.is_cuda()
        && matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Half)
        && kernels_built()
        && switched_on("LLAVA_CUDA_KERNELS")
}

/// Whether CUDA-graph decoding is what `gemma_lm::Decode::Auto` means on a GPU: built in and switched on (`LLAVA_CUDA_GRAPHS`, else [`ON_BY_DEFAULT`]).
pub fn graphs_by_default() -> bool {
    graphs_built() && switched_on("LLAVA_CUDA_GRAPHS")
}

/// `variable` as a switch: `0` off, any other value on, unset [`ON_BY_DEFAULT`].
fn switched_on(variable: &str) -> bool {
    match std::env::var_os(variable) {
        Some(value) => value != "0",
        None => ON_BY_DEFAULT,
    }
}

/// Causal attention of `q` `[tokens, heads, dim]` over `k`, `v` `[tokens, kv_heads, dim]` where
/// the tokens are sequences laid end to end: sequence `i` is tokens `cu_seqlens[i]..cu_seqlens[i +
/// 1]` (int32 on the device), none longer than `max_len`, and each attends only to itself.
/// libtorch's flash attention (CUDA, f16 or bf16); autograd records its backward.
pub fn flash_varlen(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    max_len: i64,
) -> Result<Tensor, TchError> {
    let mut out = std::ptr::null_mut();
    // SAFETY: live tensors for the call's duration; the shim catches every C++ exception.
    let message = unsafe {
        llava_flash_varlen(
            q.as_ptr().cast(),
            k.as_ptr().cast(),
            v.as_ptr().cast(),
            cu_seqlens.as_ptr().cast(),
            max_len,
            &mut out,
        )
    };
    new_tensor(message, out)
}

/// `t` (a host tensor) copied into pinned memory, from which copies to a GPU run asynchronously.
pub fn pin(t: &Tensor) -> Result<Tensor, TchError> {
    let mut out = std::ptr::null_mut();
    // SAFETY: as in `flash_varlen`.
    let message = unsafe { llava_pin(t.as_ptr().cast(), &mut out) };
    new_tensor(message, out)
}

/// `gelu_tanh(gate) * up` in one kernel each way (forward, and backward under autograd), rounded
/// as `gate.gelu("tanh") * up` rounds. Contiguous CUDA tensors of one shape and dtype.
pub fn gelu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor, TchError> {
    let mut out = std::ptr::null_mut();
    // SAFETY: as in `flash_varlen`.
    let message = unsafe { llava_gelu_mul(gate.as_ptr().cast(), up.as_ptr().cast(), &mut out) };
    new_tensor(message, out)
}

/// The rotary embedding (rotate-half layout) of `x` `[rows, len, heads, dim]` (contiguous, the
/// projection's own layout) with `cos`, `sin` `[rows, 1, len, dim]`, under autograd: one kernel
/// each way, rounded as `x * cos + rotate_half(x) * sin` rounds.
pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, TchError> {
    let mut out = std::ptr::null_mut();
    // SAFETY: as in `flash_varlen`.
    let message = unsafe {
        llava_rotary(
            x.as_ptr().cast(),
            cos.as_ptr().cast(),
            sin.as_ptr().cast(),
            &mut out,
        )
    };
    new_tensor(message, out)
}

/// [`rotary`] written over `x`, without autograd (decoding).
pub fn rotary_(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<(), TchError> {
    // SAFETY: as in `flash_varlen`; `x` is written in place, which its owner asked for.
    checked(unsafe {
        llava_rotary_(
            x.as_ptr().cast_mut().cast(),
            cos.as_ptr().cast(),
            sin.as_ptr().cast(),
        )
    })
}

/// AdamW's hyperparameters for [`adamw_cast`].
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Added to the denominator.
    pub eps: f64,
}

/// One AdamW step of one tensor in one pass, as `torch.optim.AdamW(fused=True)` computes it:
/// the f32 `master` is updated with `grad` in the gradient's own dtype (divided by `grad_scale`,
/// one f32 element, when given), the f32 moments too, and `weight` (when given) receives the new
/// master rounded to its dtype. `step` counts from 1 and includes this one. Replaces a cast of the
/// gradient to f32, libtorch's fused AdamW and a copy of the master into the weight.
#[allow(clippy::too_many_arguments)]
pub fn adamw_cast(
    master: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    weight: Option<&Tensor>,
    grad_scale: Option<&Tensor>,
    step: f64,
    h: AdamW,
) -> Result<(), TchError> {
    // SAFETY: as in `flash_varlen`; master, moments and weight are written in place, which is
    // what the caller asks for.
    checked(unsafe {
        llava_adamw_cast(
            master.as_ptr().cast_mut().cast(),
            grad.as_ptr().cast(),
            exp_avg.as_ptr().cast_mut().cast(),
            exp_avg_sq.as_ptr().cast_mut().cast(),
            weight.map_or(std::ptr::null_mut(), |w| w.as_ptr().cast_mut().cast()),
            grad_scale.map_or(std::ptr::null(), |t| t.as_ptr().cast()),
            step,
            h.lr,
            h.beta1,
            h.beta2,
            h.weight_decay,
            h.eps,
        )
    })
}

/// A CUDA graph: work recorded once ([`capture`](Graph::capture)) and launched again
/// ([`replay`](Graph::replay)) as one unit, without the host launching each kernel. The tensors the
/// work reads and writes stay where they were at capture: fill the inputs in place before a
/// replay, read the outputs after.
#[derive(Debug)]
pub struct Graph {
    ptr: *mut c_void,
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: our own graph, freed once.
        unsafe { llava_graph_free(self.ptr) }
    }
}

impl Graph {
    /// An empty graph for `device` (a CUDA device).
    pub fn new(device: Device) -> Result<Graph, TchError> {
        let Device::Cuda(index) = device else {
            return Err(TchError::Torch(format!(
                "CUDA graphs need a CUDA device, not {device:?}"
            )));
        };
        let mut ptr = std::ptr::null_mut();
        // SAFETY: a new graph into `ptr` on success.
        checked(unsafe { llava_graph_new(index as i64, &mut ptr) })?;
        Ok(Graph { ptr })
    }

    /// Runs `body` on the side stream the capture will use, after the device has finished what
    /// came before (and waits for it after): a warm-up run, so that lazily made handles and
    /// workspaces exist before the capture, as `torch.cuda.graph` recommends.
    pub fn warm_up<R>(&mut self, body: impl FnOnce() -> R) -> Result<R, TchError> {
        self.on_side_stream(|_| Ok(body()))
    }

    /// Records the work of `body` into the graph: it runs under capture (launching nothing) and
    /// what it returns, tensors the captured work writes included, stays valid for replays. The
    /// body must not synchronise with the host (no reading of values, no copies from pageable
    /// memory): libtorch's error for such work comes back as `Err`.
    pub fn capture<R>(&mut self, body: impl FnOnce() -> R) -> Result<R, TchError> {
        self.on_side_stream(|ptr| {
            // SAFETY: our live graph; the side stream is current.
            checked(unsafe { llava_graph_capture_begin(ptr) })?;
            let out = crate::torch_panic::catch(body);
            // SAFETY: as above; ends the capture even when the body failed.
            let ended = checked(unsafe { llava_graph_capture_end(ptr) });
            let out = out.map_err(|p| TchError::Torch(p.message))?;
            ended.map(|()| out)
        })
    }

    /// Runs `f` with the side stream current, and the previous stream current again afterwards
    /// whatever happens (a libtorch panic inside comes back as `Err`).
    fn on_side_stream<R>(
        &mut self,
        f: impl FnOnce(*mut c_void) -> Result<R, TchError>,
    ) -> Result<R, TchError> {
        let ptr = self.ptr;
        // SAFETY: our live graph.
        checked(unsafe { llava_graph_side_stream(ptr, true) })?;
        let out = crate::torch_panic::catch(|| f(ptr));
        // SAFETY: our live graph.
        let back = checked(unsafe { llava_graph_side_stream(ptr, false) });
        let out = out.map_err(|p| TchError::Torch(p.message))??;
        back.map(|()| out)
    }

    /// Launches the captured work on the current stream.
    pub fn replay(&self) -> Result<(), TchError> {
        // SAFETY: our live graph.
        checked(unsafe { llava_graph_replay(self.ptr) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs_need_a_cuda_device() {
        let err = Graph::new(Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("CUDA device"), "{err}");
    }

    #[test]
    fn kernels_serve_only_gpus() {
        assert!(!kernels_for(Device::Cpu, Kind::BFloat16));
        assert!(!kernels_for(Device::Cuda(0), Kind::Int64));
    }

    #[test]
    fn flash_attention_refuses_the_cpu_with_an_error() {
        let q = Tensor::zeros([4, 2, 8], (Kind::BFloat16, Device::Cpu));
        let cu = Tensor::from_slice(&[0i32, 4]);
        assert!(flash_varlen(&q, &q, &q, &cu, 4).is_err());
    }

    #[test]
    fn kernel_entry_points_refuse_cpu_tensors_with_an_error() {
        let x = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        assert!(gelu_mul(&x, &x).is_err());
        let m = Tensor::zeros([6], (Kind::Float, Device::Cpu));
        let h = AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 0.0,
            eps: 1e-8,
        };
        assert!(adamw_cast(&m, &m, &m, &m, None, None, 1.0, h).is_err());
    }
}
