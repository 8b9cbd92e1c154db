//! The C ABI of `csrc/adamw.cpp`: libtorch's `_fused_adamw_`, the foreach norm of
//! `torch.nn.utils.clip_grad_norm_`, and `zero_grad(set_to_none=True)`, which tch does not wrap.

use std::ffi::{c_char, c_void};

use tch::{TchError, Tensor};

unsafe extern "C" {
    fn llava_free_message(message: *mut c_char);
    fn llava_fused_adamw(
        params: *const *const c_void,
        grads: *const *const c_void,
        exp_avgs: *const *const c_void,
        exp_avg_sqs: *const *const c_void,
        n: i64,
        step: f64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        grad_scale: *const c_void,
    ) -> *mut c_char;
    fn llava_grad_norm(
        grads: *const *const c_void,
        n: i64,
        max_norm: f64,
        norm: *mut *mut c_void,
        scale: *mut *mut c_void,
    ) -> *mut c_char;
    fn llava_clear_grads(params: *const *const c_void, n: i64) -> *mut c_char;
    fn llava_set_grad(param: *const c_void, grad: *const c_void) -> *mut c_char;
}

/// AdamW's hyperparameters for one call.
#[derive(Debug, Clone, Copy)]
pub struct Hyper {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Decoupled weight decay for every tensor of the call.
    pub weight_decay: f64,
    /// Added to the denominator.
    pub eps: f64,
}

fn pointers(tensors: &[Tensor]) -> Vec<*const c_void> {
    tensors.iter().map(|t| t.as_ptr().cast()).collect()
}

fn checked(message: *mut c_char) -> Result<(), TchError> {
    // SAFETY: the shim's answers are NULL or its own strdup'd messages.
    unsafe { foundation::ffi::checked(message, llava_free_message) }.map_err(TchError::Torch)
}

/// One fused AdamW update (`step` counts from 1 and includes this one) of `params` with `grads`
/// and the moments, all of one device and dtype and of matching shapes; the gradients are divided
/// by `grad_scale` (an f32 tensor of one element) on the way in, when given.
pub fn adamw(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    step: f64,
    h: Hyper,
    grad_scale: Option<&Tensor>,
) -> Result<(), TchError> {
    let n = params.len();
    assert!(
        grads.len() == n && exp_avgs.len() == n && exp_avg_sqs.len() == n,
        "one gradient and two moments per parameter"
    );
    let (p, g, m, v) = (
        pointers(params),
        pointers(grads),
        pointers(exp_avgs),
        pointers(exp_avg_sqs),
    );
    // SAFETY: every pointer is a live at::Tensor owned by the slices above, which outlive the
    // call; the shim catches every C++ exception.
    checked(unsafe {
        llava_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            n as i64,
            step,
            h.lr,
            h.beta1,
            h.beta2,
            h.weight_decay,
            h.eps,
            grad_scale.map_or(std::ptr::null(), |t| t.as_ptr().cast()),
        )
    })
}

/// The global L2 norm of `grads` (f32, 0-d, on their device) and what to divide them by to clip
/// them at `max_norm` (f32, one element): `max(1, (norm + 1e-6) / max_norm)`.
pub fn grad_norm(grads: &[Tensor], max_norm: f64) -> Result<(Tensor, Tensor), TchError> {
    let g = pointers(grads);
    let (mut norm, mut scale): (*mut c_void, *mut c_void) =
        (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: as in `adamw`; on success both are new at::Tensors whose ownership passes to the
    // returned Tensors (tch deletes them on drop).
    checked(unsafe {
        llava_grad_norm(
            g.as_ptr(),
            grads.len() as i64,
            max_norm,
            &mut norm,
            &mut scale,
        )
    })?;
    Ok(unsafe {
        (
            Tensor::from_ptr(norm.cast()),
            Tensor::from_ptr(scale.cast()),
        )
    })
}

/// Drops the gradients of `params` (they become undefined), as `zero_grad(set_to_none=True)`.
pub fn clear_grads(params: &[Tensor]) -> Result<(), TchError> {
    let p = pointers(params);
    // SAFETY: as in `adamw`.
    checked(unsafe { llava_clear_grads(p.as_ptr(), params.len() as i64) })
}

/// Makes `grad` (shared, not copied) the gradient of `param`.
pub fn set_grad(param: &Tensor, grad: &Tensor) -> Result<(), TchError> {
    // SAFETY: two live tensors for the call's duration.
    checked(unsafe { llava_set_grad(param.as_ptr().cast(), grad.as_ptr().cast()) })
}
