// Entry points of the rasterizer on raw pointers (no torch types), implemented once for the CPU
// (cpu/rasterize_cpu.cpp) and once for CUDA (gpu/rasterize_cuda.cu). The torch binding dispatches by device.
// All arrays are contiguous float32/int32, row-major; N Gaussians, an image of H x W pixels.
#pragma once

#include <cstdint>
#include <vector>

#include "adam.h"
#include "loss.h"
#include "projection.h"

namespace splatkit {

constexpr int kChannels = 4;  // blended per-Gaussian features: R, G, B and depth

struct PreprocessIn {
    int n;
    const float* means;   // N x 3
    const float* quats;   // N x 4, wxyz
    const float* scales;  // N x 3, activated
    const float* sh0;     // N x 3, the DC coefficient
    const float* shN;     // N x (bases - 1) x 3, the rest
    int bases;            // coefficients stored per Gaussian (at most kMaxShBases)
    int degree;           // degree to evaluate (bases >= (degree+1)^2)
    PinholeCamera cam;
    float eps2d, near_plane, far_plane;
};

struct PreprocessOut {
    float* means2d;       // N x 2
    float* conics;        // N x 3
    float* depths;        // N
    int32_t* radii;       // N x 2
    float* compensation;  // N
    float* colors;        // N x 3
};

struct PreprocessGradIn {
    const int32_t* radii;
    const float* v_means2d;
    const float* v_conics;
    const float* v_depths;
    const float* v_compensation;
    const float* v_colors;
};

struct PreprocessGradOut {
    float* v_means;   // N x 3
    float* v_quats;   // N x 4
    float* v_scales;  // N x 3
    float* v_sh0;     // N x 3
    float* v_shN;     // N x (bases - 1) x 3
    // kCameraSums sums over the Gaussians, or nullptr when the camera's gradient is not wanted: dL/dR (3 x 3,
    // row-major) and dL/dt through the camera-space means and covariances, then dL/d(view direction), which
    // reaches R and t through the camera centre -R^T t (the caller adds t d^T to dL/dR and R d to dL/dt).
    float* camera;
};

constexpr int kCameraSums = 15;

struct BlendIn {
    int n, width, height;
    const float* means2d;    // N x 2
    const float* conics;     // N x 3
    const float* opacities;  // N, activated (times the compensation when antialiased)
    const float* features;   // N x kChannels
    const int32_t* tile_offsets;  // tiles + 1: Gaussians of tile t are ids[offsets[t] .. offsets[t+1]), near first
    const int32_t* ids;
};

struct BlendOut {
    float* image;         // H x W x kChannels, without background
    float* alpha;         // H x W
    float* final_T;       // H x W, transmittance after the last blended Gaussian
    int32_t* last;        // H x W, 1 + position (within its tile list) of the last blended Gaussian
    float* weight_sums;   // N, sum over pixels of alpha * T
};

struct BlendGradIn {
    const float* final_T;
    const int32_t* last;
    const float* v_image;  // H x W x kChannels
    const float* v_alpha;  // H x W
};

struct BlendGradOut {
    float* v_means2d;   // N x 2
    float* v_conics;    // N x 3
    float* v_opacities; // N
    float* v_features;  // N x kChannels
    float* absgrad;     // N x 2, sum over pixels of |per-pixel dL/dmeans2d|
};

// The training loss of one view and its gradient (see loss.h), fused: the SSIM statistics are computed once and the
// gradient is written in the same call, since training always runs backward through the loss.
struct LossIn {
    int height, width, channels;
    const float* render;   // C x H x W (channel planes), in [0, 1]
    const float* target;   // C x H x W
    const uint8_t* keep;   // H x W, 1 where the pixel counts; nullptr: all count
    int window;            // SSIM window side, <= kSsimMaxWindow, <= H and <= W
    float weights[kSsimMaxWindow];  // its 1D weights (ssim_weights)
    float ssim_lambda;
    float* device_scratch;  // CUDA build: loss_scratch_floats() floats of device memory (the CPU build keeps its own)
};

constexpr int kLossSumsFloats = 10;  // the CUDA build's five double totals, at the head of its scratch

// Device memory the CUDA loss needs, in floats: its totals, the row statistics, the window partials and the
// partials blurred back through the vertical pass.
inline long long loss_scratch_floats(int height, int width, int channels, int window) {
    const long long hv = height - window + 1, wv = width - window + 1;
    return kLossSumsFloats +
           (long long)channels * wv * (kSsimStats * height + kSsimPartials * hv + kSsimPartials * height);
}

struct LossOut {
    float* grad;  // C x H x W, dLoss/drender (zero at pixels not kept)
    double l1;    // mean |render - target| over the kept values
    double ssim;  // mean SSIM over the windows centred on kept pixels, all channels
    double mse;   // mean clamped_squared_error over the kept values (for PSNR)
};

// One Adam step of the rows of a parameter (rows x width values, contiguous) whose mask is set; all rows without a
// mask. Gradient, moments and parameter share the layout; the moments are updated in place with the parameter.
// `adam` steps `count` parameters in one call (one parallel region on the CPU): a training step's Python overhead
// for six optimisers was larger than their arithmetic.
struct AdamIn {
    long long rows;
    int width;
    float* param;
    const float* grad;
    float* exp_avg;
    float* exp_avg_sq;
    const uint8_t* mask;  // rows, or nullptr
    AdamStep step;
};

SPLATKIT_HD PinholeCamera make_camera(const float* viewmat, const float* K, int width, int height) {
    PinholeCamera cam;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) cam.R.m[i][j] = viewmat[4 * i + j];
    cam.t = {viewmat[3], viewmat[7], viewmat[11]};
    cam.fx = K[0];
    cam.fy = K[4];
    cam.cx = K[2];
    cam.cy = K[5];
    cam.width = width;
    cam.height = height;
    return cam;
}

namespace cpu {
void preprocess_forward(const PreprocessIn& in, const PreprocessOut& out);
void preprocess_backward(const PreprocessIn& in, const PreprocessGradIn& grad_in, const PreprocessGradOut& out);
// Sorts visible Gaussians into 16x16 tiles, nearest first; fills offsets (tiles + 1) and ids.
void bin_tiles(int n, int width, int height, const float* means2d, const float* conics, const float* opacities,
               const float* depths, const int32_t* radii, std::vector<int32_t>& offsets, std::vector<int32_t>& ids);
void blend_forward(const BlendIn& in, const BlendOut& out);
void blend_backward(const BlendIn& in, const BlendGradIn& grad_in, const BlendGradOut& out);
void photometric_loss(const LossIn& in, LossOut& out);
void adam(const AdamIn* params, int count);
}  // namespace cpu

// The CUDA build: same entry points on device pointers (camera parameters stay on the host, passed by value).
namespace cuda {
// Binning learns the number of (tile, Gaussian) pairs on the device; the caller allocates the id buffer for it.
struct IdsAllocator {
    void* ctx;
    int32_t* (*alloc)(void* ctx, int64_t count);
};
void preprocess_forward(const PreprocessIn& in, const PreprocessOut& out);
void preprocess_backward(const PreprocessIn& in, const PreprocessGradIn& grad_in, const PreprocessGradOut& out);
void bin_tiles(int n, int width, int height, const float* means2d, const float* conics, const float* opacities,
               const float* depths, const int32_t* radii, int32_t* offsets, IdsAllocator ids);
void blend_forward(const BlendIn& in, const BlendOut& out);
void blend_backward(const BlendIn& in, const BlendGradIn& grad_in, const BlendGradOut& out);
void photometric_loss(const LossIn& in, LossOut& out);  // render, target, keep, grad on the device
void adam(const AdamIn* params, int count);
}  // namespace cuda

}  // namespace splatkit
