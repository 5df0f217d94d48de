// Alpha of one (pixel, Gaussian) pair and its gradient: shared by the forward and backward blending loops.
#pragma once

#include "common.h"

namespace splatkit {

// power = -0.5 (a dx^2 + c dy^2) - b dx dy with (dx, dy) = pixel centre - mean; alpha = min(0.99, o exp(power)).
// A pair counts only when power <= 0 and alpha >= 1/255.
SPLATKIT_HD float gaussian_power(Sym2 conic, float dx, float dy) {
    return -0.5f * (conic.a * dx * dx + conic.c * dy * dy) - conic.b * dx * dy;
}

// exp(power) for a pixel inside the Gaussian's support (power <= 0); the backward pass needs it beside alpha, so
// alpha is also given from it rather than from a second exp.
SPLATKIT_HD float pair_gauss(float power) { return exp_nonpositive(min_f(power, 0.0f)); }

SPLATKIT_HD float pair_alpha(float power, float gauss, float opacity) {
    return power > 0.0f ? 0.0f : min_f(kAlphaMax, opacity * gauss);
}

SPLATKIT_HD float pair_alpha(float power, float opacity) { return pair_alpha(power, pair_gauss(power), opacity); }

// Box around a Gaussian's mean beyond which alpha < 1/255 for its opacity: the Mahalanobis distance d must satisfy
// d^2 <= 2 ln(255 opacity), and |dx| <= d sigma_x with sigma_x^2 = c / det of the conic (a, b, c).
SPLATKIT_HD Vec2 alpha_extent(Sym2 conic, float opacity, int radius_x, int radius_y) {
    float det = fmaxf(conic.a * conic.c - conic.b * conic.b, 1e-12f);
    float d2 = 2.0f * logf(fmaxf(255.0f * opacity, 1.0f));
    float hx = sqrtf(d2 * conic.c / det), hy = sqrtf(d2 * conic.a / det);
    return {fminf(hx, (float)radius_x), fminf(hy, (float)radius_y)};
}

}  // namespace splatkit
