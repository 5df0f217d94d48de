// CUDA build of the Adam step (include/splatkit/adam.h): one launch per parameter, one thread per value.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "splatkit/api.h"

namespace splatkit {
namespace cuda {
namespace {

__global__ void adam_kernel(AdamIn in) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= in.rows * in.width) return;
    if (in.mask != nullptr && !in.mask[i / in.width]) return;
    adam_update(in.param[i], in.grad[i], in.exp_avg[i], in.exp_avg_sq[i], in.step);
}

}  // namespace

void adam(const AdamIn* params, int count) {
    for (int t = 0; t < count; ++t) {
        const long long values = params[t].rows * params[t].width;
        if (values == 0) continue;
        adam_kernel<<<(int)((values + 255) / 256), 256>>>(params[t]);
    }
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) throw std::runtime_error(std::string("splatkit CUDA error in adam: ") +
                                                     cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace splatkit
