// The 3DGS training loss, (1 - lambda) L1 + lambda (1 - SSIM) (Kerbl et al. 2023, eq. 7), with its gradient:
// per-window and per-pixel math shared by the CPU and CUDA builds (cpu/loss_cpu.cpp, gpu/loss_cuda.cu).
//
// SSIM follows Wang et al. 2004 as splatkit/train/metrics.py computes it: an 11 x 11 Gaussian window
// (sigma 1.5), only windows that fit inside the image ("valid"), per channel, averaged; with a mask, only windows
// centred on kept pixels count. The windowed statistics of x (the render) and y (the photo) are
//   mx = <x>, my = <y>, sxx = <x x>, syy = <y y>, sxy = <x y>   (<.>: the window's weighted sum)
// and SSIM = A1 A2 / (B1 B2) with A1 = 2 mx my + c1, A2 = 2 (sxy - mx my) + c2, B1 = mx^2 + my^2 + c1,
// B2 = (sxx - mx^2) + (syy - my^2) + c2. Its gradient with respect to a pixel x(p) is, over the windows q
// holding p with weight w(q, p):
//   dSSIM/dx(p) = sum_q w(q, p) [dS/dmx(q) + 2 x(p) dS/dsxx(q) + y(p) dS/dsxy(q)],
// i.e. the three partials below, blurred back with the same (symmetric) window.
#pragma once

#include "common.h"

namespace splatkit {

constexpr float kSsimC1 = 0.01f * 0.01f;  // (K1 L)^2, K1 = 0.01, dynamic range L = 1
constexpr float kSsimC2 = 0.03f * 0.03f;  // (K2 L)^2, K2 = 0.03
constexpr int kSsimMaxWindow = 11;
constexpr int kSsimStats = 5;  // mx, my, sxx, syy, sxy
constexpr int kSsimPartials = 3;  // dS/dmx, dS/dsxx, dS/dsxy

// SSIM of one window and its partials with respect to the render's statistics: d_mx, d_sxx, d_sxy.
SPLATKIT_HD float ssim_window(float mx, float my, float sxx, float syy, float sxy, float& d_mx, float& d_sxx,
                              float& d_sxy) {
    float a1 = 2.0f * mx * my + kSsimC1, a2 = 2.0f * (sxy - mx * my) + kSsimC2;
    float b1 = mx * mx + my * my + kSsimC1, b2 = (sxx - mx * mx) + (syy - my * my) + kSsimC2;
    float d = b1 * b2, s = a1 * a2 / d;
    // S = N / D: dS = (dN - S dD) / D, with dN/dmx = 2 my (a2 - a1) and dD/dmx = 2 mx (b2 - b1).
    d_mx = (2.0f * my * (a2 - a1) - s * 2.0f * mx * (b2 - b1)) / d;
    d_sxx = -s / b2;
    d_sxy = 2.0f * a1 / d;
    return s;
}

// The L1 term's gradient at one value: d|x - y|/dx (0 where they agree, as torch's abs).
SPLATKIT_HD float l1_grad(float x, float y) { return x > y ? 1.0f : (x < y ? -1.0f : 0.0f); }

// One value's squared error with both sides clamped to [0, 1], as PSNR scores a render (so training reports the
// PSNR of its step at no extra pass).
SPLATKIT_HD float clamped_squared_error(float x, float y) {
    const float d = min_f(max_f(x, 0.0f), 1.0f) - min_f(max_f(y, 0.0f), 1.0f);
    return d * d;
}

// The window's weights: a normalised 1D Gaussian (the 2D window is its outer product), `size` <= kSsimMaxWindow.
inline void ssim_weights(int size, float sigma, float* weights) {
    float sum = 0.0f;
    for (int k = 0; k < size; ++k) {
        float x = (float)k - 0.5f * (float)(size - 1);
        weights[k] = expf(-(x * x) / (2.0f * sigma * sigma));
        sum += weights[k];
    }
    for (int k = 0; k < size; ++k) weights[k] /= sum;
}

}  // namespace splatkit
