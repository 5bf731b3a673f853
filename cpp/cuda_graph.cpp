// See cuda_graph.h.
#include "recon/cpp/cuda_graph.h"

#include <c10/core/Event.h>
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <mutex>
#include <optional>
#include <unordered_map>

namespace recon::cuda_graph {


namespace {
// `waiter` waits for the work queued so far on `producer`.
// (c10's device-generic event: ATen's CUDAEvent.h would pull in cuda_fp16.h and CCCL headers
// the wheels do not ship.)
void wait_for(const c10::cuda::CUDAStream &waiter, const c10::cuda::CUDAStream &producer) {
  c10::Event event(c10::DeviceType::CUDA);
  event.record(producer.unwrap());
  event.block(waiter.unwrap());
}
}  // namespace

c10::cuda::CUDAStream capture_stream(int8_t device_index) {
  thread_local std::unordered_map<int8_t, c10::cuda::CUDAStream> streams;
  auto found = streams.find(device_index);
  if (found == streams.end()) {
    found = streams.emplace(device_index, c10::cuda::getStreamFromPool(false, device_index)).first;
  }
  return found->second;
}

std::unique_ptr<Graph> new_graph(int8_t device_index) {
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, device_index));
  return std::make_unique<Graph>(device_index);
}

void enter_side_stream(Graph &graph) {
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, graph.device));
  graph.previous = c10::cuda::getCurrentCUDAStream(graph.device);
  wait_for(graph.side, graph.previous);
  c10::cuda::setCurrentCUDAStream(graph.side);
}

void leave_side_stream(Graph &graph) {
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, graph.device));
  c10::cuda::setCurrentCUDAStream(graph.previous);
  wait_for(graph.previous, graph.side);
}

void capture_begin(Graph &graph) {
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, graph.device));
  graph.graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
}

void capture_end(Graph &graph) {
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, graph.device));
  graph.graph.capture_end();
}

void replay(Graph &graph) {
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, graph.device));
  graph.graph.replay();
}

namespace {
c10::cuda::CUDAStream alongside_stream(int8_t device_index) {
  static std::mutex lock;
  static std::unordered_map<int8_t, c10::cuda::CUDAStream> streams;
  std::lock_guard<std::mutex> held(lock);
  auto found = streams.find(device_index);
  if (found == streams.end()) {
    // High priority: the work alongside is host-bound, a trickle of small kernels each waited
    // for; at normal priority each waited behind the other work's large kernels.
    found = streams.emplace(device_index, c10::cuda::getStreamFromPool(true, device_index)).first;
  }
  return found->second;
}
}  // namespace

Alongside::Alongside(int8_t device_index)
    : device(device_index),
      side(alongside_stream(device_index)),
      previous(c10::cuda::getCurrentCUDAStream(device_index)),
      ready(c10::DeviceType::CUDA) {
  ready.record(c10::cuda::getCurrentCUDAStream(device_index).unwrap());
}

std::unique_ptr<Alongside> new_alongside(int8_t device_index) {
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, device_index));
  return std::make_unique<Alongside>(device_index);
}

void enter_alongside(Alongside &alongside) {
  alongside.applied_state.emplace(alongside.launcher_state);
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, alongside.device));
  alongside.previous = c10::cuda::getCurrentCUDAStream(alongside.device);
  alongside.ready.block(alongside.side.unwrap());
  c10::cuda::setCurrentCUDAStream(alongside.side);
}

void leave_alongside(Alongside &alongside) {
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, alongside.device));
  c10::cuda::setCurrentCUDAStream(alongside.previous);
  alongside.side.synchronize();
  alongside.applied_state.reset();
}

}  // namespace recon::cuda_graph
