// libtorch's fused AdamW and foreach norm, which tch does not expose, behind a C ABI.
//
// Tensors cross as the `at::Tensor *` that tch's `Tensor::as_ptr` hands out. Every function
// returns NULL on success or a malloc'd error message (free it with `llava_free_message`); no C++
// exception crosses into Rust.

#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/add.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/div.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/reshape.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/stack.h>
#include <llava_ffi.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <vector>

namespace {

std::vector<at::Tensor> gather(at::Tensor *const *tensors, int64_t n) {
    std::vector<at::Tensor> out;
    out.reserve(n);
    for (int64_t i = 0; i < n; ++i) out.push_back(*tensors[i]);
    return out;
}

}  // namespace

extern "C" {

void llava_free_message(char *message) { free(message); }

// One AdamW step for `n` tensors, all of one device and dtype: `params` (the weights the update
// is applied to, f32 masters where the model holds bf16), `grads` (same dtype as `params`),
// `exp_avgs`, `exp_avg_sqs`; `step` is the step number after this update (1 for the first).
// `grad_scale`, when not NULL, is an f32 tensor of one element that every gradient is divided by
// inside the kernel (how gradient clipping is applied here, and what AMP uses it for).
// torch.optim.AdamW(fused=True) without amsgrad: the same kernel, the same arithmetic.
char *llava_fused_adamw(at::Tensor *const *params, at::Tensor *const *grads,
                        at::Tensor *const *exp_avgs, at::Tensor *const *exp_avg_sqs, int64_t n,
                        double step, double lr, double beta1, double beta2, double weight_decay,
                        double eps, const at::Tensor *grad_scale) {
    return llava_ffi::guarded([&] {
        if (n == 0) return;
        auto p = gather(params, n);
        // The kernel itself trusts its inputs: check what it would read out of bounds on.
        for (int64_t i = 0; i < n; ++i) {
            for (const at::Tensor *t : {grads[i], exp_avgs[i], exp_avg_sqs[i]}) {
                TORCH_CHECK(t->sizes() == p[i].sizes() && t->dtype() == p[i].dtype() &&
                                t->device() == p[i].device(),
                            "AdamW tensor ", i, ": the parameter is ", p[i].sizes(), " ",
                            p[i].dtype(), " on ", p[i].device(), ", its gradient or moment ",
                            t->sizes(), " ", t->dtype(), " on ", t->device());
            }
        }
        auto step_tensor = at::scalar_tensor(step, p[0].options().dtype(at::kFloat));
        std::vector<at::Tensor> steps(n, step_tensor);
        std::optional<at::Tensor> scale;
        if (grad_scale != nullptr) scale = *grad_scale;
        at::_fused_adamw_(p, gather(grads, n), gather(exp_avgs, n), gather(exp_avg_sqs, n), {},
                          steps, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                          /*maximize=*/false, scale);
    });
}

// The global L2 norm of `grads` (one device, libtorch's foreach norm as in
// torch.nn.utils.clip_grad_norm_) into `*norm`, and into `*scale` what to divide the gradients by
// to clip them at `max_norm`: max(1, (norm + 1e-6) / max_norm). Both are new f32 tensors the
// caller owns; the gradients are not touched.
char *llava_grad_norm(at::Tensor *const *grads, int64_t n, double max_norm, at::Tensor **norm,
                      at::Tensor **scale) {
    return llava_ffi::guarded([&] {
        auto norms = at::_foreach_norm(gather(grads, n), 2, at::kFloat);
        auto total = at::linalg_vector_norm(at::stack(norms), 2);
        *scale = new at::Tensor(at::clamp_min(total.add(1e-6).div(max_norm), 1.0).reshape({1}));
        *norm = new at::Tensor(total);
    });
}

// Sets the gradients of `n` parameters to undefined (`set_to_none=True`), so the next backward
// pass writes them instead of adding to zeros.
char *llava_clear_grads(at::Tensor *const *params, int64_t n) {
    return llava_ffi::guarded([&] {
        for (int64_t i = 0; i < n; ++i) params[i]->mutable_grad().reset();
    });
}
}

extern "C" {
// Makes `grad` the gradient of `param` (shared, not copied): a data-parallel step hands the
// optimizer gradients it reduced itself.
char *llava_set_grad(at::Tensor *param, at::Tensor *grad) {
    return llava_ffi::guarded([&] { param->mutable_grad() = *grad; });
}
}
