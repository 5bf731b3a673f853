// Gaussian-splat rasteriser, forward only (issue 11): the conventions of mip-splatting's
// diff-gaussian-rasterization as TRELLIS's GaussianRenderer drives it (SH degree 0 colours
// computed on the host, the 2D low-pass filter with opacity compensation, 16x16 tiles, per-tile
// front-to-back order by view depth), plus depth and alpha outputs.
//
//   splat_preprocess   one thread per Gaussian: cull at z <= 0.2, 3D covariance, EWA projection
//                      with the clamped Jacobian, the 2D filter, conic, 3-sigma radius, tile
//                      rectangle and tile count
//   splat_duplicate    one (tile << 32 | depth bits, gaussian) pair per touched tile, at the
//                      Gaussian's offset in the inclusive prefix sum of the tile counts
//   (the host sorts the keys with libtorch's stable sort: ties keep Gaussian order)
//   splat_tile_ranges  the [start, end) of each tile's run in the sorted list
//   splat_blend        one 16x16 block per tile, one thread per pixel: splats fetched in batches
//                      of 256 into shared memory, alpha = min(0.99, o * exp(power)), skipped
//                      below 1/255, stop before the transmittance falls below 1e-4
//
// The arithmetic mirrors src/render/gaussian/projection.rs and cpu.rs operation by operation
// with __f*_rn intrinsics (never contracted into FMAs), so the splats, their depth order and
// the tile lists are bit-identical to the CPU reference; the blend differs only by expf's
// rounding. Host side: src/render/gaussian/cuda.rs. Self-contained (no #include).

typedef long long i64;
typedef unsigned int u32;

#define TILE 16
#define BLOCK (TILE * TILE)
#define NEAR_CULL 0.2f
#define MAX_RADIUS 16777216.0f
#define MIN_TRANSMITTANCE 1e-4f
#define FLT_MAX_ 3.402823466e38f

struct __align__(16) Vec4 {
  float x, y, z, w;
};

struct __align__(16) Rect {
  int x0, y0, x1, y1;
};

// Keep in sync with SplatCamera in src/render/gaussian/projection.rs (#[repr(C)]).
struct SplatCamera {
  float rotation[9];  // world -> camera, row-major
  float translation[3];
  float focal_x, focal_y;          // pixels
  float principal_x, principal_y;  // pixel-index coordinates (OpenCV pixels - 0.5)
  float clamp_x, clamp_y;          // 1.3 * tan(half fov)
  float kernel_size, scale_modifier;
  float background[3];
  int width, height, tiles_x, tiles_y;
};

__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float dvd(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float dot3(const float *a, const float *b) {
  return add(add(mul(a[0], b[0]), mul(a[1], b[1])), mul(a[2], b[2]));
}
__device__ __forceinline__ bool finite(float v) { return fabsf(v) <= FLT_MAX_; }

// Rows of R * diag(s) for the quaternion (w, x, y, z) taken as given, then their Gram matrix.
__device__ void covariance_3d(const float s[3], float w, float x, float y, float z,
                              float sigma[3][3]) {
  const float two = 2.0f;
  float rot[3][3] = {
      {sub(1.0f, mul(two, add(mul(y, y), mul(z, z)))), mul(two, sub(mul(x, y), mul(w, z))),
       mul(two, add(mul(x, z), mul(w, y)))},
      {mul(two, add(mul(x, y), mul(w, z))), sub(1.0f, mul(two, add(mul(x, x), mul(z, z)))),
       mul(two, sub(mul(y, z), mul(w, x)))},
      {mul(two, sub(mul(x, z), mul(w, y))), mul(two, add(mul(y, z), mul(w, x))),
       sub(1.0f, mul(two, add(mul(x, x), mul(y, y))))},
  };
  float m[3][3];
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) m[i][k] = mul(rot[i][k], s[k]);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) sigma[i][j] = dot3(m[i], m[j]);
}

// sqrt(det / det_filtered) with the reference's f64 guards; 0 for a degenerate footprint.
__device__ float filter_coefficient(float a, float b, float c, float k) {
  const double before = (double)sub(mul(a, c), mul(b, b));
  const double after = (double)sub(mul(add(a, k), add(c, k)), mul(b, b));
  if (before <= 1e-6 || after <= 1e-6) return 0.0f;
  return (float)__dsqrt_rn(__dadd_rn(__ddiv_rn(before, __dadd_rn(after, 1e-6)), 1e-6));
}

__device__ __forceinline__ int clamp_tile(float v, int tiles) {
  return min(max((int)v, 0), tiles);  // (int) truncates toward zero and saturates, as Rust's `as`
}

// Packed Gaussians: 4 Vec4 each, (x, y, z, opacity) (sx, sy, sz, 0) (qw, qx, qy, qz) (r, g, b, 0).
// Outputs per Gaussian: splat_a = (px, py, depth, opacity * coef), splat_b = conic (a, b, c, 0),
// rect [x0, y0, x1, y1) in tiles, touched = number of tiles (0 = culled).
extern "C" __global__ void splat_preprocess(const Vec4 *gaussians, i64 n, SplatCamera cam,
                                            Vec4 *splat_a, Vec4 *splat_b, Rect *rects,
                                            int *touched) {
  for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)blockDim.x * gridDim.x) {
    touched[i] = 0;
    const Vec4 g0 = gaussians[4 * i], g1 = gaussians[4 * i + 1], g2 = gaussians[4 * i + 2];
    const float p[3] = {g0.x, g0.y, g0.z};
    const float *r0 = cam.rotation, *r1 = cam.rotation + 3, *r2 = cam.rotation + 6;
    const float z = add(dot3(r2, p), cam.translation[2]);
    if (!(z > NEAR_CULL)) continue;
    const float x = add(dot3(r0, p), cam.translation[0]);
    const float y = add(dot3(r1, p), cam.translation[1]);
    const float xz = dvd(x, z), yz = dvd(y, z);

    const float jx = mul(fminf(fmaxf(xz, -cam.clamp_x), cam.clamp_x), z);
    const float jy = mul(fminf(fmaxf(yz, -cam.clamp_y), cam.clamp_y), z);
    const float zz = mul(z, z);
    const float j00 = dvd(cam.focal_x, z), j02 = dvd(-mul(cam.focal_x, jx), zz);
    const float j11 = dvd(cam.focal_y, z), j12 = dvd(-mul(cam.focal_y, jy), zz);
    float a0[3], a1[3];
    for (int k = 0; k < 3; ++k) {
      a0[k] = add(mul(j00, r0[k]), mul(j02, r2[k]));
      a1[k] = add(mul(j11, r1[k]), mul(j12, r2[k]));
    }
    const float m = cam.scale_modifier;
    const float s[3] = {mul(m, g1.x), mul(m, g1.y), mul(m, g1.z)};
    float sigma[3][3];
    covariance_3d(s, g2.x, g2.y, g2.z, g2.w, sigma);
    float s0[3], s1[3];
    for (int k = 0; k < 3; ++k) {
      s0[k] = dot3(sigma[k], a0);
      s1[k] = dot3(sigma[k], a1);
    }
    float a = dot3(a0, s0), b = dot3(a1, s0), c = dot3(a1, s1);

    const float coef = filter_coefficient(a, b, c, cam.kernel_size);
    a = add(a, cam.kernel_size);
    c = add(c, cam.kernel_size);
    const float det = sub(mul(a, c), mul(b, b));
    if (det == 0.0f) continue;
    const float inv = dvd(1.0f, det);
    const float conic_a = mul(c, inv), conic_b = mul(-b, inv), conic_c = mul(a, inv);

    const float mid = mul(0.5f, add(a, c));
    const float root = __fsqrt_rn(fmaxf(sub(mul(mid, mid), det), 0.1f));
    const float radius = ceilf(mul(3.0f, __fsqrt_rn(add(mid, root))));
    const float px = add(mul(cam.focal_x, xz), cam.principal_x);
    const float py = add(mul(cam.focal_y, yz), cam.principal_y);
    if (!(radius > 0.0f && finite(px) && finite(py) && finite(conic_a) && finite(conic_b) &&
          finite(conic_c)))
      continue;
    const float rad = fminf(radius, MAX_RADIUS);
    Rect rect;
    rect.x0 = clamp_tile(dvd(sub(px, rad), (float)TILE), cam.tiles_x);
    rect.y0 = clamp_tile(dvd(sub(py, rad), (float)TILE), cam.tiles_y);
    rect.x1 = clamp_tile(dvd(add(add(px, rad), (float)(TILE - 1)), (float)TILE), cam.tiles_x);
    rect.y1 = clamp_tile(dvd(add(add(py, rad), (float)(TILE - 1)), (float)TILE), cam.tiles_y);
    const int count = (rect.x1 - rect.x0) * (rect.y1 - rect.y0);
    if (count == 0) continue;

    Vec4 sa, sb;
    sa.x = px;
    sa.y = py;
    sa.z = z;
    sa.w = mul(g0.w, coef);
    sb.x = conic_a;
    sb.y = conic_b;
    sb.z = conic_c;
    sb.w = 0.0f;
    splat_a[i] = sa;
    splat_b[i] = sb;
    rects[i] = rect;
    touched[i] = count;
  }
}

// ends: inclusive prefix sum of `touched` (int64). Keys are (tile << 32) | depth bits (depth
// > 0.2, so its bits order like the value); values the Gaussian index.
extern "C" __global__ void splat_duplicate(i64 n, const Vec4 *splat_a, const Rect *rects,
                                           const int *touched, const i64 *ends, int tiles_x,
                                           i64 *keys, int *values) {
  for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)blockDim.x * gridDim.x) {
    const int count = touched[i];
    if (count == 0) continue;
    i64 at = ends[i] - count;
    const Rect rect = rects[i];
    const i64 depth_bits = (i64)__float_as_uint(splat_a[i].z);
    for (int ty = rect.y0; ty < rect.y1; ++ty) {
      for (int tx = rect.x0; tx < rect.x1; ++tx) {
        keys[at] = ((i64)(ty * tiles_x + tx) << 32) | depth_bits;
        values[at] = (int)i;
        ++at;
      }
    }
  }
}

// ranges [tiles, 2] zeroed by the host; total <= INT_MAX (checked by the host).
extern "C" __global__ void splat_tile_ranges(i64 total, const i64 *keys, int *ranges) {
  for (i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x; k < total; k += (i64)blockDim.x * gridDim.x) {
    const i64 tile = keys[k] >> 32;
    if (k == 0) {
      ranges[2 * tile] = 0;
    } else {
      const i64 previous = keys[k - 1] >> 32;
      if (tile != previous) {
        ranges[2 * previous + 1] = (int)k;
        ranges[2 * tile] = (int)k;
      }
    }
    if (k == total - 1) ranges[2 * tile + 1] = (int)total;
  }
}

// One block of TILE x TILE threads per tile. order: sorted Gaussian indices. Outputs color
// [H, W, 3], depth [H, W] (the weight-normalised view depth of what was composited, 0 where
// nothing was), alpha [H, W] (1 - final transmittance).
extern "C" __global__ void __launch_bounds__(BLOCK)
    splat_blend(const int *ranges, const int *order, const Vec4 *splat_a, const Vec4 *splat_b,
                const Vec4 *gaussians, SplatCamera cam, float *color, float *depth,
                float *alpha) {
  __shared__ Vec4 shared_a[BLOCK];
  __shared__ Vec4 shared_b[BLOCK];
  __shared__ Vec4 shared_rgb[BLOCK];
  const int tile = blockIdx.y * cam.tiles_x + blockIdx.x;
  const int rank = threadIdx.y * TILE + threadIdx.x;
  const int x = blockIdx.x * TILE + threadIdx.x, y = blockIdx.y * TILE + threadIdx.y;
  const bool inside = x < cam.width && y < cam.height;
  const float fx = (float)x, fy = (float)y;
  const int start = ranges[2 * tile], end = ranges[2 * tile + 1];

  bool done = !inside;
  float transmittance = 1.0f, r = 0.0f, g = 0.0f, b = 0.0f, depth_sum = 0.0f, weight_sum = 0.0f;
  for (int base = start; base < end; base += BLOCK) {
    // Also the barrier that lets the previous batch's reads finish before the overwrite.
    if (__syncthreads_count(done) == BLOCK) break;
    if (base + rank < end) {
      const int gi = order[base + rank];
      shared_a[rank] = splat_a[gi];
      shared_b[rank] = splat_b[gi];
      shared_rgb[rank] = gaussians[4 * (i64)gi + 3];
    }
    __syncthreads();
    const int count = min(BLOCK, end - base);
    for (int j = 0; !done && j < count; ++j) {
      const Vec4 sa = shared_a[j], sb = shared_b[j];
      const float dx = sub(sa.x, fx), dy = sub(sa.y, fy);
      const float q = add(mul(mul(sb.x, dx), dx), mul(mul(sb.z, dy), dy));
      const float power = sub(mul(-0.5f, q), mul(mul(sb.y, dx), dy));
      if (power > 0.0f) continue;
      const float a = fminf(mul(sa.w, expf(power)), 0.99f);
      if (a < 1.0f / 255.0f) continue;
      const float next = mul(transmittance, sub(1.0f, a));
      if (next < MIN_TRANSMITTANCE) {
        done = true;
        continue;
      }
      const float w = mul(a, transmittance);
      const Vec4 rgb = shared_rgb[j];
      r = add(r, mul(rgb.x, w));
      g = add(g, mul(rgb.y, w));
      b = add(b, mul(rgb.z, w));
      depth_sum = add(depth_sum, mul(sa.z, w));
      weight_sum = add(weight_sum, w);
      transmittance = next;
    }
  }
  if (inside) {
    const i64 pixel = (i64)y * cam.width + x;
    color[3 * pixel] = add(r, mul(transmittance, cam.background[0]));
    color[3 * pixel + 1] = add(g, mul(transmittance, cam.background[1]));
    color[3 * pixel + 2] = add(b, mul(transmittance, cam.background[2]));
    depth[pixel] = weight_sum > 0.0f ? dvd(depth_sum, weight_sum) : 0.0f;
    alpha[pixel] = sub(1.0f, transmittance);
  }
}
