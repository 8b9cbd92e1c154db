//! Matrix products on a CPU where libtorch's are slow (`csrc/cpu_gemv.cpp`):
//!
//! * decoding's matrix-vector products ([`dense`], [`int8`]): `x W^T` for a few rows of `x`
//!   against a bf16, f16 or f32 weight, or int8 codes with a scale per row, with the weights
//!   streamed at close to the memory's bandwidth (libtorch's bf16 kernel reaches about half of
//!   it). Instructions are picked by what the CPU has: AVX-512 (VNNI for int8), AVX2, or plain C++;
//! * a prompt's rows against 16-bit weights on CPUs without bf16 arithmetic ([`widened`]):
//!   libtorch's f32 GEMM on blocks of the weight widened to f32, about 3x its bf16 GEMM there;
//! * quantized weights ([`int8`], [`int4`]): with VNNI, a few rows of activations quantized as
//!   llama.cpp's Q8_0 meet the codes in integer dot products, and so do a prompt's rows (an
//!   integer GEMM); with AVX2 alone, a few rows meet the codes the same way (`vpmaddubsw`).
//!   Other prompts go through libtorch's f32 GEMM on blocks of the weight dequantized to f32.
//!
//! [`Linear`](crate::layers::Linear), Gemma's tied head and the quantized weights call these
//! ([`linear`] picks for dense weights); `LLAVA_CPU_GEMV=0` turns them off (libtorch's ops then run), and
//! `LLAVA_CPU_ISA=scalar|avx2|avx512` caps the instructions they use.

use std::ffi::{c_char, c_void};
use std::sync::OnceLock;

use tch::{Device, Kind, TchError, Tensor};

unsafe extern "C" {
    fn llava_gemv_free_message(message: *mut c_char);
    fn llava_gemv_isa() -> i32;
    fn llava_gemv_dense(
        x: *const c_void,
        w: *const c_void,
        level: i32,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn llava_gemv_bf16_dot() -> i32;
    fn llava_gemm_widened(
        x: *const c_void,
        w: *const c_void,
        level: i32,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn llava_gemv_int8(
        x: *const c_void,
        q: *const c_void,
        scales: *const c_void,
        level: i32,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn llava_gemm_int8(
        x: *const c_void,
        q: *const c_void,
        scales: *const c_void,
        level: i32,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn llava_gemv_int4(
        x: *const c_void,
        codes: *const c_void,
        scales: *const c_void,
        mins: *const c_void,
        group: i64,
        level: i32,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn llava_quantize_rows(
        w: *const c_void,
        group: i64,
        codes: *mut c_void,
        scales: *mut c_void,
        mins: *mut c_void,
    ) -> *mut c_char;
    fn llava_gemm_int4(
        x: *const c_void,
        codes: *const c_void,
        scales: *const c_void,
        mins: *const c_void,
        group: i64,
        level: i32,
        out: *mut *mut c_void,
    ) -> *mut c_char;
}

/// Inputs of at most this many rows (tokens: one per sequence while decoding) go through these
/// kernels; longer ones (prompts) through libtorch's GEMMs, which reuse each weight across rows.
pub const MAX_ROWS: i64 = 4;

/// The instructions the kernels use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain C++ (any CPU).
    Scalar,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX-512 (F, BW, VL).
    Avx512,
    /// AVX-512 with VNNI: int8 weights meet Q8_0-quantized activations.
    Avx512Vnni,
}

/// What [`Isa`] the kernels picked (after `LLAVA_CPU_ISA`).
pub fn isa() -> Isa {
    // SAFETY: no arguments; reads the CPU's features once.
    match unsafe { llava_gemv_isa() } {
        3 => Isa::Avx512Vnni,
        2 => Isa::Avx512,
        1 => Isa::Avx2,
        _ => Isa::Scalar,
    }
}

impl Isa {
    /// Every level, plainest first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni];

    /// The shim's number for the level.
    fn code(self) -> i32 {
        self as i32
    }
}

/// Whether the kernels are on (`LLAVA_CPU_GEMV`, read once; on unless `0`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LLAVA_CPU_GEMV").is_none_or(|v| v != "0"))
}

/// The rows of `x` `[..., k]` when the kernels should take the product: on, on the CPU, at most
/// [`MAX_ROWS`] rows.
fn rows_taken(x: &Tensor) -> Option<i64> {
    if !enabled() || x.device() != Device::Cpu {
        return None;
    }
    let k = *x.size().last()?;
    let rows = x.numel() as i64 / k.max(1);
    (rows <= MAX_ROWS).then_some(rows)
}

/// `x W^T` for `x` `[..., k]` and `w` `[n, k]` on the CPU by whichever of our kernels beats
/// libtorch's for this input: [`dense`] for a few rows, [`widened`] for a prompt's rows against
/// 16-bit weights where the CPU lacks bf16 arithmetic; `None` where libtorch's op should run.
pub fn linear(x: &Tensor, w: &Tensor) -> Option<Tensor> {
    dense(x, w).or_else(|| widened(x, w))
}

/// Whether the CPU multiplies bf16 numbers natively (AVX512_BF16), which libtorch's bf16 GEMMs
/// need to run at speed.
pub fn has_bf16_arithmetic() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    // SAFETY: no arguments; reads the CPU's features.
    *HAS.get_or_init(|| unsafe { llava_gemv_bf16_dot() } != 0)
}

/// `x W^T` for many rows of `x` against bf16 or f16 weights by libtorch's f32 GEMM on 8 MiB
/// blocks of `W` widened to f32, where that is faster than libtorch's 16-bit GEMM: f16 weights
/// always, bf16 ones on CPUs without bf16 arithmetic (there libtorch's bf16 GEMM runs at about a
/// third of its f32 speed). `None` where libtorch's op should run: the kernels off, another
/// device, [`MAX_ROWS`] rows or fewer (see [`dense`]), a weight that is not a contiguous 16-bit
/// matrix, bf16 on a CPU with bf16 arithmetic, or autograd recording.
pub fn widened(x: &Tensor, w: &Tensor) -> Option<Tensor> {
    widened_with(x, w, isa(), has_bf16_arithmetic())
}

/// [`widened`] with at most the instructions of `level` for widening, and `bf16_native` standing
/// for the CPU's bf16 arithmetic.
pub fn widened_with(x: &Tensor, w: &Tensor, level: Isa, bf16_native: bool) -> Option<Tensor> {
    if !enabled() || x.device() != Device::Cpu || w.device() != Device::Cpu {
        return None;
    }
    let k = *x.size().last()?;
    let rows = x.numel() as i64 / k.max(1);
    let pays = match w.kind() {
        Kind::Half => true,
        Kind::BFloat16 => !bf16_native,
        _ => false,
    };
    if rows <= MAX_ROWS || !pays || w.dim() != 2 || !w.is_contiguous() {
        return None;
    }
    by_rows(x, rows, w.size()[0], |x2, out| {
        // SAFETY: as in `dense_with`.
        unsafe { llava_gemm_widened(x2.as_ptr().cast(), w.as_ptr().cast(), level.code(), out) }
    })
}

/// `x W^T` for `x` `[..., k]` and `w` `[n, k]` (bf16, f16 or f32, on the CPU), in `x`'s dtype,
/// or `None` where libtorch's op should run: more than [`MAX_ROWS`] rows, another device or
/// dtype, a weight that is not contiguous, or autograd recording (grad mode on and an input that
/// requires grad).
pub fn dense(x: &Tensor, w: &Tensor) -> Option<Tensor> {
    dense_with(x, w, isa())
}

/// [`dense`] with at most the instructions of `level` (each path can be checked on one CPU).
pub fn dense_with(x: &Tensor, w: &Tensor, level: Isa) -> Option<Tensor> {
    let rows = rows_taken(x)?;
    if w.device() != Device::Cpu
        || !matches!(w.kind(), Kind::BFloat16 | Kind::Half | Kind::Float)
        || w.dim() != 2
        || !w.is_contiguous()
    {
        return None;
    }
    by_rows(x, rows, w.size()[0], |x2, out| {
        // SAFETY: live tensors for the call's duration; the shim catches every C++ exception.
        unsafe { llava_gemv_dense(x2.as_ptr().cast(), w.as_ptr().cast(), level.code(), out) }
    })
}

/// `(x Q^T) * scales` for `x` `[..., k]`, int8 codes `q` `[n, k]` and `scales` `[n]`, in `x`'s
/// dtype, or `None` where libtorch's op should run: the kernels off, another device, or an input
/// that requires grad. A few rows (at most [`MAX_ROWS`]) go through the matrix-vector kernel (with
/// AVX2 or VNNI and `k` a multiple of 32, the rows of `x` quantized as llama.cpp's Q8_0 first).
/// More (a prompt) go, with VNNI and `k` a multiple of 32, through an integer GEMM of ours against
/// the rows of `x` as Q8_0 (as [`int4`]'s), and otherwise through libtorch's f32 GEMM on blocks of
/// the weight dequantized to f32.
pub fn int8(x: &Tensor, q: &Tensor, scales: &Tensor) -> Option<Tensor> {
    int8_with(x, q, scales, isa())
}

/// [`int8`] with at most the instructions of `level`.
pub fn int8_with(x: &Tensor, q: &Tensor, scales: &Tensor, level: Isa) -> Option<Tensor> {
    let (rows, few) = quantized_rows(x, q)?;
    let shim = if few {
        llava_gemv_int8
    } else {
        llava_gemm_int8
    };
    by_rows(x, rows, q.size()[0], |x2, out| {
        // SAFETY: as in `dense_with`.
        unsafe {
            shim(
                x2.as_ptr().cast(),
                q.as_ptr().cast(),
                scales.as_ptr().cast(),
                level.code(),
                out,
            )
        }
    })
}

/// An int4 weight `[n, k]` as the kernels read it: `w = q * scale + min` per group of `group`
/// consecutive inputs of a row, `q` in 0..=15 (llama.cpp's Q4_1).
#[derive(Debug, Clone, Copy)]
pub struct Int4<'a> {
    /// `[n, k / 2]` uint8: each 32 inputs of a row in 16 bytes, byte `b` holding input `b` in its
    /// low nibble and input `16 + b` in its high one (llama.cpp's Q4_0 and Q4_1 blocks).
    pub codes: &'a Tensor,
    /// `[n, k / group]` bf16.
    pub scales: &'a Tensor,
    /// `[n, k / group]` bf16.
    pub mins: &'a Tensor,
    /// Inputs per group: 32 or a multiple of it; `k` is a multiple of it.
    pub group: i64,
}

/// `x W^T` for `x` `[..., k]` and an int4 weight, in `x`'s dtype, or `None` where the kernels do
/// not run (as in [`int8`]). A few rows go through the matrix-vector kernel against the rows of
/// `x` quantized as Q8_0 (with VNNI in tiles of 4 weight rows by up to 4 rows of `x` that unpack
/// each step's codes once; with AVX2, or AVX-512 without VNNI, by `vpmaddubsw` on each block's
/// codes). More (a prompt) go, with VNNI, through an integer GEMM of ours
/// against the rows of `x` as Q8_0 (16 weight rows in a vector's lanes, 8 rows of `x` a tile),
/// and otherwise through libtorch's f32 GEMM on blocks of the weight dequantized to f32.
pub fn int4(x: &Tensor, w: Int4) -> Option<Tensor> {
    int4_with(x, w, isa())
}

/// [`int4`] with at most the instructions of `level`.
pub fn int4_with(x: &Tensor, w: Int4, level: Isa) -> Option<Tensor> {
    let (rows, few) = quantized_rows(x, w.codes)?;
    let shim = if few {
        llava_gemv_int4
    } else {
        llava_gemm_int4
    };
    by_rows(x, rows, w.codes.size()[0], |x2, out| {
        // SAFETY: as in `dense_with`; the shim checks the shapes and dtypes.
        unsafe {
            shim(
                x2.as_ptr().cast(),
                w.codes.as_ptr().cast(),
                w.scales.as_ptr().cast(),
                w.mins.as_ptr().cast(),
                w.group,
                level.code(),
                out,
            )
        }
    })
}

/// Quantizes `w` `[n, k]` (bf16, f16 or f32, contiguous, on the CPU) in one pass over each row
/// into `codes` and `scales` (and `mins`), allocated by the caller: int8 codes `[n, k]` with bf16
/// scales `[n]` when `group` is `None`, else int4 in [`Int4`]'s layout with bf16 scales and
/// minimums `[n, k / group]`. The arithmetic is `foundation::quant`'s tensor ops', element for
/// element; `false` where the weight is not such a matrix (those ops should run).
pub fn quantize_rows(
    w: &Tensor,
    group: Option<i64>,
    codes: &Tensor,
    scales: &Tensor,
    mins: Option<&Tensor>,
) -> bool {
    if w.device() != Device::Cpu
        || w.dim() != 2
        || !w.is_contiguous()
        || !matches!(w.kind(), Kind::BFloat16 | Kind::Half | Kind::Float)
    {
        return false;
    }
    let mins = mins.map_or(std::ptr::null_mut(), |m| m.as_ptr() as *mut c_void);
    // SAFETY: live tensors for the call's duration; the shim checks every output's type and
    // size before writing, and catches every C++ exception.
    let message = unsafe {
        llava_quantize_rows(
            w.as_ptr().cast(),
            group.unwrap_or(0),
            codes.as_ptr() as *mut c_void,
            scales.as_ptr() as *mut c_void,
            mins,
        )
    };
    taken(message, std::ptr::null_mut());
    true
}

/// The rows of `x` `[..., k]` and whether they are few (at most [`MAX_ROWS`]) when the quantized
/// kernels should take a product with `codes`: on, everything on the CPU, contiguous codes, no
/// gradient wanted.
fn quantized_rows(x: &Tensor, codes: &Tensor) -> Option<(i64, bool)> {
    if !enabled()
        || x.device() != Device::Cpu
        || codes.device() != Device::Cpu
        || !codes.is_contiguous()
        || x.requires_grad()
    {
        return None;
    }
    let k = *x.size().last()?;
    let rows = x.numel() as i64 / k.max(1);
    Some((rows, rows <= MAX_ROWS))
}

/// One shim call on `x` `[..., k]` seen as `rows` rows: `call` gets them as `[rows, k]` and the
/// slot for its result `[rows, n]`, returned in `x`'s leading shape (`[..., n]`), or `None`
/// where the shim declined.
fn by_rows(
    x: &Tensor,
    rows: i64,
    n: i64,
    call: impl FnOnce(&Tensor, *mut *mut c_void) -> *mut c_char,
) -> Option<Tensor> {
    let mut shape = x.size();
    let x2 = x.reshape([rows, *shape.last()?]);
    let mut out = std::ptr::null_mut();
    let message = call(&x2, &mut out);
    let y = taken(message, out)?;
    *shape.last_mut()? = n;
    Some(y.reshape(shape.as_slice()))
}

/// The shim's answer: its tensor, `None` where it declined. An error is our bug (the checks above
/// admit only what the kernels take), so it panics with libtorch's message.
fn taken(message: *mut c_char, out: *mut c_void) -> Option<Tensor> {
    // SAFETY: the shim's answers are NULL or its own strdup'd messages.
    if let Err(e) = unsafe { crate::ffi::checked(message, llava_gemv_free_message) } {
        panic!("{}", TchError::Torch(e));
    }
    // SAFETY: a non-NULL `out` is a tensor the shim allocated for us, owned from here.
    (!out.is_null()).then(|| unsafe { Tensor::from_ptr(out.cast()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The levels this CPU can run.
    fn levels() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|l| *l <= isa()).collect()
    }

    /// The largest difference relative to the reference's largest magnitude.
    /// How far `got` strays from `want = x W^T` beyond what rounding the rows of `x` to Q8_0
    /// (blocks of 32, step max |x| / 127, as the VNNI kernels do) moves it: each output by at
    /// most sum_k |w_jk| * step_k / 2, and, the roundings being independent and uniform, by
    /// more than six standard deviations (sqrt(sum_k w_jk^2 * step_k^2 / 12)) about once in
    /// 10^9; the smaller bound, plus f32 rounding. At most 0 when within.
    fn q8_excess(got: &Tensor, want: &Tensor, x: &Tensor, w: &Tensor) -> f64 {
        let (k, n) = (x.size()[x.dim() - 1], w.size()[0]);
        let x = x.to_kind(Kind::Float).reshape([-1, k / 32, 32]);
        let step = (x.abs().amax([2], true) / 127.0)
            .expand([-1, k / 32, 32], false)
            .reshape([-1, k]);
        let w = w.to_kind(Kind::Float);
        let worst = (&step / 2.0).matmul(&w.abs().tr());
        let six_sigma = ((&step * &step / 12.0).matmul(&(&w * &w).tr())).sqrt() * 6.0;
        let bound = worst.minimum(&six_sigma);
        let want = want.to_kind(Kind::Float).reshape([-1, n]);
        let diff = (got.to_kind(Kind::Float).reshape([-1, n]) - &want).abs();
        (diff - bound * 1.001 - (want.abs() + 1.0) * 1e-4)
            .max()
            .double_value(&[])
    }

    fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
        let want = want.to_kind(Kind::Double);
        let diff = (got.to_kind(Kind::Double) - &want)
            .abs()
            .max()
            .double_value(&[]);
        diff / want.abs().max().double_value(&[]).max(1e-12)
    }

    #[test]
    fn dense_matches_libtorch_at_every_level_dtype_and_shape() {
        tch::manual_seed(0);
        // Odd sizes reach the tails: rows not a multiple of 4, k not a multiple of 8 or 16.
        for (n, k) in [(37, 67), (64, 256), (130, 1000), (4, 16)] {
            let w32 = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
            for wkind in [Kind::Float, Kind::BFloat16, Kind::Half] {
                let w = w32.to_kind(wkind);
                for rows in 1..=MAX_ROWS {
                    for xkind in [Kind::Float, Kind::BFloat16] {
                        let x = Tensor::randn([rows, k], (Kind::Float, Device::Cpu));
                        let want = x.linear::<&Tensor>(&w.to_kind(Kind::Float), None);
                        for level in levels() {
                            let got = dense_with(&x.to_kind(xkind), &w, level)
                                .expect("the kernels take a few rows");
                            assert_eq!(got.kind(), xkind);
                            assert_eq!(got.size(), [rows, n]);
                            // f32 accumulation: differences are rounding, bf16 outputs round to 8 bits.
                            let x_error = match xkind {
                                Kind::BFloat16 => 1e-2,
                                _ => 1e-5,
                            };
                            let want = match xkind {
                                Kind::BFloat16 => x
                                    .to_kind(Kind::BFloat16)
                                    .to_kind(Kind::Float)
                                    .linear::<&Tensor>(&w.to_kind(Kind::Float), None),
                                _ => want.shallow_clone(),
                            };
                            let e = relative_error(&got, &want);
                            assert!(
                                e < x_error,
                                "{level:?} {wkind:?} weights, {xkind:?} x, {rows}x{k} by {n}: {e}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn dense_keeps_leading_dimensions() {
        let w = Tensor::randn([5, 8], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([1, 3, 8], (Kind::Float, Device::Cpu));
        let got = dense(&x, &w).unwrap();
        assert_eq!(got.size(), [1, 3, 5]);
        assert!(relative_error(&got, &x.linear::<&Tensor>(&w, None)) < 1e-5);
    }

    #[test]
    fn dense_declines_what_libtorch_should_run() {
        let w = Tensor::randn([5, 8], (Kind::Float, Device::Cpu));
        // Prompts: more rows than the kernels take.
        let x = Tensor::randn([MAX_ROWS + 1, 8], (Kind::Float, Device::Cpu));
        assert!(dense(&x, &w).is_none());
        // Autograd recording.
        let x = Tensor::randn([1, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(dense(&x, &w).is_none());
        let trained = w.shallow_clone().set_requires_grad(true);
        assert!(dense(&x.detach(), &trained).is_none());
        // Without grad mode the product is inference: the kernels take it.
        let _guard = tch::no_grad_guard();
        assert!(dense(&x, &trained).is_some());
        // Weights that are not a contiguous matrix.
        assert!(dense(&Tensor::randn([1, 5], (Kind::Float, Device::Cpu)), &w.tr()).is_none());
        // Integer weights.
        assert!(dense(&x, &w.to_kind(Kind::Int8)).is_none());
    }

    #[test]
    fn widened_matches_libtorch_for_prompts() {
        tch::manual_seed(2);
        // n over one 8 MiB block of f32 rows (k = 1000: 2096 rows a block) and not a multiple of it.
        for (n, k) in [(37, 67), (4500, 1000)] {
            let w32 = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
            for wkind in [Kind::BFloat16, Kind::Half] {
                let w = w32.to_kind(wkind);
                for rows in [MAX_ROWS + 1, 19] {
                    let x = Tensor::randn([1, rows, k], (Kind::Float, Device::Cpu));
                    let want = x.linear::<&Tensor>(&w.to_kind(Kind::Float), None);
                    for level in levels() {
                        let got = widened_with(&x, &w, level, false).expect("16-bit weights");
                        assert_eq!(got.size(), [1, rows, n]);
                        let e = relative_error(&got, &want);
                        assert!(e < 1e-5, "{level:?} {wkind:?}, {rows}x{k} by {n}: {e}");
                        let got = widened_with(&x.to_kind(Kind::BFloat16), &w, level, false)
                            .expect("16-bit weights");
                        assert_eq!(got.kind(), Kind::BFloat16);
                    }
                }
            }
            // Where libtorch is as fast or faster: bf16 with bf16 arithmetic, f32, few rows.
            let x = Tensor::randn([8, k], (Kind::Float, Device::Cpu));
            assert!(widened_with(&x, &w32.to_kind(Kind::BFloat16), isa(), true).is_none());
            assert!(widened_with(&x, &w32, isa(), false).is_none());
            assert!(
                widened_with(&x.narrow(0, 0, 2), &w32.to_kind(Kind::Half), isa(), false).is_none()
            );
        }
        // Autograd recording.
        let w = Tensor::randn([8, 16], (Kind::Float, Device::Cpu)).to_kind(Kind::Half);
        let x = Tensor::randn([8, 16], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(widened_with(&x, &w, isa(), false).is_none());
    }

    #[test]
    fn int8_matches_the_dequantized_product_at_every_level() {
        tch::manual_seed(1);
        // A few rows reach a Q8_0 kernel where 32 | k (VNNI's where 64 | k, AVX2's otherwise),
        // and prompts (9 and 40 rows), with VNNI, the integer GEMM where 32 | k; the others the
        // float paths (prompts: the weight dequantized to f32 block by block; n = 4500 spans two
        // blocks at k = 1000).
        for (n, k) in [
            (37, 64),
            (130, 2048),
            (70, 96),
            (9, 100),
            (8, 40),
            (4500, 1000),
        ] {
            let q = Tensor::randint_low(-128, 128, [n, k], (Kind::Int8, Device::Cpu));
            let scales = Tensor::rand([n], (Kind::Float, Device::Cpu)) * 0.01 + 0.001;
            let w = q.to_kind(Kind::Float) * scales.unsqueeze(1);
            let row_counts: Vec<i64> = if n > 1000 {
                vec![1, 9]
            } else {
                (1..=MAX_ROWS).chain([9, 40]).collect()
            };
            for rows in row_counts {
                let x = Tensor::randn([rows, k], (Kind::Float, Device::Cpu));
                let want = x.linear::<&Tensor>(&w, None);
                for level in levels() {
                    let got = int8_with(&x, &q, &scales.to_kind(Kind::BFloat16), level).unwrap();
                    assert_eq!(got.size(), [rows, n]);
                    // Scales in bf16 (as quantized weights keep them) and, in the Q8_0 kernels,
                    // activations rounded to 8 bits per block of 32.
                    let bf16_scales = q.to_kind(Kind::Float)
                        * scales
                            .to_kind(Kind::BFloat16)
                            .to_kind(Kind::Float)
                            .unsqueeze(1);
                    let want_bf16 = x.linear::<&Tensor>(&bf16_scales, None);
                    let q8 = level != Isa::Scalar
                        && k % 32 == 0
                        && (rows <= MAX_ROWS || level == Isa::Avx512Vnni);
                    let e = if q8 {
                        q8_excess(&got, &want_bf16, &x, &bf16_scales)
                    } else {
                        relative_error(&got, &want_bf16) - 1e-5
                    };
                    assert!(e <= 0.0, "{level:?}, {rows}x{k} by {n}: {e}");
                    assert!(relative_error(&got, &want) < 3e-2);
                }
            }
        }
    }

    #[test]
    fn int8_declines_autograd_and_other_devices() {
        let q = Tensor::ones([4, 64], (Kind::Int8, Device::Cpu));
        let scales = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([1, 64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(int8(&x, &q, &scales).is_none());
        let x = Tensor::randn([MAX_ROWS + 1, 64], (Kind::Float, Device::Cpu));
        assert!(int8(&x, &q, &scales).is_some());
        assert!(int8(&x, &q.tr(), &scales).is_none());
    }

    /// Random int4 codes `[n, k]` (0..=15), packed as [`Int4`] documents by a plain loop, with
    /// random bf16 scales and minimums per group, and the weight they stand for.
    struct RandomInt4 {
        codes: Tensor,
        scales: Tensor,
        mins: Tensor,
        group: i64,
        dense: Tensor,
    }

    impl RandomInt4 {
        fn new(n: i64, k: i64, group: i64) -> Self {
            let q = Tensor::randint_low(0, 16, [n, k], (Kind::Int64, Device::Cpu));
            let values = Vec::<i64>::try_from(q.reshape([-1])).unwrap();
            let mut packed = vec![0u8; (n * k / 2) as usize];
            for r in 0..n as usize {
                for j in 0..k as usize {
                    let code = values[r * k as usize + j] as u8;
                    let byte = &mut packed[r * k as usize / 2 + j / 32 * 16 + j % 16];
                    *byte |= if j % 32 < 16 { code } else { code << 4 };
                }
            }
            let codes = Tensor::from_slice(&packed).view([n, k / 2]);
            let groups = k / group;
            let scales = (Tensor::rand([n, groups], (Kind::Float, Device::Cpu)) * 0.01 + 0.001)
                .to_kind(Kind::BFloat16);
            let mins = (Tensor::randn([n, groups], (Kind::Float, Device::Cpu)) * 0.05)
                .to_kind(Kind::BFloat16);
            let per_input = |t: &Tensor| {
                t.to_kind(Kind::Float)
                    .repeat_interleave_self_int(group, 1, None)
            };
            let dense = q.to_kind(Kind::Float) * per_input(&scales) + per_input(&mins);
            RandomInt4 {
                codes,
                scales,
                mins,
                group,
                dense,
            }
        }

        fn weight(&self) -> Int4<'_> {
            Int4 {
                codes: &self.codes,
                scales: &self.scales,
                mins: &self.mins,
                group: self.group,
            }
        }
    }

    #[test]
    fn int4_matches_its_definition_at_every_level() {
        tch::manual_seed(3);
        // VNNI takes 128 inputs a step: 64, 96 and 160 leave blocks of 32 past the last step.
        for (n, k, group) in [
            (37, 64, 32),
            (130, 2048, 32),
            (13, 96, 32),
            (6, 160, 32),
            (11, 384, 64),
            (21, 512, 128),
            (9, 256, 256),
        ] {
            let w = RandomInt4::new(n, k, group);
            for rows in (1..=MAX_ROWS).chain([7, 40]) {
                let x = Tensor::randn([1, rows, k], (Kind::Float, Device::Cpu));
                let want = x.linear::<&Tensor>(&w.dense, None);
                for level in levels() {
                    let got = int4_with(&x, w.weight(), level).unwrap();
                    assert_eq!(got.size(), [1, rows, n]);
                    // VNNI rounds the activations to 8 bits per block of 32 (Q8_0), for
                    // prompts too; AVX2 (and AVX-512 without VNNI) for a few rows.
                    let q8 = level == Isa::Avx512Vnni || (level >= Isa::Avx2 && rows <= MAX_ROWS);
                    let e = if q8 {
                        q8_excess(&got, &want, &x, &w.dense)
                    } else {
                        relative_error(&got, &want) - 1e-5
                    };
                    assert!(
                        e <= 0.0,
                        "{level:?}, {rows}x{k} by {n}, groups of {group}: {e}"
                    );
                    let got = int4_with(&x.to_kind(Kind::BFloat16), w.weight(), level).unwrap();
                    assert_eq!(got.kind(), Kind::BFloat16);
                }
            }
        }
    }

    #[test]
    fn int4_names_what_it_cannot_multiply() {
        let w = RandomInt4::new(8, 64, 32);
        let x = Tensor::randn([1, 64], (Kind::Float, Device::Cpu));
        let bad_group = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            int4(
                &x,
                Int4 {
                    group: 48,
                    ..w.weight()
                },
            )
        }));
        let message = *bad_group.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("groups of 48"), "{message}");
        let x = Tensor::randn([1, 64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(int4(&x, w.weight()).is_none());
    }
}
