// CUDA graphs over libtorch work (bridged by src/cuda/graph.rs): capture everything libtorch
// and our NVRTC kernels queue on a device between begin and end, then replay it with one
// launch. Built only when the CUDA runtime headers are found (build.rs); the Rust side has
// the same API returning Unsupported otherwise.
#pragma once

#include <ATen/ThreadLocalState.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/Event.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <memory>
#include <optional>

namespace recon::cuda_graph {

// The side stream this thread captures graphs of `device_index` on: the same one for every
// graph of the thread. cuBLAS and cuBLASLt keep a workspace (33 MiB on the H100) per (handle,
// stream) for the life of the process, so a fresh pool stream per capture (one a generation)
// grew memory by a workspace per generation until the pool's 32 streams came round. Per
// thread, so that concurrent captures (two pipelines in two threads) never share a stream.
c10::cuda::CUDAStream capture_stream(int8_t device_index);

// One graph, its private memory pool (libtorch's caching allocator serves every allocation
// made during capture from it, and keeps it for the replays) and the side stream it is
// captured on.
class Graph {
 public:
  explicit Graph(int8_t device_index)
      : device(device_index),
        side(capture_stream(device_index)),
        previous(c10::cuda::getCurrentCUDAStream(device_index)) {}

  c10::DeviceIndex device;
  c10::cuda::CUDAStream side;
  c10::cuda::CUDAStream previous;
  at::cuda::CUDAGraph graph;
};

// A new, empty graph for CUDA device `device_index`.
std::unique_ptr<Graph> new_graph(int8_t device_index);
// Makes the graph's side stream libtorch's current stream of its device (after it waits for
// the previously current stream's work), for warm-up runs and the capture.
void enter_side_stream(Graph &graph);
// Restores the previously current stream, which then waits for the side stream's work.
void leave_side_stream(Graph &graph);
// Starts / ends the capture of the current (side) stream into the graph (thread-local capture
// mode: other threads may keep using CUDA meanwhile).
void capture_begin(Graph &graph);
void capture_end(Graph &graph);
// Replays the captured work on libtorch's current stream of the graph's device.
void replay(Graph &graph);

// Work that another thread runs alongside this thread's (src/cuda/alongside.rs): created on
// the launching thread, it remembers how far that thread's current stream had got, and that
// thread's libtorch state (grad mode, a running profiler), as `at::launch` does; `enter`, on
// the worker thread, applies that state and makes the worker's current stream a side stream
// that first waits for that point; `leave` waits for the side stream's work to finish and
// restores the worker's previous stream and state. The side stream is one per device for the life of the process (cuBLAS
// keeps a workspace per handle and stream, see capture_stream), of high priority.
class Alongside {
 public:
  explicit Alongside(int8_t device_index);

  c10::DeviceIndex device;
  c10::cuda::CUDAStream side;
  c10::cuda::CUDAStream previous;
  c10::Event ready;
  at::ThreadLocalState launcher_state;
  std::optional<at::ThreadLocalStateGuard> applied_state;
};

std::unique_ptr<Alongside> new_alongside(int8_t device_index);
void enter_alongside(Alongside &alongside);
void leave_alongside(Alongside &alongside);

}  // namespace recon::cuda_graph
