// recon's sparse-convolution engine: host code over ATen, bridged to Rust with cxx
// (src/sparse/engine.rs declares the bridge; this header is what it includes).
//
// Tensors cross the bridge as `at::Tensor` (tch's `C_tensor*` is an `at::Tensor*`):
//  * arguments are borrowed for the duration of the call (`const at::Tensor&`); the engine
//    copies a handle (refcount) if it needs one and never keeps a reference past the call;
//  * results are `std::unique_ptr<at::Tensor>` allocated with `new`; Rust releases the pointer
//    into a `tch::Tensor`, whose drop calls `delete` (torch-sys's `at_free`).
// Every function may throw (`c10::Error` from ATen, `std::exception`); the `trycatch` below
// turns each into a Rust `Err` with the message, so nothing aborts the host process.
//
// Only <ATen/core/Tensor.h> is included here (the Tensor class and its methods): this header
// is compiled twice (by the cxx-generated bridge and by sparse_engine.cpp), and the full
// <ATen/ATen.h> triples the compile time of each translation unit.

#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <exception>
#include <memory>

#include "rust/cxx.h"

namespace rust {
namespace behavior {

// cxx's customisation point for exceptions thrown by a bridged C++ function that returns
// Result: ATen's errors without their C++ backtrace, anything else as a generic message.
template <typename Try, typename Fail>
static void trycatch(Try &&func, Fail &&fail) noexcept try {
  func();
} catch (const c10::Error &e) {
  fail(e.what_without_backtrace());
} catch (const std::exception &e) {
  fail(e.what());
} catch (...) {
  fail("unknown C++ exception in the sparse engine");
}

}  // namespace behavior
}  // namespace rust

namespace recon {
namespace sparse {

// Kernel map of a submanifold convolution over `coords` (int32/int64 [N, 4] = batch, x, y, z;
// unique rows). For kernel offset k (KRSC order: x slowest, z fastest) with displacement
// d_k = (r - kernel_size / 2) * dilation, every output row o whose neighbour o + d_k is an
// active site i of the same batch item gives a pair (i, o). Returns the pairs as int64 [2, P]
// (row 0 input rows, row 1 output rows), grouped by offset in KRSC order, output rows
// increasing within an offset; `pair_counts[k]` receives the number of pairs of offset k.
// The centre offset's pairs are the identity and are not stored (its count is 0): the
// convolution applies the centre weight to every row as one GEMM.
std::unique_ptr<at::Tensor> build_submanifold_kernel_map(const at::Tensor &coords,
                                                         rust::Slice<const int64_t> kernel_size,
                                                         rust::Slice<const int64_t> dilation,
                                                         rust::Slice<int64_t> pair_counts);

// The engine's weight layout [K, C_in, C_out] from spconv's stored KRSC layout
// [C_out, kx, ky, kz, C_in]. For a kernel volume of 1 the stored memory is reinterpreted as
// [C_in, C_out] without a transpose, as spconv 2.x does (its 1x1x1 convolution is
// `features @ weight.view(C_in, C_out)`; the published checkpoints were trained that way).
std::unique_ptr<at::Tensor> prepare_conv_weight(const at::Tensor &weight_krsc);

// Submanifold convolution, gather-GEMM-scatter (spconv's "native" algorithm):
// out = feats @ W[centre] (+ bias), then for every other offset k with pairs,
// out[out_rows] += feats[in_rows] @ W[k]. `weight` is [K, C_in, C_out] from
// prepare_conv_weight, `bias` [C_out] or null, `pairs` and `pair_counts` from
// build_submanifold_kernel_map (the same device as `feats`). One gather buffer and one product
// buffer, sized for the largest offset, are reused across offsets.
std::unique_ptr<at::Tensor> submanifold_conv(const at::Tensor &feats, const at::Tensor &weight,
                                             const at::Tensor *bias, const at::Tensor &pairs,
                                             rust::Slice<const int64_t> pair_counts,
                                             int64_t centre);

// libtorch's current stream on CUDA device `device_index`, as the raw `cudaStream_t` value (0
// for the legacy default stream), so the NVRTC kernels of the CUDA path (src/cuda/) run in
// order with libtorch's own work. Uses only c10's device-generic interface (the CUDA guard
// implementation libc10_cuda registers), so no CUDA headers are needed here. Throws when
// libtorch has no CUDA support or the device does not exist.
uint64_t current_cuda_stream(int8_t device_index);

// libtorch's CUDA caching allocator on `device_index`, through c10's device-generic allocator
// interface (no CUDA headers): bytes currently allocated, the peak since the last reset, and
// bytes reserved from the driver. Throws without CUDA support.
std::array<uint64_t, 3> cuda_memory_stats(int8_t device_index);
// Resets the peak of `cuda_memory_stats`.
void reset_cuda_peak_memory(int8_t device_index);
// Returns the allocator's unused cached blocks to the driver (torch.cuda.empty_cache()).
void empty_cuda_cache();

// `gelu_tanh(mat1 @ mat2 + bias)` as one GEMM with a bias + GELU epilogue on CUDA
// (at::_addmm_activation with use_gelu). Here rather than through tch: tch 0.24's binding passes
// its `use_gelu` flag into the `beta` slot of the C++ overload, which then applies ReLU.
std::unique_ptr<at::Tensor> addmm_gelu_tanh(const at::Tensor &bias, const at::Tensor &mat1,
                                            const at::Tensor &mat2);

// Variable-length attention through libtorch's flash kernel (at::_flash_attention_forward with
// cu_seqlens, what its SDPA runs for nested fp16/bf16 CUDA inputs), without building nested
// tensors: `q` [T, H, D], `k` / `v` [S, H, D] (unit stride along D), sequence i being rows
// cu_q[i]..cu_q[i+1] of q attending to rows cu_k[i]..cu_k[i+1] of k and v, scale 1/sqrt(D).
// The offsets travel to the device through pinned memory, without waiting for queued work.
// Returns [T, H, D]. The caller checks dtype, head size and that no stream is capturing.
std::unique_ptr<at::Tensor> flash_attention_varlen(const at::Tensor &q, const at::Tensor &k,
                                                   const at::Tensor &v,
                                                   rust::Slice<const int32_t> cu_q,
                                                   rust::Slice<const int32_t> cu_k, int64_t max_q,
                                                   int64_t max_k);

}  // namespace sparse
}  // namespace recon
