// Shared definitions for the CPU (C++/OpenMP) and CUDA builds of the splatkit rasterizer.
// Everything here is plain C++ usable on host and device: no torch, no CUDA runtime calls.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SPLATKIT_HD __host__ __device__ __forceinline__
#else
#define SPLATKIT_HD inline
#endif

namespace splatkit {

// Compositing and culling constants; splatkit/render/composite.py and projection.py mirror them
// (tests/test_native.py checks that the two copies agree).
constexpr float kAlphaMin = 1.0f / 255.0f;  // skip (pixel, Gaussian) pairs fainter than this
constexpr float kAlphaMax = 0.99f;          // clamp so transmittance never reaches zero
constexpr float kTransmittanceMin = 1e-4f;  // stop before a pixel's transmittance would fall below this
constexpr float kEps2d = 0.3f;              // screen-space low-pass added to every 2D covariance (px^2)
constexpr float kRadiusSigmas = 3.33f;      // beyond 3.33 sigma alpha < 1/255 even at full opacity
constexpr float kNearPlane = 0.01f;
constexpr float kFarPlane = 1e10f;
constexpr int kTileSize = 16;
constexpr int kMaxShBases = 16;  // degree 3

// Branch-free min/max: unlike fminf/fmaxf they inline to single SIMD instructions (libm's versions carry NaN
// rules that keep GCC from vectorising the blending loops). Arguments here are never NaN.
SPLATKIT_HD float min_f(float a, float b) { return a < b ? a : b; }
SPLATKIT_HD float max_f(float a, float b) { return a > b ? a : b; }

// exp(x) for x <= 0 in the blending loops. On CUDA the hardware-backed expf; on the CPU a Cephes-style
// polynomial (about 1 ulp) that the compiler can vectorise, since libm's expf blocks SIMD in those loops.
SPLATKIT_HD float exp_nonpositive(float x) {
#if defined(__CUDA_ARCH__)
    return expf(x);
#else
    x = max_f(x, -87.0f);
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return y * scale.f;
#endif
}

struct Vec2 {
    float x, y;
};
struct Vec3 {
    float x, y, z;
};
struct Vec4 {
    float x, y, z, w;
};
// Row-major 3x3 and symmetric 2x2 (a b; b c) matrices.
struct Mat3 {
    float m[3][3];
};
struct Sym2 {
    float a, b, c;
};

SPLATKIT_HD Vec3 operator+(Vec3 u, Vec3 v) { return {u.x + v.x, u.y + v.y, u.z + v.z}; }
SPLATKIT_HD Vec3 operator-(Vec3 u, Vec3 v) { return {u.x - v.x, u.y - v.y, u.z - v.z}; }
SPLATKIT_HD Vec3 operator*(float s, Vec3 v) { return {s * v.x, s * v.y, s * v.z}; }
SPLATKIT_HD float dot(Vec3 u, Vec3 v) { return u.x * v.x + u.y * v.y + u.z * v.z; }

SPLATKIT_HD Mat3 matmul(const Mat3& A, const Mat3& B) {
    Mat3 C;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) C.m[i][j] = A.m[i][0] * B.m[0][j] + A.m[i][1] * B.m[1][j] + A.m[i][2] * B.m[2][j];
    return C;
}

SPLATKIT_HD Mat3 transpose(const Mat3& A) {
    Mat3 T;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) T.m[i][j] = A.m[j][i];
    return T;
}

SPLATKIT_HD Vec3 matvec(const Mat3& A, Vec3 v) {
    return {A.m[0][0] * v.x + A.m[0][1] * v.y + A.m[0][2] * v.z, A.m[1][0] * v.x + A.m[1][1] * v.y + A.m[1][2] * v.z,
            A.m[2][0] * v.x + A.m[2][1] * v.y + A.m[2][2] * v.z};
}

SPLATKIT_HD Vec3 matvec_t(const Mat3& A, Vec3 v) {  // A^T v
    return {A.m[0][0] * v.x + A.m[1][0] * v.y + A.m[2][0] * v.z, A.m[0][1] * v.x + A.m[1][1] * v.y + A.m[2][1] * v.z,
            A.m[0][2] * v.x + A.m[1][2] * v.y + A.m[2][2] * v.z};
}

}  // namespace splatkit
