// Per-Gaussian preprocessing (projection + SH colour) and its VJP for Gaussian g: the whole body of one CPU loop
// iteration or one CUDA thread, written once for both builds.
#pragma once

#include "api.h"
#include "sh.h"

namespace splatkit {

SPLATKIT_HD Vec3 load3(const float* p) { return {p[0], p[1], p[2]}; }
SPLATKIT_HD Vec4 load4(const float* p) { return {p[0], p[1], p[2], p[3]}; }

SPLATKIT_HD Vec3 camera_center(const PinholeCamera& cam) {  // -R^T t
    Vec3 c = matvec_t(cam.R, cam.t);
    return {-c.x, -c.y, -c.z};
}

// The coefficients Gaussian g evaluates, in one array. The model keeps the DC term and the rest apart; reading
// them here spares every render a full copy of all coefficients just to put them side by side.
SPLATKIT_HD void gather_sh(const PreprocessIn& in, int g, float* coeffs) {
    const int used = (in.degree + 1) * (in.degree + 1), rest = in.bases - 1;
    for (int c = 0; c < 3; ++c) coeffs[c] = in.sh0[3 * (size_t)g + c];
    const float* src = in.shN + (size_t)3 * rest * g;
    for (int i = 3; i < 3 * used; ++i) coeffs[i] = src[i - 3];
}

SPLATKIT_HD void preprocess_gaussian(const PreprocessIn& in, const PreprocessOut& out, Vec3 campos, int g) {
    Projection p;
    const Vec3 mean = load3(in.means + 3 * (size_t)g);
    const bool visible = project_gaussian(mean, load4(in.quats + 4 * (size_t)g), load3(in.scales + 3 * (size_t)g),
                                          in.cam, in.eps2d, in.near_plane, in.far_plane, p);
    out.depths[g] = p.depth;
    out.radii[2 * (size_t)g] = p.radius_x;
    out.radii[2 * (size_t)g + 1] = p.radius_y;
    Vec3 color = {0.0f, 0.0f, 0.0f};
    if (visible) {
        float coeffs[3 * kMaxShBases];
        gather_sh(in, g, coeffs);
        color = sh_color(in.degree, mean - campos, coeffs);
    } else {
        p.mean2d = {0.0f, 0.0f};
        p.conic = {0.0f, 0.0f, 0.0f};
        p.compensation = 0.0f;
    }
    out.means2d[2 * (size_t)g] = p.mean2d.x;
    out.means2d[2 * (size_t)g + 1] = p.mean2d.y;
    out.conics[3 * (size_t)g] = p.conic.a;
    out.conics[3 * (size_t)g + 1] = p.conic.b;
    out.conics[3 * (size_t)g + 2] = p.conic.c;
    out.compensation[g] = p.compensation;
    out.colors[3 * (size_t)g] = color.x;
    out.colors[3 * (size_t)g + 1] = color.y;
    out.colors[3 * (size_t)g + 2] = color.z;
}

// Writes every gradient of Gaussian g (zeros when it was culled), so no output needs clearing beforehand, and
// adds its share of the camera's gradient (PreprocessGradOut::camera's layout) to `camera`.
SPLATKIT_HD void preprocess_gaussian_vjp(const PreprocessIn& in, const PreprocessGradIn& gi,
                                         const PreprocessGradOut& out, Vec3 campos, int g, float* camera) {
    const int rest = in.bases - 1;
    float v_coeffs[3 * kMaxShBases] = {0.0f};
    ProjectionGrad pg = {};
    if (gi.radii[2 * (size_t)g] > 0 && gi.radii[2 * (size_t)g + 1] > 0) {
        const Vec3 mean = load3(in.means + 3 * (size_t)g);
        const Vec2 v_m2d = {gi.v_means2d[2 * (size_t)g], gi.v_means2d[2 * (size_t)g + 1]};
        const Sym2 v_con = {gi.v_conics[3 * (size_t)g], gi.v_conics[3 * (size_t)g + 1],
                            gi.v_conics[3 * (size_t)g + 2]};
        pg = project_gaussian_vjp(mean, load4(in.quats + 4 * (size_t)g), load3(in.scales + 3 * (size_t)g), in.cam,
                                  in.eps2d, v_m2d, v_con, gi.v_depths[g], gi.v_compensation[g]);
        float coeffs[3 * kMaxShBases];
        gather_sh(in, g, coeffs);
        const Vec3 v_dir = sh_color_vjp(in.degree, mean - campos, coeffs, load3(gi.v_colors + 3 * (size_t)g),
                                        v_coeffs);
        pg.mean = pg.mean + v_dir;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) camera[3 * i + j] += pg.view_R.m[i][j];
        const float rest_sums[6] = {pg.view_t.x, pg.view_t.y, pg.view_t.z, v_dir.x, v_dir.y, v_dir.z};
        for (int i = 0; i < 6; ++i) camera[9 + i] += rest_sums[i];
    }
    out.v_means[3 * (size_t)g] = pg.mean.x;
    out.v_means[3 * (size_t)g + 1] = pg.mean.y;
    out.v_means[3 * (size_t)g + 2] = pg.mean.z;
    out.v_quats[4 * (size_t)g] = pg.quat.x;
    out.v_quats[4 * (size_t)g + 1] = pg.quat.y;
    out.v_quats[4 * (size_t)g + 2] = pg.quat.z;
    out.v_quats[4 * (size_t)g + 3] = pg.quat.w;
    out.v_scales[3 * (size_t)g] = pg.scale.x;
    out.v_scales[3 * (size_t)g + 1] = pg.scale.y;
    out.v_scales[3 * (size_t)g + 2] = pg.scale.z;
    for (int c = 0; c < 3; ++c) out.v_sh0[3 * (size_t)g + c] = v_coeffs[c];
    float* v_rest = out.v_shN + (size_t)3 * rest * g;
    for (int i = 0; i < 3 * rest; ++i) v_rest[i] = v_coeffs[i + 3];  // bases <= kMaxShBases (checked by the binding)
}

}  // namespace splatkit
