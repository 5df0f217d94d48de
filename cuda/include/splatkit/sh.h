// Real spherical harmonics up to degree 3 (3DGS/gsplat basis order and signs) and their gradients.
// Coefficients are laid out coefficient-major: coeffs[k * 3 + channel].
#pragma once

#include "common.h"

namespace splatkit {

constexpr float kShC0 = 0.28209479177387814f;
// Basis values at a unit direction, and (if grad != nullptr) their derivatives d basis_k / d(x, y, z).
SPLATKIT_HD void sh_basis(int degree, Vec3 d, float* basis, Vec3* grad) {
    const float kShC1 = 0.4886025119029199f;
    const float kShC2[5] = {1.0925484305920792f, -1.0925484305920792f, 0.31539156525252005f, -1.0925484305920792f,
                            0.5462742152960396f};
    const float kShC3[7] = {-0.5900435899266435f, 2.890611442640554f, -0.4570457994644658f, 0.3731763325901154f,
                            -0.4570457994644658f, 1.445305721320277f, -0.5900435899266435f};
    float x = d.x, y = d.y, z = d.z;
    basis[0] = kShC0;
    if (grad) grad[0] = {0, 0, 0};
    if (degree < 1) return;
    basis[1] = -kShC1 * y;
    basis[2] = kShC1 * z;
    basis[3] = -kShC1 * x;
    if (grad) {
        grad[1] = {0, -kShC1, 0};
        grad[2] = {0, 0, kShC1};
        grad[3] = {-kShC1, 0, 0};
    }
    if (degree < 2) return;
    float xx = x * x, yy = y * y, zz = z * z;
    basis[4] = kShC2[0] * x * y;
    basis[5] = kShC2[1] * y * z;
    basis[6] = kShC2[2] * (2 * zz - xx - yy);
    basis[7] = kShC2[3] * x * z;
    basis[8] = kShC2[4] * (xx - yy);
    if (grad) {
        grad[4] = {kShC2[0] * y, kShC2[0] * x, 0};
        grad[5] = {0, kShC2[1] * z, kShC2[1] * y};
        grad[6] = {-2 * kShC2[2] * x, -2 * kShC2[2] * y, 4 * kShC2[2] * z};
        grad[7] = {kShC2[3] * z, 0, kShC2[3] * x};
        grad[8] = {2 * kShC2[4] * x, -2 * kShC2[4] * y, 0};
    }
    if (degree < 3) return;
    basis[9] = kShC3[0] * y * (3 * xx - yy);
    basis[10] = kShC3[1] * x * y * z;
    basis[11] = kShC3[2] * y * (4 * zz - xx - yy);
    basis[12] = kShC3[3] * z * (2 * zz - 3 * xx - 3 * yy);
    basis[13] = kShC3[4] * x * (4 * zz - xx - yy);
    basis[14] = kShC3[5] * z * (xx - yy);
    basis[15] = kShC3[6] * x * (xx - 3 * yy);
    if (grad) {
        grad[9] = {kShC3[0] * 6 * x * y, kShC3[0] * (3 * xx - 3 * yy), 0};
        grad[10] = {kShC3[1] * y * z, kShC3[1] * x * z, kShC3[1] * x * y};
        grad[11] = {kShC3[2] * (-2 * x * y), kShC3[2] * (4 * zz - xx - 3 * yy), kShC3[2] * 8 * y * z};
        grad[12] = {kShC3[3] * (-6 * x * z), kShC3[3] * (-6 * y * z), kShC3[3] * (6 * zz - 3 * xx - 3 * yy)};
        grad[13] = {kShC3[4] * (4 * zz - 3 * xx - yy), kShC3[4] * (-2 * x * y), kShC3[4] * 8 * x * z};
        grad[14] = {kShC3[5] * 2 * x * z, -kShC3[5] * 2 * y * z, kShC3[5] * (xx - yy)};
        grad[15] = {kShC3[6] * (3 * xx - 3 * yy), kShC3[6] * (-6 * x * y), 0};
    }
}

SPLATKIT_HD Vec3 normalize_dir(Vec3 d, float& norm) {
    norm = sqrtf(dot(d, d));
    return (1.0f / fmaxf(norm, 1e-12f)) * d;
}

// Colour = max(sum_k basis_k(dir) coeffs_k + 0.5, 0), dir = Gaussian centre - camera centre (any length).
SPLATKIT_HD Vec3 sh_color(int degree, Vec3 dir, const float* coeffs) {
    float basis[kMaxShBases], norm;
    sh_basis(degree, normalize_dir(dir, norm), basis, nullptr);
    int n = (degree + 1) * (degree + 1);
    float r = 0.5f, g = 0.5f, b = 0.5f;
    for (int k = 0; k < n; ++k) {
        r += basis[k] * coeffs[3 * k];
        g += basis[k] * coeffs[3 * k + 1];
        b += basis[k] * coeffs[3 * k + 2];
    }
    return {fmaxf(r, 0.0f), fmaxf(g, 0.0f), fmaxf(b, 0.0f)};
}

// Given dL/dcolour, add dL/dcoeffs into v_coeffs and return dL/ddir (for the raw, unnormalised direction).
SPLATKIT_HD Vec3 sh_color_vjp(int degree, Vec3 dir, const float* coeffs, Vec3 v_color, float* v_coeffs) {
    float basis[kMaxShBases], norm;
    Vec3 grad[kMaxShBases];
    Vec3 d = normalize_dir(dir, norm);
    sh_basis(degree, d, basis, grad);
    int n = (degree + 1) * (degree + 1);
    float raw[3] = {0.5f, 0.5f, 0.5f};
    for (int k = 0; k < n; ++k)
        for (int ch = 0; ch < 3; ++ch) raw[ch] += basis[k] * coeffs[3 * k + ch];
    // The clamp at zero passes gradient only where the colour was not clamped.
    float v[3] = {raw[0] >= 0 ? v_color.x : 0.0f, raw[1] >= 0 ? v_color.y : 0.0f, raw[2] >= 0 ? v_color.z : 0.0f};
    Vec3 v_d = {0, 0, 0};
    for (int k = 0; k < n; ++k) {
        float s = 0;
        for (int ch = 0; ch < 3; ++ch) {
            v_coeffs[3 * k + ch] += basis[k] * v[ch];
            s += coeffs[3 * k + ch] * v[ch];
        }
        v_d = v_d + s * grad[k];
    }
    // Through d = dir / |dir|: (g - d (d . g)) / |dir|.
    float inv = 1.0f / fmaxf(norm, 1e-12f);
    return inv * (v_d - dot(d, v_d) * d);
}

}  // namespace splatkit
