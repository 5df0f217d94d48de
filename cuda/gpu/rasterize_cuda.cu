// CUDA build of the splatkit rasterizer: the shared math headers (include/splatkit/*.h) driven by CUDA kernels.
// Same entry points and results as cpu/rasterize_cpu.cpp, on device pointers:
//   * preprocess forward/backward: one thread per Gaussian;
//   * bin_tiles: per-Gaussian tile rectangles, a scan for the pair offsets, 64-bit (tile | depth) keys emitted in
//     Gaussian-index order and a stable radix sort (so equal depths keep index order, as the CPU's sort does),
//     then the tile ranges from the sorted keys;
//   * blending: one 16x16 block per tile, one thread per pixel, Gaussians staged through shared memory in batches;
//     per-Gaussian sums go through warp reductions and one atomicAdd per warp.
// Everything runs on the legacy default stream (the torch binding passes no stream).
// Depends only on the CUDA runtime, CUB and our headers (no torch).
#include <cuda_runtime.h>

#include <cub/cub.cuh>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "splatkit/api.h"
#include "splatkit/blend.h"
#include "splatkit/preprocess.h"

#define SPLATKIT_CUDA_CHECK(expr)                                                                   \
    do {                                                                                            \
        cudaError_t splatkit_err_ = (expr);                                                         \
        if (splatkit_err_ != cudaSuccess)                                                           \
            throw std::runtime_error(std::string("splatkit CUDA error in ") + __func__ + " (" #expr \
                                     "): " + cudaGetErrorString(splatkit_err_));                    \
    } while (0)

// After a kernel launch: configuration errors and earlier asynchronous faults.
#define SPLATKIT_CUDA_CHECK_LAUNCH() SPLATKIT_CUDA_CHECK(cudaGetLastError())

namespace splatkit {
namespace cuda {
namespace {

constexpr int kTilePixels = kTileSize * kTileSize;  // threads per blending block
constexpr int kThreads = 256;                       // threads per block for per-Gaussian / per-pair kernels
constexpr unsigned kFullMask = 0xffffffffu;
static_assert(kTilePixels % 32 == 0, "a tile must be whole warps");

int blocks_for(long long count) { return (int)((count + kThreads - 1) / kThreads); }

// Device memory freed on scope exit (also when an error is thrown).
template <typename T>
struct DeviceBuffer {
    T* ptr = nullptr;
    explicit DeviceBuffer(size_t count) {
        if (count > 0) SPLATKIT_CUDA_CHECK(cudaMalloc(&ptr, count * sizeof(T)));
    }
    ~DeviceBuffer() {
        if (ptr) cudaFree(ptr);
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(kFullMask, v, offset);
    return v;
}

// ---------------------------------------------------------------------------------------------------------------
// Preprocessing

__global__ void preprocess_forward_kernel(PreprocessIn in, PreprocessOut out, Vec3 campos) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g < in.n) preprocess_gaussian(in, out, campos, g);
}

__global__ void preprocess_backward_kernel(PreprocessIn in, PreprocessGradIn gi, PreprocessGradOut out, Vec3 campos) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    float camera[kCameraSums] = {0.0f};
    if (g < in.n) preprocess_gaussian_vjp(in, gi, out, campos, g, camera);
    if (out.camera == nullptr) return;
    // The camera's gradient: a sum over the warp by shuffles, then one atomic add per warp and value.
    for (int i = 0; i < kCameraSums; ++i) {
        const float v = warp_sum(camera[i]);
        if ((threadIdx.x & 31) == 0 && v != 0.0f) atomicAdd(out.camera + i, v);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Binning

struct BinInputs {
    int n, width, height, tiles_x;
    const float* means2d;
    const float* conics;
    const float* opacities;
    const float* depths;
    const int32_t* radii;
};

// Tile rectangle [x0, x1) x [y0, y1) of Gaussian g (the CPU rule: tiles holding a pixel centre inside the box where
// its alpha can reach 1/255); returns false when the Gaussian is culled or its box holds no pixel centre.
__device__ __forceinline__ bool tile_rect(const BinInputs& b, int g, int& x0, int& x1, int& y0, int& y1) {
    const int rx = b.radii[2 * (size_t)g], ry = b.radii[2 * (size_t)g + 1];
    if (rx <= 0 || ry <= 0) return false;
    const Sym2 conic = {b.conics[3 * (size_t)g], b.conics[3 * (size_t)g + 1], b.conics[3 * (size_t)g + 2]};
    const Vec2 h = alpha_extent(conic, b.opacities[g], rx, ry);
    const float mx = b.means2d[2 * (size_t)g], my = b.means2d[2 * (size_t)g + 1];
    const int px0 = max(0, (int)ceilf(mx - h.x - 0.5f)), px1 = min(b.width - 1, (int)floorf(mx + h.x - 0.5f));
    const int py0 = max(0, (int)ceilf(my - h.y - 0.5f)), py1 = min(b.height - 1, (int)floorf(my + h.y - 0.5f));
    if (px0 > px1 || py0 > py1) return false;
    x0 = px0 / kTileSize;
    x1 = px1 / kTileSize + 1;
    y0 = py0 / kTileSize;
    y1 = py1 / kTileSize + 1;
    return true;
}

__global__ void count_pairs_kernel(BinInputs b, int64_t* counts) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= b.n) return;
    int x0, x1, y0, y1;
    counts[g] = tile_rect(b, g, x0, x1, y0, y1) ? (int64_t)(x1 - x0) * (y1 - y0) : 0;
}

// Order-preserving map of a float to an unsigned integer (depths of visible Gaussians are > near > 0, for which this
// is just the float's bits with the top bit set; the general form also keeps negative depths in order).
__device__ __forceinline__ uint32_t depth_bits(float d) {
    const uint32_t u = __float_as_uint(d);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Keys (tile << 32 | depth) and values (Gaussian index), Gaussian g's pairs at [ends[g] - count, ends[g]).
__global__ void emit_pairs_kernel(BinInputs b, const int64_t* ends, uint64_t* keys, int32_t* values) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= b.n) return;
    int x0, x1, y0, y1;
    if (!tile_rect(b, g, x0, x1, y0, y1)) return;
    int64_t at = ends[g] - (int64_t)(x1 - x0) * (y1 - y0);
    const uint64_t depth = depth_bits(b.depths[g]);
    for (int ty = y0; ty < y1; ++ty)
        for (int tx = x0; tx < x1; ++tx, ++at) {
            keys[at] = ((uint64_t)((int64_t)ty * b.tiles_x + tx) << 32) | depth;
            values[at] = g;
        }
}

// offsets[t] = index of the first sorted pair of tile t (or of the next non-empty tile); offsets[tiles] = pairs.
// Every entry of offsets[0 .. tiles] is written exactly once.
__global__ void tile_offsets_kernel(const uint64_t* sorted_keys, int pairs, int tiles, int32_t* offsets) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pairs) return;
    const int tile = (int)(sorted_keys[i] >> 32);
    const int prev = i == 0 ? -1 : (int)(sorted_keys[i - 1] >> 32);
    for (int t = prev + 1; t <= tile; ++t) offsets[t] = i;
    if (i == pairs - 1)
        for (int t = tile + 1; t <= tiles; ++t) offsets[t] = pairs;
}

// ---------------------------------------------------------------------------------------------------------------
// Blending

// One batch of a tile's Gaussians staged in shared memory, loaded one per thread by both blending kernels.
struct StagedGaussians {
    int32_t id[kTilePixels];
    float2 mean[kTilePixels];
    float conic[3][kTilePixels];
    float opacity[kTilePixels];
    float4 feature[kTilePixels];

    __device__ void stage(const BlendIn& in, int slot, int g) {
        id[slot] = g;
        mean[slot] = make_float2(in.means2d[2 * (size_t)g], in.means2d[2 * (size_t)g + 1]);
        for (int i = 0; i < 3; ++i) conic[i][slot] = in.conics[3 * (size_t)g + i];
        opacity[slot] = in.opacities[g];
        const float* f = in.features + kChannels * (size_t)g;
        feature[slot] = make_float4(f[0], f[1], f[2], f[3]);
    }
};

__global__ void __launch_bounds__(kTilePixels) blend_forward_kernel(BlendIn in, BlendOut out, int tiles_x) {
    __shared__ StagedGaussians staged;

    const int tile = blockIdx.x, tid = threadIdx.x, lane = tid & 31;
    const int x = (tile % tiles_x) * kTileSize + tid % kTileSize, y = (tile / tiles_x) * kTileSize + tid / kTileSize;
    const bool inside = x < in.width && y < in.height;
    const float px = x + 0.5f, py = y + 0.5f;
    const int begin = in.tile_offsets[tile], end = in.tile_offsets[tile + 1];

    float T = 1.0f, acc0 = 0.0f, acc1 = 0.0f, acc2 = 0.0f, acc3 = 0.0f;
    int32_t last = 0;
    bool done = !inside;  // pixels outside the image never blend (the CPU's alive = 0)

    for (int base = begin; base < end; base += kTilePixels) {
        // Also the barrier that keeps the previous batch in shared memory until every thread has used it.
        if (__syncthreads_count(done) == kTilePixels) break;
        const int k = base + tid;
        if (k < end) {
            const int g = in.ids[k];
            staged.stage(in, tid, g);
        }
        __syncthreads();
        const int batch = min(kTilePixels, end - base);
        for (int j = 0; j < batch; ++j) {
            if (__all_sync(kFullMask, done)) break;  // warp-uniform: the rest of this batch cannot change the warp
            float w = 0.0f;
            if (!done) {
                const Sym2 conic = {staged.conic[0][j], staged.conic[1][j], staged.conic[2][j]};
                const float alpha = pair_alpha(gaussian_power(conic, px - staged.mean[j].x, py - staged.mean[j].y), staged.opacity[j]);
                if (alpha >= kAlphaMin) {
                    const float test = T * (1.0f - alpha);
                    if (test < kTransmittanceMin) {
                        done = true;  // this Gaussian is not blended; the pixel stops here
                    } else {
                        w = alpha * T;
                        const float4 f = staged.feature[j];
                        acc0 += w * f.x;
                        acc1 += w * f.y;
                        acc2 += w * f.z;
                        acc3 += w * f.w;
                        T = test;
                        last = base - begin + j + 1;
                    }
                }
            }
            if (__any_sync(kFullMask, w != 0.0f)) {
                const float ws = warp_sum(w);
                if (lane == 0) atomicAdd(out.weight_sums + staged.id[j], ws);
            }
        }
    }
    if (!inside) return;
    const size_t pix = (size_t)y * in.width + x;
    float* im = out.image + kChannels * pix;  // scalar stores: no alignment assumption on the caller's buffers
    im[0] = acc0;
    im[1] = acc1;
    im[2] = acc2;
    im[3] = acc3;
    out.alpha[pix] = 1.0f - T;
    out.final_T[pix] = T;
    out.last[pix] = last;
}

constexpr int kGrads = 12;  // means2d (2), conic (3), opacity (1), features (4), |means2d| (2)

__global__ void __launch_bounds__(kTilePixels)
    blend_backward_kernel(BlendIn in, BlendGradIn gi, BlendGradOut out, int tiles_x) {
    __shared__ StagedGaussians staged;
    __shared__ int s_max_last;

    const int tile = blockIdx.x, tid = threadIdx.x, lane = tid & 31;
    const int x = (tile % tiles_x) * kTileSize + tid % kTileSize, y = (tile / tiles_x) * kTileSize + tid / kTileSize;
    const bool inside = x < in.width && y < in.height;
    const float px = x + 0.5f, py = y + 0.5f;
    const size_t pix = inside ? (size_t)y * in.width + x : 0;

    const int32_t last = inside ? gi.last[pix] : 0;
    const float T_final = inside ? gi.final_T[pix] : 1.0f;
    const float v_alpha_out = inside ? gi.v_alpha[pix] : 0.0f;
    const float* vi = gi.v_image + kChannels * pix;  // scalar loads: v_image may be a view without 16-byte alignment
    const float4 v_img = inside ? make_float4(vi[0], vi[1], vi[2], vi[3]) : make_float4(0.f, 0.f, 0.f, 0.f);
    float T = T_final, behind = 0.0f;

    if (tid == 0) s_max_last = 0;
    __syncthreads();
    if (last > 0) atomicMax(&s_max_last, last);
    __syncthreads();
    const int max_last = s_max_last;
    const int begin = in.tile_offsets[tile];

    // Back to front: the i-th Gaussian visited is at position max_last - 1 - i of the tile list.
    for (int base = 0; base < max_last; base += kTilePixels) {
        __syncthreads();  // the previous batch is no longer in use
        const int i = base + tid;
        if (i < max_last) {
            const int g = in.ids[begin + max_last - 1 - i];
            staged.stage(in, tid, g);
        }
        __syncthreads();
        const int batch = min(kTilePixels, max_last - base);
        for (int j = 0; j < batch; ++j) {
            const int position = max_last - 1 - (base + j);
            // Warp-uniform skip: no pixel of this warp blended anything at or after this position.
            if (!__any_sync(kFullMask, position < last)) continue;
            float s[kGrads];
#pragma unroll
            for (int q = 0; q < kGrads; ++q) s[q] = 0.0f;
            bool use = false;
            if (position < last) {
                const Sym2 conic = {staged.conic[0][j], staged.conic[1][j], staged.conic[2][j]};
                const float o = staged.opacity[j];
                const float dx = px - staged.mean[j].x, dy = py - staged.mean[j].y;
                const float power = gaussian_power(conic, dx, dy);
                const float gauss = pair_gauss(power);
                const float alpha = pair_alpha(power, gauss, o);
                if (alpha >= kAlphaMin) {
                    use = true;
                    const float one_minus = 1.0f - alpha;
                    const float T_before = T / one_minus;
                    const float w = alpha * T_before;
                    const float4 f = staged.feature[j];
                    const float fdot = f.x * v_img.x + f.y * v_img.y + f.z * v_img.z + f.w * v_img.w;
                    const float v_alpha = T_before * fdot - (behind - v_alpha_out * T_final) / one_minus;
                    behind += w * fdot;
                    T = T_before;
                    // Where alpha was clamped at 0.99 it does not depend on opacity or the exponent.
                    const bool clamped = o * gauss > kAlphaMax;
                    const float v_power = clamped ? 0.0f : alpha * v_alpha;
                    const float gx = v_power * (conic.a * dx + conic.b * dy);
                    const float gy = v_power * (conic.c * dy + conic.b * dx);
                    s[0] = gx;
                    s[1] = gy;
                    s[2] = -0.5f * v_power * dx * dx;
                    s[3] = -v_power * dx * dy;
                    s[4] = -0.5f * v_power * dy * dy;
                    s[5] = clamped ? 0.0f : gauss * v_alpha;
                    s[6] = w * v_img.x;
                    s[7] = w * v_img.y;
                    s[8] = w * v_img.z;
                    s[9] = w * v_img.w;
                    s[10] = fabsf(gx);
                    s[11] = fabsf(gy);
                }
            }
            if (!__any_sync(kFullMask, use)) continue;
#pragma unroll
            for (int q = 0; q < kGrads; ++q) s[q] = warp_sum(s[q]);
            if (lane == 0) {
                const size_t g = (size_t)staged.id[j];
                atomicAdd(out.v_means2d + 2 * g, s[0]);
                atomicAdd(out.v_means2d + 2 * g + 1, s[1]);
                atomicAdd(out.v_conics + 3 * g, s[2]);
                atomicAdd(out.v_conics + 3 * g + 1, s[3]);
                atomicAdd(out.v_conics + 3 * g + 2, s[4]);
                atomicAdd(out.v_opacities + g, s[5]);
                atomicAdd(out.v_features + kChannels * g, s[6]);
                atomicAdd(out.v_features + kChannels * g + 1, s[7]);
                atomicAdd(out.v_features + kChannels * g + 2, s[8]);
                atomicAdd(out.v_features + kChannels * g + 3, s[9]);
                atomicAdd(out.absgrad + 2 * g, s[10]);
                atomicAdd(out.absgrad + 2 * g + 1, s[11]);
            }
        }
    }
}

int tile_count(int width, int height, int& tiles_x) {
    tiles_x = (width + kTileSize - 1) / kTileSize;
    const int tiles_y = (height + kTileSize - 1) / kTileSize;
    return tiles_x * tiles_y;
}

}  // namespace

void preprocess_forward(const PreprocessIn& in, const PreprocessOut& out) {
    if (in.n <= 0) return;
    preprocess_forward_kernel<<<blocks_for(in.n), kThreads>>>(in, out, camera_center(in.cam));
    SPLATKIT_CUDA_CHECK_LAUNCH();
}

void preprocess_backward(const PreprocessIn& in, const PreprocessGradIn& grad_in, const PreprocessGradOut& out) {
    if (in.n <= 0) return;
    if (out.camera != nullptr) cudaMemsetAsync(out.camera, 0, kCameraSums * sizeof(float));
    preprocess_backward_kernel<<<blocks_for(in.n), kThreads>>>(in, grad_in, out, camera_center(in.cam));
    SPLATKIT_CUDA_CHECK_LAUNCH();
}

void bin_tiles(int n, int width, int height, const float* means2d, const float* conics, const float* opacities,
               const float* depths, const int32_t* radii, int32_t* offsets, IdsAllocator ids) {
    int tiles_x;
    const int tiles = tile_count(width, height, tiles_x);
    SPLATKIT_CUDA_CHECK(cudaMemsetAsync(offsets, 0, sizeof(int32_t) * ((size_t)tiles + 1)));
    if (n <= 0 || tiles <= 0) {
        ids.alloc(ids.ctx, 0);
        return;
    }
    const BinInputs b{n, width, height, tiles_x, means2d, conics, opacities, depths, radii};

    // Pairs per Gaussian, then their running total: Gaussian g owns pairs [ends[g] - counts[g], ends[g]).
    DeviceBuffer<int64_t> counts(n), ends(n);
    count_pairs_kernel<<<blocks_for(n), kThreads>>>(b, counts.ptr);
    SPLATKIT_CUDA_CHECK_LAUNCH();
    size_t scan_bytes = 0;
    SPLATKIT_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, counts.ptr, ends.ptr, n));
    {
        DeviceBuffer<unsigned char> scan_temp(scan_bytes);
        SPLATKIT_CUDA_CHECK(cub::DeviceScan::InclusiveSum(scan_temp.ptr, scan_bytes, counts.ptr, ends.ptr, n));
    }
    int64_t total = 0;
    SPLATKIT_CUDA_CHECK(cudaMemcpy(&total, ends.ptr + (n - 1), sizeof(int64_t), cudaMemcpyDeviceToHost));
    if (total > (int64_t)std::numeric_limits<int32_t>::max())
        throw std::runtime_error("splatkit bin_tiles: " + std::to_string(total) +
                                 " (tile, Gaussian) pairs exceed the int32 tile offsets");
    const int pairs = (int)total;
    int32_t* ids_out = ids.alloc(ids.ctx, pairs);
    if (pairs == 0) return;  // every offset is 0

    DeviceBuffer<uint64_t> keys(pairs), sorted_keys(pairs);
    DeviceBuffer<int32_t> values(pairs);
    emit_pairs_kernel<<<blocks_for(n), kThreads>>>(b, ends.ptr, keys.ptr, values.ptr);
    SPLATKIT_CUDA_CHECK_LAUNCH();

    // Radix sort is stable, and the keys were emitted in Gaussian-index order: equal (tile, depth) keep index order.
    int tile_bits = 0;
    while (tile_bits < 31 && (1ll << tile_bits) < (long long)tiles) ++tile_bits;
    const int end_bit = 32 + tile_bits;
    size_t sort_bytes = 0;
    SPLATKIT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys.ptr, sorted_keys.ptr, values.ptr,
                                                        ids_out, pairs, 0, end_bit));
    {
        DeviceBuffer<unsigned char> sort_temp(sort_bytes);
        SPLATKIT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp.ptr, sort_bytes, keys.ptr, sorted_keys.ptr,
                                                            values.ptr, ids_out, pairs, 0, end_bit));
    }
    tile_offsets_kernel<<<blocks_for(pairs), kThreads>>>(sorted_keys.ptr, pairs, tiles, offsets);
    SPLATKIT_CUDA_CHECK_LAUNCH();
    // The DeviceBuffer destructors (cudaFree) wait for the work above before releasing the memory.
}

void blend_forward(const BlendIn& in, const BlendOut& out) {
    int tiles_x;
    const int tiles = tile_count(in.width, in.height, tiles_x);
    if (in.n > 0) SPLATKIT_CUDA_CHECK(cudaMemsetAsync(out.weight_sums, 0, sizeof(float) * (size_t)in.n));
    if (tiles <= 0) return;
    blend_forward_kernel<<<tiles, kTilePixels>>>(in, out, tiles_x);
    SPLATKIT_CUDA_CHECK_LAUNCH();
}

void blend_backward(const BlendIn& in, const BlendGradIn& grad_in, const BlendGradOut& out) {
    int tiles_x;
    const int tiles = tile_count(in.width, in.height, tiles_x);
    if (in.n > 0) {
        const size_t n = (size_t)in.n;
        SPLATKIT_CUDA_CHECK(cudaMemsetAsync(out.v_means2d, 0, sizeof(float) * 2 * n));
        SPLATKIT_CUDA_CHECK(cudaMemsetAsync(out.v_conics, 0, sizeof(float) * 3 * n));
        SPLATKIT_CUDA_CHECK(cudaMemsetAsync(out.v_opacities, 0, sizeof(float) * n));
        SPLATKIT_CUDA_CHECK(cudaMemsetAsync(out.v_features, 0, sizeof(float) * kChannels * n));
        SPLATKIT_CUDA_CHECK(cudaMemsetAsync(out.absgrad, 0, sizeof(float) * 2 * n));
    }
    if (tiles <= 0 || in.n <= 0) return;
    blend_backward_kernel<<<tiles, kTilePixels>>>(in, grad_in, out, tiles_x);
    SPLATKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace splatkit
