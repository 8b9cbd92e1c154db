fn main() {
    libtorch_build::emit_link_args();
    libtorch_build::compile_cpp("llava_profiler", &["csrc/profiler.cpp"]);
    libtorch_build::compile_cpp_openmp("llava_cpu_gemv", &["csrc/cpu_gemv.cpp"]);
    // The GPU extras, each only where its tools are (see csrc/cuda.cpp): CUDA graphs need the CUDA
    // runtime's headers, our kernels need nvcc as well. Without them the build is the same, and
    // the code falls back to libtorch's operations.
    let toolkit = libtorch_build::cuda_toolkit();
    let mut includes = Vec::new();
    let mut defines = Vec::new();
    if let Some(toolkit) = &toolkit {
        includes.push(toolkit.include.to_string_lossy().into_owned());
        defines.push("LLAVA_CUDA_HEADERS");
        if toolkit.nvcc.is_some() {
            defines.push("LLAVA_CUDA_KERNELS");
            libtorch_build::compile_cuda("llava_kernels", &["csrc/kernels.cu"], toolkit);
        }
        let torch_lib = libtorch_build::libtorch_dir().unwrap().join("lib");
        println!("cargo:rustc-link-search=native={}", torch_lib.display());
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    let includes: Vec<&str> = includes.iter().map(String::as_str).collect();
    libtorch_build::compile_cpp_with("llava_cuda", &["csrc/cuda.cpp"], &includes, &defines);
}
