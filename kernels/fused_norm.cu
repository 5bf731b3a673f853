// Fused normalisation kernels for the transformer blocks of the flow models and decoders
// (issue 8): each replaces a chain of libtorch element-wise kernels that the reference runs one
// by one, reading and writing the activations once instead of five to seven times.
//
//   layer_norm_modulate   LayerNorm32 (fp32 statistics, optional fp32 affine), cast to the
//                         activations' dtype, then optionally adaLN's `h * (1 + scale) + shift`
//   rms_norm_heads        MultiHeadRMSNorm: x / max(||x||, 1e-12) * gamma * sqrt(D) per head
//   gated_residual        x + h * gate (the adaLN gate on a residual branch)
//   add_view_shares       x + out_1 / K + ... + out_K / K, added view by view (ReconViaGen's
//                         cross-attention over K condition views)
//   qk_norm_rope          VGGT attention's q / k under autocast: LayerNorm per head (fp32),
//                         optional 2-D RoPE (fp32), cast to the attention dtype, written in
//                         SDPA's [B, H, N, D] layout
//
// Rounding follows the unfused reference op by op: every intermediate the reference stores in
// the activations' dtype (LayerNorm32's output, `1 + scale`, the product, the sum) is rounded
// to that dtype here too, and what it computes in fp32 stays fp32. The only differences left
// are the reduction orders of the mean / variance / norm (fp32, a few ulp). Products and sums
// the reference runs as separate kernels use __fmul_rn / __fadd_rn so that NVRTC does not
// contract them into one FMA (which would round once instead of twice in fp32).
//
// Modulation vectors are rows of a [G, *] tensor (G = batch elements): a feature row r uses
// group row_group[r] when that index is given (sparse tensors, int64 batch index), else
// r / rows_per_group (dense [B, L, C] activations). Shift, scale and gate are views with their
// own row stride, so the chunks of adaLN's [G, 6C] output need no copy.
//
// Host side: src/cuda/fused.rs. Self-contained (no #include) like sparse_conv.cu; 16-bit
// values are raw bits converted with PTX `cvt`.

typedef long long i64;

struct f16 {
  unsigned short bits;
};
struct bf16 {
  unsigned short bits;
};

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(f16 v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
  return f;
}
__device__ __forceinline__ float to_f32(bf16 v) {
  return __uint_as_float(((unsigned int)v.bits) << 16);
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ f16 from_f32<f16>(float v) {
  f16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(v));
  return h;
}
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float v) {
  bf16 h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(v));
  return h;
}

// `v` rounded to T and back: what storing an intermediate in T does.
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_f32(from_f32<T>(v));
}

__device__ __forceinline__ i64 group_of(i64 row, const i64 *row_group, i64 rows_per_group) {
  return row_group ? row_group[row] : row / rows_per_group;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  __syncthreads();  // scratch may still be read by the previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

// One block per row (grid-stride over rows): mean, then the variance about it (two passes over
// the row, which stays in L1/L2), biased as torch's layer_norm; rstd = rsqrt(var + eps).
template <typename T>
__device__ void layer_norm_modulate(const T *x, T *y, i64 rows, int channels, const float *weight,
                                    const float *bias, const T *shift, const T *scale,
                                    i64 mod_stride, const i64 *row_group, i64 rows_per_group,
                                    float eps) {
  __shared__ float scratch[32];
  for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
    const T *in = x + row * channels;
    T *out = y + row * channels;
    float sum = 0.0f;
    for (int c = threadIdx.x; c < channels; c += blockDim.x) sum += to_f32(in[c]);
    const float mean = block_sum(sum, scratch) / channels;
    float squares = 0.0f;
    for (int c = threadIdx.x; c < channels; c += blockDim.x) {
      const float d = to_f32(in[c]) - mean;
      squares += d * d;
    }
    const float rstd = rsqrtf(block_sum(squares, scratch) / channels + eps);
    const i64 g = shift ? group_of(row, row_group, rows_per_group) : 0;
    for (int c = threadIdx.x; c < channels; c += blockDim.x) {
      float v = (to_f32(in[c]) - mean) * rstd;
      if (weight) v = v * weight[c] + bias[c];
      v = round_to<T>(v);  // LayerNorm32 casts its fp32 result back
      if (shift) {
        const float one_plus_scale = round_to<T>(1.0f + to_f32(scale[g * mod_stride + c]));
        v = round_to<T>(__fmul_rn(v, one_plus_scale));
        v = __fadd_rn(v, to_f32(shift[g * mod_stride + c]));
      }
      out[c] = from_f32<T>(v);
    }
  }
}

// One warp per (row, head), grid-stride. `x` rows may be strided (q or k inside a fused qkv
// projection); `y` is contiguous [rows, heads, head_dim]. In fp32 like the reference: the
// normalised vector, times gamma, times sqrt(head_dim), then one cast.
template <typename T>
__device__ void rms_norm_heads(const T *x, i64 x_row_stride, T *y, i64 rows, int heads,
                               int head_dim, const float *gamma, float scale) {
  const int lane = threadIdx.x & 31;
  const i64 warps_per_grid = (i64)gridDim.x * (blockDim.x >> 5);
  const i64 pairs = rows * heads;
  for (i64 p = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); p < pairs;
       p += warps_per_grid) {
    const i64 row = p / heads;
    const int head = (int)(p % heads);
    const T *in = x + row * x_row_stride + (i64)head * head_dim;
    T *out = y + p * head_dim;
    float squares = 0.0f;
    for (int d = lane; d < head_dim; d += 32) {
      const float v = to_f32(in[d]);
      squares += v * v;
    }
    for (int offset = 16; offset > 0; offset >>= 1)
      squares += __shfl_xor_sync(0xffffffffu, squares, offset);
    const float norm = fmaxf(sqrtf(squares), 1e-12f);
    const float *g = gamma + (i64)head * head_dim;
    for (int d = lane; d < head_dim; d += 32) out[d] = from_f32<T>(to_f32(in[d]) / norm * g[d] * scale);
  }
}

// out = x + round(h * gate), element-wise over [rows, channels] (grid-stride). `out` may be `x`.
template <typename T>
__device__ void gated_residual(const T *x, const T *h, const T *gate, i64 gate_stride, T *out,
                               i64 rows, int channels, const i64 *row_group, i64 rows_per_group) {
  const i64 n = rows * channels;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
    const i64 row = i / channels;
    const int c = (int)(i - row * channels);
    const i64 g = group_of(row, row_group, rows_per_group);
    const float branch = round_to<T>(__fmul_rn(to_f32(h[i]), to_f32(gate[g * gate_stride + c])));
    out[i] = from_f32<T>(__fadd_rn(to_f32(x[i]), branch));
  }
}

// out = x + round(share_1 * inv) + ... + round(share_K * inv), added in view order and rounded
// to T after every add, as the reference's `x = x + cross_attn(h, ctx_k) / K` over its views
// (torch divides by a scalar as a product with its fp32 reciprocal). Element (row, c) of view k
// is shares[k * view_stride + row * row_stride + c]: a [K, rows, C] tensor, or one row for every
// view and row (both strides 0, the constant output of an all-zero condition). `out` may be `x`.
template <typename T>
__device__ void add_view_shares(const T *x, const T *shares, i64 view_stride, i64 row_stride,
                                int views, float inv, T *out, i64 rows, int channels) {
  const i64 n = rows * channels;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
    const i64 row = i / channels;
    const int c = (int)(i - row * channels);
    const T *share = shares + row * row_stride + c;
    float acc = to_f32(x[i]);
    for (int k = 0; k < views; ++k)
      acc = round_to<T>(__fadd_rn(acc, round_to<T>(__fmul_rn(to_f32(share[k * view_stride]), inv))));
    out[i] = from_f32<T>(acc);
  }
}

// ---------------------------------------------------------------------------------------------
// Vectorised variants: the same arithmetic per element, with 16-byte loads and stores (8 fp16 /
// bf16 or 4 fp32 values) and one warp per row instead of a block, so a row's statistics need no
// shared memory or block barrier. The host uses them when every pointer, row stride and channel
// count is a multiple of 16 bytes (and, for the layer norm, the row fits a warp's registers);
// the scalar kernels above handle everything else. Only the fp32 reduction order differs.

template <typename T>
struct Pack {
  static constexpr int N = 16 / sizeof(T);
};

__device__ __forceinline__ unsigned word(const uint4 &v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}
__device__ __forceinline__ void set_word(uint4 &v, int i, unsigned w) {
  if (i == 0) v.x = w;
  else if (i == 1) v.y = w;
  else if (i == 2) v.z = w;
  else v.w = w;
}

// Element k of a 16-byte pack, as f32 (k must be a compile-time constant after unrolling).
template <typename T>
__device__ __forceinline__ float unpack(const uint4 &v, int k);
template <>
__device__ __forceinline__ float unpack<float>(const uint4 &v, int k) {
  return __uint_as_float(word(v, k));
}
template <>
__device__ __forceinline__ float unpack<f16>(const uint4 &v, int k) {
  f16 h;
  h.bits = (unsigned short)(word(v, k >> 1) >> ((k & 1) * 16));
  return to_f32(h);
}
template <>
__device__ __forceinline__ float unpack<bf16>(const uint4 &v, int k) {
  bf16 h;
  h.bits = (unsigned short)(word(v, k >> 1) >> ((k & 1) * 16));
  return to_f32(h);
}

// Stores `f` rounded to T as element k of a pack.
template <typename T>
__device__ __forceinline__ void pack(uint4 &v, int k, float f);
template <>
__device__ __forceinline__ void pack<float>(uint4 &v, int k, float f) {
  set_word(v, k, __float_as_uint(f));
}
template <typename T>
__device__ __forceinline__ void pack_half(uint4 &v, int k, unsigned short bits) {
  const int shift = (k & 1) * 16;
  const unsigned w = (word(v, k >> 1) & ~(0xffffu << shift)) | ((unsigned)bits << shift);
  set_word(v, k >> 1, w);
}
template <>
__device__ __forceinline__ void pack<f16>(uint4 &v, int k, float f) {
  pack_half<f16>(v, k, from_f32<f16>(f).bits);
}
template <>
__device__ __forceinline__ void pack<bf16>(uint4 &v, int k, float f) {
  pack_half<bf16>(v, k, from_f32<bf16>(f).bits);
}

template <typename T>
__device__ __forceinline__ uint4 load_pack(const T *p) {
  return *reinterpret_cast<const uint4 *>(p);
}
template <typename T>
__device__ __forceinline__ void store_pack(T *p, const uint4 &v) {
  *reinterpret_cast<uint4 *>(p) = v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Packs per lane a row may span: channels <= 32 * Pack<T>::N * LN_PACKS.
#define LN_PACKS 8

// One warp per row (grid-stride over warps); the row stays in registers between the passes.
template <typename T>
__device__ void layer_norm_modulate_vec(const T *x, T *y, i64 rows, int channels,
                                        const float *weight, const float *bias, const T *shift,
                                        const T *scale, i64 mod_stride, const i64 *row_group,
                                        i64 rows_per_group, float eps) {
  constexpr int N = Pack<T>::N;
  const int lane = threadIdx.x & 31;
  const int packs = channels / N;
  const i64 warps = (i64)gridDim.x * (blockDim.x >> 5);
  for (i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); row < rows;
       row += warps) {
    const T *in = x + row * channels;
    uint4 held[LN_PACKS];
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < LN_PACKS; ++j) {
      const int p = lane + 32 * j;
      if (p < packs) {
        held[j] = load_pack(in + p * N);
#pragma unroll
        for (int k = 0; k < N; ++k) sum += unpack<T>(held[j], k);
      }
    }
    const float mean = warp_sum(sum) / channels;
    float squares = 0.0f;
#pragma unroll
    for (int j = 0; j < LN_PACKS; ++j) {
      if (lane + 32 * j < packs) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
          const float d = unpack<T>(held[j], k) - mean;
          squares += d * d;
        }
      }
    }
    const float rstd = rsqrtf(warp_sum(squares) / channels + eps);
    const i64 g = shift ? group_of(row, row_group, rows_per_group) : 0;
    T *out = y + row * channels;
#pragma unroll
    for (int j = 0; j < LN_PACKS; ++j) {
      const int p = lane + 32 * j;
      if (p >= packs) continue;
      const int c0 = p * N;
      uint4 sh, sc, result;
      if (shift) {
        sh = load_pack(shift + g * mod_stride + c0);
        sc = load_pack(scale + g * mod_stride + c0);
      }
#pragma unroll
      for (int k = 0; k < N; ++k) {
        float v = (unpack<T>(held[j], k) - mean) * rstd;
        if (weight) v = v * weight[c0 + k] + bias[c0 + k];
        v = round_to<T>(v);
        if (shift) {
          const float one_plus_scale = round_to<T>(1.0f + unpack<T>(sc, k));
          v = round_to<T>(__fmul_rn(v, one_plus_scale));
          v = __fadd_rn(v, unpack<T>(sh, k));
        }
        pack<T>(result, k, v);
      }
      store_pack(out + c0, result);
    }
  }
}

// `lanes` (head_dim / N, a power of two up to 32) lanes per (row, head), one pack each.
template <typename T>
__device__ void rms_norm_heads_vec(const T *x, i64 x_row_stride, T *y, i64 rows, int heads,
                                   int head_dim, const float *gamma, float scale) {
  constexpr int N = Pack<T>::N;
  const int lanes = head_dim / N;
  const int lane = threadIdx.x & 31;
  const int sub = lane % lanes;
  const i64 per_warp = 32 / lanes;
  const i64 groups_per_grid = (i64)gridDim.x * (blockDim.x >> 5) * per_warp;
  const i64 pairs = rows * heads;
  const i64 first = ((i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * per_warp + lane / lanes;
  // Every lane runs the same number of iterations (the shuffles need the whole warp).
  const i64 iterations = (pairs + groups_per_grid - 1) / groups_per_grid;
  for (i64 it = 0; it < iterations; ++it) {
    const i64 p = first + it * groups_per_grid;
    const bool active = p < pairs;
    uint4 v = make_uint4(0, 0, 0, 0);
    const i64 row = active ? p / heads : 0;
    const int head = active ? (int)(p % heads) : 0;
    if (active) v = load_pack(x + row * x_row_stride + (i64)head * head_dim + sub * N);
    float squares = 0.0f;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float f = unpack<T>(v, k);
      squares += f * f;
    }
    for (int offset = lanes >> 1; offset > 0; offset >>= 1)
      squares += __shfl_xor_sync(0xffffffffu, squares, offset);
    if (!active) continue;
    const float norm = fmaxf(sqrtf(squares), 1e-12f);
    const float *g = gamma + (i64)head * head_dim + sub * N;
    uint4 result;
#pragma unroll
    for (int k = 0; k < N; ++k) pack<T>(result, k, unpack<T>(v, k) / norm * g[k] * scale);
    store_pack(y + p * head_dim + sub * N, result);
  }
}

// gated_residual on packs of N elements (channels a multiple of N: a pack never spans rows).
template <typename T>
__device__ void gated_residual_vec(const T *x, const T *h, const T *gate, i64 gate_stride, T *out,
                                   i64 rows, int channels, const i64 *row_group,
                                   i64 rows_per_group) {
  constexpr int N = Pack<T>::N;
  const i64 n = rows * channels / N;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
    const i64 e = i * N;
    const i64 row = e / channels;
    const int c = (int)(e - row * channels);
    const i64 g = group_of(row, row_group, rows_per_group);
    const uint4 xv = load_pack(x + e), hv = load_pack(h + e);
    const uint4 gv = load_pack(gate + g * gate_stride + c);
    uint4 result;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float branch = round_to<T>(__fmul_rn(unpack<T>(hv, k), unpack<T>(gv, k)));
      pack<T>(result, k, __fadd_rn(unpack<T>(xv, k), branch));
    }
    store_pack(out + e, result);
  }
}

// add_view_shares on packs of N elements (channels and both strides multiples of N).
template <typename T>
__device__ void add_view_shares_vec(const T *x, const T *shares, i64 view_stride, i64 row_stride,
                                    int views, float inv, T *out, i64 rows, int channels) {
  constexpr int N = Pack<T>::N;
  const i64 n = rows * channels / N;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
    const i64 e = i * N;
    const i64 row = e / channels;
    const int c = (int)(e - row * channels);
    const T *share = shares + row * row_stride + c;
    const uint4 xv = load_pack(x + e);
    float acc[N];
#pragma unroll
    for (int k = 0; k < N; ++k) acc[k] = unpack<T>(xv, k);
    for (int v = 0; v < views; ++v) {
      const uint4 sv = load_pack(share + v * view_stride);
#pragma unroll
      for (int k = 0; k < N; ++k)
        acc[k] = round_to<T>(__fadd_rn(acc[k], round_to<T>(__fmul_rn(unpack<T>(sv, k), inv))));
    }
    uint4 result;
#pragma unroll
    for (int k = 0; k < N; ++k) pack<T>(result, k, acc[k]);
    store_pack(out + e, result);
  }
}

#define FUSED_NORM_KERNELS(T, SUFFIX)                                                              \
  extern "C" __global__ void layer_norm_modulate_##SUFFIX(                                         \
      const T *x, T *y, i64 rows, int channels, const float *weight, const float *bias,           \
      const T *shift, const T *scale, i64 mod_stride, const i64 *row_group, i64 rows_per_group,   \
      float eps) {                                                                                 \
    layer_norm_modulate<T>(x, y, rows, channels, weight, bias, shift, scale, mod_stride,          \
                           row_group, rows_per_group, eps);                                       \
  }                                                                                                \
  extern "C" __global__ void rms_norm_heads_##SUFFIX(const T *x, i64 x_row_stride, T *y, i64 rows, \
                                                     int heads, int head_dim, const float *gamma, \
                                                     float scale) {                               \
    rms_norm_heads<T>(x, x_row_stride, y, rows, heads, head_dim, gamma, scale);                   \
  }                                                                                                \
  extern "C" __global__ void gated_residual_##SUFFIX(const T *x, const T *h, const T *gate,       \
                                                     i64 gate_stride, T *out, i64 rows,           \
                                                     int channels, const i64 *row_group,          \
                                                     i64 rows_per_group) {                        \
    gated_residual<T>(x, h, gate, gate_stride, out, rows, channels, row_group, rows_per_group);   \
  }                                                                                                \
  extern "C" __global__ void layer_norm_modulate_vec_##SUFFIX(                                     \
      const T *x, T *y, i64 rows, int channels, const float *weight, const float *bias,           \
      const T *shift, const T *scale, i64 mod_stride, const i64 *row_group, i64 rows_per_group,   \
      float eps) {                                                                                 \
    layer_norm_modulate_vec<T>(x, y, rows, channels, weight, bias, shift, scale, mod_stride,      \
                               row_group, rows_per_group, eps);                                   \
  }                                                                                                \
  extern "C" __global__ void rms_norm_heads_vec_##SUFFIX(const T *x, i64 x_row_stride, T *y,      \
                                                         i64 rows, int heads, int head_dim,       \
                                                         const float *gamma, float scale) {       \
    rms_norm_heads_vec<T>(x, x_row_stride, y, rows, heads, head_dim, gamma, scale);               \
  }                                                                                                \
  extern "C" __global__ void gated_residual_vec_##SUFFIX(const T *x, const T *h, const T *gate,   \
                                                         i64 gate_stride, T *out, i64 rows,       \
                                                         int channels, const i64 *row_group,      \
                                                         i64 rows_per_group) {                    \
    gated_residual_vec<T>(x, h, gate, gate_stride, out, rows, channels, row_group,                \
                          rows_per_group);                                                         \
  }                                                                                                \
  extern "C" __global__ void add_view_shares_##SUFFIX(const T *x, const T *shares,                \
                                                      i64 view_stride, i64 row_stride, int views, \
                                                      float inv, T *out, i64 rows,                \
                                                      int channels) {                             \
    add_view_shares<T>(x, shares, view_stride, row_stride, views, inv, out, rows, channels);      \
  }                                                                                                \
  extern "C" __global__ void add_view_shares_vec_##SUFFIX(const T *x, const T *shares,            \
                                                          i64 view_stride, i64 row_stride,        \
                                                          int views, float inv, T *out, i64 rows, \
                                                          int channels) {                         \
    add_view_shares_vec<T>(x, shares, view_stride, row_stride, views, inv, out, rows, channels);  \
  }

FUSED_NORM_KERNELS(f16, f16)
FUSED_NORM_KERNELS(bf16, bf16)
FUSED_NORM_KERNELS(float, f32)

// One warp per (batch, token, head) of q or k inside the fused qkv projection: element d of
// head h of token n of batch b is x[(b * tokens + n) * row_stride + h * D + d]. In fp32 like
// the reference under autocast: LayerNorm over the head's D features (mean, biased variance,
// rsqrt(var + eps), then gamma and beta), then, with tables, VGGT's 2-D RoPE
// (`y * cos + rotate_half(y) * sin`, product and sum rounded separately in fp32, rows on the
// first half of the features and columns on the second, rotate_half within each half), then
// one rounding to T. Lane l holds features l*E .. l*E+E-1 (D = 32 * E), so the feature a
// quarter of D away, which rotate_half pairs with, sits in lane l ^ 8. Tables are fp32
// [table_batches, tokens, D / 2] rows (one per token of each batch; table_batches 1 or batch).
// Output: [batch, heads, tokens, D] contiguous.
template <typename T, int E>
__device__ void qk_norm_rope(const T *x, i64 row_stride, T *out, i64 batch, i64 tokens,
                             int heads, const float *gamma, const float *beta, float eps,
                             const float *cos_row, const float *sin_row, const float *cos_col,
                             const float *sin_col, i64 table_batches) {
  constexpr int D = 32 * E;
  constexpr int HALF = D / 2;
  constexpr int QUARTER = D / 4;
  const int lane = threadIdx.x & 31;
  const i64 warps_per_grid = (i64)gridDim.x * (blockDim.x >> 5);
  const i64 items = batch * tokens * heads;
  for (i64 p = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); p < items;
       p += warps_per_grid) {
    const int h = (int)(p % heads);
    const i64 token = p / heads;  // b * tokens + n
    const i64 b = token / tokens, n = token - b * tokens;
    const T *in = x + token * row_stride + (i64)h * D + lane * E;
    float v[E];
    float sum = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      v[e] = to_f32(in[e]);
      sum += v[e];
    }
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    const float mean = sum / D;
    float squares = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float d = v[e] - mean;
      squares += d * d;
    }
    for (int offset = 16; offset > 0; offset >>= 1)
      squares += __shfl_xor_sync(0xffffffffu, squares, offset);
    const float rstd = rsqrtf(squares / D + eps);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int d = lane * E + e;
      v[e] = (v[e] - mean) * rstd * gamma[d] + beta[d];
    }
    T *o = out + (((b * heads + h) * tokens) + n) * D + lane * E;
    if (cos_row) {
      const i64 table_row = ((table_batches == 1 ? 0 : b) * tokens + n) * HALF;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int d = lane * E + e;
        const float partner = __shfl_xor_sync(0xffffffffu, v[e], 8);
        const int j = d % HALF;  // position within the half
        const float rotated = j < QUARTER ? -partner : partner;
        const float *cs = d < HALF ? cos_row : cos_col;
        const float *sn = d < HALF ? sin_row : sin_col;
        const float c = cs[table_row + j], s = sn[table_row + j];
        o[e] = from_f32<T>(__fadd_rn(__fmul_rn(v[e], c), __fmul_rn(rotated, s)));
      }
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) o[e] = from_f32<T>(v[e]);
    }
  }
}

#define QK_NORM_ROPE_KERNEL(T, SUFFIX, E)                                                          \
  extern "C" __global__ void qk_norm_rope_d##E##_##SUFFIX(                                         \
      const T *x, i64 row_stride, T *out, i64 batch, i64 tokens, int heads, const float *gamma,   \
      const float *beta, float eps, const float *cos_row, const float *sin_row,                   \
      const float *cos_col, const float *sin_col, i64 table_batches) {                            \
    qk_norm_rope<T, E>(x, row_stride, out, batch, tokens, heads, gamma, beta, eps, cos_row,       \
                       sin_row, cos_col, sin_col, table_batches);                                 \
  }

QK_NORM_ROPE_KERNEL(f16, f16, 1)
QK_NORM_ROPE_KERNEL(f16, f16, 2)
QK_NORM_ROPE_KERNEL(f16, f16, 4)
QK_NORM_ROPE_KERNEL(bf16, bf16, 1)
QK_NORM_ROPE_KERNEL(bf16, bf16, 2)
QK_NORM_ROPE_KERNEL(bf16, bf16, 4)
