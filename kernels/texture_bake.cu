// The optimisation bake's step (issue 11, to_glb's `bake_texture(mode='opt')`): one Adam step
// on an RGB texture sampled with trilinear mipmapping, against the observed colours of one view
// (masked L1) plus a total-variation term. The tensor path of src/postprocessing/bake.rs builds
// the mip chain, samples, differentiates and updates with ~40 libtorch kernels a step; here a
// step is
//
//   bake_l1_backward   one thread per observed pixel: trilinear sample (clamped borders) at its
//                      precomputed level of detail, sign(render - colour) / (3N) scattered into
//                      the gradient of the eight texels it read, on their mip levels (atomics)
//   bake_adam_tv       one thread per base texel: its gradient (own level plus every coarser
//                      level's, through the 2x2 averaging, divided down), the TV term's
//                      gradient from its four neighbours, one Adam update into the other of two
//                      texture buffers (neighbours are read from the old one); zeroes the base
//                      level's gradient
//   bake_mip_down      one launch per coarser level: the 2x2 (or 2x1, 1x2) box average of the
//                      level above in the new buffer; zeroes that level's gradient
//
// so the chain of the updated texture is ready for the next step. The arithmetic follows the
// tensor path's operation order (lerps as a + (b - a) t, the pooling's sum-then-divide, Adam's
// sqrt(v) / sqrt(c2) + eps) with separately rounded operations; only the order of the
// gradient's atomic accumulation differs (float sums, not bit-reproducible run to run).
//
// Layout: every level of a texture buffer is stored row-major, RGB interleaved, the levels one
// after the other (`Levels.offset` in texels), level 0 first. Host side:
// src/postprocessing/bake/cuda.rs.

typedef long long i64;

#define MAX_LEVELS 16
#define CHANNELS 3

// Must match `Levels` in src/postprocessing/bake/cuda.rs (repr(C)).
struct Levels {
  i64 offset[MAX_LEVELS];
  int width[MAX_LEVELS];
  int height[MAX_LEVELS];
  int count;
};

__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float lerp(float a, float b, float t) { return add(a, mul(sub(b, a), t)); }
__device__ __forceinline__ float sign_of(float x) { return x > 0.f ? 1.f : (x < 0.f ? -1.f : 0.f); }

// One axis of a clamped bilinear lookup: the two texel indices and the weight of the second.
struct Axis {
  int i0, i1;
  float frac;
};

__device__ __forceinline__ Axis clamped_axis(float coord, int size) {
  float x = sub(mul(coord, (float)size), 0.5f);
  x = fminf(fmaxf(x, 0.f), (float)(size - 1));
  float fl = floorf(x);
  Axis a;
  a.frac = sub(x, fl);
  a.i0 = min((int)fl, size - 1);
  a.i1 = min(a.i0 + 1, size - 1);
  return a;
}

// The four texel indices (absolute, in texels) and the axes of a lookup at (u, v) on `level`.
struct Taps {
  i64 index[4];  // (x0, y0), (x1, y0), (x0, y1), (x1, y1)
  float fx, fy;
};

__device__ __forceinline__ Taps taps_at(const Levels& lv, int level, float u, float v) {
  int w = lv.width[level], h = lv.height[level];
  Axis ax = clamped_axis(u, w);
  Axis ay = clamped_axis(v, h);
  i64 base = lv.offset[level];
  Taps t;
  t.index[0] = base + (i64)ay.i0 * w + ax.i0;
  t.index[1] = base + (i64)ay.i0 * w + ax.i1;
  t.index[2] = base + (i64)ay.i1 * w + ax.i0;
  t.index[3] = base + (i64)ay.i1 * w + ax.i1;
  t.fx = ax.frac;
  t.fy = ay.frac;
  return t;
}

__device__ __forceinline__ float bilinear(const float* texels, const Taps& t, int c) {
  float top = lerp(texels[t.index[0] * CHANNELS + c], texels[t.index[1] * CHANNELS + c], t.fx);
  float bottom = lerp(texels[t.index[2] * CHANNELS + c], texels[t.index[3] * CHANNELS + c], t.fx);
  return lerp(top, bottom, t.fy);
}

// The gradient `g` of a bilinear result, sent back to its four taps (as autograd splits
// a + (b - a) t: g - g t to a, g t to b).
__device__ __forceinline__ void scatter_bilinear(float* grad, const Taps& t, int c, float g) {
  if (g == 0.f) return;
  float g_bottom = mul(g, t.fy);
  float g_top = sub(g, g_bottom);
  float parts[4];
  parts[1] = mul(g_top, t.fx);
  parts[0] = sub(g_top, parts[1]);
  parts[3] = mul(g_bottom, t.fx);
  parts[2] = sub(g_bottom, parts[3]);
  for (int k = 0; k < 4; ++k) {
    if (parts[k] != 0.f) atomicAdd(&grad[t.index[k] * CHANNELS + c], parts[k]);
  }
}

// Sum over the block into *total (one atomic per block).
__device__ void block_sum_into(float value, float* total) {
  __shared__ float partial[32];
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  if (warp == 0) {
    int warps = (blockDim.x + 31) >> 5;
    value = lane < warps ? partial[lane] : 0.f;
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
    if (lane == 0) atomicAdd(total, value);
  }
}

// Masked L1 of one view: N samples with uv [N, 2], level of detail lod [N] (already clamped to
// [0, last level]) and colour [N, 3]; `scale` = 1 / (3N). Adds dLoss/dtexel into `grad` (same
// layout as `texels`) and, when `loss` is non-null, the L1 term into *loss.
extern "C" __global__ void bake_l1_backward(const float* texels, Levels lv, const float* uv,
                                            const float* lod, const float* color, i64 n,
                                            float scale, float* grad, float* loss) {
  float local = 0.f;
  int last = lv.count - 1;
  i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float u = uv[2 * i], v = uv[2 * i + 1];
    float level = lod[i];
    float fl = floorf(level);
    float frac = sub(level, fl);
    int l0 = (int)fl;
    int l1 = min(l0 + 1, last);
    Taps a = taps_at(lv, l0, u, v);
    Taps b = taps_at(lv, l1, u, v);
    for (int c = 0; c < CHANNELS; ++c) {
      float va = bilinear(texels, a, c);
      float vb = bilinear(texels, b, c);
      float diff = sub(lerp(va, vb, frac), color[i * CHANNELS + c]);
      if (loss) local = add(local, fabsf(diff));
      float g = mul(sign_of(diff), scale);
      float g_b = mul(g, frac);
      scatter_bilinear(grad, a, c, sub(g, g_b));
      scatter_bilinear(grad, b, c, g_b);
    }
  }
  if (loss) block_sum_into(mul(local, scale), loss);
}

struct AdamStep {
  float lr_over_c1;   // lr / (1 - beta1^t)
  float sqrt_c2;      // sqrt(1 - beta2^t)
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  float tv_y, tv_x;   // lambda_tv / (number of vertical / horizontal differences), 0 = off
};

// One Adam step per base texel (see the file comment). `old_texels` and `new_texels` are the two
// texture buffers; `grad` holds every level's gradient.
extern "C" __global__ void bake_adam_tv(const float* old_texels, float* new_texels, float* grad,
                                        Levels lv, float* m, float* v, AdamStep s, float* loss) {
  int w = lv.width[0], h = lv.height[0];
  i64 texels = (i64)w * h;
  float local = 0.f;
  i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < texels; i += stride) {
    int y = (int)(i / w), x = (int)(i % w);
    for (int c = 0; c < CHANNELS; ++c) {
      float g = grad[i * CHANNELS + c];
      grad[i * CHANNELS + c] = 0.f;
      // The parent on every coarser level passes down its gradient divided by the texels
      // each level's average spans.
      int py = y, px = x;
      float divisor = 1.f;
      for (int l = 1; l < lv.count; ++l) {
        int ky = lv.height[l - 1] / lv.height[l], kx = lv.width[l - 1] / lv.width[l];
        py /= ky;
        px /= kx;
        divisor = mul(divisor, (float)(ky * kx));
        float share = grad[(lv.offset[l] + (i64)py * lv.width[l] + px) * CHANNELS + c];
        g = add(g, share / divisor);
      }
      float t = old_texels[i * CHANNELS + c];
      if (s.tv_y != 0.f) {
        if (y + 1 < h) {
          float d = sub(old_texels[(i + w) * CHANNELS + c], t);
          g = sub(g, mul(sign_of(d), s.tv_y));
          if (loss) local = add(local, mul(fabsf(d), s.tv_y));
        }
        if (y > 0) g = add(g, mul(sign_of(sub(t, old_texels[(i - w) * CHANNELS + c])), s.tv_y));
      }
      if (s.tv_x != 0.f) {
        if (x + 1 < w) {
          float d = sub(old_texels[(i + 1) * CHANNELS + c], t);
          g = sub(g, mul(sign_of(d), s.tv_x));
          if (loss) local = add(local, mul(fabsf(d), s.tv_x));
        }
        if (x > 0) g = add(g, mul(sign_of(sub(t, old_texels[(i - 1) * CHANNELS + c])), s.tv_x));
      }
      float mi = add(mul(m[i * CHANNELS + c], s.beta1), mul(g, s.one_minus_beta1));
      float vi = add(mul(v[i * CHANNELS + c], s.beta2), mul(mul(g, g), s.one_minus_beta2));
      m[i * CHANNELS + c] = mi;
      v[i * CHANNELS + c] = vi;
      float denom = add(__fsqrt_rn(vi) / s.sqrt_c2, s.eps);
      new_texels[i * CHANNELS + c] = sub(t, mul(mi / denom, s.lr_over_c1));
    }
  }
  if (loss) block_sum_into(local, loss);
}

// Level `level` of `texels` as the box average of the level above; zeroes its gradient.
extern "C" __global__ void bake_mip_down(float* texels, float* grad, Levels lv, int level) {
  int w = lv.width[level], h = lv.height[level];
  int sw = lv.width[level - 1];
  int ky = lv.height[level - 1] / h, kx = sw / w;
  float count = (float)(ky * kx);
  const float* src = texels + lv.offset[level - 1] * CHANNELS;
  float* dst = texels + lv.offset[level] * CHANNELS;
  float* dst_grad = grad + lv.offset[level] * CHANNELS;
  i64 n = (i64)w * h;
  i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    int y = (int)(i / w), x = (int)(i % w);
    for (int c = 0; c < CHANNELS; ++c) {
      float sum = 0.f;
      for (int dy = 0; dy < ky; ++dy) {
        for (int dx = 0; dx < kx; ++dx) {
          sum = add(sum, src[((i64)(y * ky + dy) * sw + (x * kx + dx)) * CHANNELS + c]);
        }
      }
      dst[i * CHANNELS + c] = sum / count;
      dst_grad[i * CHANNELS + c] = 0.f;
    }
  }
}
