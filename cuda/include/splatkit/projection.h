// Per-Gaussian geometry: quaternion/scale -> 3D covariance -> EWA projection to a 2D conic, and its gradient.
// Conventions (as gsplat): OpenCV camera axes, pixel centres at +0.5, a 0.3 px^2 low-pass on the 2D covariance,
// the projection Jacobian evaluated at a position clamped to 1.3x the field of view, per-axis 3.33-sigma radii.
#pragma once

#include "common.h"

namespace splatkit {

struct PinholeCamera {
    Mat3 R;  // world-to-camera rotation
    Vec3 t;  // world-to-camera translation
    float fx, fy, cx, cy;
    int width, height;
};

struct Projection {
    Vec2 mean2d;
    Sym2 conic;  // inverse of the (low-passed) 2D covariance
    float depth;
    int radius_x, radius_y;  // 0 when culled
    float compensation;      // sqrt(det(cov) / det(cov + eps I)), Mip-Splatting's opacity factor
};

// Quaternion (w, x, y, z), any non-zero length, normalised as torch's F.normalize does.
SPLATKIT_HD Vec4 normalize_quat(Vec4 q) {
    float n = sqrtf(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w);
    float inv = 1.0f / fmaxf(n, 1e-12f);
    return {q.x * inv, q.y * inv, q.z * inv, q.w * inv};
}

// Stored as (w, x, y, z) in the Vec4 fields (x, y, z, w) respectively.
SPLATKIT_HD Mat3 rotmat_from_unit_quat(Vec4 q) {
    float w = q.x, x = q.y, y = q.z, z = q.w;
    Mat3 R = {{{1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)},
               {2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)},
               {2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)}}};
    return R;
}

// M = R diag(s); the covariance is M M^T.
SPLATKIT_HD Mat3 scaled_rotation(const Mat3& R, Vec3 s) {
    Mat3 M;
    for (int i = 0; i < 3; ++i) {
        M.m[i][0] = R.m[i][0] * s.x;
        M.m[i][1] = R.m[i][1] * s.y;
        M.m[i][2] = R.m[i][2] * s.z;
    }
    return M;
}

struct FovClamp {
    float u, v;         // clamped x/z and y/z at which the Jacobian is evaluated
    bool free_u, free_v;  // false where the clamp is active (no gradient flows through x/z there)
};

SPLATKIT_HD FovClamp clamp_to_fov(const PinholeCamera& cam, Vec3 pc) {
    float tan_x = 0.5f * cam.width / cam.fx, tan_y = 0.5f * cam.height / cam.fy;
    float lim_x_pos = (cam.width - cam.cx) / cam.fx + 0.3f * tan_x;
    float lim_x_neg = cam.cx / cam.fx + 0.3f * tan_x;
    float lim_y_pos = (cam.height - cam.cy) / cam.fy + 0.3f * tan_y;
    float lim_y_neg = cam.cy / cam.fy + 0.3f * tan_y;
    float u = pc.x / pc.z, v = pc.y / pc.z;
    FovClamp c;
    c.free_u = u >= -lim_x_neg && u <= lim_x_pos;
    c.free_v = v >= -lim_y_neg && v <= lim_y_pos;
    c.u = fminf(fmaxf(u, -lim_x_neg), lim_x_pos);
    c.v = fminf(fmaxf(v, -lim_y_neg), lim_y_pos);
    return c;
}

// 2D covariance J W Sigma W^T J^T (before the low-pass), from the camera-space covariance.
SPLATKIT_HD Sym2 project_covariance(const Mat3& cov_c, float j00, float j02, float j11, float j12) {
    // J = [[j00, 0, j02], [0, j11, j12]]; rows r0 = (j00, 0, j02), r1 = (0, j11, j12).
    float r0c[3], r1c[3];
    for (int k = 0; k < 3; ++k) {
        r0c[k] = j00 * cov_c.m[0][k] + j02 * cov_c.m[2][k];
        r1c[k] = j11 * cov_c.m[1][k] + j12 * cov_c.m[2][k];
    }
    Sym2 s;
    s.a = r0c[0] * j00 + r0c[2] * j02;
    s.b = r0c[1] * j11 + r0c[2] * j12;
    s.c = r1c[1] * j11 + r1c[2] * j12;
    return s;
}

SPLATKIT_HD bool project_gaussian(Vec3 mean, Vec4 quat, Vec3 scale, const PinholeCamera& cam, float eps2d, float near,
                                  float far, Projection& out) {
    out.radius_x = out.radius_y = 0;
    Vec3 pc = matvec(cam.R, mean) + cam.t;
    out.depth = pc.z;
    if (!(pc.z > near && pc.z < far)) return false;
    Mat3 M = scaled_rotation(rotmat_from_unit_quat(normalize_quat(quat)), scale);
    Mat3 RM = matmul(cam.R, M);
    Mat3 cov_c = matmul(RM, transpose(RM));
    FovClamp fc = clamp_to_fov(cam, pc);
    float j00 = cam.fx / pc.z, j11 = cam.fy / pc.z;
    float j02 = -cam.fx * fc.u / pc.z, j12 = -cam.fy * fc.v / pc.z;
    Sym2 cov2 = project_covariance(cov_c, j00, j02, j11, j12);
    float det_orig = cov2.a * cov2.c - cov2.b * cov2.b;
    float a = cov2.a + eps2d, c = cov2.c + eps2d, b = cov2.b;
    float det = a * c - b * b;
    if (!(det > 0.0f)) return false;
    float inv = 1.0f / det;
    out.conic = {c * inv, -b * inv, a * inv};
    out.compensation = sqrtf(fmaxf(det_orig * inv, 1e-12f));
    out.mean2d = {cam.fx * pc.x / pc.z + cam.cx, cam.fy * pc.y / pc.z + cam.cy};
    float rx = ceilf(kRadiusSigmas * sqrtf(fmaxf(a, 0.0f)));
    float ry = ceilf(kRadiusSigmas * sqrtf(fmaxf(c, 0.0f)));
    bool inside = out.mean2d.x + rx > 0 && out.mean2d.x - rx < cam.width && out.mean2d.y + ry > 0 &&
                  out.mean2d.y - ry < cam.height;
    if (!inside) return false;
    out.radius_x = (int)rx;
    out.radius_y = (int)ry;
    return true;
}

struct ProjectionGrad {
    Vec3 mean;
    Vec4 quat;  // w.r.t. the raw (unnormalised) quaternion, (w, x, y, z) in fields (x, y, z, w)
    Vec3 scale;
    Mat3 view_R;  // this Gaussian's share of dL/d(camera rotation) through its camera-space mean and covariance
    Vec3 view_t;  // and of dL/d(camera translation)
};

// Vector-Jacobian product of project_gaussian for a visible Gaussian: given dL/d(mean2d, conic, depth,
// compensation), return dL/d(mean, quat, scale) and the Gaussian's share of dL/d(R, t) of the camera.
// Recomputes the forward intermediates.
SPLATKIT_HD ProjectionGrad project_gaussian_vjp(Vec3 mean, Vec4 quat, Vec3 scale, const PinholeCamera& cam, float eps2d,
                                                Vec2 v_mean2d, Sym2 v_conic, float v_depth, float v_comp) {
    Vec3 pc = matvec(cam.R, mean) + cam.t;
    Vec4 qn = normalize_quat(quat);
    Mat3 R = rotmat_from_unit_quat(qn);
    Mat3 M = scaled_rotation(R, scale);
    Mat3 RM = matmul(cam.R, M);
    Mat3 cov_c = matmul(RM, transpose(RM));
    FovClamp fc = clamp_to_fov(cam, pc);
    float z = pc.z, iz = 1.0f / z, iz2 = iz * iz;
    float j00 = cam.fx * iz, j11 = cam.fy * iz;
    float j02 = -cam.fx * fc.u * iz, j12 = -cam.fy * fc.v * iz;
    Sym2 cov2 = project_covariance(cov_c, j00, j02, j11, j12);
    float a = cov2.a + eps2d, b = cov2.b, c = cov2.c + eps2d;
    float det = a * c - b * b, idet2 = 1.0f / (det * det);
    float det_orig = cov2.a * cov2.c - cov2.b * cov2.b;

    // conic = (c, -b, a) / det  ->  dL/d(a, b, c)
    float va = (-c * c * v_conic.a + b * c * v_conic.b - b * b * v_conic.c) * idet2;
    float vb = (2 * b * c * v_conic.a - (a * c + b * b) * v_conic.b + 2 * a * b * v_conic.c) * idet2;
    float vc = (-b * b * v_conic.a + a * b * v_conic.b - a * a * v_conic.c) * idet2;
    // compensation = sqrt(max(det_orig / det, 1e-12))
    float ratio = det_orig / det;
    if (ratio > 1e-12f && v_comp != 0.0f) {
        float dcomp = 0.5f / sqrtf(ratio) * v_comp;
        va += dcomp * ((c - eps2d) * det - det_orig * c) * idet2;
        vc += dcomp * ((a - eps2d) * det - det_orig * a) * idet2;
        vb += dcomp * (-2.0f * b * (det - det_orig)) * idet2;
    }
    // Symmetric gradient of the 2D covariance: G = [[va, vb/2], [vb/2, vc]].
    float g00 = va, g01 = 0.5f * vb, g11 = vc;
    // dL/dcov_c = J^T G J  (J is 2x3 with rows (j00, 0, j02), (0, j11, j12))
    float J[2][3] = {{j00, 0.0f, j02}, {0.0f, j11, j12}};
    float G[2][2] = {{g00, g01}, {g01, g11}};
    Mat3 v_cov_c;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            float s = 0;
            for (int k = 0; k < 2; ++k)
                for (int l = 0; l < 2; ++l) s += J[k][i] * G[k][l] * J[l][j];
            v_cov_c.m[i][j] = s;
        }
    // dL/dJ = 2 G J cov_c
    float v_J[2][3];
    for (int k = 0; k < 2; ++k)
        for (int j = 0; j < 3; ++j) {
            float s = 0;
            for (int l = 0; l < 2; ++l)
                for (int m = 0; m < 3; ++m) s += G[k][l] * J[l][m] * cov_c.m[m][j];
            v_J[k][j] = 2.0f * s;
        }
    // Camera-space position: means2d, depth and the Jacobian all depend on it.
    Vec3 v_pc;
    v_pc.x = v_mean2d.x * cam.fx * iz;
    v_pc.y = v_mean2d.y * cam.fy * iz;
    v_pc.z = -(v_mean2d.x * cam.fx * pc.x + v_mean2d.y * cam.fy * pc.y) * iz2 + v_depth;
    v_pc.z += -v_J[0][0] * cam.fx * iz2 - v_J[1][1] * cam.fy * iz2;
    // j02 = -fx u / z with u = x / z where unclamped (else a constant).
    v_pc.z += v_J[0][2] * cam.fx * fc.u * iz2 * (fc.free_u ? 2.0f : 1.0f);
    v_pc.z += v_J[1][2] * cam.fy * fc.v * iz2 * (fc.free_v ? 2.0f : 1.0f);
    if (fc.free_u) v_pc.x += -v_J[0][2] * cam.fx * iz2;
    if (fc.free_v) v_pc.y += -v_J[1][2] * cam.fy * iz2;

    ProjectionGrad out;
    out.mean = matvec_t(cam.R, v_pc);
    // pc = W mean + t -> dL/dW += v_pc mean^T, dL/dt = v_pc; cov_c = W Sigma W^T with dL/dcov_c symmetric ->
    // dL/dW += 2 dL/dcov_c W Sigma, and W Sigma = (W M) M^T.
    const Mat3 v_W = matmul(v_cov_c, matmul(RM, transpose(M)));
    const float pcv[3] = {v_pc.x, v_pc.y, v_pc.z}, mv[3] = {mean.x, mean.y, mean.z};
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) out.view_R.m[i][j] = pcv[i] * mv[j] + 2.0f * v_W.m[i][j];
    out.view_t = v_pc;
    // cov_c = W Sigma W^T -> dL/dSigma = W^T dL/dcov_c W; Sigma = M M^T -> dL/dM = 2 dL/dSigma M.
    Mat3 v_sigma = matmul(transpose(cam.R), matmul(v_cov_c, cam.R));
    Mat3 v_M = matmul(v_sigma, M);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) v_M.m[i][j] *= 2.0f;
    // M = R diag(s)
    out.scale = {v_M.m[0][0] * R.m[0][0] + v_M.m[1][0] * R.m[1][0] + v_M.m[2][0] * R.m[2][0],
                 v_M.m[0][1] * R.m[0][1] + v_M.m[1][1] * R.m[1][1] + v_M.m[2][1] * R.m[2][1],
                 v_M.m[0][2] * R.m[0][2] + v_M.m[1][2] * R.m[1][2] + v_M.m[2][2] * R.m[2][2]};
    float sc[3] = {scale.x, scale.y, scale.z};
    float Gr[3][3];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) Gr[i][j] = v_M.m[i][j] * sc[j];
    float w = qn.x, x = qn.y, y = qn.z, zq = qn.w;
    float vw = 2 * (-zq * Gr[0][1] + y * Gr[0][2] + zq * Gr[1][0] - x * Gr[1][2] - y * Gr[2][0] + x * Gr[2][1]);
    float vx = 2 * (y * Gr[0][1] + zq * Gr[0][2] + y * Gr[1][0] - 2 * x * Gr[1][1] - w * Gr[1][2] + zq * Gr[2][0] +
                    w * Gr[2][1] - 2 * x * Gr[2][2]);
    float vy = 2 * (-2 * y * Gr[0][0] + x * Gr[0][1] + w * Gr[0][2] + x * Gr[1][0] + zq * Gr[1][2] - w * Gr[2][0] +
                    zq * Gr[2][1] - 2 * y * Gr[2][2]);
    float vz = 2 * (-2 * zq * Gr[0][0] - w * Gr[0][1] + x * Gr[0][2] + w * Gr[1][0] - 2 * zq * Gr[1][1] +
                    y * Gr[1][2] + x * Gr[2][0] + y * Gr[2][1]);
    // Through the normalisation q / |q|: (g - qn (qn . g)) / |q|.
    float n = fmaxf(sqrtf(quat.x * quat.x + quat.y * quat.y + quat.z * quat.z + quat.w * quat.w), 1e-12f);
    float proj = w * vw + x * vx + y * vy + zq * vz;
    out.quat = {(vw - w * proj) / n, (vx - x * proj) / n, (vy - y * proj) / n, (vz - zq * proj) / n};
    return out;
}

}  // namespace splatkit
