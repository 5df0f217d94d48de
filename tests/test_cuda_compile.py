"""The CUDA build of the native rasterizer compiles with nvcc, and the shared math headers stay device-clean.

No GPU is needed (compile only); the tests skip when no CUDA toolkit is installed. One architecture (sm_80) keeps
the compile time down: the rasterizer takes about 20 s on 2 cores, the header check a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "cuda"
ARCH = "-arch=sm_80"
TIMEOUT_S = 600


def find_nvcc() -> str | None:
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc")
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("nvcc")


@pytest.fixture(scope="module")
def nvcc() -> str:
    path = find_nvcc()
    if path is None:
        pytest.skip("nvcc not found ($CUDA_HOME/bin/nvcc, /usr/local/cuda/bin/nvcc, PATH): no CUDA toolkit to compile with")
    return path


def compile_cu(nvcc: str, source: Path, out_dir: Path) -> float:
    """nvcc -c the source into out_dir; fails the test with nvcc's output on error. Returns the seconds taken."""
    obj = out_dir / (source.stem + ".o")
    cmd = [nvcc, "-c", "-std=c++17", ARCH, "-I", str(CUDA_DIR / "include"), str(source), "-o", str(obj)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    seconds = time.perf_counter() - start
    output = (proc.stdout + proc.stderr).strip()
    print(f"{' '.join(cmd)}\n  took {seconds:.1f} s\n{output}")
    assert proc.returncode == 0, f"nvcc failed ({proc.returncode}) on {source.name}:\n{output}"
    assert obj.is_file() and obj.stat().st_size > 0
    return seconds


def test_rasterizer_compiles(nvcc: str, tmp_path: Path) -> None:
    compile_cu(nvcc, CUDA_DIR / "gpu" / "rasterize_cuda.cu", tmp_path)


def test_loss_compiles(nvcc: str, tmp_path: Path) -> None:
    compile_cu(nvcc, CUDA_DIR / "gpu" / "loss_cuda.cu", tmp_path)


def test_adam_compiles(nvcc: str, tmp_path: Path) -> None:
    compile_cu(nvcc, CUDA_DIR / "gpu" / "adam_cuda.cu", tmp_path)


# Calls every SPLATKIT_HD function from a __global__ kernel, so nvcc compiles each one for the device.
HEADER_CHECK = r"""
#include "splatkit/adam.h"
#include "splatkit/api.h"
#include "splatkit/blend.h"
#include "splatkit/common.h"
#include "splatkit/loss.h"
#include "splatkit/projection.h"
#include "splatkit/sh.h"

using namespace splatkit;

__global__ void header_check(const float* in, float* out) {
    float acc = 0.0f;
    // common.h
    acc += exp_nonpositive(-in[0]);
    Vec3 u = {in[0], in[1], in[2]}, v = {in[3], in[4], in[5]};
    Vec3 w = (u + v) - in[6] * v;
    acc += dot(u, w);
    Mat3 A, B;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            A.m[i][j] = in[3 * i + j];
            B.m[i][j] = in[9 + 3 * i + j];
        }
    Mat3 C = matmul(A, transpose(B));
    acc += matvec(C, u).x + matvec_t(C, v).y;
    // api.h / projection.h
    float viewmat[16], K[9];
    for (int i = 0; i < 16; ++i) viewmat[i] = in[i];
    for (int i = 0; i < 9; ++i) K[i] = in[16 + i];
    PinholeCamera cam = make_camera(viewmat, K, 64, 48);
    Vec4 q = normalize_quat({in[0], in[1], in[2], in[3]});
    Mat3 R = rotmat_from_unit_quat(q);
    Mat3 M = scaled_rotation(R, v);
    FovClamp fc = clamp_to_fov(cam, u);
    Sym2 cov2 = project_covariance(M, in[1], in[2], in[3], in[4]);
    acc += fc.u + fc.v + cov2.a + cov2.b + cov2.c;
    Projection p;
    bool visible = project_gaussian(u, {in[0], in[1], in[2], in[3]}, v, cam, kEps2d, kNearPlane, kFarPlane, p);
    acc += visible ? p.mean2d.x + p.conic.a + p.depth + p.compensation + p.radius_x + p.radius_y : 0.0f;
    ProjectionGrad pg = project_gaussian_vjp(u, {in[0], in[1], in[2], in[3]}, v, cam, kEps2d, {in[5], in[6]},
                                             {in[7], in[8], in[9]}, in[10], in[11]);
    acc += pg.mean.x + pg.quat.w + pg.scale.z;
    // sh.h
    float basis[kMaxShBases], coeffs[3 * kMaxShBases], v_coeffs[3 * kMaxShBases];
    Vec3 grad[kMaxShBases];
    for (int k = 0; k < 3 * kMaxShBases; ++k) {
        coeffs[k] = in[k];
        v_coeffs[k] = 0.0f;
    }
    float norm;
    Vec3 d = normalize_dir(u, norm);
    sh_basis(3, d, basis, grad);
    acc += basis[15] + grad[15].x + norm;
    Vec3 color = sh_color(3, u, coeffs);
    Vec3 v_dir = sh_color_vjp(3, u, coeffs, color, v_coeffs);
    acc += color.x + v_dir.y + v_coeffs[47];
    // blend.h
    Sym2 conic = {in[0], in[1], in[2]};
    float power = gaussian_power(conic, in[3], in[4]);
    acc += pair_alpha(power, in[5]);
    Vec2 h = alpha_extent(conic, in[5], 3, 4);
    acc += h.x + h.y + kAlphaMin + kAlphaMax + kTransmittanceMin + kRadiusSigmas + kTileSize + kChannels;
    // adam.h
    float value = in[0], m = in[1], v2 = in[2];
    adam_update(value, in[3], m, v2, AdamStep{0.9f, 0.999f, 1e-15f, in[4], in[5]});
    acc += value + m + v2;
    // loss.h
    float partials[kSsimPartials];
    acc += ssim_window(in[0], in[1], in[2], in[3], in[4], partials[0], partials[1], partials[2]) + partials[2] +
           l1_grad(in[5], in[6]);
    out[threadIdx.x] = acc;
}
"""


def test_headers_are_device_clean(nvcc: str, tmp_path: Path) -> None:
    source = tmp_path / "header_check.cu"
    source.write_text(HEADER_CHECK)
    compile_cu(nvcc, source, tmp_path)
