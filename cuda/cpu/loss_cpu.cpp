// CPU build of the fused training loss (include/splatkit/loss.h), with OpenMP.
// The 2D SSIM window is separable, so every blur is a horizontal then a vertical pass of the 1D weights over
// channel planes; each pass vectorises over the pixels of a row, with the short window loop inside. Rows are the
// unit of parallel work, and the means are summed per row then in row order, so results do not depend on the
// thread count.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "splatkit/api.h"

namespace splatkit {
namespace cpu {

namespace {

// Scratch memory kept by the calling thread between calls: training calls this every step at one image size, and
// fresh buffers of tens of MB would cost page faults on every call.
float* scratch(std::vector<float>& buffer, size_t count) {
    if (buffer.size() < count) buffer.resize(count);
    return buffer.data();
}

// dst[j] = sum_k weights[k] rows[k][j] for j in [begin, end): a vertical blur of `count` rows (kCount of them when
// kCount > 0, so the row loop unrolls and each output is summed in registers, one store per value).
template <int kCount>
void blur_rows(float* __restrict dst, const float* const* rows, const float* weights, int count, int begin, int end) {
    const int n = kCount > 0 ? kCount : count;
#pragma omp simd
    for (int j = begin; j < end; ++j) {
        float acc = 0.0f;
        for (int k = 0; k < n; ++k) acc += weights[k] * rows[k][j];
        dst[j] = acc;
    }
}

// The loss with the window side fixed at compile time (kWindow > 0: the window loops unroll fully, which makes them
// several times faster) or read from `in` (kWindow == 0: images smaller than the window).
template <int kWindow>
void loss_with_window(const LossIn& in, LossOut& out) {
    const int H = in.height, W = in.width, C = in.channels, win = kWindow > 0 ? kWindow : in.window;
    const int hv = H - win + 1, wv = W - win + 1, half = win / 2;  // valid windows: hv x wv, centred at +half
    const int pad = win - 1;  // zeros on both sides of a row of partials, for the transposed horizontal blur
    const float* g = in.weights;
    const size_t plane = (size_t)H * W;

    long long kept = (long long)H * W, centred = (long long)hv * wv;
    if (in.keep != nullptr) {
        kept = centred = 0;
#pragma omp parallel for reduction(+ : kept, centred) schedule(static)
        for (int r = 0; r < H; ++r) {
            int row_kept = 0, row_centred = 0;
            const uint8_t* keep_row = in.keep + (size_t)r * W;
            for (int c = 0; c < W; ++c) row_kept += keep_row[c];
            if (r >= half && r < half + hv)
                for (int c = half; c < half + wv; ++c) row_centred += keep_row[c];
            kept += row_kept;
            centred += row_centred;
        }
    }
    const float l1_scale = (1.0f - in.ssim_lambda) / (float)std::max(kept * C, 1LL);
    const float ssim_scale = -in.ssim_lambda / (float)std::max(centred * C, 1LL);  // dLoss/dSSIM of one window

    static thread_local std::vector<float> rows_buffer, partials_buffer;
    const float* const x = in.render;  // channel planes of the render and the photo
    const float* const y = in.target;

    // Horizontal pass: the five statistics of every row, over valid columns (C x 5 planes of H x wv).
    float* const rows = scratch(rows_buffer, (size_t)C * kSsimStats * H * wv);
    auto row_stats = [=](int c, int s, int r) { return rows + (((size_t)c * kSsimStats + s) * H + r) * wv; };
#pragma omp parallel for collapse(2) schedule(static)
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < H; ++r) {
            const float* __restrict xr = x + c * plane + (size_t)r * W;
            const float* __restrict yr = y + c * plane + (size_t)r * W;
            float* __restrict mx = row_stats(c, 0, r);
            float* __restrict my = row_stats(c, 1, r);
            float* __restrict sxx = row_stats(c, 2, r);
            float* __restrict syy = row_stats(c, 3, r);
            float* __restrict sxy = row_stats(c, 4, r);
#pragma omp simd
            for (int j = 0; j < wv; ++j) {
                float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s4 = 0.0f;
                for (int k = 0; k < win; ++k) {
                    const float gk = g[k], a = xr[j + k], b = yr[j + k];
                    s0 += gk * a;
                    s1 += gk * b;
                    s2 += gk * a * a;
                    s3 += gk * b * b;
                    s4 += gk * a * b;
                }
                mx[j] = s0;
                my[j] = s1;
                sxx[j] = s2;
                syy[j] = s3;
                sxy[j] = s4;
            }
        }

    // Vertical pass, SSIM of each valid window and dLoss/d(statistics of x) there (C x 3 planes of hv x (wv + 2
    // pad), each row zero-padded).
    const int prow = wv + 2 * pad;
    float* const partials = scratch(partials_buffer, (size_t)C * kSsimPartials * hv * prow);
    auto partial_row = [=](int c, int t, int i) {
        return partials + (((size_t)c * kSsimPartials + t) * hv + i) * prow + pad;
    };
    std::vector<double> ssim_rows((size_t)C * hv, 0.0);
#pragma omp parallel
    {
        std::vector<float> stats((size_t)kSsimStats * wv), values(wv);
#pragma omp for collapse(2) schedule(static)
        for (int c = 0; c < C; ++c)
            for (int i = 0; i < hv; ++i) {
                for (int s = 0; s < kSsimStats; ++s) {
                    const float* __restrict src = row_stats(c, s, i);  // rows i + k are wv apart
                    const float* window_rows[kSsimMaxWindow];
                    for (int k = 0; k < win; ++k) window_rows[k] = src + (size_t)k * wv;
                    blur_rows<kWindow>(stats.data() + (size_t)s * wv, window_rows, g, win, 0, wv);
                }
                for (int t = 0; t < kSsimPartials; ++t) {  // the zero padding
                    float* row = partial_row(c, t, i);
                    std::fill(row - pad, row, 0.0f);
                    std::fill(row + wv, row + wv + pad, 0.0f);
                }
                const uint8_t* keep_row = in.keep ? in.keep + (size_t)(i + half) * W + half : nullptr;
                const float* __restrict st = stats.data();
                float* __restrict p0 = partial_row(c, 0, i);
                float* __restrict p1 = partial_row(c, 1, i);
                float* __restrict p2 = partial_row(c, 2, i);
                float* __restrict v = values.data();
#pragma omp simd
                for (int j = 0; j < wv; ++j) {
                    float d0, d1, d2;
                    const float s = ssim_window(st[j], st[wv + j], st[2 * wv + j], st[3 * wv + j], st[4 * wv + j],
                                               d0, d1, d2);
                    const float weight = keep_row == nullptr ? 1.0f : (float)keep_row[j];
                    v[j] = s * weight;
                    p0[j] = ssim_scale * weight * d0;
                    p1[j] = ssim_scale * weight * d1;
                    p2[j] = ssim_scale * weight * d2;
                }
                double sum = 0.0;
                for (int j = 0; j < wv; ++j) sum += (double)v[j];
                ssim_rows[(size_t)c * hv + i] = sum;
            }
    }

    // Back through the blur (its transpose: the same symmetric weights, scattered), then the chain rule to the
    // render's pixels, plus the L1 term.
    std::vector<double> l1_rows((size_t)C * H, 0.0), squared_rows((size_t)C * H, 0.0);
#pragma omp parallel
    {
        std::vector<float> column((size_t)kSsimPartials * prow, 0.0f), values(W), squares(W);
#pragma omp for collapse(2) schedule(static)
        for (int c = 0; c < C; ++c)
            for (int r = 0; r < H; ++r) {
                const int k0 = std::max(0, r - hv + 1), k1 = std::min(win - 1, r);
                for (int t = 0; t < kSsimPartials; ++t) {
                    float* __restrict dst = column.data() + (size_t)t * prow + pad;
                    const float* window_rows[kSsimMaxWindow];
                    for (int k = k0; k <= k1; ++k) window_rows[k - k0] = partial_row(c, t, r - k);  // zero-padded
                    if (kWindow > 0 && k1 - k0 + 1 == kWindow)  // rows away from the top and bottom edges
                        blur_rows<kWindow>(dst, window_rows, g + k0, kWindow, -pad, wv + pad);
                    else
                        blur_rows<0>(dst, window_rows, g + k0, k1 - k0 + 1, -pad, wv + pad);
                }
                const float *c0 = column.data() + pad, *c1 = c0 + prow, *c2 = c1 + prow;
                const float* __restrict xr = x + c * plane + (size_t)r * W;
                const float* __restrict yr = y + c * plane + (size_t)r * W;
                const uint8_t* keep_row = in.keep ? in.keep + (size_t)r * W : nullptr;
                float* __restrict v = values.data();
                float* __restrict sq = squares.data();
                float* __restrict grad = out.grad + c * plane + (size_t)r * W;
#pragma omp simd
                for (int j = 0; j < W; ++j) {  // column index j - k of the valid windows, zero outside them
                    float b0 = 0.0f, b1 = 0.0f, b2 = 0.0f;
                    for (int k = 0; k < win; ++k) {
                        b0 += g[k] * c0[j - k];
                        b1 += g[k] * c1[j - k];
                        b2 += g[k] * c2[j - k];
                    }
                    const float weight = keep_row == nullptr ? 1.0f : (float)keep_row[j];
                    const float a = xr[j], b = yr[j];
                    v[j] = weight * fabsf(a - b);
                    sq[j] = weight * clamped_squared_error(a, b);
                    grad[j] = weight * (b0 + 2.0f * a * b1 + b * b2 + l1_scale * l1_grad(a, b));
                }
                double sum = 0.0, squared = 0.0;
                for (int j = 0; j < W; ++j) {
                    sum += (double)v[j];
                    squared += (double)sq[j];
                }
                l1_rows[(size_t)c * H + r] = sum;
                squared_rows[(size_t)c * H + r] = squared;
            }
    }
    double l1 = 0.0, ssim = 0.0, squared = 0.0;
    for (double value : l1_rows) l1 += value;
    for (double value : squared_rows) squared += value;
    for (double value : ssim_rows) ssim += value;
    out.l1 = l1 / (double)std::max(kept * C, 1LL);
    out.ssim = ssim / (double)std::max(centred * C, 1LL);
    out.mse = squared / (double)std::max(kept * C, 1LL);
}

}  // namespace

void photometric_loss(const LossIn& in, LossOut& out) {
    if (in.window == kSsimMaxWindow)
        loss_with_window<kSsimMaxWindow>(in, out);
    else
        loss_with_window<0>(in, out);
}

}  // namespace cpu
}  // namespace splatkit
