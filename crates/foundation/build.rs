fn main() {
    libtorch_build::emit_link_args();
    libtorch_build::compile_cpp("llava_profiler", &["csrc/profiler.cpp"]);
}
