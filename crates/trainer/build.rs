fn main() {
    libtorch_build::emit_link_args();
    libtorch_build::compile_cpp("llava_adamw", &["csrc/adamw.cpp"]);
    // c10d's Gloo process group, against the gloo headers of the commit libtorch was built with.
    println!("cargo:rerun-if-changed=csrc/third_party/gloo");
    libtorch_build::compile_cpp_with(
        "llava_c10d",
        &["csrc/c10d.cpp"],
        &["csrc/third_party/gloo"],
        &["USE_C10D_GLOO"],
    );
}
