// What the GPU path needs from libtorch beyond tch, behind a C ABI:
//
// * varlen flash attention (`at::_flash_attention_forward` with cumulative sequence lengths), which
//   tch does not wrap; autograd records its backward as for any ATen op. Always built.
// * CUDA graphs (`at::cuda::CUDAGraph`) and libtorch's streams. Built with LLAVA_CUDA_HEADERS, when
//   the CUDA runtime's headers are beside torch.
// * autograd functions and in-place ops over our kernels (kernels.cu). Built with
//   LLAVA_CUDA_KERNELS, when nvcc is beside torch too.
//
// Without a part, its functions exist and answer an error saying so; `llava_cuda_features` tells
// the Rust side which parts are in. Tensors cross as tch's `at::Tensor *`; every function returns
// NULL on success or a malloc'd message (free it with `llava_cuda_free_message`).

#include <ATen/core/Tensor.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <llava_ffi.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <tuple>

#ifdef LLAVA_CUDA_HEADERS
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#ifdef LLAVA_CUDA_KERNELS
#include <ATen/ops/empty_like.h>
#include <torch/csrc/autograd/custom_function.h>

extern "C" {
int llava_k_gelu_mul_forward(int dtype, const void *gate, const void *up, void *out, int64_t n,
                             void *stream);
int llava_k_gelu_mul_backward(int dtype, const void *gate, const void *up, const void *grad,
                              void *d_gate, void *d_up, int64_t n, void *stream);
int llava_k_rotary(int dtype, const void *x, void *out, const void *cos, const void *sin,
                   int64_t rows, int64_t len, int64_t heads, int64_t dim, float sign,
                   void *stream);
int llava_k_adamw(int grad_dtype, int weight_dtype, float *master, const void *grad,
                  float *exp_avg, float *exp_avg_sq, void *weight, int64_t n,
                  const float *grad_scale, float lr, float beta1, float beta2, float weight_decay,
                  float eps, float step, void *stream);
}
#endif

namespace {

[[maybe_unused]] char *missing(const char *what) {
    return strdup(what);
}

#ifdef LLAVA_CUDA_HEADERS
// A graph being captured or replayed on its device, its side stream (warm-up and capture both run
// there, as `torch.cuda.graph` does: the default stream cannot capture, and the warm-up prepares
// the stream's own handles and workspaces), and the stream that was current before.
struct Graph {
    at::cuda::CUDAGraph graph;
    c10::DeviceIndex device;
    c10::cuda::CUDAStream side;
    std::optional<c10::cuda::CUDAStream> previous;
};
#endif

#ifdef LLAVA_CUDA_KERNELS
int dtype_code(const at::Tensor &t) {
    switch (t.scalar_type()) {
        case at::kFloat: return 0;
        case at::kBFloat16: return 1;
        case at::kHalf: return 2;
        default: TORCH_CHECK(false, "our CUDA kernels take f32, bf16 or f16, not ", t.dtype());
    }
}

void *stream_of(const at::Tensor &t) {
    return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// Our launches go to the current device: make it the tensor's (tch never sets it).
c10::cuda::CUDAGuard on_device_of(const at::Tensor &t) {
    TORCH_CHECK(t.is_cuda(), "our CUDA kernels take CUDA tensors, not ", t.device());
    return c10::cuda::CUDAGuard(t.device());
}

void check_launch(int code, const char *kernel) {
    TORCH_CHECK(code == 0, kernel, ": ",
                code < 0 ? "unsupported dtype" : "CUDA error " + std::to_string(code));
}

void check_like(const at::Tensor &a, const at::Tensor &b, const char *what) {
    TORCH_CHECK(a.is_cuda() && a.is_contiguous() && b.is_contiguous() &&
                    a.sizes() == b.sizes() && a.dtype() == b.dtype() && a.device() == b.device(),
                what, ": contiguous CUDA tensors of one shape and dtype, got ", a.sizes(), " ",
                a.dtype(), " on ", a.device(), " and ", b.sizes(), " ", b.dtype(), " on ",
                b.device());
}

// x [rows, len, heads, dim] with cos, sin [rows, 1, len, dim] (or [rows, len, dim]).
void check_rotary(const at::Tensor &x, const at::Tensor &cos, const at::Tensor &sin) {
    TORCH_CHECK(x.is_cuda() && x.is_contiguous() && x.dim() == 4 && x.size(3) % 2 == 0,
                "rotary: a contiguous CUDA [rows, len, heads, dim] tensor, got ", x.sizes());
    check_like(cos, sin, "rotary cos and sin");
    TORCH_CHECK(cos.dtype() == x.dtype() && cos.numel() == x.size(0) * x.size(1) * x.size(3) &&
                    cos.size(0) == x.size(0) && cos.size(-1) == x.size(3),
                "rotary: cos and sin must be [rows, 1, len, dim] = [", x.size(0), ", 1, ",
                x.size(1), ", ", x.size(3), "] in ", x.dtype(), ", got ", cos.sizes(), " ",
                cos.dtype());
}

void launch_rotary(const at::Tensor &x, at::Tensor &out, const at::Tensor &cos,
                   const at::Tensor &sin, float sign) {
    check_launch(llava_k_rotary(dtype_code(x), x.data_ptr(), out.data_ptr(), cos.data_ptr(),
                                sin.data_ptr(), x.size(0), x.size(1), x.size(2), x.size(3), sign,
                                stream_of(x)),
                 "rotary");
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct GeluMul : public torch::autograd::Function<GeluMul> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &gate, const at::Tensor &up) {
        check_like(gate, up, "gelu_mul");
        auto guard = on_device_of(gate);
        auto out = at::empty_like(gate);
        check_launch(llava_k_gelu_mul_forward(dtype_code(gate), gate.data_ptr(), up.data_ptr(),
                                              out.data_ptr(), gate.numel(), stream_of(gate)),
                     "gelu_mul forward");
        ctx->save_for_backward({gate, up});
        return out;
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        auto saved = ctx->get_saved_variables();
        const auto &gate = saved[0];
        const auto &up = saved[1];
        auto grad = grads[0].contiguous();
        auto guard = on_device_of(gate);
        auto d_gate = at::empty_like(gate);
        auto d_up = at::empty_like(up);
        check_launch(llava_k_gelu_mul_backward(dtype_code(gate), gate.data_ptr(), up.data_ptr(),
                                               grad.data_ptr(), d_gate.data_ptr(),
                                               d_up.data_ptr(), gate.numel(), stream_of(gate)),
                     "gelu_mul backward");
        return {d_gate, d_up};
    }
};

struct Rotary : public torch::autograd::Function<Rotary> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &cos,
                              const at::Tensor &sin) {
        check_rotary(x, cos, sin);
        auto guard = on_device_of(x);
        auto out = at::empty_like(x);
        launch_rotary(x, out, cos, sin, 1.0f);
        ctx->save_for_backward({cos, sin});
        return out;
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        auto saved = ctx->get_saved_variables();
        auto grad = grads[0].contiguous();
        auto guard = on_device_of(grad);
        auto d_x = at::empty_like(grad);
        launch_rotary(grad, d_x, saved[0], saved[1], -1.0f);
        return {d_x, at::Tensor(), at::Tensor()};
    }
};
#endif

}  // namespace

extern "C" {

void llava_cuda_free_message(char *message) { free(message); }

// Bit 0: CUDA graphs and streams are built in; bit 1: our kernels are.
int llava_cuda_features() {
    int features = 0;
#ifdef LLAVA_CUDA_HEADERS
    features |= 1;
#endif
#ifdef LLAVA_CUDA_KERNELS
    features |= 2;
#endif
    return features;
}

// Causal attention of `q` [tokens, heads, dim] over `k`, `v` [tokens, kv_heads, dim], where the
// tokens are sequences laid end to end, sequence i being tokens cu_seqlens[i]..cu_seqlens[i + 1]
// (int32, on the device) and none longer than `max_len`: each sequence attends only to itself.
// Flash attention (CUDA, f16 or bf16); key/value heads are shared by groups of query heads.
char *llava_flash_varlen(const at::Tensor *q, const at::Tensor *k, const at::Tensor *v,
                         const at::Tensor *cu_seqlens, int64_t max_len, at::Tensor **out) {
    return llava_ffi::guarded([&] {
        auto result = at::_flash_attention_forward(*q, *k, *v, *cu_seqlens, *cu_seqlens, max_len,
                                                   max_len, 0.0, /*is_causal=*/true,
                                                   /*return_debug_mask=*/false);
        *out = new at::Tensor(std::get<0>(result));
    });
}

// `t` (a host tensor) copied into pinned memory: `Tensor::pin_memory()` without the deprecated
// device argument tch passes (which warns on every call).
char *llava_pin(const at::Tensor *t, at::Tensor **out) {
    return llava_ffi::guarded([&] { *out = new at::Tensor(t->pin_memory()); });
}

#ifdef LLAVA_CUDA_HEADERS
// A new graph for `device`; nothing is captured yet.
char *llava_graph_new(int64_t device, void **graph) {
    return llava_ffi::guarded([&] {
        auto index = static_cast<c10::DeviceIndex>(device);
        c10::cuda::CUDAGuard guard(index);
        *graph = new Graph{at::cuda::CUDAGraph(), index,
                           c10::cuda::getStreamFromPool(false, index), {}};
    });
}

void llava_graph_free(void *graph) { delete static_cast<Graph *>(graph); }

// Waits for the device, then makes a side stream from libtorch's pool current (`enter`), or the
// stream that was current before (`!enter`), waiting for the side stream's work first.
char *llava_graph_side_stream(void *graph, bool enter) {
    return llava_ffi::guarded([&] {
        auto *g = static_cast<Graph *>(graph);
        c10::cuda::CUDAGuard guard(g->device);
        c10::cuda::device_synchronize();
        if (enter) {
            if (!g->previous) g->previous = c10::cuda::getCurrentCUDAStream(g->device);
            c10::cuda::setCurrentCUDAStream(g->side);
        } else if (g->previous) {
            c10::cuda::setCurrentCUDAStream(*g->previous);
            g->previous.reset();
        }
    });
}

// Starts capturing the current (side) stream's work into the graph.
char *llava_graph_capture_begin(void *graph) {
    return llava_ffi::guarded([&] {
        auto *g = static_cast<Graph *>(graph);
        c10::cuda::CUDAGuard guard(g->device);
        g->graph.capture_begin();
    });
}

// Ends the capture (an error when something in it could not be captured).
char *llava_graph_capture_end(void *graph) {
    return llava_ffi::guarded([&] {
        auto *g = static_cast<Graph *>(graph);
        c10::cuda::CUDAGuard guard(g->device);
        g->graph.capture_end();
    });
}

// Launches the captured work on the current stream.
char *llava_graph_replay(void *graph) {
    return llava_ffi::guarded([&] {
        auto *g = static_cast<Graph *>(graph);
        c10::cuda::CUDAGuard guard(g->device);
        g->graph.replay();
    });
}
#else
char *llava_graph_new(int64_t, void **) {
    return missing("CUDA graphs are not built in: the CUDA headers were not found beside torch "
                   "(run `cargo xtask setup`)");
}
void llava_graph_free(void *) {}
char *llava_graph_side_stream(void *, bool) { return missing("CUDA graphs are not built in"); }
char *llava_graph_capture_begin(void *) { return missing("CUDA graphs are not built in"); }
char *llava_graph_capture_end(void *) { return missing("CUDA graphs are not built in"); }
char *llava_graph_replay(void *) { return missing("CUDA graphs are not built in"); }
#endif

#ifdef LLAVA_CUDA_KERNELS
// gelu_tanh(gate) * up with autograd (one kernel each way).
char *llava_gelu_mul(const at::Tensor *gate, const at::Tensor *up, at::Tensor **out) {
    return llava_ffi::guarded([&] { *out = new at::Tensor(GeluMul::apply(*gate, *up)); });
}

// The rotary embedding of `x` [rows, len, heads, dim], with autograd.
char *llava_rotary(const at::Tensor *x, const at::Tensor *cos, const at::Tensor *sin,
                   at::Tensor **out) {
    return llava_ffi::guarded([&] { *out = new at::Tensor(Rotary::apply(*x, *cos, *sin)); });
}

// The rotary embedding written over `x` (no autograd: decoding).
char *llava_rotary_(at::Tensor *x, const at::Tensor *cos, const at::Tensor *sin) {
    return llava_ffi::guarded([&] {
        check_rotary(*x, *cos, *sin);
        auto guard = on_device_of(*x);
        launch_rotary(*x, *x, *cos, *sin, 1.0f);
    });
}

// One AdamW step of one tensor: `master` (f32) updated with `grad` (any of our dtypes, divided
// by `grad_scale` when not NULL), the f32 moments updated, and `weight` (when not NULL) set to the
// new master rounded to its dtype, all in one pass. `step` counts from 1 and includes this one.
char *llava_adamw_cast(at::Tensor *master, const at::Tensor *grad, at::Tensor *exp_avg,
                       at::Tensor *exp_avg_sq, at::Tensor *weight, const at::Tensor *grad_scale,
                       double step, double lr, double beta1, double beta2, double weight_decay,
                       double eps) {
    return llava_ffi::guarded([&] {
        TORCH_CHECK(master->scalar_type() == at::kFloat, "adamw: the master must be f32, got ",
                    master->dtype());
        auto guard = on_device_of(*master);
        check_like(*master, *exp_avg, "adamw master and first moment");
        check_like(*master, *exp_avg_sq, "adamw master and second moment");
        TORCH_CHECK(grad->is_contiguous() && grad->sizes() == master->sizes() &&
                        grad->device() == master->device(),
                    "adamw: the gradient must be contiguous ", master->sizes(), " on ",
                    master->device(), ", got ", grad->sizes(), " on ", grad->device());
        int weight_dtype = 0;
        if (weight != nullptr) {
            TORCH_CHECK(weight->is_contiguous() && weight->sizes() == master->sizes() &&
                            weight->device() == master->device(),
                        "adamw: the weight must be contiguous ", master->sizes(), ", got ",
                        weight->sizes());
            weight_dtype = dtype_code(*weight);
        }
        const float *scale = nullptr;
        if (grad_scale != nullptr) {
            TORCH_CHECK(grad_scale->scalar_type() == at::kFloat && grad_scale->numel() == 1 &&
                            grad_scale->device() == master->device(),
                        "adamw: the gradient scale must be one f32 element on ", master->device());
            scale = grad_scale->data_ptr<float>();
        }
        check_launch(
            llava_k_adamw(dtype_code(*grad), weight_dtype, master->data_ptr<float>(),
                          grad->data_ptr(), exp_avg->data_ptr<float>(),
                          exp_avg_sq->data_ptr<float>(),
                          weight != nullptr ? weight->data_ptr() : nullptr, master->numel(), scale,
                          static_cast<float>(lr), static_cast<float>(beta1),
                          static_cast<float>(beta2), static_cast<float>(weight_decay),
                          static_cast<float>(eps), static_cast<float>(step), stream_of(*master)),
            "adamw");
    });
}
#else
#define LLAVA_NO_KERNELS                                                                        \
    missing("our CUDA kernels are not built in: nvcc was not found beside torch (run `cargo " \
            "xtask setup`)")
char *llava_gelu_mul(const at::Tensor *, const at::Tensor *, at::Tensor **) {
    return LLAVA_NO_KERNELS;
}
char *llava_rotary(const at::Tensor *, const at::Tensor *, const at::Tensor *, at::Tensor **) {
    return LLAVA_NO_KERNELS;
}
char *llava_rotary_(at::Tensor *, const at::Tensor *, const at::Tensor *) {
    return LLAVA_NO_KERNELS;
}
char *llava_adamw_cast(at::Tensor *, const at::Tensor *, at::Tensor *, at::Tensor *, at::Tensor *,
                       const at::Tensor *, double, double, double, double, double, double) {
    return LLAVA_NO_KERNELS;
}
#endif
}
