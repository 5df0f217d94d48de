// One Adam step (Kingma & Ba 2015, as torch.optim.Adam computes it) of one value: shared by the CPU and CUDA
// builds of the row-masked optimiser step (cpu/adam_cpu.cpp, gpu/adam_cuda.cu), which updates only the rows of
// visible Gaussians (gsplat's SelectiveAdam, Taming 3DGS's sparse Adam): other rows keep their values and moments.
#pragma once

#include "common.h"

namespace splatkit {

struct AdamStep {
    float beta1, beta2, eps;
    float step_size;    // lr / (1 - beta1^t)
    float bias2_sqrt;   // sqrt(1 - beta2^t)
};

SPLATKIT_HD void adam_update(float& param, float grad, float& exp_avg, float& exp_avg_sq, const AdamStep& s) {
    exp_avg += (1.0f - s.beta1) * (grad - exp_avg);  // torch's lerp form of beta1 m + (1 - beta1) g
    exp_avg_sq = s.beta2 * exp_avg_sq + (1.0f - s.beta2) * grad * grad;
    param -= s.step_size * exp_avg / (sqrtf(exp_avg_sq) / s.bias2_sqrt + s.eps);
}

}  // namespace splatkit
