// CPU build of the splatkit rasterizer: the shared math headers driven by OpenMP.
// Per-Gaussian work is parallel over Gaussians; blending is parallel over 16x16 tiles, each tile looping over its
// depth-sorted Gaussians with the 256 pixels as the inner, vectorisable loop. Per-Gaussian sums (weights in the
// forward pass, gradients in the backward pass) go to per-thread buffers that are reduced at the end, so no two
// threads ever write the same memory.
#include <omp.h>
#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "splatkit/api.h"
#include "splatkit/blend.h"
#include "splatkit/preprocess.h"

namespace splatkit {
namespace cpu {
namespace {

constexpr int kTilePixels = kTileSize * kTileSize;

// Far from its centre a Gaussian's alpha underflows to a denormal (e.g. opacity 0.02 x exp(-87)); on x86 every
// arithmetic op touching one takes a ~100-cycle microcode assist, which made blending 2-3x slower on trained
// scenes. Such values sit far below the 1/255 alpha cut-off, so flushing them to zero changes no result.
// Each OpenMP thread sets its own MXCSR, so this guard opens every parallel region that blends.
class FlushDenormals {
   public:
#if defined(__SSE__) || defined(_M_X64)
    FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
    ~FlushDenormals() { _mm_setcsr(saved_); }

   private:
    unsigned saved_;
#endif
};

// One buffer of `width` floats per Gaussian and thread, summed into `out` (N x width) afterwards.
struct PerThreadSums {
    int n, width;
    std::vector<float> data;
    PerThreadSums(int n_, int width_) : n(n_), width(width_), data((size_t)omp_get_max_threads() * n_ * width_, 0.0f) {}
    float* for_thread() { return data.data() + (size_t)omp_get_thread_num() * n * width; }
    void reduce_into(float* out) const {
        int threads = (int)(data.size() / ((size_t)n * width > 0 ? (size_t)n * width : 1));
        size_t total = (size_t)n * width;
#pragma omp parallel for schedule(static)
        for (long long i = 0; i < (long long)total; ++i) {
            float s = 0.0f;
            for (int t = 0; t < threads; ++t) s += data[(size_t)t * total + i];
            out[i] = s;
        }
    }
};

// What the blending loops read of one Gaussian, packed into one 48-byte record: each (tile, Gaussian) pair then
// costs one cache miss instead of one per input array, and the row reach is computed once, not once per tile.
struct alignas(16) BlendGaussian {
    float mx, my, o;
    Sym2 conic;
    float f[kChannels];
    float reach_y;  // half-height of the box where alpha can reach 1/255
};

std::unique_ptr<BlendGaussian[]> pack_gaussians(const BlendIn& in) {
    std::unique_ptr<BlendGaussian[]> packed(new BlendGaussian[in.n]);
#pragma omp parallel for schedule(static)
    for (int g = 0; g < in.n; ++g) {
        BlendGaussian& b = packed[g];
        b.mx = in.means2d[2 * g];
        b.my = in.means2d[2 * g + 1];
        b.o = in.opacities[g];
        b.conic = {in.conics[3 * g], in.conics[3 * g + 1], in.conics[3 * g + 2]};
        for (int c = 0; c < kChannels; ++c) b.f[c] = in.features[kChannels * (size_t)g + c];
        const float det = max_f(b.conic.a * b.conic.c - b.conic.b * b.conic.b, 1e-12f);
        const float d2 = 2.0f * logf(max_f(255.0f * b.o, 1.0f));
        b.reach_y = sqrtf(d2 * b.conic.a / det);
    }
    return packed;
}

// Rows [first, end) of the tile starting at pixel row y0 that hold pixel centres inside a Gaussian's alpha box
// (pixels outside it have alpha < 1/255, so skipping them changes nothing).
struct RowRange {
    int first, end;
};

RowRange rows_in_reach(const BlendGaussian& gs, int y0) {
    const int first = std::max(0, (int)ceilf(gs.my - gs.reach_y - 0.5f) - y0);
    const int end = std::min(kTileSize, (int)floorf(gs.my + gs.reach_y - 0.5f) + 1 - y0);
    return {first, std::max(first, end)};
}

// A tile's Gaussians are scattered through memory; asking for the record a few pairs ahead hides the miss.
constexpr int kPrefetchAhead = 8;
inline void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p);
#endif
}

// Pixel centres of one 16x16 tile, and which of its pixels lie inside the image.
struct TilePixels {
    int x0, y0;
    alignas(64) float px[kTilePixels], py[kTilePixels];
    bool inside[kTilePixels];

    void set(int tile, int tiles_x, int width, int height) {
        x0 = (tile % tiles_x) * kTileSize;
        y0 = (tile / tiles_x) * kTileSize;
        for (int p = 0; p < kTilePixels; ++p) {
            int x = x0 + p % kTileSize, y = y0 + p / kTileSize;
            px[p] = x + 0.5f;
            py[p] = y + 0.5f;
            inside[p] = x < width && y < height;
        }
    }
    size_t pixel(int p, int width) const { return (size_t)(y0 + p / kTileSize) * width + x0 + p % kTileSize; }
};

// Stable LSD radix sort of `items` by 32-bit keys, 8 bits per pass (depths are positive floats, whose bit patterns
// order like unsigned integers). Stability keeps equal depths in index order.
void radix_sort_by_key(std::vector<uint32_t>& keys, std::vector<int32_t>& items) {
    const size_t n = keys.size();
    std::vector<uint32_t> keys_tmp(n);
    std::vector<int32_t> items_tmp(n);
    for (int shift = 0; shift < 32; shift += 8) {
        size_t count[257] = {0};
        for (size_t i = 0; i < n; ++i) ++count[((keys[i] >> shift) & 255) + 1];
        if (n == 0 || count[((keys[0] >> shift) & 255) + 1] == n) continue;  // one bucket: order unchanged
        for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
        for (size_t i = 0; i < n; ++i) {
            const size_t to = count[(keys[i] >> shift) & 255]++;
            keys_tmp[to] = keys[i];
            items_tmp[to] = items[i];
        }
        keys.swap(keys_tmp);
        items.swap(items_tmp);
    }
}

}  // namespace

void preprocess_forward(const PreprocessIn& in, const PreprocessOut& out) {
    const Vec3 campos = camera_center(in.cam);
#pragma omp parallel for schedule(static)
    for (int g = 0; g < in.n; ++g) preprocess_gaussian(in, out, campos, g);
}

void preprocess_backward(const PreprocessIn& in, const PreprocessGradIn& gi, const PreprocessGradOut& out) {
    const Vec3 campos = camera_center(in.cam);
    // Each thread sums its static share of the Gaussians into its own row; the rows are added in thread order,
    // so the camera's gradient is the same on every run with the same thread count. `simd` lets GCC interleave
    // Gaussians within a thread: 15-20% faster, the same per-Gaussian gradients, the camera sums in another order.
    std::vector<float> partial((size_t)omp_get_max_threads() * kCameraSums, 0.0f);
#pragma omp parallel
    {
        float* mine = partial.data() + (size_t)omp_get_thread_num() * kCameraSums;
#pragma omp for simd schedule(static) reduction(+ : mine[:kCameraSums])
        for (int g = 0; g < in.n; ++g) preprocess_gaussian_vjp(in, gi, out, campos, g, mine);
    }
    if (out.camera == nullptr) return;
    for (int i = 0; i < kCameraSums; ++i) out.camera[i] = 0.0f;
    for (size_t row = 0; row < partial.size(); row += kCameraSums)
        for (int i = 0; i < kCameraSums; ++i) out.camera[i] += partial[row + i];
}

void bin_tiles(int n, int width, int height, const float* means2d, const float* conics, const float* opacities,
               const float* depths, const int32_t* radii, std::vector<int32_t>& offsets, std::vector<int32_t>& ids) {
    const int tiles_x = (width + kTileSize - 1) / kTileSize, tiles_y = (height + kTileSize - 1) / kTileSize;
    const int tiles = tiles_x * tiles_y;
    // Tile rectangle [x0, x1) x [y0, y1) of each Gaussian: the tiles holding a pixel centre inside the box where
    // its alpha can reach 1/255 (the same pairs the PyTorch reference enumerates). Empty for culled Gaussians.
    std::vector<int32_t> rect(4 * (size_t)n, 0);
#pragma omp parallel for schedule(static)
    for (int g = 0; g < n; ++g) {
        if (radii[2 * g] <= 0 || radii[2 * g + 1] <= 0) continue;
        Sym2 conic = {conics[3 * g], conics[3 * g + 1], conics[3 * g + 2]};
        Vec2 h = alpha_extent(conic, opacities[g], radii[2 * g], radii[2 * g + 1]);
        float mx = means2d[2 * g], my = means2d[2 * g + 1];
        int px0 = std::max(0, (int)ceilf(mx - h.x - 0.5f)), px1 = std::min(width - 1, (int)floorf(mx + h.x - 0.5f));
        int py0 = std::max(0, (int)ceilf(my - h.y - 0.5f)), py1 = std::min(height - 1, (int)floorf(my + h.y - 0.5f));
        if (px0 > px1 || py0 > py1) continue;
        int32_t* r = rect.data() + 4 * (size_t)g;
        r[0] = px0 / kTileSize;
        r[1] = px1 / kTileSize + 1;
        r[2] = py0 / kTileSize;
        r[3] = py1 / kTileSize + 1;
    }
    // The Gaussians that touch a tile, nearest first; a stable sort keeps equal depths in index order.
    std::vector<int32_t> order;
    std::vector<uint32_t> keys;
    order.reserve(n);
    keys.reserve(n);
    for (int g = 0; g < n; ++g) {
        if (rect[4 * (size_t)g + 1] > 0) {
            order.push_back(g);
            uint32_t bits;
            std::memcpy(&bits, depths + g, sizeof bits);
            keys.push_back(bits);
        }
    }
    radix_sort_by_key(keys, order);
    const long long visible = (long long)order.size();
    // Each chunk of the depth order counts its pairs per tile; a scan over (tile, chunk) then gives every chunk
    // its own slice of each tile's list, so chunks fill the lists in parallel and each list stays in depth order.
    const int chunks = std::max(1, std::min(omp_get_max_threads(), (int)(visible / 4096) + 1));
    std::vector<int32_t> cursor((size_t)chunks * tiles, 0);
    auto for_each_pair = [&](int chunk, auto&& visit) {
        const long long begin = visible * chunk / chunks, end = visible * (chunk + 1) / chunks;
        for (long long i = begin; i < end; ++i) {
            const int32_t* r = rect.data() + 4 * (size_t)order[i];
            for (int ty = r[2]; ty < r[3]; ++ty)
                for (int tx = r[0]; tx < r[1]; ++tx) visit(i, ty * tiles_x + tx);
        }
    };
#pragma omp parallel for schedule(static, 1)
    for (int chunk = 0; chunk < chunks; ++chunk) {
        int32_t* count = cursor.data() + (size_t)chunk * tiles;
        for_each_pair(chunk, [&](long long, int tile) { ++count[tile]; });
    }
    offsets.assign((size_t)tiles + 1, 0);
    int32_t total = 0;
    for (int tile = 0; tile < tiles; ++tile) {
        for (int chunk = 0; chunk < chunks; ++chunk) {
            int32_t& c = cursor[(size_t)chunk * tiles + tile];
            const int32_t count = c;
            c = total;
            total += count;
        }
        offsets[tile + 1] = total;
    }
    ids.resize(total);
#pragma omp parallel for schedule(static, 1)
    for (int chunk = 0; chunk < chunks; ++chunk) {
        int32_t* next = cursor.data() + (size_t)chunk * tiles;
        for_each_pair(chunk, [&](long long i, int tile) { ids[next[tile]++] = order[i]; });
    }
}

void blend_forward(const BlendIn& in, const BlendOut& out) {
    const int tiles_x = (in.width + kTileSize - 1) / kTileSize, tiles_y = (in.height + kTileSize - 1) / kTileSize;
    PerThreadSums weight_sums(in.n, 1);
    const std::unique_ptr<BlendGaussian[]> packed = pack_gaussians(in);
#pragma omp parallel
    {
        FlushDenormals flush;
        float* wsum = weight_sums.for_thread();
        TilePixels tp;
        // T: each pixel's transmittance, negated once the pixel is done (outside the image, or blending stopped).
        alignas(64) float T[kTilePixels], acc[kChannels][kTilePixels];
        alignas(64) int32_t last[kTilePixels];
#pragma omp for schedule(static, 1)
        for (int tile = 0; tile < tiles_x * tiles_y; ++tile) {
            tp.set(tile, tiles_x, in.width, in.height);
            const float *px = tp.px, *py = tp.py;
            int n_alive = 0;
            for (int p = 0; p < kTilePixels; ++p) {
                n_alive += tp.inside[p];
                T[p] = tp.inside[p] ? 1.0f : -1.0f;
                last[p] = 0;
                for (int c = 0; c < kChannels; ++c) acc[c][p] = 0.0f;
            }
            const int begin = in.tile_offsets[tile], end = in.tile_offsets[tile + 1];
            for (int k = begin; k < end && n_alive > 0; ++k) {
                const int g = in.ids[k];
                if (k + kPrefetchAhead < end) {
                    prefetch(&packed[in.ids[k + kPrefetchAhead]]);
                    prefetch(wsum + in.ids[k + kPrefetchAhead]);
                }
                const BlendGaussian& gs = packed[g];
                const float mx = gs.mx, my = gs.my, o = gs.o, f0 = gs.f[0], f1 = gs.f[1], f2 = gs.f[2], f3 = gs.f[3];
                const Sym2 conic = gs.conic;
                const int32_t position = k - begin + 1;
                // Two passes over the tile's pixels, each a plain SIMD loop: alphas first, then the blend.
                const RowRange rows = rows_in_reach(gs, tp.y0);
                const int p0 = rows.first * kTileSize, p1 = rows.end * kTileSize;
                alignas(64) float alpha[kTilePixels];
#pragma omp simd
                for (int p = p0; p < p1; ++p) alpha[p] = pair_alpha(gaussian_power(conic, px[p] - mx, py[p] - my), o);
                float ws = 0.0f;
#pragma omp simd reduction(+ : ws)
                for (int p = p0; p < p1; ++p) {
                    const float a = alpha[p], t = T[p];
                    const float test = t * (1.0f - a);
                    const bool use = (a >= kAlphaMin) & (t > 0.0f);
                    const bool stop = use & (test < kTransmittanceMin);
                    const bool blend = use & !stop;
                    const float w = blend ? a * t : 0.0f;
                    acc[0][p] += w * f0;
                    acc[1][p] += w * f1;
                    acc[2][p] += w * f2;
                    acc[3][p] += w * f3;
                    T[p] = blend ? test : (stop ? -t : t);
                    last[p] = blend ? position : last[p];
                    ws += w;
                }
                wsum[g] += ws;
                if (((k - begin) & 15) == 15) {
                    n_alive = 0;
                    for (int p = 0; p < kTilePixels; ++p) n_alive += T[p] > 0.0f;
                }
            }
            for (int p = 0; p < kTilePixels; ++p) {
                if (!tp.inside[p]) continue;
                size_t pix = tp.pixel(p, in.width);
                for (int c = 0; c < kChannels; ++c) out.image[kChannels * pix + c] = acc[c][p];
                out.alpha[pix] = 1.0f - fabsf(T[p]);
                out.final_T[pix] = fabsf(T[p]);
                out.last[pix] = last[p];
            }
        }
    }
    weight_sums.reduce_into(out.weight_sums);
}

void blend_backward(const BlendIn& in, const BlendGradIn& gi, const BlendGradOut& out) {
    const int tiles_x = (in.width + kTileSize - 1) / kTileSize, tiles_y = (in.height + kTileSize - 1) / kTileSize;
    // Per Gaussian: means2d (2), conic (3), opacity (1), features (4), |means2d| (2).
    constexpr int kGrads = 12;
    PerThreadSums sums(in.n, kGrads);
    const std::unique_ptr<BlendGaussian[]> packed = pack_gaussians(in);
#pragma omp parallel
    {
        FlushDenormals flush;
        float* grads = sums.for_thread();
        TilePixels tp;
        // behind: sum of w f . dL/dimage over the Gaussians behind, minus dL/dalpha T_final (alpha = 1 - T_final).
        alignas(64) float T[kTilePixels], behind[kTilePixels];
        alignas(64) float v_img[kChannels][kTilePixels];
        alignas(64) int32_t last[kTilePixels];
#pragma omp for schedule(static, 1)
        for (int tile = 0; tile < tiles_x * tiles_y; ++tile) {
            tp.set(tile, tiles_x, in.width, in.height);
            const float *px = tp.px, *py = tp.py;
            int max_last = 0;
            for (int p = 0; p < kTilePixels; ++p) {
                const bool inside = tp.inside[p];
                const size_t pix = inside ? tp.pixel(p, in.width) : 0;
                last[p] = inside ? gi.last[pix] : 0;
                T[p] = inside ? gi.final_T[pix] : 1.0f;
                behind[p] = inside ? -gi.v_alpha[pix] * T[p] : 0.0f;
                for (int c = 0; c < kChannels; ++c) v_img[c][p] = inside ? gi.v_image[kChannels * pix + c] : 0.0f;
                max_last = std::max(max_last, last[p]);
            }
            const int begin = in.tile_offsets[tile];
            // Back to front, undoing each Gaussian's transmittance factor as we go.
            for (int k = begin + max_last - 1; k >= begin; --k) {
                const int g = in.ids[k];
                if (k - kPrefetchAhead >= begin) {
                    prefetch(&packed[in.ids[k - kPrefetchAhead]]);
                    prefetch(grads + (size_t)kGrads * in.ids[k - kPrefetchAhead]);
                }
                const BlendGaussian& gs = packed[g];
                const float mx = gs.mx, my = gs.my, o = gs.o, f0 = gs.f[0], f1 = gs.f[1], f2 = gs.f[2], f3 = gs.f[3];
                const Sym2 conic = gs.conic;
                const int32_t position = k - begin;
                const RowRange rows = rows_in_reach(gs, tp.y0);
                const int p0 = rows.first * kTileSize, p1 = rows.end * kTileSize;
                alignas(64) float alpha[kTilePixels];
#pragma omp simd
                for (int p = p0; p < p1; ++p) alpha[p] = pair_alpha(gaussian_power(conic, px[p] - mx, py[p] - my), o);
                float s_mx = 0, s_my = 0, s_a = 0, s_b = 0, s_c = 0, s_o = 0, s_f0 = 0, s_f1 = 0, s_f2 = 0, s_f3 = 0;
                float s_ax = 0, s_ay = 0;
#pragma omp simd reduction(+ : s_mx, s_my, s_a, s_b, s_c, s_o, s_f0, s_f1, s_f2, s_f3, s_ax, s_ay)
                for (int p = p0; p < p1; ++p) {
                    const float dx = px[p] - mx, dy = py[p] - my;
                    const float a = alpha[p];
                    const bool use = (position < last[p]) & (a >= kAlphaMin);
                    const float one_minus = 1.0f - a;
                    const float T_before = use ? T[p] / one_minus : T[p];
                    const float w = use ? a * T_before : 0.0f;
                    const float fdot = f0 * v_img[0][p] + f1 * v_img[1][p] + f2 * v_img[2][p] + f3 * v_img[3][p];
                    const float v_alpha = use ? T_before * fdot - behind[p] / one_minus : 0.0f;
                    behind[p] += w * fdot;
                    T[p] = T_before;
                    // Where alpha was clamped at 0.99 it does not depend on opacity or position. Elsewhere
                    // alpha = o exp(power), so dalpha/dpower = alpha and dalpha/do = alpha / o (divided once below).
                    const float v_power = a >= kAlphaMax ? 0.0f : a * v_alpha;
                    s_o += v_power;
                    s_f0 += w * v_img[0][p];
                    s_f1 += w * v_img[1][p];
                    s_f2 += w * v_img[2][p];
                    s_f3 += w * v_img[3][p];
                    const float gx = v_power * (conic.a * dx + conic.b * dy);
                    const float gy = v_power * (conic.c * dy + conic.b * dx);
                    s_mx += gx;
                    s_my += gy;
                    s_ax += fabsf(gx);
                    s_ay += fabsf(gy);
                    s_a += -0.5f * v_power * dx * dx;
                    s_b += -v_power * dx * dy;
                    s_c += -0.5f * v_power * dy * dy;
                }
                float* out_g = grads + (size_t)kGrads * g;
                out_g[0] += s_mx;
                out_g[1] += s_my;
                out_g[2] += s_a;
                out_g[3] += s_b;
                out_g[4] += s_c;
                out_g[5] += o > 0.0f ? s_o / o : 0.0f;  // no pixel counts a Gaussian of opacity 0
                out_g[6] += s_f0;
                out_g[7] += s_f1;
                out_g[8] += s_f2;
                out_g[9] += s_f3;
                out_g[10] += s_ax;
                out_g[11] += s_ay;
            }
        }
    }
    std::vector<float> total((size_t)kGrads * in.n);
    sums.reduce_into(total.data());
#pragma omp parallel for schedule(static)
    for (int g = 0; g < in.n; ++g) {
        const float* s = total.data() + (size_t)kGrads * g;
        out.v_means2d[2 * g] = s[0];
        out.v_means2d[2 * g + 1] = s[1];
        for (int i = 0; i < 3; ++i) out.v_conics[3 * g + i] = s[2 + i];
        out.v_opacities[g] = s[5];
        for (int c = 0; c < kChannels; ++c) out.v_features[kChannels * g + c] = s[6 + c];
        out.absgrad[2 * g] = s[10];
        out.absgrad[2 * g + 1] = s[11];
    }
}

}  // namespace cpu
}  // namespace splatkit
