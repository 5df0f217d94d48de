// CPU build of the Adam step (include/splatkit/adam.h) over several parameters, with OpenMP: every thread takes its
// share of each parameter in turn, in one parallel region. Without a mask a parameter is one flat vectorised loop;
// with one, rows are the unit (a row's values are contiguous, so the inner loop vectorises).
#include <omp.h>

#include "splatkit/api.h"

namespace splatkit {
namespace cpu {

void adam(const AdamIn* params, int count) {
#pragma omp parallel
    for (int t = 0; t < count; ++t) {
        const AdamIn& in = params[t];
        const AdamStep s = in.step;
        float *p = in.param, *m = in.exp_avg, *v = in.exp_avg_sq;
        const float* g = in.grad;
        if (in.mask == nullptr) {
            const long long n = in.rows * in.width;
#pragma omp for simd schedule(static) nowait
            for (long long i = 0; i < n; ++i) adam_update(p[i], g[i], m[i], v[i], s);
        } else {
#pragma omp for schedule(static) nowait
            for (long long r = 0; r < in.rows; ++r) {
                if (!in.mask[r]) continue;
                const size_t base = (size_t)r * in.width;
                for (int k = 0; k < in.width; ++k) adam_update(p[base + k], g[base + k], m[base + k], v[base + k], s);
            }
        }
    }
}

}  // namespace cpu
}  // namespace splatkit
