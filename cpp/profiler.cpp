#include "recon/cpp/profiler.h"

#include <set>
#include <string>

#include <torch/csrc/autograd/profiler_kineto.h>

namespace recon::profiler {

namespace kineto = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

void start(bool cuda) {
  const ProfilerConfig config(ProfilerState::KINETO);
  std::set<ActivityType> activities{ActivityType::CPU};
  if (cuda) {
    activities.insert(ActivityType::CUDA);
  }
  kineto::prepareProfiler(config, activities);
  kineto::enableProfiler(config, activities);
}

Scope::Scope(rust::Str name) : record_(at::RecordScope::USER_SCOPE) {
  if (record_.isActive()) {
    record_.before(std::string(name));
  }
}

std::unique_ptr<Scope> enter(rust::Str name) { return std::make_unique<Scope>(name); }

void stop() { kineto::disableProfiler(); }

void stop_and_save(rust::Str path) {
  auto result = kineto::disableProfiler();
  if (!result) {
    throw std::runtime_error("the profiler returned no result");
  }
  result->save(std::string(path));
}

}  // namespace recon::profiler
