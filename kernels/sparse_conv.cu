// Submanifold sparse convolution on CUDA: a voxel hash, the kernel-map build, the gather /
// reduction around the per-offset GEMMs (the GEMMs themselves run through libtorch), and
// fused kernels for fp16 (tensor cores) and fp32 (CUDA cores) with up to 256 channels (end of
// the file).
// Host side: src/cuda/sparse.rs. Compiled at run time by NVRTC (src/cuda/nvrtc.rs) for the
// device's architecture; CI compiles it for sm_80 and sm_90 (tests/kernels_compile.rs).
//
// Self-contained on purpose: no #include, so NVRTC needs no CUDA headers on the machine. Half
// precision is handled as raw 16-bit values converted with PTX `cvt`.
//
// Every kernel loops grid-stride over its work with 64-bit indices, so any grid size is
// correct; the host picks one.
//
// The kernel-map format is the engine's (src/sparse/engine.rs, `KernelMap`): int64 pairs
// [2, P] (row 0 input rows, row 1 output rows), grouped by kernel offset in KRSC order (x
// slowest, z fastest), output rows increasing within an offset; the centre offset stores no
// pairs. Next to it the CUDA build keeps `pair_index` [K, N] int32: the position in `pairs` of
// the pair (offset k, output row o), or -1. The convolution uses it to sum every output row's
// contributions in offset order without atomics, so results are deterministic and, in fp32,
// summed in exactly the order of the CPU path.

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;

#define EMPTY_SLOT (-1)

// ---------------------------------------------------------------------------------------------
// Voxel hash: open addressing with linear probing over a power-of-two table of int32 row
// indices (EMPTY_SLOT when free). A slot stores the row, not the key: the key is the row's
// (batch, x, y, z), read back from the coordinates to compare. That keeps any int32/int64
// coordinate exact (no packing into a bounded key) and needs no bounding box, hence no host
// round-trip. The host gives the table at least twice as many slots as rows (load factor
// <= 1/2), so every probe sequence reaches a free slot.

struct Voxel {
  i64 b, x, y, z;
};

template <typename C>
__device__ __forceinline__ Voxel load_voxel(const C *coords, i64 row) {
  const C *c = coords + 4 * row;
  Voxel v;
  v.b = c[0];
  v.x = c[1];
  v.y = c[2];
  v.z = c[3];
  return v;
}

__device__ __forceinline__ bool same_voxel(const Voxel &a, const Voxel &b) {
  return a.b == b.b && a.x == b.x && a.y == b.y && a.z == b.z;
}

// splitmix64's finaliser: every input bit affects every output bit.
__device__ __forceinline__ u64 mix64(u64 h) {
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

// Hash of the linearised key (b, x, y, z), chained so neighbouring voxels land far apart.
__device__ __forceinline__ u64 voxel_hash(const Voxel &v) {
  u64 h = mix64((u64)v.b + 0x9e3779b97f4a7c15ULL);
  h = mix64(h ^ (u64)v.x);
  h = mix64(h ^ (u64)v.y);
  return mix64(h ^ (u64)v.z);
}

// Inserts every row. Coordinates are unique by contract; should a voxel repeat, its slot keeps
// the smallest row (atomicMin), so the table never depends on thread timing.
template <typename C>
__device__ void hash_insert(const C *coords, i64 n, int *table, u64 mask) {
  const i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 row = (i64)blockIdx.x * blockDim.x + threadIdx.x; row < n; row += stride) {
    const Voxel v = load_voxel(coords, row);
    u64 slot = voxel_hash(v) & mask;
    while (true) {
      const int prev = atomicCAS(&table[slot], EMPTY_SLOT, (int)row);
      if (prev == EMPTY_SLOT) break;
      if (same_voxel(load_voxel(coords, prev), v)) {
        atomicMin(&table[slot], (int)row);
        break;
      }
      slot = (slot + 1) & mask;
    }
  }
}

// The row holding voxel q, or -1.
template <typename C>
__device__ __forceinline__ int hash_find(const C *coords, const int *table, u64 mask,
                                         const Voxel &q) {
  u64 slot = voxel_hash(q) & mask;
  while (true) {
    const int row = table[slot];
    if (row == EMPTY_SLOT) return -1;
    if (same_voxel(load_voxel(coords, row), q)) return row;
    slot = (slot + 1) & mask;
  }
}

template <typename C>
__device__ void hash_lookup(const C *coords, const int *table, u64 mask, const C *queries,
                            i64 m, i64 *rows) {
  const i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < m; i += stride) {
    rows[i] = hash_find(coords, table, mask, load_voxel(queries, i));
  }
}

extern "C" __global__ void voxel_hash_insert_i32(const int *coords, i64 n, int *table, u64 mask) {
  hash_insert(coords, n, table, mask);
}

extern "C" __global__ void voxel_hash_insert_i64(const i64 *coords, i64 n, int *table, u64 mask) {
  hash_insert(coords, n, table, mask);
}

extern "C" __global__ void voxel_hash_lookup_i32(const int *coords, const int *table, u64 mask,
                                                 const int *queries, i64 m, i64 *rows) {
  hash_lookup(coords, table, mask, queries, m, rows);
}

extern "C" __global__ void voxel_hash_lookup_i64(const i64 *coords, const int *table, u64 mask,
                                                 const i64 *queries, i64 m, i64 *rows) {
  hash_lookup(coords, table, mask, queries, m, rows);
}

// ---------------------------------------------------------------------------------------------
// Kernel map, in two passes over tiles. A tile is one block's worth of consecutive output rows
// for one kernel offset; tiles are numbered offset-major (tile = k * tiles_per_offset + t), so
// concatenating the tiles' hits in tile order gives exactly the engine's pair order.
//  1. kmap_probe: looks up every (offset, output row) neighbour into pair_index (the input row
//     or -1) and counts each tile's hits.
//  2. the host turns the counts into exclusive tile offsets (a cumsum on the device) and reads
//     the per-offset totals (the one device-to-host copy of a map build: it sizes `pairs`);
//  3. kmap_compact: a block-wide scan of the hit flags places each hit at its tile's offset
//     plus its rank, writes the pair, and replaces pair_index's input row by the pair position.
// Both kernels need blockDim.x to be a multiple of 32 (whole warps) and at most 1024.

struct KernelShape {
  int size[3];      // kernel extent along x, y, z (odd)
  int dilation[3];  // dilation along x, y, z
};

// Displacement of offset k (KRSC order) along each axis: (r - size / 2) * dilation.
__device__ __forceinline__ void offset_displacement(const KernelShape &shape, i64 k, i64 d[3]) {
  const i64 rz = k % shape.size[2];
  const i64 ry = (k / shape.size[2]) % shape.size[1];
  const i64 rx = k / ((i64)shape.size[2] * shape.size[1]);
  d[0] = (rx - shape.size[0] / 2) * shape.dilation[0];
  d[1] = (ry - shape.size[1] / 2) * shape.dilation[1];
  d[2] = (rz - shape.size[2] / 2) * shape.dilation[2];
}

template <typename C>
__device__ void kmap_probe(const C *coords, i64 n, const int *table, u64 mask, KernelShape shape,
                           i64 centre, i64 num_offsets, i64 tiles_per_offset, int *pair_index,
                           int *tile_counts) {
  const i64 num_tiles = num_offsets * tiles_per_offset;
  for (i64 tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const i64 k = tile / tiles_per_offset;
    const i64 o = (tile - k * tiles_per_offset) * blockDim.x + threadIdx.x;
    int found = -1;
    if (o < n && k != centre) {
      i64 d[3];
      offset_displacement(shape, k, d);
      Voxel q = load_voxel(coords, o);
      q.x += d[0];
      q.y += d[1];
      q.z += d[2];
      found = hash_find(coords, table, mask, q);
    }
    if (o < n) pair_index[k * n + o] = found;
    const int hits = __syncthreads_count(found >= 0);
    if (threadIdx.x == 0) tile_counts[tile] = hits;
  }
}

extern "C" __global__ void kmap_probe_i32(const int *coords, i64 n, const int *table, u64 mask,
                                          KernelShape shape, i64 centre, i64 num_offsets,
                                          i64 tiles_per_offset, int *pair_index,
                                          int *tile_counts) {
  kmap_probe(coords, n, table, mask, shape, centre, num_offsets, tiles_per_offset, pair_index,
             tile_counts);
}

extern "C" __global__ void kmap_probe_i64(const i64 *coords, i64 n, const int *table, u64 mask,
                                          KernelShape shape, i64 centre, i64 num_offsets,
                                          i64 tiles_per_offset, int *pair_index,
                                          int *tile_counts) {
  kmap_probe(coords, n, table, mask, shape, centre, num_offsets, tiles_per_offset, pair_index,
             tile_counts);
}

// `tile_starts[tile]`: pairs before the tile (exclusive scan of the probe's tile counts).
// `pairs` is [2, num_pairs] int64.
extern "C" __global__ void kmap_compact(i64 n, i64 num_offsets, i64 tiles_per_offset,
                                        const i64 *tile_starts, int *pair_index, i64 *pairs,
                                        i64 num_pairs) {
  __shared__ int warp_hits[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const u32 lanes_below = (1u << lane) - 1u;
  const i64 num_tiles = num_offsets * tiles_per_offset;
  for (i64 tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const i64 k = tile / tiles_per_offset;
    const i64 o = (tile - k * tiles_per_offset) * blockDim.x + threadIdx.x;
    const int in_row = o < n ? pair_index[k * n + o] : -1;
    const bool hit = in_row >= 0;
    const u32 ballot = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) warp_hits[warp] = __popc(ballot);
    __syncthreads();
    if (hit) {
      i64 rank = __popc(ballot & lanes_below);
      for (int w = 0; w < warp; ++w) rank += warp_hits[w];
      const i64 p = tile_starts[tile] + rank;
      pairs[p] = in_row;
      pairs[num_pairs + p] = o;
      pair_index[k * n + o] = (int)p;
    }
    // warp_hits is rewritten by the next tile.
    __syncthreads();
  }
}

// pair_index for one offset of a map that came without it: pairs [start, start + count) are
// offset k's; `out_rows` is row 1 of `pairs`. pair_index must be filled with -1 beforehand.
extern "C" __global__ void pair_index_fill(const i64 *out_rows, i64 start, i64 count, i64 k, i64 n,
                                           int *pair_index) {
  const i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x; j < count; j += stride) {
    const i64 p = start + j;
    pair_index[k * n + out_rows[p]] = (int)p;
  }
}

// ---------------------------------------------------------------------------------------------
// Gather: dst[j, :] = src[rows[j], :] for rows of `units` elements of type U. The feature dtype
// does not matter, only the row's byte width: the host picks the widest unit (16, 4 or 2 bytes)
// that divides it and the pointers' alignment.

struct alignas(16) Bytes16 {
  u64 lo, hi;
};

template <typename U>
__device__ void gather_rows(const U *src, const i64 *rows, i64 num_rows, i64 units, U *dst) {
  const i64 total = num_rows * units;
  const i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const i64 j = i / units;
    const i64 u = i - j * units;
    dst[i] = src[rows[j] * units + u];
  }
}

extern "C" __global__ void gather_rows_b16(const Bytes16 *src, const i64 *rows, i64 num_rows,
                                           i64 units, Bytes16 *dst) {
  gather_rows(src, rows, num_rows, units, dst);
}

extern "C" __global__ void gather_rows_b4(const u32 *src, const i64 *rows, i64 num_rows, i64 units,
                                          u32 *dst) {
  gather_rows(src, rows, num_rows, units, dst);
}

extern "C" __global__ void gather_rows_b2(const unsigned short *src, const i64 *rows,
                                          i64 num_rows, i64 units, unsigned short *dst) {
  gather_rows(src, rows, num_rows, units, dst);
}

// ---------------------------------------------------------------------------------------------
// Reduction ("scatter" without atomics): for every output row o and channel c,
//   out[o, c] += sum over offsets k in [k_begin, k_end) with a pair p = pair_index[k, o] >= 0
//                of product[p - pair_base, c]      (in increasing k)
//   then out[o, c] += bias[c] when bias is given.
// `out` holds the centre offset's GEMM on entry. Accumulates in fp32 and rounds once. Each
// thread owns W consecutive channels (the host picks W = 4 when the channel count and the
// pointers' alignment allow, else 1).

__device__ __forceinline__ float to_float(float v) { return v; }

__device__ __forceinline__ float to_float(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

template <typename T>
__device__ __forceinline__ T from_float(float v);

template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}

template <>
__device__ __forceinline__ unsigned short from_float<unsigned short>(float v) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  return h;
}

template <typename T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

template <typename T, int W>
__device__ void accumulate_offsets(T *out, i64 n, i64 channels, const T *product,
                                   const int *pair_index, i64 k_begin, i64 k_end, i64 pair_base,
                                   const T *bias) {
  typedef Pack<T, W> P;
  const i64 packs_per_row = channels / W;
  const i64 total = n * packs_per_row;
  P *out_packs = reinterpret_cast<P *>(out);
  const P *product_packs = reinterpret_cast<const P *>(product);
  const P *bias_packs = reinterpret_cast<const P *>(bias);
  const i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const i64 o = i / packs_per_row;
    const i64 c = i - o * packs_per_row;
    const P current = out_packs[i];
    float acc[W];
#pragma unroll
    for (int w = 0; w < W; ++w) acc[w] = to_float(current.v[w]);
    for (i64 k = k_begin; k < k_end; ++k) {
      const int p = pair_index[k * n + o];
      if (p < 0) continue;
      const P contribution = product_packs[(p - pair_base) * packs_per_row + c];
#pragma unroll
      for (int w = 0; w < W; ++w) acc[w] += to_float(contribution.v[w]);
    }
    if (bias != nullptr) {
      const P b = bias_packs[c];
#pragma unroll
      for (int w = 0; w < W; ++w) acc[w] += to_float(b.v[w]);
    }
    P result;
#pragma unroll
    for (int w = 0; w < W; ++w) result.v[w] = from_float<T>(acc[w]);
    out_packs[i] = result;
  }
}

extern "C" __global__ void accumulate_offsets_f32(float *out, i64 n, i64 channels,
                                                  const float *product, const int *pair_index,
                                                  i64 k_begin, i64 k_end, i64 pair_base,
                                                  const float *bias) {
  accumulate_offsets<float, 1>(out, n, channels, product, pair_index, k_begin, k_end, pair_base,
                               bias);
}

extern "C" __global__ void accumulate_offsets_f32x4(float *out, i64 n, i64 channels,
                                                    const float *product, const int *pair_index,
                                                    i64 k_begin, i64 k_end, i64 pair_base,
                                                    const float *bias) {
  accumulate_offsets<float, 4>(out, n, channels, product, pair_index, k_begin, k_end, pair_base,
                               bias);
}

extern "C" __global__ void accumulate_offsets_f16(unsigned short *out, i64 n, i64 channels,
                                                  const unsigned short *product,
                                                  const int *pair_index, i64 k_begin, i64 k_end,
                                                  i64 pair_base, const unsigned short *bias) {
  accumulate_offsets<unsigned short, 1>(out, n, channels, product, pair_index, k_begin, k_end,
                                        pair_base, bias);
}

extern "C" __global__ void accumulate_offsets_f16x4(unsigned short *out, i64 n, i64 channels,
                                                    const unsigned short *product,
                                                    const int *pair_index, i64 k_begin, i64 k_end,
                                                    i64 pair_base, const unsigned short *bias) {
  accumulate_offsets<unsigned short, 4>(out, n, channels, product, pair_index, k_begin, k_end,
                                        pair_base, bias);
}

// ---------------------------------------------------------------------------------------------
// Fused submanifold convolution for fp16 features with up to a few hundred channels, where the
// gather -> GEMM -> reduction path is bound by the traffic of its intermediate buffers. Each
// block owns FUSED_ROWS consecutive output rows and FUSED_COLS output channels (blockIdx.y) and
// keeps their sums in fp32 registers; it walks the kernel offsets in order (the centre offset
// is the row itself), gathers the tile's neighbour rows through pair_index into shared memory
// (zeros where a row has no neighbour), multiplies them by W[offset] on the tensor cores
// (mma.sync m16n8k16, fp16 inputs, fp32 accumulation) and writes each output row once, bias
// added last. No atomics, no workspace; every run sums in the same order.
// Layout: x [N, C_in], wt [K, C_out, C_in] (the weight transposed per offset, so a B fragment's
// two k values are adjacent), bias [C_out] or null, pairs row 0 (input rows), pair_index [K, N],
// out [N, C_out]. Needs C_in % 16 == 0, C_out % 8 == 0, 16-byte aligned x and wt, blockDim.x ==
// FUSED_THREADS.

#define FUSED_ROWS 128
#define FUSED_COLS 128
#define FUSED_CHUNK 64
#define FUSED_PAD 8
#define FUSED_THREADS 256
// 16-byte vectors per chunk row, and per thread for a 128-row tile (FUSED_ROWS == FUSED_COLS).
#define FUSED_VECS (FUSED_CHUNK / 8)
#define FUSED_LOADS (FUSED_ROWS * FUSED_VECS / FUSED_THREADS)

__device__ __forceinline__ void mma_m16n8k16(float d[4], const u32 a[4], u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 load_u32(const unsigned short *p) {
  return *reinterpret_cast<const u32 *>(p);
}

// The input row that output row `o` reads at kernel offset k (the row itself at the centre
// offset), or -1 where it has no neighbour there or lies past the last row.
__device__ __forceinline__ int neighbour_row(i64 o, i64 n, i64 k, i64 centre,
                                             const int *pair_index, const i64 *in_rows) {
  if (o >= n) return -1;
  if (k == centre) return (int)o;
  const int p = pair_index[k * n + o];
  return p >= 0 ? (int)in_rows[p] : -1;
}

extern "C" __global__ void __launch_bounds__(FUSED_THREADS)
    fused_subm_conv_f16(const unsigned short *x, i64 n, i64 c_in, i64 c_out,
                        const unsigned short *wt, const unsigned short *bias, const i64 *in_rows,
                        const int *pair_index, i64 num_offsets, i64 centre, unsigned short *out) {
  __shared__ __align__(16) unsigned short a_tile[FUSED_ROWS][FUSED_CHUNK + FUSED_PAD];
  __shared__ __align__(16) unsigned short w_tile[FUSED_COLS][FUSED_CHUNK + FUSED_PAD];
  __shared__ int src_rows[FUSED_ROWS];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int group = lane >> 2;  // fragment row (A, C) or column (B)
  const int quad = lane & 3;    // fragment k pair (A, B) or column pair (C)
  const i64 col0 = (i64)blockIdx.y * FUSED_COLS;
  const int cols = (int)min((i64)FUSED_COLS, c_out - col0);
  const int n_tiles = cols / 8;
  const int warp_row = warp * 16;
  const i64 num_row_tiles = (n + FUSED_ROWS - 1) / FUSED_ROWS;
  for (i64 tile = blockIdx.x; tile < num_row_tiles; tile += gridDim.x) {
    const i64 row0 = tile * FUSED_ROWS;
    float acc[FUSED_COLS / 8][4];
#pragma unroll
    for (int j = 0; j < FUSED_COLS / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
    }
    for (i64 k = 0; k < num_offsets; ++k) {
      int has_neighbour = 0;
      if (threadIdx.x < FUSED_ROWS) {
        const int src = neighbour_row(row0 + threadIdx.x, n, k, centre, pair_index, in_rows);
        src_rows[threadIdx.x] = src;
        has_neighbour = src >= 0;
      }
      // The whole tile lacks this offset (common at surface edges): nothing to add.
      if (!__syncthreads_or(has_neighbour)) continue;
      for (i64 c0 = 0; c0 < c_in; c0 += FUSED_CHUNK) {
        const int width = (int)min((i64)FUSED_CHUNK, c_in - c0);
        const int vecs = width / 8;  // 16-byte vectors per row of the chunk
        const unsigned short *wk = wt + (k * c_out + col0) * c_in + c0;
        // Every load of the chunk is issued before the first store, so their latencies
        // overlap (FUSED_LOADS rows' vectors per thread for each tile).
        Bytes16 a_values[FUSED_LOADS], w_values[FUSED_LOADS];
#pragma unroll
        for (int t = 0; t < FUSED_LOADS; ++t) {
          const int i = threadIdx.x + t * FUSED_THREADS;
          const int r = i / FUSED_VECS;
          const int v = i % FUSED_VECS;
          const int src = src_rows[r];
          a_values[t].lo = a_values[t].hi = 0;
          w_values[t].lo = w_values[t].hi = 0;
          if (v < vecs && src >= 0) {
            a_values[t] = *reinterpret_cast<const Bytes16 *>(x + (i64)src * c_in + c0 + v * 8);
          }
          if (v < vecs && r < cols) {
            w_values[t] = *reinterpret_cast<const Bytes16 *>(wk + (i64)r * c_in + v * 8);
          }
        }
#pragma unroll
        for (int t = 0; t < FUSED_LOADS; ++t) {
          const int i = threadIdx.x + t * FUSED_THREADS;
          const int r = i / FUSED_VECS;
          const int v = i % FUSED_VECS;
          *reinterpret_cast<Bytes16 *>(&a_tile[r][v * 8]) = a_values[t];
          *reinterpret_cast<Bytes16 *>(&w_tile[r][v * 8]) = w_values[t];
        }
        __syncthreads();
        for (int kk = 0; kk < width; kk += 16) {
          u32 a[4];
          a[0] = load_u32(&a_tile[warp_row + group][kk + quad * 2]);
          a[1] = load_u32(&a_tile[warp_row + group + 8][kk + quad * 2]);
          a[2] = load_u32(&a_tile[warp_row + group][kk + quad * 2 + 8]);
          a[3] = load_u32(&a_tile[warp_row + group + 8][kk + quad * 2 + 8]);
#pragma unroll
          for (int j = 0; j < FUSED_COLS / 8; ++j) {
            if (j < n_tiles) {
              const u32 b0 = load_u32(&w_tile[j * 8 + group][kk + quad * 2]);
              const u32 b1 = load_u32(&w_tile[j * 8 + group][kk + quad * 2 + 8]);
              mma_m16n8k16(acc[j], a, b0, b1);
            }
          }
        }
        // The tiles are refilled by the next chunk or offset.
        __syncthreads();
      }
    }
#pragma unroll
    for (int j = 0; j < FUSED_COLS / 8; ++j) {
      if (j < n_tiles) {
        const i64 col = col0 + j * 8 + quad * 2;
        float b0 = 0.0f, b1 = 0.0f;
        if (bias != nullptr) {
          b0 = to_float(bias[col]);
          b1 = to_float(bias[col + 1]);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const i64 o = row0 + warp_row + group + h * 8;
          if (o < n) {
            const u32 lo = from_float<unsigned short>(acc[j][2 * h] + b0);
            const u32 hi = from_float<unsigned short>(acc[j][2 * h + 1] + b1);
            *reinterpret_cast<u32 *>(out + o * c_out + col) = lo | (hi << 16);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fused submanifold convolution for fp32 features with up to a few hundred channels: the same
// walk as fused_subm_conv_f16 (a block owns ROWS output rows x F32_COLS output channels,
// offsets in order, the tile's neighbour rows gathered through pair_index, sums kept in
// registers, each output row written once, bias last), with the products on the CUDA cores in
// fp32 FMA: each thread owns a (ROWS / 16) x 8 block of outputs (rows in groups of 4,
// ty*4.. and 64+ty*4.., columns tx*4.. and 64+tx*4..), read as float4s from k-major shared
// tiles. Accuracy is
// that of any fp32 GEMM (no TF32). Two tile heights: 128 rows (more reuse per shared load)
// and 64 (twice the blocks, for inputs too small to fill the GPU with 128-row tiles).
// Layout: x [N, C_in], w [K, C_in, C_out] (the engine's layout, no transpose), bias [C_out]
// or null, pairs row 0 (input rows), pair_index [K, N], out [N, C_out]. Needs C_in % 4 == 0,
// C_out % 4 == 0, 16-byte aligned x, w and out, blockDim.x == F32_THREADS.

#define F32_COLS 128
#define F32_CHUNK 16
#define F32_PAD 4
#define F32_THREADS 256

struct __align__(16) Float4 {
  float x, y, z, w;
};

__device__ __forceinline__ Float4 zero4() {
  Float4 v;
  v.x = v.y = v.z = v.w = 0.0f;
  return v;
}

__device__ __forceinline__ Float4 load4(const float *p) {
  return *reinterpret_cast<const Float4 *>(p);
}

template <int ROWS>
__device__ __forceinline__ void fused_subm_conv_f32_tiles(
    const float *x, i64 n, i64 c_in, i64 c_out, const float *w, const float *bias,
    const i64 *in_rows, const int *pair_index, i64 num_offsets, i64 centre, float *out) {
  // Rows per thread, in groups of 4 consecutive rows 64 apart: g*64 + ty*4 + (0..4).
  constexpr int RT = ROWS / 16;
  static_assert(RT % 4 == 0, "ROWS must be a multiple of 64");
  // Input float4s of one chunk per thread (ROWS rows x 4 float4s over 256 threads).
  constexpr int A_LOADS = ROWS * 4 / F32_THREADS;
  // k-major tiles: a_tile[c][r] is input channel c of the tile's row r.
  __shared__ __align__(16) float a_tile[F32_CHUNK][ROWS + F32_PAD];
  __shared__ __align__(16) float w_tile[F32_CHUNK][F32_COLS];
  __shared__ int src_rows[ROWS];
  const int tx = threadIdx.x & 15;
  const int ty = threadIdx.x >> 4;
  const i64 col0 = (i64)blockIdx.y * F32_COLS;
  const int cols = (int)min((i64)F32_COLS, c_out - col0);
  const i64 num_row_tiles = (n + ROWS - 1) / ROWS;
  for (i64 tile = blockIdx.x; tile < num_row_tiles; tile += gridDim.x) {
    const i64 row0 = tile * ROWS;
    float acc[RT][8];
#pragma unroll
    for (int i = 0; i < RT; ++i) {
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
    }
    for (i64 k = 0; k < num_offsets; ++k) {
      int has_neighbour = 0;
      if (threadIdx.x < ROWS) {
        const int src = neighbour_row(row0 + threadIdx.x, n, k, centre, pair_index, in_rows);
        src_rows[threadIdx.x] = src;
        has_neighbour = src >= 0;
      }
      // The whole tile lacks this offset (common at surface edges): nothing to add.
      if (!__syncthreads_or(has_neighbour)) continue;
      for (i64 c0 = 0; c0 < c_in; c0 += F32_CHUNK) {
        const int width = (int)min((i64)F32_CHUNK, c_in - c0);
        // Every global load of the chunk is issued before the first shared store.
        Float4 a_values[A_LOADS], w_values[2];
#pragma unroll
        for (int t = 0; t < A_LOADS; ++t) {
          const int i = threadIdx.x + t * F32_THREADS;
          const int r = i >> 2, v = i & 3;
          const int src = src_rows[r];
          a_values[t] = zero4();
          if (src >= 0 && v * 4 < width) a_values[t] = load4(x + (i64)src * c_in + c0 + v * 4);
        }
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          const int i = threadIdx.x + t * F32_THREADS;
          const int c = i >> 5, u = i & 31;
          w_values[t] = zero4();
          if (c < width && u * 4 < cols) {
            w_values[t] = load4(w + (k * c_in + c0 + c) * c_out + col0 + u * 4);
          }
        }
#pragma unroll
        for (int t = 0; t < A_LOADS; ++t) {
          const int i = threadIdx.x + t * F32_THREADS;
          const int r = i >> 2, v = i & 3;
          a_tile[v * 4 + 0][r] = a_values[t].x;
          a_tile[v * 4 + 1][r] = a_values[t].y;
          a_tile[v * 4 + 2][r] = a_values[t].z;
          a_tile[v * 4 + 3][r] = a_values[t].w;
        }
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          const int i = threadIdx.x + t * F32_THREADS;
          const int c = i >> 5, u = i & 31;
          *reinterpret_cast<Float4 *>(&w_tile[c][u * 4]) = w_values[t];
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < F32_CHUNK; ++kk) {
          float a[RT];
#pragma unroll
          for (int g = 0; g < RT / 4; ++g) {
            const Float4 v = load4(&a_tile[kk][g * 64 + ty * 4]);
            a[4 * g + 0] = v.x;
            a[4 * g + 1] = v.y;
            a[4 * g + 2] = v.z;
            a[4 * g + 3] = v.w;
          }
          const Float4 b0 = load4(&w_tile[kk][tx * 4]);
          const Float4 b1 = load4(&w_tile[kk][64 + tx * 4]);
          const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
          for (int i = 0; i < RT; ++i) {
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
          }
        }
        // The tiles are refilled by the next chunk or offset.
        __syncthreads();
      }
    }
#pragma unroll
    for (int i = 0; i < RT; ++i) {
      const i64 o = row0 + (i / 4) * 64 + ty * 4 + (i % 4);
      if (o >= n) continue;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int col = half * 64 + tx * 4;
        if (col >= cols) continue;
        Float4 v;
        v.x = acc[i][4 * half + 0];
        v.y = acc[i][4 * half + 1];
        v.z = acc[i][4 * half + 2];
        v.w = acc[i][4 * half + 3];
        if (bias != nullptr) {
          v.x += bias[col0 + col + 0];
          v.y += bias[col0 + col + 1];
          v.z += bias[col0 + col + 2];
          v.w += bias[col0 + col + 3];
        }
        *reinterpret_cast<Float4 *>(out + o * c_out + col0 + col) = v;
      }
    }
  }
}

extern "C" __global__ void __launch_bounds__(F32_THREADS, 2)
    fused_subm_conv_f32(const float *x, i64 n, i64 c_in, i64 c_out, const float *w,
                        const float *bias, const i64 *in_rows, const int *pair_index,
                        i64 num_offsets, i64 centre, float *out) {
  fused_subm_conv_f32_tiles<128>(x, n, c_in, c_out, w, bias, in_rows, pair_index, num_offsets,
                                 centre, out);
}

extern "C" __global__ void __launch_bounds__(F32_THREADS, 3)
    fused_subm_conv_f32_r64(const float *x, i64 n, i64 c_in, i64 c_out, const float *w,
                            const float *bias, const i64 *in_rows, const int *pair_index,
                            i64 num_offsets, i64 centre, float *out) {
  fused_subm_conv_f32_tiles<64>(x, n, c_in, c_out, w, bias, in_rows, pair_index, num_offsets,
                                centre, out);
}
