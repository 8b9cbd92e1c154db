// Shared by the C++ files that `libtorch_build::compile_cpp` builds: run a body and turn any C++
// exception into a malloc'd message (NULL on success) for the Rust side to read and free, so no
// exception ever unwinds into Rust.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace llava_ffi {

template <typename F>
char *guarded(F &&body) {
    try {
        body();
        return nullptr;
    } catch (const c10::Error &e) {
        // libtorch's own errors without the C++ backtrace `what()` appends.
        return strdup(e.what_without_backtrace());
    } catch (const std::exception &e) {
        return strdup(e.what());
    } catch (...) {
        return strdup("unknown C++ exception");
    }
}

}  // namespace llava_ffi
