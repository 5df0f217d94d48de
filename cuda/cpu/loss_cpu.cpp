// CPU build of the fused training loss (include/splatkit/loss.h), with OpenMP.
// The 2D SSIM window is separable, so every blur is a horizontal then a vertical pass of the 1D weights over
// channel planes; each pass keeps the window loop outside and the pixel loop inside, which vectorises. Rows are
// the unit of parallel work, and the means are summed per row then in row order, so results do not depend on the
// thread count.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "splatkit/api.h"

namespace splatkit {
namespace cpu {

void photometric_loss(const LossIn& in, LossOut& out) {
    const int H = in.height, W = in.width, C = in.channels, win = in.window;
    const int hv = H - win + 1, wv = W - win + 1, half = win / 2;  // valid windows: hv x wv, centred at +half
    const float* g = in.weights;
    const size_t plane = (size_t)H * W;

    long long kept = 0, centred = 0;
    for (int r = 0; r < H; ++r)
        for (int c = 0; c < W; ++c) {
            bool k = in.keep == nullptr || in.keep[(size_t)r * W + c];
            kept += k;
            centred += k && r >= half && r < half + hv && c >= half && c < half + wv;
        }
    const float l1_scale = (1.0f - in.ssim_lambda) / (float)std::max(kept * C, 1LL);
    const float ssim_scale = -in.ssim_lambda / (float)std::max(centred * C, 1LL);  // dLoss/dSSIM of one window

    std::vector<float> x(C * plane), y(C * plane);  // channel planes of the render and the photo
#pragma omp parallel for schedule(static)
    for (long long p = 0; p < (long long)plane; ++p)
        for (int c = 0; c < C; ++c) {
            x[c * plane + p] = in.render[p * C + c];
            y[c * plane + p] = in.target[p * C + c];
        }

    // Horizontal pass: the five statistics of every row, over valid columns (C x 5 planes of H x wv).
    std::vector<float> rows((size_t)C * kSsimStats * H * wv);
    auto row_stats = [&](int c, int s, int r) { return rows.data() + (((size_t)c * kSsimStats + s) * H + r) * wv; };
#pragma omp parallel for collapse(2) schedule(static)
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < H; ++r) {
            const float *xr = x.data() + c * plane + (size_t)r * W, *yr = y.data() + c * plane + (size_t)r * W;
            float *mx = row_stats(c, 0, r), *my = row_stats(c, 1, r), *sxx = row_stats(c, 2, r);
            float *syy = row_stats(c, 3, r), *sxy = row_stats(c, 4, r);
            for (int s = 0; s < kSsimStats; ++s) std::fill(row_stats(c, s, r), row_stats(c, s, r) + wv, 0.0f);
            for (int k = 0; k < win; ++k) {
                const float gk = g[k];
                for (int j = 0; j < wv; ++j) {
                    float a = xr[j + k], b = yr[j + k];
                    mx[j] += gk * a;
                    my[j] += gk * b;
                    sxx[j] += gk * a * a;
                    syy[j] += gk * b * b;
                    sxy[j] += gk * a * b;
                }
            }
        }

    // Vertical pass, SSIM of each valid window and dLoss/d(statistics of x) there (C x 3 planes of hv x wv).
    std::vector<float> partials((size_t)C * kSsimPartials * hv * wv);
    std::vector<double> ssim_rows((size_t)C * hv, 0.0);
    auto partial_row = [&](int c, int t, int i) {
        return partials.data() + (((size_t)c * kSsimPartials + t) * hv + i) * wv;
    };
#pragma omp parallel
    {
        std::vector<float> stats((size_t)kSsimStats * wv);
#pragma omp for collapse(2) schedule(static)
        for (int c = 0; c < C; ++c)
            for (int i = 0; i < hv; ++i) {
                std::fill(stats.begin(), stats.end(), 0.0f);
                for (int k = 0; k < win; ++k) {
                    const float gk = g[k];
                    for (int s = 0; s < kSsimStats; ++s) {
                        const float* src = row_stats(c, s, i + k);
                        float* dst = stats.data() + (size_t)s * wv;
                        for (int j = 0; j < wv; ++j) dst[j] += gk * src[j];
                    }
                }
                const uint8_t* keep_row = in.keep ? in.keep + (size_t)(i + half) * W + half : nullptr;
                float *p0 = partial_row(c, 0, i), *p1 = partial_row(c, 1, i), *p2 = partial_row(c, 2, i);
                double sum = 0.0;
                for (int j = 0; j < wv; ++j) {
                    float d[kSsimPartials];
                    float s = ssim_window(stats[j], stats[wv + j], stats[2 * wv + j], stats[3 * wv + j],
                                          stats[4 * wv + j], d);
                    float weight = keep_row == nullptr || keep_row[j] ? 1.0f : 0.0f;
                    sum += (double)(s * weight);
                    p0[j] = ssim_scale * weight * d[0];
                    p1[j] = ssim_scale * weight * d[1];
                    p2[j] = ssim_scale * weight * d[2];
                }
                ssim_rows[(size_t)c * hv + i] = sum;
            }
    }

    // Back through the blur (its transpose: the same symmetric weights, scattered), then the chain rule to the
    // render's pixels, plus the L1 term.
    std::vector<double> l1_rows((size_t)C * H, 0.0);
#pragma omp parallel
    {
        std::vector<float> column((size_t)kSsimPartials * wv), back((size_t)kSsimPartials * W);
#pragma omp for collapse(2) schedule(static)
        for (int c = 0; c < C; ++c)
            for (int r = 0; r < H; ++r) {
                std::fill(column.begin(), column.end(), 0.0f);
                for (int k = std::max(0, r - hv + 1); k <= std::min(win - 1, r); ++k) {
                    const float gk = g[k];
                    for (int t = 0; t < kSsimPartials; ++t) {
                        const float* src = partial_row(c, t, r - k);
                        float* dst = column.data() + (size_t)t * wv;
                        for (int j = 0; j < wv; ++j) dst[j] += gk * src[j];
                    }
                }
                std::fill(back.begin(), back.end(), 0.0f);
                for (int k = 0; k < win; ++k) {
                    const float gk = g[k];
                    for (int t = 0; t < kSsimPartials; ++t) {
                        const float* src = column.data() + (size_t)t * wv;
                        float* dst = back.data() + (size_t)t * W + k;
                        for (int j = 0; j < wv; ++j) dst[j] += gk * src[j];
                    }
                }
                const float *xr = x.data() + c * plane + (size_t)r * W, *yr = y.data() + c * plane + (size_t)r * W;
                const uint8_t* keep_row = in.keep ? in.keep + (size_t)r * W : nullptr;
                double sum = 0.0;
                for (int j = 0; j < W; ++j) {
                    float weight = keep_row == nullptr || keep_row[j] ? 1.0f : 0.0f;
                    float a = xr[j], b = yr[j];
                    sum += (double)(weight * fabsf(a - b));
                    float ssim_grad = back[j] + 2.0f * a * back[W + j] + b * back[2 * W + j];
                    out.grad[((size_t)r * W + j) * C + c] = weight * (ssim_grad + l1_scale * l1_grad(a, b));
                }
                l1_rows[(size_t)c * H + r] = sum;
            }
    }
    double l1 = 0.0, ssim = 0.0;
    for (double v : l1_rows) l1 += v;
    for (double v : ssim_rows) ssim += v;
    out.l1 = l1 / (double)std::max(kept * C, 1LL);
    out.ssim = ssim / (double)std::max(centred * C, 1LL);
}

}  // namespace cpu
}  // namespace splatkit
