// libtorch's Kineto profiler for `recon bench` (src/profiler.rs): every libtorch op on the host
// and, through CUPTI, every kernel on the GPU, ours launched through cudarc included, written
// as a Chrome trace.
#pragma once

#include <memory>

#include <ATen/record_function.h>

#include "rust/cxx.h"

namespace recon::profiler {

// A named span of recon's own code ("user annotation" in the trace) while a profile runs; a
// no-op otherwise. Ends when destroyed.
class Scope {
 public:
  explicit Scope(rust::Str name);

 private:
  at::RecordFunction record_;
};

// Opens a `Scope` named `name`.
std::unique_ptr<Scope> enter(rust::Str name);

// Starts profiling host ops, and CUDA kernels when `cuda`.
void start(bool cuda);

// Stops profiling, discarding what was recorded.
void stop();

// Stops profiling and writes the trace (Chrome trace JSON) to `path`.
void stop_and_save(rust::Str path);

}  // namespace recon::profiler
