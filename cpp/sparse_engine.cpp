// recon's sparse-convolution engine over ATen (see sparse_engine.h for the contract).
//
// Device dispatch: every function here is written with ATen operators only, so it runs on
// whatever device its tensors live on (CPU now; on CUDA the same code works through ATen's
// CUDA kernels). The hand-written CUDA path (NVRTC voxel hash, fused gather/scatter GEMM)
// slots in on the Rust side (src/sparse/engine.rs), which picks the implementation by device
// and hands this file the same kernel-map format: int64 pairs [2, P] grouped by offset plus
// per-offset counts.
//
// Compile time: only the operator headers used are included (ATen/ops/*_ops.h, a few lines
// each) instead of <ATen/ATen.h>, which alone costs about three times as long to parse.

#include "recon/cpp/sparse_engine.h"

#include <ATen/ops/_addmm_activation_ops.h>
#include <ATen/ops/_flash_attention_forward_ops.h>
#include <ATen/ops/empty_ops.h>
#include <ATen/ops/to_ops.h>
#include <ATen/ops/index_select_ops.h>
#include <ATen/ops/mm_ops.h>
#include <ATen/ops/searchsorted_ops.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/GradMode.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

namespace recon {
namespace sparse {
namespace {

constexpr size_t kSpatialDims = 3;

// Kernel extent and dilation per spatial axis (x, y, z).
struct ConvGeometry {
  std::array<int64_t, kSpatialDims> kernel;
  std::array<int64_t, kSpatialDims> dilation;

  int64_t volume() const { return kernel[0] * kernel[1] * kernel[2]; }
  // The offset with zero displacement (odd kernels only), in KRSC order.
  int64_t centre() const {
    return ((kernel[0] / 2) * kernel[1] + kernel[1] / 2) * kernel[2] + kernel[2] / 2;
  }
};

ConvGeometry check_geometry(rust::Slice<const int64_t> kernel_size,
                            rust::Slice<const int64_t> dilation) {
  TORCH_CHECK(kernel_size.size() == kSpatialDims && dilation.size() == kSpatialDims,
              "sparse conv: kernel_size and dilation need 3 entries (x, y, z), got ",
              kernel_size.size(), " and ", dilation.size());
  ConvGeometry g{};
  for (size_t a = 0; a < kSpatialDims; ++a) {
    g.kernel[a] = kernel_size[a];
    g.dilation[a] = dilation[a];
    // A submanifold conv is centred on each active site; even kernels have no centre.
    TORCH_CHECK(g.kernel[a] >= 1 && g.kernel[a] % 2 == 1,
                "submanifold conv: kernel sizes must be odd and positive, got ", g.kernel[a],
                " on axis ", a);
    TORCH_CHECK(g.dilation[a] >= 1, "sparse conv: dilation must be positive, got ",
                g.dilation[a], " on axis ", a);
  }
  return g;
}

// Voxel rows as int64 keys over the bounding box of their coordinates: with rel = coords -
// lower corner and extents e, key = ((rel_b * e_x + rel_x) * e_y + rel_y) * e_z + rel_z.
// Neighbour lookups then need no hash table: inside the box, displacing a voxel by d adds
// (d_x * e_y + d_y) * e_z + d_z to its key, and a sorted key list answers membership.
struct VoxelKeys {
  at::Tensor rel;                    // int64 [N, 4], coordinates relative to the lower corner
  std::array<int64_t, 4> extent{};  // box size along batch, x, y, z
  at::Tensor keys;                   // int64 [N]
};

VoxelKeys linearise(const at::Tensor &coords) {
  VoxelKeys vk;
  const at::Tensor c = coords.to(at::kLong).contiguous();
  const at::Tensor lo = c.amin(0);
  const at::Tensor hi = c.amax(0);
  const at::Tensor lo_host = lo.cpu().contiguous();
  const at::Tensor hi_host = hi.cpu().contiguous();
  const int64_t *low = lo_host.data_ptr<int64_t>();
  const int64_t *high = hi_host.data_ptr<int64_t>();
  int64_t volume = 1;
  for (size_t a = 0; a < 4; ++a) {
    vk.extent[a] = high[a] - low[a] + 1;
    TORCH_CHECK(!__builtin_mul_overflow(volume, vk.extent[a], &volume),
                "sparse conv: coordinate box too large for 64-bit voxel keys");
  }
  vk.rel = c.sub(lo);
  vk.keys = vk.rel.select(1, 0);
  for (size_t a = 1; a < 4; ++a) {
    vk.keys = vk.keys.mul(vk.extent[a]).add(vk.rel.select(1, static_cast<int64_t>(a)));
  }
  return vk;
}

// Rows whose displaced voxel stays inside the bounding box (outside it nothing is active).
at::Tensor inside_box(const VoxelKeys &vk, const std::array<int64_t, kSpatialDims> &d) {
  at::Tensor inside;
  for (size_t a = 0; a < kSpatialDims; ++a) {
    if (d[a] == 0) continue;
    const at::Tensor q = vk.rel.select(1, static_cast<int64_t>(a + 1)).add(d[a]);
    const at::Tensor ok = q.ge(0).logical_and_(q.lt(vk.extent[a + 1]));
    inside = inside.defined() ? inside.logical_and_(ok) : ok;
  }
  return inside;
}

at::Tensor searchsorted(const at::Tensor &sorted, const at::Tensor &values) {
  return at::_ops::searchsorted_Tensor::call(sorted, values, /*out_int32=*/false,
                                             /*right=*/false, std::nullopt, std::nullopt);
}

void check_same_device(const at::Tensor &a, const at::Tensor &b, const char *what) {
  TORCH_CHECK(a.device() == b.device(), "sparse conv: ", what, " is on ", b.device(),
              " but the features are on ", a.device());
}

}  // namespace

std::unique_ptr<at::Tensor> build_submanifold_kernel_map(const at::Tensor &coords,
                                                         rust::Slice<const int64_t> kernel_size,
                                                         rust::Slice<const int64_t> dilation,
                                                         rust::Slice<int64_t> pair_counts) {
  c10::NoGradGuard no_grad;
  const ConvGeometry g = check_geometry(kernel_size, dilation);
  TORCH_CHECK(static_cast<int64_t>(pair_counts.size()) == g.volume(),
              "kernel map: pair_counts has ", pair_counts.size(), " entries, the kernel has ",
              g.volume(), " offsets");
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 4,
              "kernel map: coords must be [N, 4] (batch, x, y, z), got ", coords.sizes());
  TORCH_CHECK(coords.scalar_type() == at::kInt || coords.scalar_type() == at::kLong,
              "kernel map: coords must be int32 or int64, got ", coords.scalar_type());
  std::fill(pair_counts.begin(), pair_counts.end(), int64_t{0});
  const int64_t n = coords.size(0);
  const auto long_options = coords.options().dtype(at::kLong);
  if (n == 0 || g.volume() == 1) {
    return std::make_unique<at::Tensor>(coords.new_empty({2, 0}, long_options));
  }

  const VoxelKeys vk = linearise(coords);
  const auto sorted = vk.keys.sort();
  const at::Tensor &sorted_keys = std::get<0>(sorted);
  const at::Tensor &sorted_rows = std::get<1>(sorted);

  std::vector<at::Tensor> in_parts;
  std::vector<at::Tensor> out_parts;
  int64_t total = 0;
  int64_t k = 0;
  for (int64_t rx = 0; rx < g.kernel[0]; ++rx) {
    for (int64_t ry = 0; ry < g.kernel[1]; ++ry) {
      for (int64_t rz = 0; rz < g.kernel[2]; ++rz, ++k) {
        if (k == g.centre()) continue;
        const std::array<int64_t, kSpatialDims> d{(rx - g.kernel[0] / 2) * g.dilation[0],
                                                  (ry - g.kernel[1] / 2) * g.dilation[1],
                                                  (rz - g.kernel[2] / 2) * g.dilation[2]};
        const int64_t key_shift = (d[0] * vk.extent[2] + d[1]) * vk.extent[3] + d[2];
        const at::Tensor wanted = vk.keys.add(key_shift);
        const at::Tensor pos = searchsorted(sorted_keys, wanted).clamp_max_(n - 1);
        at::Tensor hit = sorted_keys.index_select(0, pos).eq(wanted);
        const at::Tensor inside = inside_box(vk, d);
        if (inside.defined()) hit.logical_and_(inside);
        const at::Tensor out_rows = hit.nonzero().squeeze(1);
        const at::Tensor in_rows = sorted_rows.index_select(0, pos.index_select(0, out_rows));
        pair_counts[static_cast<size_t>(k)] = out_rows.size(0);
        total += out_rows.size(0);
        in_parts.push_back(in_rows);
        out_parts.push_back(out_rows);
      }
    }
  }

  at::Tensor pairs = coords.new_empty({2, total}, long_options);
  int64_t start = 0;
  for (size_t i = 0; i < in_parts.size(); ++i) {
    const int64_t count = in_parts[i].size(0);
    if (count == 0) continue;
    pairs.select(0, 0).narrow(0, start, count).copy_(in_parts[i]);
    pairs.select(0, 1).narrow(0, start, count).copy_(out_parts[i]);
    start += count;
  }
  return std::make_unique<at::Tensor>(std::move(pairs));
}

std::unique_ptr<at::Tensor> prepare_conv_weight(const at::Tensor &weight_krsc) {
  c10::NoGradGuard no_grad;
  TORCH_CHECK(weight_krsc.dim() == 5,
              "sparse conv: weight must be KRSC [C_out, kx, ky, kz, C_in], got ",
              weight_krsc.sizes());
  const int64_t c_out = weight_krsc.size(0);
  const int64_t c_in = weight_krsc.size(4);
  const int64_t volume = weight_krsc.size(1) * weight_krsc.size(2) * weight_krsc.size(3);
  const at::Tensor w = weight_krsc.contiguous();
  if (volume == 1) {
    // spconv's 1x1x1 quirk: the stored [C_out, C_in] memory is read as [C_in, C_out].
    return std::make_unique<at::Tensor>(w.view({1, c_in, c_out}));
  }
  return std::make_unique<at::Tensor>(w.view({c_out, volume, c_in}).permute({1, 2, 0}).contiguous());
}

std::unique_ptr<at::Tensor> submanifold_conv(const at::Tensor &feats, const at::Tensor &weight,
                                             const at::Tensor *bias, const at::Tensor &pairs,
                                             rust::Slice<const int64_t> pair_counts,
                                             int64_t centre) {
  c10::NoGradGuard no_grad;
  TORCH_CHECK(feats.dim() == 2, "sparse conv: features must be [N, C_in], got ", feats.sizes());
  TORCH_CHECK(weight.dim() == 3 && weight.size(1) == feats.size(1),
              "sparse conv: weight must be [K, C_in, C_out] with C_in = ", feats.size(1),
              ", got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == feats.scalar_type(), "sparse conv: weight is ",
              weight.scalar_type(), " but the features are ", feats.scalar_type());
  check_same_device(feats, weight, "the weight");
  const int64_t volume = weight.size(0);
  const int64_t c_in = weight.size(1);
  const int64_t c_out = weight.size(2);
  TORCH_CHECK(static_cast<int64_t>(pair_counts.size()) == volume, "sparse conv: ",
              pair_counts.size(), " pair counts for a kernel of ", volume, " offsets");
  TORCH_CHECK(centre >= 0 && centre < volume, "sparse conv: centre offset ", centre,
              " outside the kernel's ", volume, " offsets");
  TORCH_CHECK(pair_counts[static_cast<size_t>(centre)] == 0,
              "sparse conv: the kernel map stores pairs for the centre offset");
  if (bias != nullptr) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == c_out, "sparse conv: bias must be [",
                c_out, "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == feats.scalar_type(), "sparse conv: bias is ",
                bias->scalar_type(), " but the features are ", feats.scalar_type());
    check_same_device(feats, *bias, "the bias");
  }
  int64_t total = 0;
  int64_t largest = 0;
  for (const int64_t count : pair_counts) {
    TORCH_CHECK(count >= 0, "sparse conv: negative pair count");
    total += count;
    largest = std::max(largest, count);
  }
  TORCH_CHECK(pairs.dim() == 2 && pairs.size(0) == 2 && pairs.size(1) == total &&
                  pairs.scalar_type() == at::kLong,
              "sparse conv: pairs must be int64 [2, ", total, "], got ", pairs.scalar_type(), " ",
              pairs.sizes());
  check_same_device(feats, pairs, "the kernel map");

  const at::Tensor x = feats.contiguous();
  at::Tensor out = x.mm(weight.select(0, centre));
  if (largest > 0) {
    // Workspace: one gather and one product buffer for all offsets.
    at::Tensor gathered = x.new_empty({largest, c_in});
    at::Tensor product = x.new_empty({largest, c_out});
    const at::Tensor in_rows = pairs.select(0, 0);
    const at::Tensor out_rows = pairs.select(0, 1);
    int64_t start = 0;
    for (int64_t k = 0; k < volume; ++k) {
      const int64_t count = pair_counts[static_cast<size_t>(k)];
      if (count == 0) continue;
      at::Tensor g = gathered.narrow(0, 0, count);
      at::Tensor p = product.narrow(0, 0, count);
      at::_ops::index_select_out::call(x, 0, in_rows.narrow(0, start, count), g);
      at::_ops::mm_out::call(g, weight.select(0, k), p);
      out.index_add_(0, out_rows.narrow(0, start, count), p);
      start += count;
    }
  }
  if (bias != nullptr) out.add_(*bias);
  return std::make_unique<at::Tensor>(std::move(out));
}

uint64_t current_cuda_stream(int8_t device_index) {
  TORCH_CHECK(c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA),
              "current CUDA stream: this libtorch has no CUDA support");
  const c10::impl::DeviceGuardImplInterface *cuda =
      c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
  TORCH_CHECK(device_index >= 0 && device_index < cuda->deviceCount(),
              "current CUDA stream: no CUDA device ", static_cast<int>(device_index));
  const c10::Stream stream = cuda->getStream(c10::Device(c10::DeviceType::CUDA, device_index));
  return reinterpret_cast<uint64_t>(stream.native_handle());
}

namespace {

c10::DeviceAllocator *cuda_allocator() {
  TORCH_CHECK(c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA),
              "CUDA memory: this libtorch has no CUDA support");
  return c10::getDeviceAllocator(c10::DeviceType::CUDA);
}

}  // namespace

std::array<uint64_t, 3> cuda_memory_stats(int8_t device_index) {
  const c10::CachingDeviceAllocator::DeviceStats stats =
      cuda_allocator()->getDeviceStats(device_index);
  const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  return {static_cast<uint64_t>(stats.allocated_bytes[all].current),
          static_cast<uint64_t>(stats.allocated_bytes[all].peak),
          static_cast<uint64_t>(stats.reserved_bytes[all].current)};
}

void reset_cuda_peak_memory(int8_t device_index) {
  cuda_allocator()->resetPeakStats(device_index);
}

void empty_cuda_cache() { cuda_allocator()->emptyCache(); }

std::unique_ptr<at::Tensor> addmm_gelu_tanh(const at::Tensor &bias, const at::Tensor &mat1,
                                            const at::Tensor &mat2) {
  return std::make_unique<at::Tensor>(
      at::_ops::_addmm_activation::call(bias, mat1, mat2, 1, 1, /*use_gelu=*/true));
}

namespace {

// `values` as an int32 tensor on `device`: written into pinned host memory (libtorch's caching
// host allocator) and copied asynchronously, so the host does not wait for the device.
at::Tensor int32_on_device(rust::Slice<const int32_t> values, const c10::Device &device) {
  const int64_t n = static_cast<int64_t>(values.size());
  const std::array<c10::SymInt, 1> size{c10::SymInt(n)};
  at::Tensor host = at::_ops::empty_memory_format::call(size, at::kInt, std::nullopt, at::kCPU,
                                                         /*pin_memory=*/true, std::nullopt);
  std::memcpy(host.data_ptr(), values.data(), values.size() * sizeof(int32_t));
  return at::_ops::to_device::call(host, device, at::kInt, /*non_blocking=*/true,
                                   /*copy=*/false, std::nullopt);
}

}  // namespace

std::unique_ptr<at::Tensor> flash_attention_varlen(const at::Tensor &q, const at::Tensor &k,
                                                   const at::Tensor &v,
                                                   rust::Slice<const int32_t> cu_q,
                                                   rust::Slice<const int32_t> cu_k, int64_t max_q,
                                                   int64_t max_k) {
  TORCH_CHECK(q.is_cuda(), "flash varlen attention: the tensors must be on a CUDA device");
  TORCH_CHECK(cu_q.size() == cu_k.size() && cu_q.size() >= 2,
              "flash varlen attention: cu_seqlens of ", cu_q.size(), " and ", cu_k.size(),
              " entries");
  const at::Tensor cu_q_device = int32_on_device(cu_q, q.device());
  const at::Tensor cu_k_device = int32_on_device(cu_k, q.device());
  auto outputs = at::_ops::_flash_attention_forward::call(
      q, k, v, cu_q_device, cu_k_device, max_q, max_k, /*dropout_p=*/0.0, /*is_causal=*/false,
      /*return_debug_mask=*/false, /*scale=*/std::nullopt, /*window_size_left=*/std::nullopt,
      /*window_size_right=*/std::nullopt, /*seqused_k=*/std::nullopt,
      /*alibi_slopes=*/std::nullopt);
  return std::make_unique<at::Tensor>(std::move(std::get<0>(outputs)));
}

}  // namespace sparse
}  // namespace recon
