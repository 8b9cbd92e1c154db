//! The small shared ground the model crates stand on.
//!
//! * [`Checkpoint`]: safetensors checkpoints as they ship (one file, or shards listed by
//!   `model.safetensors.index.json`), memory-mapped, with errors that name the tensor and the file;
//! * [`Checkpoint::load_into`]: fills a `tch` [`VarStore`](tch::nn::VarStore) whose variable names are
//!   built from the module tree, so they match the Hugging Face names exactly;
//! * [`save_safetensors`] and [`write_atomic`]: writes that never leave a half-written file behind;
//! * [`device`]: device and dtype choices (`cpu`, `cuda`, `bf16`, …);
//! * [`hub`]: models by Hugging Face id, through the local Hugging Face cache;
//! * [`layers`]: the few layers every model here shares, initialised as Hugging Face initialises them;
//! * [`gguf`]: GGUF files as llama.cpp reads them (f32, f16, Q8_0, Q4_0 tensors);
//! * [`quant`]: weight-only int8 and int4 quantization for inference;
//! * [`cpu_gemv`]: matrix-vector products for decoding on a CPU, at the memory's bandwidth;
//! * [`parity`]: the shared machinery of the Hugging Face parity checks (fixture metadata, checks,
//!   reports, `allclose`-style comparison);
//! * [`torch_panic`]: libtorch errors that `tch` raises as panics (CUDA out of memory), caught and
//!   turned back into errors.

pub mod checkpoint;
pub mod cpu_gemv;
pub mod cuda;
pub mod device;
mod error;
pub mod ffi;
pub mod gguf;
pub mod hub;
pub mod io;
pub mod layers;
pub mod parity;
pub mod profiler;
pub mod quant;
pub mod torch_panic;

pub use checkpoint::{Checkpoint, TensorInfo};

/// The project's copy of the Hugging Face parity fixtures: `$LLAVA_FIXTURES` when set (test binaries
/// run on another machine, whose checkout is elsewhere), else `fixtures/hf-parity` of this workspace.
pub fn parity_fixtures() -> std::path::PathBuf {
    match std::env::var_os("LLAVA_FIXTURES") {
        Some(dir) => dir.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf-parity"),
    }
}

/// A program of the Python environment whose torch this workspace links (`cargo xtask setup`
/// points `.libtorch` into it): `bin/<name>` of the nearest ancestor of `.libtorch`'s target that
/// has one (`python`, `torchrun`). Tests use it to check against the real tools.
pub fn torch_env_bin(name: &str) -> Option<std::path::PathBuf> {
    let torch = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.libtorch")
        .canonicalize()
        .ok()?;
    torch
        .ancestors()
        .map(|dir| dir.join("bin").join(name))
        .find(|p| p.exists())
}

/// Creates a variable store on `device`, builds a model in it with `build` (variables are created
/// in f32 with their random initialisation) and converts every variable to `kind`.
pub fn build<M, E>(
    device: tch::Device,
    kind: tch::Kind,
    build: impl FnOnce(&tch::nn::Path) -> std::result::Result<M, E>,
) -> std::result::Result<(tch::nn::VarStore, M), E> {
    build_with(device, kind, false, build)
}

/// [`build`] for a model whose weights are about to be loaded: its variables are created in
/// `kind` from the start, so a bf16 model never holds an f32 copy (twice its weights' bytes)
/// while loading, and the layers of [`layers`] draw no random values (zeros instead), which only
/// matters for variables the checkpoint does not fill.
pub fn build_to_load<M, E>(
    device: tch::Device,
    kind: tch::Kind,
    build: impl FnOnce(&tch::nn::Path) -> std::result::Result<M, E>,
) -> std::result::Result<(tch::nn::VarStore, M), E> {
    build_with(device, kind, true, build)
}

thread_local! {
    /// Whether [`build_to_load`] is building on this thread.
    static LOADING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the model being built on this thread has its weights loaded next
/// ([`build_to_load`]): layers then skip drawing random values ([`layers::normal`]).
pub fn building_to_load() -> bool {
    LOADING.get()
}

/// [`build`] (`to_load` false) or [`build_to_load`] (true).
pub fn build_with<M, E>(
    device: tch::Device,
    kind: tch::Kind,
    to_load: bool,
    build: impl FnOnce(&tch::nn::Path) -> std::result::Result<M, E>,
) -> std::result::Result<(tch::nn::VarStore, M), E> {
    let mut vs = tch::nn::VarStore::new(device);
    if to_load {
        vs.set_kind(kind);
    }
    let was = LOADING.replace(to_load);
    let model = build(&vs.root());
    LOADING.set(was);
    let model = model?;
    // Every variable in `kind`, also those created with a dtype of their own.
    vs.set_kind(kind);
    Ok((vs, model))
}
pub use error::{Error, Result};
pub use io::{read_json, save_safetensors, write_atomic};
