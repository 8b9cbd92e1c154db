fn main() {
    libtorch_build::emit_link_args();
}
