fn main() {
    libtorch_build::emit_link_args();
    libtorch_build::compile_cpp("llava_adamw", &["csrc/adamw.cpp"]);
    // c10d's Gloo process group, against the gloo headers of the commit libtorch was built with;
    // and its NCCL process group (libtorch_cuda's) where the CUDA runtime's and NCCL's headers are
    // (the nvidia-* wheels of a CUDA torch). Without them, CUDA ranks go through Gloo.
    println!("cargo:rerun-if-changed=csrc/third_party/gloo");
    let mut includes = vec!["csrc/third_party/gloo".to_string()];
    let mut defines = vec!["USE_C10D_GLOO"];
    if let (Some(toolkit), Some(nccl)) = (
        libtorch_build::cuda_toolkit(),
        libtorch_build::nccl_include(),
    ) {
        includes.push(toolkit.include.to_string_lossy().into_owned());
        includes.push(nccl.to_string_lossy().into_owned());
        defines.extend(["USE_C10D_NCCL", "LLAVA_NCCL"]);
    }
    let includes: Vec<&str> = includes.iter().map(String::as_str).collect();
    libtorch_build::compile_cpp_with("llava_c10d", &["csrc/c10d.cpp"], &includes, &defines);
}
