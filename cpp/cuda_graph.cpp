// See cuda_graph.h.
#include "recon/cpp/cuda_graph.h"

#include <c10/core/Event.h>
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDAStream.h>

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

}  // namespace recon::cuda_graph
