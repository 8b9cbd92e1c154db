// Our own CUDA kernels, on raw pointers: the C++ side (cuda.cpp) checks the tensors and passes
// their data, sizes and libtorch's current stream. Built only when `cargo xtask setup` installed
// nvcc next to torch (libtorch-build's `cuda_toolkit`).
//
// Each kernel rounds where the libtorch operations it replaces round (to the tensors' dtype after
// every operation, with f32 arithmetic in between), so its bf16 and f16 results equal theirs but
// for rare ties; in f32 the compiler's fused multiply-adds may differ from theirs in the last bit.
// AdamW follows ATen's expressions one for one and is meant to be bit-identical.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace {

// The dtypes a launcher accepts, as cuda.cpp numbers them.
enum Dtype : int { F32 = 0, BF16 = 1, F16 = 2 };

__device__ __forceinline__ float load(const float *p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16 *p, int64_t i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ float load(const __half *p, int64_t i) { return __half2float(p[i]); }

__device__ __forceinline__ void store(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16 *p, int64_t i, float v) {
    p[i] = __float2bfloat16(v);
}
__device__ __forceinline__ void store(__half *p, int64_t i, float v) { p[i] = __float2half(v); }

// `v` rounded to T and back: what a libtorch operation that returns T hands the next one.
template <typename T>
__device__ __forceinline__ float round_to(float v) {
    T t;
    store(&t, 0, v);
    return load(&t, 0);
}

constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi), as M_SQRT2 * M_2_SQRTPI * 0.5
constexpr float kKappa = 0.044715f;

// The arithmetic of ATen's GeluCUDAKernelImpl and GeluBackwardCUDAKernelImpl (tanh), in its order.
__device__ __forceinline__ float gelu_tanh(float x) {
    float x_cube = x * x * x;
    float inner = kBeta * (x + kKappa * x_cube);
    return 0.5f * x * (1.0f + tanhf(inner));
}

__device__ __forceinline__ float gelu_tanh_grad(float x) {
    float x_sq = x * x;
    float x_cube = x_sq * x;
    float inner = kBeta * (x + kKappa * x_cube);
    float t = tanhf(inner);
    float left = 0.5f * x;
    float right = 1.0f + t;
    float left_derivative = 0.5f * right;
    float tanh_derivative = 1.0f - t * t;
    float inner_derivative = kBeta * (1.0f + 3.0f * kKappa * x_sq);
    float right_derivative = left * tanh_derivative * inner_derivative;
    return left_derivative + right_derivative;
}

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
    int64_t blocks = (n + kThreads - 1) / kThreads;
    return static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

// out = gelu_tanh(gate) * up, as `gate.gelu("tanh") * up`.
template <typename T>
__global__ void gelu_mul_forward(const T *gate, const T *up, T *out, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float g = round_to<T>(gelu_tanh(load(gate, i)));
        store(out, i, g * load(up, i));
    }
}

// The gradients of `gelu_tanh(gate) * up` for `grad` of the output, as autograd computes them
// through the two operations: d_up = grad * gelu(gate), d_gate = gelu'(gate) * (grad * up).
template <typename T>
__global__ void gelu_mul_backward(const T *gate, const T *up, const T *grad, T *d_gate, T *d_up,
                                  int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float x = load(gate, i), u = load(up, i), dy = load(grad, i);
        float activated = round_to<T>(gelu_tanh(x));
        store(d_up, i, dy * activated);
        float d_activated = round_to<T>(dy * u);
        store(d_gate, i, d_activated * gelu_tanh_grad(x));
    }
}

// Rotary embedding in the rotate-half layout on `x` [rows, len, heads, dim] (the projection's own
// layout) with `cos`, `sin` [rows, len, dim]: x * cos + rotate_half(x) * sin, each product
// rounded as libtorch rounds it. `sign` -1 applies the transpose (the backward pass: the transpose
// of rotate_half is rotate_half with the other sign; exact for the rotate-half layout, whose two
// halves of cos and sin are equal). In place when `out == x`: each thread reads its pair before
// writing it.
template <typename T>
__global__ void rotary(const T *x, T *out, const T *cos, const T *sin, int64_t rows, int64_t len,
                       int64_t heads, int64_t dim, float sign) {
    int64_t half = dim / 2;
    int64_t pairs = rows * len * heads * half;
    for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < pairs;
         p += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = p % half;
        int64_t token = p / (half * heads);  // row * len + position
        int64_t base = (p / half) * dim;
        float x1 = load(x, base + j), x2 = load(x, base + j + half);
        const int64_t c = token * dim;
        float c1 = load(cos, c + j), c2 = load(cos, c + j + half);
        float s1 = load(sin, c + j), s2 = load(sin, c + j + half);
        // rotate_half(x) = [-x2, x1]; its transpose maps [y1, y2] to [y2, -y1].
        float r1 = -sign * x2, r2 = sign * x1;
        float o1 = round_to<T>(x1 * c1) + round_to<T>(round_to<T>(r1) * s1);
        float o2 = round_to<T>(x2 * c2) + round_to<T>(round_to<T>(r2) * s2);
        store(out, base + j, o1);
        store(out, base + j + half, o2);
    }
}

// One AdamW step of one tensor, as torch's `_fused_adamw_` (ADAMW mode, no amsgrad) on the f32
// master, with the gradient read in its own dtype (so no f32 copy of it is made first) and the
// updated master rounded into the model's weight in the same pass.
template <typename G, typename W>
__global__ void adamw(float *master, const G *grad, float *exp_avg, float *exp_avg_sq, W *weight,
                      int64_t n, const float *grad_scale, float lr, float beta1, float beta2,
                      float weight_decay, float eps, float step) {
    // As ATen's FusedAdamMathFunctor: the corrections in f32 from the f32 step count.
    const float bias_correction1 = 1.0f - powf(beta1, step);
    const float bias_correction2_sqrt = sqrtf(1.0f - powf(beta2, step));
    const float step_size = lr / bias_correction1;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        // adam_math of ATen 2.11's fused_adam_utils.cuh, expression for expression (the same
        // fused multiply-adds), so the f32 results are bit-identical.
        float g = load(grad, i);
        if (grad_scale != nullptr) g /= *grad_scale;
        float p = master[i];
        if (weight_decay != 0.0f) p -= lr * weight_decay * p;
        float m = fmaf(beta1, exp_avg[i], fmaf(-beta1, g, g));
        float v = fmaf(beta2, exp_avg_sq[i], fmaf(-beta2, g * g, g * g));
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        float denom = (sqrtf(v) / bias_correction2_sqrt) + eps;
        p -= step_size * m / denom;
        master[i] = p;
        if (weight != nullptr) store(weight, i, p);
    }
}

// Launches `Launch<T>::run(args...)` for the dtype; nothing for no elements (a grid of zero
// blocks is a CUDA error).
template <template <typename> class Launch, typename... Args>
int by_dtype(int dtype, int64_t n, Args... args) {
    if (n == 0) return 0;
    switch (dtype) {
        case F32: Launch<float>::run(args...); break;
        case BF16: Launch<__nv_bfloat16>::run(args...); break;
        case F16: Launch<__half>::run(args...); break;
        default: return -1;
    }
    return static_cast<int>(cudaGetLastError());
}

template <typename T>
struct GeluMulForward {
    static void run(const void *gate, const void *up, void *out, int64_t n, cudaStream_t stream) {
        gelu_mul_forward<T><<<blocks_for(n), kThreads, 0, stream>>>(
            static_cast<const T *>(gate), static_cast<const T *>(up), static_cast<T *>(out), n);
    }
};

template <typename T>
struct GeluMulBackward {
    static void run(const void *gate, const void *up, const void *grad, void *d_gate, void *d_up,
                    int64_t n, cudaStream_t stream) {
        gelu_mul_backward<T><<<blocks_for(n), kThreads, 0, stream>>>(
            static_cast<const T *>(gate), static_cast<const T *>(up),
            static_cast<const T *>(grad), static_cast<T *>(d_gate), static_cast<T *>(d_up), n);
    }
};

template <typename T>
struct Rotary {
    static void run(const void *x, void *out, const void *cos, const void *sin, int64_t rows,
                    int64_t len, int64_t heads, int64_t dim, float sign, cudaStream_t stream) {
        int64_t pairs = rows * len * heads * (dim / 2);
        rotary<T><<<blocks_for(pairs), kThreads, 0, stream>>>(
            static_cast<const T *>(x), static_cast<T *>(out), static_cast<const T *>(cos),
            static_cast<const T *>(sin), rows, len, heads, dim, sign);
    }
};

template <typename G>
struct AdamW {
    template <typename W>
    static void go(float *master, const void *grad, float *m, float *v, void *weight, int64_t n,
                   const float *scale, float lr, float b1, float b2, float wd, float eps,
                   float step, cudaStream_t stream) {
        adamw<G, W><<<blocks_for(n), kThreads, 0, stream>>>(
            master, static_cast<const G *>(grad), m, v, static_cast<W *>(weight), n, scale, lr,
            b1, b2, wd, eps, step);
    }
    static void run(int weight_dtype, float *master, const void *grad, float *m, float *v,
                    void *weight, int64_t n, const float *scale, float lr, float b1, float b2,
                    float wd, float eps, float step, cudaStream_t stream) {
        switch (weight_dtype) {
            case BF16:
                go<__nv_bfloat16>(master, grad, m, v, weight, n, scale, lr, b1, b2, wd, eps, step,
                                  stream);
                break;
            case F16:
                go<__half>(master, grad, m, v, weight, n, scale, lr, b1, b2, wd, eps, step, stream);
                break;
            default:
                go<float>(master, grad, m, v, weight, n, scale, lr, b1, b2, wd, eps, step, stream);
        }
    }
};

}  // namespace

// The launchers: 0 on success, -1 for a dtype they do not take, else the CUDA error code.
extern "C" {

int llava_k_gelu_mul_forward(int dtype, const void *gate, const void *up, void *out, int64_t n,
                             void *stream) {
    return by_dtype<GeluMulForward>(dtype, n, gate, up, out, n, static_cast<cudaStream_t>(stream));
}

int llava_k_gelu_mul_backward(int dtype, const void *gate, const void *up, const void *grad,
                              void *d_gate, void *d_up, int64_t n, void *stream) {
    return by_dtype<GeluMulBackward>(dtype, n, gate, up, grad, d_gate, d_up, n,
                                     static_cast<cudaStream_t>(stream));
}

int llava_k_rotary(int dtype, const void *x, void *out, const void *cos, const void *sin,
                   int64_t rows, int64_t len, int64_t heads, int64_t dim, float sign,
                   void *stream) {
    return by_dtype<Rotary>(dtype, rows * len * heads * (dim / 2), x, out, cos, sin, rows, len,
                            heads, dim, sign,
                            static_cast<cudaStream_t>(stream));
}

// `weight` may be NULL (the master is the weight); `weight_dtype` is its dtype otherwise.
int llava_k_adamw(int grad_dtype, int weight_dtype, float *master, const void *grad,
                  float *exp_avg, float *exp_avg_sq, void *weight, int64_t n,
                  const float *grad_scale, float lr, float beta1, float beta2, float weight_decay,
                  float eps, float step, void *stream) {
    return by_dtype<AdamW>(grad_dtype, n, weight_dtype, master, grad, exp_avg, exp_avg_sq, weight, n,
                           grad_scale, lr, beta1, beta2, weight_decay, eps, step,
                           static_cast<cudaStream_t>(stream));
}
}
