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
// Layout: every level of a texture buffer is stored row-major as RGBA float4 texels (A unused,
// kept 0) so that a texel is one 16-byte load and, on sm_90+, its gradient one vector atomic
// instead of three; the levels follow one another (`Levels.offset` in texels), level 0 first.
// Host side: src/postprocessing/bake/cuda.rs.

typedef long long i64;

#define MAX_LEVELS 16

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

__device__ __forceinline__ float4 lerp4(float4 a, float4 b, float t) {
  return make_float4(lerp(a.x, b.x, t), lerp(a.y, b.y, t), lerp(a.z, b.z, t), 0.f);
}
__device__ __forceinline__ float4 scale4(float4 a, float s) {
  return make_float4(mul(a.x, s), mul(a.y, s), mul(a.z, s), 0.f);
}
__device__ __forceinline__ float4 sub4(float4 a, float4 b) {
  return make_float4(sub(a.x, b.x), sub(a.y, b.y), sub(a.z, b.z), 0.f);
}
__device__ __forceinline__ float4 add4(float4 a, float4 b) {
  return make_float4(add(a.x, b.x), add(a.y, b.y), add(a.z, b.z), 0.f);
}

// Adds the RGB of `g` to a texel's gradient: one vector atomic where the GPU has them (sm_90).
__device__ __forceinline__ void atomic_add_rgb(float4* texel, float4 g) {
#if __CUDA_ARCH__ >= 900
  atomicAdd(texel, g);
#else
  float* f = reinterpret_cast<float*>(texel);
  atomicAdd(f, g.x);
  atomicAdd(f + 1, g.y);
  atomicAdd(f + 2, g.z);
#endif
}

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

__device__ __forceinline__ float4 bilinear(const float4* texels, const Taps& t) {
  float4 top = lerp4(texels[t.index[0]], texels[t.index[1]], t.fx);
  float4 bottom = lerp4(texels[t.index[2]], texels[t.index[3]], t.fx);
  return lerp4(top, bottom, t.fy);
}

// The gradient `g` of a bilinear result, sent back to its four taps (as autograd splits
// a + (b - a) t: g - g t to a, g t to b).
__device__ __forceinline__ void scatter_bilinear(float4* grad, const Taps& t, float4 g) {
  if (g.x == 0.f && g.y == 0.f && g.z == 0.f) return;
  float4 g_bottom = scale4(g, t.fy);
  float4 g_top = sub4(g, g_bottom);
  float4 parts[4];
  parts[1] = scale4(g_top, t.fx);
  parts[0] = sub4(g_top, parts[1]);
  parts[3] = scale4(g_bottom, t.fx);
  parts[2] = sub4(g_bottom, parts[3]);
  for (int k = 0; k < 4; ++k) {
    if (parts[k].x != 0.f || parts[k].y != 0.f || parts[k].z != 0.f) atomic_add_rgb(&grad[t.index[k]], parts[k]);
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
// [0, last level]) and colour [N, 4] (RGB, A unused); `scale` = 1 / (3N). Adds dLoss/dtexel into
// `grad` (same layout as `texels`) and, when `loss` is non-null, the L1 term into *loss.
extern "C" __global__ void bake_l1_backward(const float4* texels, Levels lv, const float2* uv,
                                            const float* lod, const float4* color, i64 n,
                                            float scale, float4* grad, float* loss) {
  float local = 0.f;
  int last = lv.count - 1;
  i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float2 p = uv[i];
    float level = lod[i];
    float fl = floorf(level);
    float frac = sub(level, fl);
    int l0 = (int)fl;
    Taps a = taps_at(lv, l0, p.x, p.y);
    float4 render = bilinear(texels, a);
    // With no weight on the upper level (magnification, or the last level) its lookup cannot
    // change the result (a + (b - a)·0 = a) and gets no gradient: skip it.
    bool upper = frac != 0.f;
    Taps b;
    if (upper) {
      b = taps_at(lv, min(l0 + 1, last), p.x, p.y);
      render = lerp4(render, bilinear(texels, b), frac);
    }
    float4 diff = sub4(render, color[i]);
    if (loss) local = add(local, add(add(fabsf(diff.x), fabsf(diff.y)), fabsf(diff.z)));
    float4 g = make_float4(mul(sign_of(diff.x), scale), mul(sign_of(diff.y), scale),
                           mul(sign_of(diff.z), scale), 0.f);
    if (upper) {
      float4 g_b = scale4(g, frac);
      scatter_bilinear(grad, a, sub4(g, g_b));
      scatter_bilinear(grad, b, g_b);
    } else {
      scatter_bilinear(grad, a, g);
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

__device__ __forceinline__ float adam_update(float t, float g, float* m, float* v, const AdamStep& s) {
  float mi = add(mul(*m, s.beta1), mul(g, s.one_minus_beta1));
  float vi = add(mul(*v, s.beta2), mul(mul(g, g), s.one_minus_beta2));
  *m = mi;
  *v = vi;
  float denom = add(__fsqrt_rn(vi) / s.sqrt_c2, s.eps);
  return sub(t, mul(mi / denom, s.lr_over_c1));
}

// The TV term's gradient at `t` from one neighbour pair direction: `next` follows t, `prev`
// precedes it (either may be absent); adds weight·|next - t| to *loss_sum when asked.
__device__ __forceinline__ float tv_gradient(float t, float prev, bool has_prev, float next, bool has_next,
                                             float weight, float* loss_sum) {
  float g = 0.f;
  if (has_next) {
    float d = sub(next, t);
    g = sub(g, mul(sign_of(d), weight));
    if (loss_sum) *loss_sum = add(*loss_sum, mul(fabsf(d), weight));
  }
  if (has_prev) g = add(g, mul(sign_of(sub(t, prev)), weight));
  return g;
}

// One Adam step per base texel (see the file comment). `old_texels` and `new_texels` are the two
// texture buffers; `grad` holds every level's gradient.
extern "C" __global__ void bake_adam_tv(const float4* old_texels, float4* new_texels, float4* grad,
                                        Levels lv, float4* m, float4* v, AdamStep s, float* loss) {
  int w = lv.width[0], h = lv.height[0];
  int texels = w * h;
  float local = 0.f;
  float* loss_sum = loss ? &local : nullptr;
  int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < texels; i += stride) {
    int y = i / w, x = i - y * w;
    float4 g = grad[i];
    grad[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    // Every coarser level's texel above this one passes its gradient down, divided by the
    // texels each average spans (powers of two, so multiplying by the inverse is exact).
    int py = y, px = x;
    float divisor = 1.f;
    for (int l = 1; l < lv.count; ++l) {
      int ky = lv.height[l - 1] != lv.height[l], kx = lv.width[l - 1] != lv.width[l];
      py >>= ky;
      px >>= kx;
      divisor = mul(divisor, (float)((1 + ky) * (1 + kx)));
      float4 share = grad[lv.offset[l] + (i64)py * lv.width[l] + px];
      g = add4(g, scale4(share, 1.f / divisor));
    }
    float4 t = old_texels[i];
    if (s.tv_y != 0.f) {
      bool up = y > 0, down = y + 1 < h;
      float4 prev = up ? old_texels[i - w] : t, next = down ? old_texels[i + w] : t;
      g.x = add(g.x, tv_gradient(t.x, prev.x, up, next.x, down, s.tv_y, loss_sum));
      g.y = add(g.y, tv_gradient(t.y, prev.y, up, next.y, down, s.tv_y, loss_sum));
      g.z = add(g.z, tv_gradient(t.z, prev.z, up, next.z, down, s.tv_y, loss_sum));
    }
    if (s.tv_x != 0.f) {
      bool left = x > 0, right = x + 1 < w;
      float4 prev = left ? old_texels[i - 1] : t, next = right ? old_texels[i + 1] : t;
      g.x = add(g.x, tv_gradient(t.x, prev.x, left, next.x, right, s.tv_x, loss_sum));
      g.y = add(g.y, tv_gradient(t.y, prev.y, left, next.y, right, s.tv_x, loss_sum));
      g.z = add(g.z, tv_gradient(t.z, prev.z, left, next.z, right, s.tv_x, loss_sum));
    }
    float4 mi = m[i], vi = v[i];
    float4 out;
    out.x = adam_update(t.x, g.x, &mi.x, &vi.x, s);
    out.y = adam_update(t.y, g.y, &mi.y, &vi.y, s);
    out.z = adam_update(t.z, g.z, &mi.z, &vi.z, s);
    out.w = 0.f;
    m[i] = mi;
    v[i] = vi;
    new_texels[i] = out;
  }
  if (loss) block_sum_into(local, loss);
}

// Level `level` of `texels` as the box average of the level above; zeroes its gradient.
extern "C" __global__ void bake_mip_down(float4* texels, float4* grad, Levels lv, int level) {
  int w = lv.width[level], h = lv.height[level];
  int sw = lv.width[level - 1];
  int ky = lv.height[level - 1] != h ? 2 : 1, kx = sw != w ? 2 : 1;
  float count = (float)(ky * kx);
  const float4* src = texels + lv.offset[level - 1];
  float4* dst = texels + lv.offset[level];
  float4* dst_grad = grad + lv.offset[level];
  int n = w * h;
  int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    int y = i / w, x = i - y * w;
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int dy = 0; dy < ky; ++dy) {
      for (int dx = 0; dx < kx; ++dx) {
        sum = add4(sum, src[(i64)(y * ky + dy) * sw + (x * kx + dx)]);
      }
    }
    dst[i] = make_float4(sum.x / count, sum.y / count, sum.z / count, 0.f);
    dst_grad[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
}
