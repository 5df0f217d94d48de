// CUDA build of the fused training loss (include/splatkit/loss.h): the same passes as cpu/loss_cpu.cpp, one
// thread per output value of each pass:
//   1. counts of kept pixels and of kept window centres;
//   2. horizontal blur of the five statistics (C x 5 planes of H x wv);
//   3. vertical blur, SSIM of each valid window (summed) and dLoss/d(statistics of x) (C x 3 planes of hv x wv);
//   4. back through the vertical blur (C x 3 planes of H x wv);
//   5. back through the horizontal blur, the chain rule to the render's pixels, plus the L1 term (summed).
// Sums (and counts) are per block in double, then one atomicAdd per block; the two means come back to the host
// (one copy). Scratch memory comes from the caller (torch's caching allocator), so no call allocates.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "splatkit/api.h"

#define SPLATKIT_LOSS_CHECK(expr)                                                                             \
    do {                                                                                                      \
        cudaError_t splatkit_err_ = (expr);                                                                   \
        if (splatkit_err_ != cudaSuccess)                                                                     \
            throw std::runtime_error(std::string("splatkit CUDA error in photometric_loss (" #expr "): ") +  \
                                     cudaGetErrorString(splatkit_err_));                                      \
    } while (0)

namespace splatkit {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct Weights {
    float g[kSsimMaxWindow];
};

struct Sums {  // device-side totals (counts in double: exact below 2^53)
    double kept, centred, l1, ssim, squared;
};
static_assert(sizeof(Sums) == kLossSumsFloats * sizeof(float), "the sums head the caller's scratch");

int blocks_for(long long count) { return (int)((count + kThreads - 1) / kThreads); }

__device__ bool kept_at(const uint8_t* keep, long long pixel) { return keep == nullptr || keep[pixel] != 0; }

// Adds this thread's value to *total: a block-wide sum in shared memory, then one atomicAdd.
__device__ void block_add(double value, double* total) {
    __shared__ double partial[kThreads];
    __syncthreads();  // a previous call's thread 0 may still be reading partial[0]
    partial[threadIdx.x] = value;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(total, partial[0]);
}

__global__ void count_kernel(int H, int W, int win, const uint8_t* keep, Sums* sums) {
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int r = (int)(p / W), c = (int)(p % W), half = win / 2;
    bool kept = p < (long long)H * W && kept_at(keep, p);
    bool centred = kept && r >= half && r < half + H - win + 1 && c >= half && c < half + W - win + 1;
    block_add(kept ? 1.0 : 0.0, &sums->kept);
    block_add(centred ? 1.0 : 0.0, &sums->centred);
}

__global__ void horizontal_kernel(LossIn in, Weights w, float* rows) {
    const int H = in.height, W = in.width, C = in.channels, wv = W - in.window + 1;
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // over C x H x wv
    if (index >= (long long)C * H * wv) return;
    int j = (int)(index % wv), r = (int)((index / wv) % H), c = (int)(index / ((long long)wv * H));
    float s[kSsimStats] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int k = 0; k < in.window; ++k) {
        long long p = ((long long)c * H + r) * W + j + k;  // channel planes
        float a = in.render[p], b = in.target[p], gk = w.g[k];
        s[0] += gk * a;
        s[1] += gk * b;
        s[2] += gk * a * a;
        s[3] += gk * b * b;
        s[4] += gk * a * b;
    }
    for (int t = 0; t < kSsimStats; ++t) rows[(((long long)c * kSsimStats + t) * H + r) * wv + j] = s[t];
}

__global__ void window_kernel(LossIn in, Weights w, const float* rows, const Sums* sums, float* partials,
                              double* ssim_total) {
    const int H = in.height, W = in.width, C = in.channels, win = in.window;
    const int hv = H - win + 1, wv = W - win + 1, half = win / 2;
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // over C x hv x wv
    double value = 0.0;
    if (index < (long long)C * hv * wv) {
        int j = (int)(index % wv), i = (int)((index / wv) % hv), c = (int)(index / ((long long)wv * hv));
        float s[kSsimStats];
        for (int t = 0; t < kSsimStats; ++t) {
            const float* plane = rows + ((long long)c * kSsimStats + t) * H * wv;
            float acc = 0.0f;
            for (int k = 0; k < win; ++k) acc += w.g[k] * plane[(long long)(i + k) * wv + j];
            s[t] = acc;
        }
        float d[kSsimPartials];
        float ssim = ssim_window(s[0], s[1], s[2], s[3], s[4], d[0], d[1], d[2]);
        float weight = kept_at(in.keep, (long long)(i + half) * W + j + half) ? 1.0f : 0.0f;
        float scale = -in.ssim_lambda / (float)fmax(sums->centred * C, 1.0) * weight;
        for (int t = 0; t < kSsimPartials; ++t)
            partials[(((long long)c * kSsimPartials + t) * hv + i) * wv + j] = scale * d[t];
        value = (double)(ssim * weight);
    }
    block_add(value, ssim_total);
}

__global__ void back_vertical_kernel(LossIn in, Weights w, const float* partials, float* columns) {
    const int H = in.height, W = in.width, C = in.channels, win = in.window;
    const int hv = H - win + 1, wv = W - win + 1;
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // over C x 3 x H x wv
    if (index >= (long long)C * kSsimPartials * H * wv) return;
    int j = (int)(index % wv), r = (int)((index / wv) % H);
    long long ct = index / ((long long)wv * H);  // c * 3 + t
    const float* plane = partials + ct * hv * wv;
    float acc = 0.0f;
    for (int k = max(0, r - hv + 1); k <= min(win - 1, r); ++k) acc += w.g[k] * plane[(long long)(r - k) * wv + j];
    columns[index] = acc;
}

__global__ void pixel_kernel(LossIn in, Weights w, const float* columns, Sums* sums, float* grad) {
    const int H = in.height, W = in.width, C = in.channels, win = in.window, wv = W - win + 1;
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // over C x H x W, the planes' layout
    double value = 0.0, squared = 0.0;
    if (index < (long long)H * W * C) {
        int c = (int)(index / ((long long)H * W));
        long long pixel = index % ((long long)H * W);
        int x = (int)(pixel % W), r = (int)(pixel / W);
        float back[kSsimPartials];
        for (int t = 0; t < kSsimPartials; ++t) {
            const float* row = columns + (((long long)c * kSsimPartials + t) * H + r) * wv;
            float acc = 0.0f;
            for (int k = max(0, x - wv + 1); k <= min(win - 1, x); ++k) acc += w.g[k] * row[x - k];
            back[t] = acc;
        }
        float a = in.render[index], b = in.target[index];
        float weight = kept_at(in.keep, pixel) ? 1.0f : 0.0f;
        float l1_scale = (1.0f - in.ssim_lambda) / (float)fmax(sums->kept * C, 1.0);
        grad[index] = weight * (back[0] + 2.0f * a * back[1] + b * back[2] + l1_scale * l1_grad(a, b));
        value = (double)(weight * fabsf(a - b));
        squared = (double)(weight * clamped_squared_error(a, b));
    }
    block_add(value, &sums->l1);
    block_add(squared, &sums->squared);
}

}  // namespace

void photometric_loss(const LossIn& in, LossOut& out) {
    const int H = in.height, W = in.width, C = in.channels, win = in.window;
    const long long hv = H - win + 1, wv = W - win + 1;
    Weights w;
    for (int k = 0; k < kSsimMaxWindow; ++k) w.g[k] = k < win ? in.weights[k] : 0.0f;
    // The caller's scratch (torch's caching allocator): the sums, then the three buffers of the passes.
    Sums* sums = reinterpret_cast<Sums*>(in.device_scratch);
    float* rows = in.device_scratch + kLossSumsFloats;
    float* partials = rows + (size_t)C * kSsimStats * H * wv;
    float* columns = partials + (size_t)C * kSsimPartials * hv * wv;
    SPLATKIT_LOSS_CHECK(cudaMemset(sums, 0, sizeof(Sums)));
    count_kernel<<<blocks_for((long long)H * W), kThreads>>>(H, W, win, in.keep, sums);
    horizontal_kernel<<<blocks_for((long long)C * H * wv), kThreads>>>(in, w, rows);
    window_kernel<<<blocks_for((long long)C * hv * wv), kThreads>>>(in, w, rows, sums, partials, &sums->ssim);
    back_vertical_kernel<<<blocks_for((long long)C * kSsimPartials * H * wv), kThreads>>>(in, w, partials, columns);
    pixel_kernel<<<blocks_for((long long)H * W * C), kThreads>>>(in, w, columns, sums, out.grad);
    SPLATKIT_LOSS_CHECK(cudaGetLastError());
    Sums host;
    SPLATKIT_LOSS_CHECK(cudaMemcpy(&host, sums, sizeof(Sums), cudaMemcpyDeviceToHost));
    out.l1 = host.l1 / fmax(host.kept * C, 1.0);
    out.ssim = host.ssim / fmax(host.centred * C, 1.0);
    out.mse = host.squared / fmax(host.kept * C, 1.0);
}

}  // namespace cuda
}  // namespace splatkit
