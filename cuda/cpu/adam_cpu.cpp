// CPU build of the row-masked Adam step (include/splatkit/adam.h), parallel over rows with OpenMP; the values of a
// row are contiguous, so the inner loop vectorises.
#include <omp.h>

#include "splatkit/api.h"

namespace splatkit {
namespace cpu {

void adam_rows(const AdamIn& in) {
    const AdamStep s = in.step;
#pragma omp parallel for schedule(static)
    for (long long r = 0; r < in.rows; ++r) {
        if (in.mask != nullptr && !in.mask[r]) continue;
        const size_t base = (size_t)r * in.width;
        float *p = in.param + base, *m = in.exp_avg + base, *v = in.exp_avg_sq + base;
        const float* g = in.grad + base;
        for (int k = 0; k < in.width; ++k) adam_update(p[k], g[k], m[k], v[k], s);
    }
}

}  // namespace cpu
}  // namespace splatkit
