// CUDA build of the row-masked Adam step (include/splatkit/adam.h): one thread per value.
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

void adam_rows(const AdamIn& in) {
    const long long count = in.rows * in.width;
    if (count == 0) return;
    adam_kernel<<<(int)((count + 255) / 256), 256>>>(in);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) throw std::runtime_error(std::string("splatkit CUDA error in adam_rows: ") +
                                                     cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace splatkit
