// libtorch's Kineto profiler for `recon bench` (src/profiler.rs): every libtorch op on the host
// and, through CUPTI, every kernel on the GPU, ours launched through cudarc included, written
// as a Chrome trace.
#pragma once

#include "rust/cxx.h"

namespace recon::profiler {

// Starts profiling host ops, and CUDA kernels when `cuda`.
void start(bool cuda);

// Stops profiling, discarding what was recorded.
void stop();

// Stops profiling and writes the trace (Chrome trace JSON) to `path`.
void stop_and_save(rust::Str path);

}  // namespace recon::profiler
