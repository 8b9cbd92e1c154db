/**
 * Copyright (c) 2017-present, Facebook, Inc.
 * All rights reserved.
 *
 * This source code is licensed under the BSD-style license found in the
 * LICENSE file in the root directory of this source tree.
 */

// Hand-written stand-in for the gloo/config.h that CMake generates from
// gloo/config.h.in (gloo 3135b0b41b67dde590eef0938a0bf3d6238df5f7) when
// PyTorch builds third_party/gloo for a Linux x86_64 wheel. See ../README.md.
// No other vendored header includes it; torch's GlooDeviceFactory.hpp does.

#pragma once

#define GLOO_VERSION_MAJOR 0
#define GLOO_VERSION_MINOR 5
#define GLOO_VERSION_PATCH 0

static_assert(
    GLOO_VERSION_MINOR < 100,
    "Programming error: you set a minor version that is too big.");
static_assert(
    GLOO_VERSION_PATCH < 100,
    "Programming error: you set a patch version that is too big.");

#define GLOO_VERSION                                         \
  (GLOO_VERSION_MAJOR * 10000 + GLOO_VERSION_MINOR * 100 +   \
   GLOO_VERSION_PATCH)

// CPU view of the build: CUDA/ROCm parts live in libtorch_cuda.so and are not
// reachable through the vendored headers; torch disables gloo's NCCL/RCCL.
#define GLOO_USE_CUDA 0
#define GLOO_USE_NCCL 0
#define GLOO_USE_ROCM 0
#define GLOO_USE_RCCL 0
#define GLOO_USE_REDIS 0
#define GLOO_USE_IBVERBS 0
#define GLOO_USE_MPI 0
#define GLOO_USE_AVX 0
#define GLOO_USE_LIBUV 0

// libtorch_cpu.so exports gloo::transport::tcp::* and tcp::tls::* (the wheel
// builds with USE_TCP_OPENSSL_LOAD); no ibverbs or uv transport symbols.
#define GLOO_HAVE_TRANSPORT_TCP 1
#define GLOO_HAVE_TRANSPORT_TCP_TLS 1
#define GLOO_HAVE_TRANSPORT_IBVERBS 0
#define GLOO_HAVE_TRANSPORT_UV 0

// torch's cmake/Dependencies.cmake sets this; only gloo/cuda_private.h reads it.
#define GLOO_USE_TORCH_DTYPES 1
