// Mesh rasteriser (issue 11): triangles -> per-pixel triangle id, perspective-correct
// barycentrics, camera-space depth and barycentric pixel derivatives, replacing what TRELLIS
// gets from nvdiffrast's dr.rasterize.
//
//   mesh_setup         one thread per triangle: camera transform, homogeneous edge functions,
//                      conservative pixel bounds (near-plane clipped)
//   mesh_raster_small  one thread per triangle: visits its bounding box and keeps, per pixel,
//                      the smallest 64-bit key (depth bits << 32 | triangle id) by atomicMin;
//                      triangles with a large box are queued for
//   mesh_raster_large  one block per queued triangle (grid-stride), threads over its box
//   mesh_resolve       one thread per pixel: id, barycentrics, depth, derivatives from its key
//
// The arithmetic mirrors src/render/mesh_raster/setup.rs operation by operation, with every
// product and sum rounded separately (__fmul_rn / __fadd_rn: no contraction into FMAs) and
// IEEE division, so both paths compute bit-identical edge values and depths and pick the same
// triangle at every pixel. The key minimum makes the result independent of thread order:
// nearer wins, equal depths go to the lower triangle id.
//
// Host side: src/render/mesh_raster/cuda.rs. Self-contained (no #include), like the others.

typedef long long i64;
typedef unsigned long long u64;

// Must match `Camera` in setup.rs (repr(C): 18 floats, 2 ints).
struct Camera {
  float rotation[9];
  float translation[3];
  float fx, fy, cx, cy;
  float near_z, far_z;
  int width, height;
};

#define SETUP_FLOATS 12
#define EMPTY_KEY 0xffffffffffffffffull

// Separately rounded operations (never contracted into FMAs).
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float quot(float a, float b) { return __fdiv_rn(a, b); }

#define POS_INF __uint_as_float(0x7f800000u)
#define NEG_INF __uint_as_float(0xff800000u)

__device__ __forceinline__ bool owns_edge(float a, float b) { return a > 0.0f || (a == 0.0f && b > 0.0f); }

// Clamps with NaN going to the side that covers more (see setup.rs).
__device__ __forceinline__ float clamp_nan_low(float v, float lo, float hi) {
  return isnan(v) ? lo : fminf(fmaxf(v, lo), hi);
}
__device__ __forceinline__ float clamp_nan_high(float v, float lo, float hi) {
  return isnan(v) ? hi : fminf(fmaxf(v, lo), hi);
}

extern "C" __global__ void mesh_setup(const float *__restrict__ positions, const int *__restrict__ indices,
                                      i64 triangles, Camera cam, float *__restrict__ setup,
                                      int *__restrict__ bbox) {
  for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < triangles; t += (i64)gridDim.x * blockDim.x) {
    float c[3][3], h[3][3];
    for (int v = 0; v < 3; ++v) {
      const float *p = positions + 3 * (i64)indices[3 * t + v];
      for (int i = 0; i < 3; ++i) {
        const float *r = cam.rotation + 3 * i;
        c[v][i] = add(add(add(mul(r[0], p[0]), mul(r[1], p[1])), mul(r[2], p[2])), cam.translation[i]);
      }
      h[v][0] = add(mul(cam.fx, c[v][0]), mul(cam.cx, c[v][2]));
      h[v][1] = add(mul(cam.fy, c[v][1]), mul(cam.cy, c[v][2]));
      h[v][2] = c[v][2];
    }
    float e[3][3];
    for (int i = 0; i < 3; ++i) {
      const float *hj = h[(i + 1) % 3], *hk = h[(i + 2) % 3];
      e[i][0] = sub(mul(hj[1], hk[2]), mul(hj[2], hk[1]));
      e[i][1] = sub(mul(hj[2], hk[0]), mul(hj[0], hk[2]));
      e[i][2] = sub(mul(hj[0], hk[1]), mul(hj[1], hk[0]));
    }
    const float det = add(add(mul(h[0][0], e[0][0]), mul(h[0][1], e[0][1])), mul(h[0][2], e[0][2]));
    int4 box = make_int4(0, 0, -1, -1);
    if (isfinite(det) && det != 0.0f) {
      if (det < 0.0f)
        for (int i = 0; i < 3; ++i)
          for (int k = 0; k < 3; ++k) e[i][k] = -e[i][k];
      // Conservative bounds of the part in front of the near plane.
      const float near_z = cam.near_z, far_z = cam.far_z;
      const bool all_near = c[0][2] < near_z && c[1][2] < near_z && c[2][2] < near_z;
      const bool all_far = c[0][2] > far_z && c[1][2] > far_z && c[2][2] > far_z;
      if (!all_near && !all_far) {
        float corners[4][3];
        int count = 0;
        for (int i = 0; i < 3; ++i) {
          const float *p = c[i], *q = c[(i + 1) % 3];
          const bool p_in = p[2] >= near_z, q_in = q[2] >= near_z;
          if (p_in) {
            corners[count][0] = p[0];
            corners[count][1] = p[1];
            corners[count][2] = p[2];
            ++count;
          }
          if (p_in != q_in) {
            const float s = quot(sub(near_z, p[2]), sub(q[2], p[2]));
            corners[count][0] = add(p[0], mul(s, sub(q[0], p[0])));
            corners[count][1] = add(p[1], mul(s, sub(q[1], p[1])));
            corners[count][2] = near_z;
            ++count;
          }
        }
        float lo[2] = {POS_INF, POS_INF}, hi[2] = {NEG_INF, NEG_INF};
        for (int k = 0; k < count; ++k) {
          const float sx = add(quot(mul(cam.fx, corners[k][0]), corners[k][2]), cam.cx);
          const float sy = add(quot(mul(cam.fy, corners[k][1]), corners[k][2]), cam.cy);
          lo[0] = fminf(lo[0], sx);
          hi[0] = fmaxf(hi[0], sx);
          lo[1] = fminf(lo[1], sy);
          hi[1] = fmaxf(hi[1], sy);
        }
        const float limit[2] = {(float)cam.width, (float)cam.height};
        int b[4];
        for (int a = 0; a < 2; ++a) {
          b[a] = (int)clamp_nan_low(sub(floorf(sub(lo[a], 0.5f)), 1.0f), 0.0f, limit[a]);
          b[a + 2] = (int)clamp_nan_high(add(ceilf(sub(hi[a], 0.5f)), 1.0f), -1.0f, sub(limit[a], 1.0f));
        }
        if (b[0] <= b[2] && b[1] <= b[3]) box = make_int4(b[0], b[1], b[2], b[3]);
      }
    }
    float *out = setup + SETUP_FLOATS * t;
    for (int i = 0; i < 3; ++i)
      for (int k = 0; k < 3; ++k) out[3 * i + k] = e[i][k];
    for (int v = 0; v < 3; ++v) out[9 + v] = c[v][2];
    reinterpret_cast<int4 *>(bbox)[t] = box;
  }
}

// The three edge functions at the centre of pixel (x, y).
__device__ __forceinline__ void edge_values(const float *s, int x, int y, float e[3]) {
  const float px = add((float)x, 0.5f), py = add((float)y, 0.5f);
  for (int i = 0; i < 3; ++i) e[i] = add(add(mul(s[3 * i], px), mul(s[3 * i + 1], py)), s[3 * i + 2]);
}

// True, with the barycentric weights and depth, when the centre of pixel (x, y) is covered
// (top-left fill rule) and within [near, far].
__device__ __forceinline__ bool cover(const Camera &cam, const float *s, int x, int y, float w[3], float &z) {
  float e[3];
  edge_values(s, x, y, e);
  for (int i = 0; i < 3; ++i)
    if (!(e[i] > 0.0f || (e[i] == 0.0f && owns_edge(s[3 * i], s[3 * i + 1])))) return false;
  const float sum = add(add(e[0], e[1]), e[2]);
  if (!(sum > 0.0f && isfinite(sum))) return false;
  for (int i = 0; i < 3; ++i) w[i] = quot(e[i], sum);
  z = add(add(mul(w[0], s[9]), mul(w[1], s[10])), mul(w[2], s[11]));
  return z >= cam.near_z && z <= cam.far_z;
}

__device__ __forceinline__ void raster_pixel(const Camera &cam, const float *s, int x, int y, unsigned int id,
                                             u64 *keys) {
  float w[3], z;
  if (cover(cam, s, x, y, w, z)) {
    const u64 key = ((u64)__float_as_uint(z) << 32) | (u64)id;
    atomicMin(keys + (i64)y * cam.width + x, key);
  }
}

extern "C" __global__ void mesh_raster_small(const float *__restrict__ setup, const int *__restrict__ bbox,
                                             i64 triangles, Camera cam, i64 large_area, u64 *keys,
                                             int *large_list, int *large_count) {
  for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < triangles; t += (i64)gridDim.x * blockDim.x) {
    const int4 box = reinterpret_cast<const int4 *>(bbox)[t];
    if (box.x > box.z || box.y > box.w) continue;
    const i64 area = (i64)(box.z - box.x + 1) * (i64)(box.w - box.y + 1);
    if (area > large_area) {
      large_list[atomicAdd(large_count, 1)] = (int)t;
      continue;
    }
    float s[SETUP_FLOATS];
    for (int k = 0; k < SETUP_FLOATS; ++k) s[k] = setup[SETUP_FLOATS * t + k];
    for (int y = box.y; y <= box.w; ++y)
      for (int x = box.x; x <= box.z; ++x) raster_pixel(cam, s, x, y, (unsigned int)t, keys);
  }
}

extern "C" __global__ void mesh_raster_large(const float *__restrict__ setup, const int *__restrict__ bbox,
                                             Camera cam, u64 *keys, const int *large_list,
                                             const int *large_count) {
  const int count = *large_count;
  for (int item = blockIdx.x; item < count; item += gridDim.x) {
    const int t = large_list[item];
    const int4 box = reinterpret_cast<const int4 *>(bbox)[t];
    float s[SETUP_FLOATS];
    for (int k = 0; k < SETUP_FLOATS; ++k) s[k] = setup[SETUP_FLOATS * (i64)t + k];
    const int box_w = box.z - box.x + 1;
    const i64 area = (i64)box_w * (i64)(box.w - box.y + 1);
    for (i64 p = threadIdx.x; p < area; p += blockDim.x) {
      const int x = box.x + (int)(p % box_w), y = box.y + (int)(p / box_w);
      raster_pixel(cam, s, x, y, (unsigned int)t, keys);
    }
  }
}

extern "C" __global__ void mesh_resolve(const float *__restrict__ setup, const u64 *__restrict__ keys,
                                        Camera cam, int *__restrict__ triangle_id, float *__restrict__ barycentrics,
                                        float *__restrict__ depth, float *__restrict__ derivatives) {
  const i64 pixels = (i64)cam.width * cam.height;
  for (i64 p = blockIdx.x * (i64)blockDim.x + threadIdx.x; p < pixels; p += (i64)gridDim.x * blockDim.x) {
    const u64 key = keys[p];
    if (key == EMPTY_KEY) {
      triangle_id[p] = -1;
      barycentrics[2 * p] = 0.0f;
      barycentrics[2 * p + 1] = 0.0f;
      depth[p] = 0.0f;
      for (int k = 0; k < 4; ++k) derivatives[4 * p + k] = 0.0f;
      continue;
    }
    const unsigned int id = (unsigned int)(key & 0xffffffffull);
    const float *s = setup + SETUP_FLOATS * (i64)id;
    const int x = (int)(p % cam.width), y = (int)(p / cam.width);
    float e[3];
    edge_values(s, x, y, e);
    const float sum = add(add(e[0], e[1]), e[2]);
    float w[3];
    for (int i = 0; i < 3; ++i) w[i] = quot(e[i], sum);
    const float da = add(add(s[0], s[3]), s[6]);
    const float db = add(add(s[1], s[4]), s[7]);
    triangle_id[p] = (int)id;
    barycentrics[2 * p] = w[1];
    barycentrics[2 * p + 1] = w[2];
    depth[p] = __uint_as_float((unsigned int)(key >> 32));
    for (int i = 1; i < 3; ++i) {
      derivatives[4 * p + 2 * (i - 1)] = quot(sub(s[3 * i], mul(w[i], da)), sum);
      derivatives[4 * p + 2 * (i - 1) + 1] = quot(sub(s[3 * i + 1], mul(w[i], db)), sum);
    }
  }
}
