// CPU build of the splatkit rasterizer: the shared math headers driven by OpenMP.
// Per-Gaussian work is parallel over Gaussians; blending is parallel over 16x16 tiles, each tile looping over its
// depth-sorted Gaussians with the 256 pixels as the inner, vectorisable loop. Per-Gaussian sums (weights in the
// forward pass, gradients in the backward pass) go to per-thread buffers that are reduced at the end, so no two
// threads ever write the same memory.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "splatkit/api.h"
#include "splatkit/blend.h"
#include "splatkit/sh.h"

namespace splatkit {
namespace cpu {
namespace {

constexpr int kTilePixels = kTileSize * kTileSize;

Vec3 load3(const float* p) { return {p[0], p[1], p[2]}; }
Vec4 load4(const float* p) { return {p[0], p[1], p[2], p[3]}; }

Vec3 camera_center(const PinholeCamera& cam) {  // -R^T t
    Vec3 c = matvec_t(cam.R, cam.t);
    return {-c.x, -c.y, -c.z};
}

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

// Rows [first, end) of the tile starting at pixel row y0 that hold pixel centres inside a Gaussian's alpha box
// (pixels outside it have alpha < 1/255, so skipping them changes nothing).
struct RowRange {
    int first, end;
};

RowRange rows_in_reach(const BlendIn& in, int g, int y0) {
    const Sym2 conic = {in.conics[3 * g], in.conics[3 * g + 1], in.conics[3 * g + 2]};
    const float det = max_f(conic.a * conic.c - conic.b * conic.b, 1e-12f);
    const float d2 = 2.0f * logf(max_f(255.0f * in.opacities[g], 1.0f));
    const float h = sqrtf(d2 * conic.a / det), my = in.means2d[2 * g + 1];
    const int first = std::max(0, (int)ceilf(my - h - 0.5f) - y0);
    const int end = std::min(kTileSize, (int)floorf(my + h - 0.5f) + 1 - y0);
    return {first, std::max(first, end)};
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

// What the blending loops need of one Gaussian.
struct BlendGaussian {
    float mx, my, o;
    Sym2 conic;
    float f[kChannels];

    BlendGaussian(const BlendIn& in, int g)
        : mx(in.means2d[2 * g]), my(in.means2d[2 * g + 1]), o(in.opacities[g]),
          conic{in.conics[3 * g], in.conics[3 * g + 1], in.conics[3 * g + 2]} {
        for (int c = 0; c < kChannels; ++c) f[c] = in.features[kChannels * (size_t)g + c];
    }
};

}  // namespace

void preprocess_forward(const PreprocessIn& in, const PreprocessOut& out) {
    Vec3 campos = camera_center(in.cam);
#pragma omp parallel for schedule(static)
    for (int g = 0; g < in.n; ++g) {
        Projection p;
        Vec3 mean = load3(in.means + 3 * g);
        bool visible = project_gaussian(mean, load4(in.quats + 4 * g), load3(in.scales + 3 * g), in.cam, in.eps2d,
                                        in.near_plane, in.far_plane, p);
        out.depths[g] = p.depth;
        out.radii[2 * g] = p.radius_x;
        out.radii[2 * g + 1] = p.radius_y;
        if (!visible) {
            std::memset(out.means2d + 2 * g, 0, 2 * sizeof(float));
            std::memset(out.conics + 3 * g, 0, 3 * sizeof(float));
            std::memset(out.colors + 3 * g, 0, 3 * sizeof(float));
            out.compensation[g] = 0.0f;
            continue;
        }
        out.means2d[2 * g] = p.mean2d.x;
        out.means2d[2 * g + 1] = p.mean2d.y;
        out.conics[3 * g] = p.conic.a;
        out.conics[3 * g + 1] = p.conic.b;
        out.conics[3 * g + 2] = p.conic.c;
        out.compensation[g] = p.compensation;
        Vec3 color = sh_color(in.degree, mean - campos, in.sh + (size_t)3 * in.bases * g);
        out.colors[3 * g] = color.x;
        out.colors[3 * g + 1] = color.y;
        out.colors[3 * g + 2] = color.z;
    }
}

void preprocess_backward(const PreprocessIn& in, const PreprocessGradIn& gi, const PreprocessGradOut& out) {
    Vec3 campos = camera_center(in.cam);
    std::memset(out.v_sh, 0, sizeof(float) * 3 * in.bases * (size_t)in.n);
#pragma omp parallel for schedule(static)
    for (int g = 0; g < in.n; ++g) {
        if (gi.radii[2 * g] <= 0 || gi.radii[2 * g + 1] <= 0) {
            std::memset(out.v_means + 3 * g, 0, 3 * sizeof(float));
            std::memset(out.v_quats + 4 * g, 0, 4 * sizeof(float));
            std::memset(out.v_scales + 3 * g, 0, 3 * sizeof(float));
            continue;
        }
        Vec3 mean = load3(in.means + 3 * g);
        Vec2 v_m2d = {gi.v_means2d[2 * g], gi.v_means2d[2 * g + 1]};
        Sym2 v_con = {gi.v_conics[3 * g], gi.v_conics[3 * g + 1], gi.v_conics[3 * g + 2]};
        ProjectionGrad pg = project_gaussian_vjp(mean, load4(in.quats + 4 * g), load3(in.scales + 3 * g), in.cam,
                                                 in.eps2d, v_m2d, v_con, gi.v_depths[g], gi.v_compensation[g]);
        Vec3 v_dir = sh_color_vjp(in.degree, mean - campos, in.sh + (size_t)3 * in.bases * g,
                                  load3(gi.v_colors + 3 * g), out.v_sh + (size_t)3 * in.bases * g);
        Vec3 v_mean = pg.mean + v_dir;
        out.v_means[3 * g] = v_mean.x;
        out.v_means[3 * g + 1] = v_mean.y;
        out.v_means[3 * g + 2] = v_mean.z;
        out.v_quats[4 * g] = pg.quat.x;
        out.v_quats[4 * g + 1] = pg.quat.y;
        out.v_quats[4 * g + 2] = pg.quat.z;
        out.v_quats[4 * g + 3] = pg.quat.w;
        out.v_scales[3 * g] = pg.scale.x;
        out.v_scales[3 * g + 1] = pg.scale.y;
        out.v_scales[3 * g + 2] = pg.scale.z;
    }
}

void bin_tiles(int n, int width, int height, const float* means2d, const float* conics, const float* opacities,
               const float* depths, const int32_t* radii, std::vector<int32_t>& offsets, std::vector<int32_t>& ids) {
    const int tiles_x = (width + kTileSize - 1) / kTileSize, tiles_y = (height + kTileSize - 1) / kTileSize;
    // Tile rectangle [x0, x1) x [y0, y1) of each Gaussian: the tiles holding a pixel centre inside the box where
    // its alpha can reach 1/255 (the same pairs the PyTorch reference enumerates).
    std::vector<int32_t> rect(4 * (size_t)n, 0);
    std::vector<int32_t> visible;
    visible.reserve(n);
    for (int g = 0; g < n; ++g)
        if (radii[2 * g] > 0 && radii[2 * g + 1] > 0) visible.push_back(g);
#pragma omp parallel for schedule(static)
    for (long long i = 0; i < (long long)visible.size(); ++i) {
        int g = visible[i];
        Sym2 conic = {conics[3 * g], conics[3 * g + 1], conics[3 * g + 2]};
        Vec2 h = alpha_extent(conic, opacities[g], radii[2 * g], radii[2 * g + 1]);
        float mx = means2d[2 * g], my = means2d[2 * g + 1];
        int px0 = std::max(0, (int)ceilf(mx - h.x - 0.5f)), px1 = std::min(width - 1, (int)floorf(mx + h.x - 0.5f));
        int py0 = std::max(0, (int)ceilf(my - h.y - 0.5f)), py1 = std::min(height - 1, (int)floorf(my + h.y - 0.5f));
        int32_t* r = rect.data() + 4 * (size_t)g;
        if (px0 > px1 || py0 > py1) continue;
        r[0] = px0 / kTileSize;
        r[1] = px1 / kTileSize + 1;
        r[2] = py0 / kTileSize;
        r[3] = py1 / kTileSize + 1;
    }
    // Nearest first; ties broken by index so the order is the same as a stable sort by depth.
    std::sort(visible.begin(), visible.end(), [&](int a, int b) {
        return depths[a] < depths[b] || (depths[a] == depths[b] && a < b);
    });
    offsets.assign((size_t)tiles_x * tiles_y + 1, 0);
    for (int g : visible) {
        const int32_t* r = rect.data() + 4 * (size_t)g;
        for (int ty = r[2]; ty < r[3]; ++ty)
            for (int tx = r[0]; tx < r[1]; ++tx) ++offsets[(size_t)ty * tiles_x + tx + 1];
    }
    std::partial_sum(offsets.begin(), offsets.end(), offsets.begin());
    ids.resize(offsets.back());
    std::vector<int32_t> cursor(offsets.begin(), offsets.end() - 1);
    for (int g : visible) {  // in depth order, so every tile's list comes out sorted
        const int32_t* r = rect.data() + 4 * (size_t)g;
        for (int ty = r[2]; ty < r[3]; ++ty)
            for (int tx = r[0]; tx < r[1]; ++tx) ids[cursor[(size_t)ty * tiles_x + tx]++] = g;
    }
}

void blend_forward(const BlendIn& in, const BlendOut& out) {
    const int tiles_x = (in.width + kTileSize - 1) / kTileSize, tiles_y = (in.height + kTileSize - 1) / kTileSize;
    PerThreadSums weight_sums(in.n, 1);
#pragma omp parallel
    {
        float* wsum = weight_sums.for_thread();
        TilePixels tp;
        alignas(64) float T[kTilePixels], alive[kTilePixels], acc[kChannels][kTilePixels];
        alignas(64) int32_t last[kTilePixels];
#pragma omp for schedule(static, 1)
        for (int tile = 0; tile < tiles_x * tiles_y; ++tile) {
            tp.set(tile, tiles_x, in.width, in.height);
            const float *px = tp.px, *py = tp.py;
            int n_alive = 0;
            for (int p = 0; p < kTilePixels; ++p) {
                alive[p] = tp.inside[p] ? 1.0f : 0.0f;
                n_alive += tp.inside[p];
                T[p] = 1.0f;
                last[p] = 0;
                for (int c = 0; c < kChannels; ++c) acc[c][p] = 0.0f;
            }
            const int begin = in.tile_offsets[tile], end = in.tile_offsets[tile + 1];
            for (int k = begin; k < end && n_alive > 0; ++k) {
                const int g = in.ids[k];
                const BlendGaussian gs(in, g);
                const float mx = gs.mx, my = gs.my, o = gs.o, f0 = gs.f[0], f1 = gs.f[1], f2 = gs.f[2], f3 = gs.f[3];
                const Sym2 conic = gs.conic;
                const int32_t position = k - begin + 1;
                // Two passes over the tile's pixels, each a plain SIMD loop: alphas first, then the blend.
                const RowRange rows = rows_in_reach(in, g, tp.y0);
                const int p0 = rows.first * kTileSize, p1 = rows.end * kTileSize;
                alignas(64) float alpha[kTilePixels];
#pragma omp simd
                for (int p = p0; p < p1; ++p) alpha[p] = pair_alpha(gaussian_power(conic, px[p] - mx, py[p] - my), o);
                float ws = 0.0f;
#pragma omp simd reduction(+ : ws)
                for (int p = p0; p < p1; ++p) {
                    const float a = alpha[p], t = T[p];
                    const float test = t * (1.0f - a);
                    const bool use = (a >= kAlphaMin) & (alive[p] > 0.0f);
                    const bool stop = use & (test < kTransmittanceMin);
                    const float w = (use & !stop) ? a * t : 0.0f;
                    acc[0][p] += w * f0;
                    acc[1][p] += w * f1;
                    acc[2][p] += w * f2;
                    acc[3][p] += w * f3;
                    T[p] = (use & !stop) ? test : t;
                    alive[p] = stop ? 0.0f : alive[p];
                    last[p] = (use & !stop) ? position : last[p];
                    ws += w;
                }
                wsum[g] += ws;
                if (((k - begin) & 15) == 15) {
                    n_alive = 0;
                    for (int p = 0; p < kTilePixels; ++p) n_alive += alive[p] > 0.0f;
                }
            }
            for (int p = 0; p < kTilePixels; ++p) {
                if (!tp.inside[p]) continue;
                size_t pix = tp.pixel(p, in.width);
                for (int c = 0; c < kChannels; ++c) out.image[kChannels * pix + c] = acc[c][p];
                out.alpha[pix] = 1.0f - T[p];
                out.final_T[pix] = T[p];
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
#pragma omp parallel
    {
        float* grads = sums.for_thread();
        TilePixels tp;
        alignas(64) float T[kTilePixels], T_final[kTilePixels], behind[kTilePixels], v_alpha_out[kTilePixels];
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
                behind[p] = 0.0f;
                last[p] = inside ? gi.last[pix] : 0;
                T[p] = T_final[p] = inside ? gi.final_T[pix] : 1.0f;
                v_alpha_out[p] = inside ? gi.v_alpha[pix] : 0.0f;
                for (int c = 0; c < kChannels; ++c) v_img[c][p] = inside ? gi.v_image[kChannels * pix + c] : 0.0f;
                max_last = std::max(max_last, last[p]);
            }
            const int begin = in.tile_offsets[tile];
            // Back to front, undoing each Gaussian's transmittance factor as we go.
            for (int k = begin + max_last - 1; k >= begin; --k) {
                const int g = in.ids[k];
                const BlendGaussian gs(in, g);
                const float mx = gs.mx, my = gs.my, o = gs.o, f0 = gs.f[0], f1 = gs.f[1], f2 = gs.f[2], f3 = gs.f[3];
                const Sym2 conic = gs.conic;
                const int32_t position = k - begin;
                const RowRange rows = rows_in_reach(in, g, tp.y0);
                const int p0 = rows.first * kTileSize, p1 = rows.end * kTileSize;
                alignas(64) float gauss[kTilePixels], alpha[kTilePixels];
#pragma omp simd
                for (int p = p0; p < p1; ++p) {
                    const float power = gaussian_power(conic, px[p] - mx, py[p] - my);
                    gauss[p] = exp_nonpositive(min_f(power, 0.0f));
                    alpha[p] = pair_alpha(power, o);
                }
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
                    const float v_alpha = use ? T_before * fdot - (behind[p] - v_alpha_out[p] * T_final[p]) / one_minus
                                              : 0.0f;
                    behind[p] += w * fdot;
                    T[p] = T_before;
                    // Where alpha was clamped at 0.99 it does not depend on opacity or position.
                    const bool clamped = o * gauss[p] > kAlphaMax;
                    const float v_power = clamped ? 0.0f : a * v_alpha;
                    s_o += clamped ? 0.0f : gauss[p] * v_alpha;
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
                out_g[5] += s_o;
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
