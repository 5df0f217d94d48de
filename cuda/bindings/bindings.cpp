// Torch binding of the splatkit rasterizer: checks inputs, allocates outputs, dispatches to the CPU or CUDA build.
// The math lives in include/splatkit/*.h; this file only moves tensors around.
#include <torch/extension.h>

#include "splatkit/api.h"

namespace {

using torch::Tensor;

void check(const Tensor& t, const char* name, c10::ScalarType type = torch::kFloat32) {
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(t.scalar_type() == type, name, " must be ", c10::toString(type), ", got ", t.scalar_type());
}

#ifdef SPLATKIT_WITH_CUDA
constexpr bool kHaveCuda = true;
#else
constexpr bool kHaveCuda = false;
#endif

bool use_cuda(const Tensor& t) {
    TORCH_CHECK(!t.is_cuda() || kHaveCuda, "splatkit's native extension was built without CUDA");
    return t.is_cuda();
}

splatkit::PreprocessIn preprocess_in(const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& sh0,
                                     const Tensor& shN, const Tensor& viewmat, const Tensor& K, int64_t width, int64_t height,
                                     int64_t degree, double eps2d, double near_plane, double far_plane) {
    check(means, "means");
    check(quats, "quats");
    check(scales, "scales");
    check(sh0, "sh0");
    check(shN, "shN");
    const int64_t bases = shN.size(1) + 1;
    TORCH_CHECK(sh0.dim() == 3 && sh0.size(1) == 1 && sh0.size(2) == 3, "sh0 must be N x 1 x 3");
    TORCH_CHECK(shN.dim() == 3 && shN.size(2) == 3 && bases <= splatkit::kMaxShBases &&
                    (degree + 1) * (degree + 1) <= bases, "bad shN shape for the SH degree");
    Tensor vm = viewmat.to(torch::kCPU, torch::kFloat32).contiguous(), k = K.to(torch::kCPU, torch::kFloat32).contiguous();
    splatkit::PreprocessIn in;
    in.n = (int)means.size(0);
    in.means = means.data_ptr<float>();
    in.quats = quats.data_ptr<float>();
    in.scales = scales.data_ptr<float>();
    in.sh0 = sh0.data_ptr<float>();
    in.shN = shN.data_ptr<float>();
    in.bases = (int)bases;
    in.degree = (int)degree;
    in.cam = splatkit::make_camera(vm.data_ptr<float>(), k.data_ptr<float>(), (int)width, (int)height);
    in.eps2d = (float)eps2d;
    in.near_plane = (float)near_plane;
    in.far_plane = (float)far_plane;
    return in;
}

std::vector<Tensor> preprocess_forward(Tensor means, Tensor quats, Tensor scales, Tensor sh0, Tensor shN,
                                       Tensor viewmat, Tensor K, int64_t width, int64_t height, int64_t degree, double eps2d, double near_plane,
                                       double far_plane) {
    auto in = preprocess_in(means, quats, scales, sh0, shN, viewmat, K, width, height, degree, eps2d, near_plane,
                            far_plane);
    auto f = means.options();
    int64_t n = in.n;
    Tensor means2d = torch::empty({n, 2}, f), conics = torch::empty({n, 3}, f), depths = torch::empty({n}, f);
    Tensor radii = torch::empty({n, 2}, f.dtype(torch::kInt32)), comp = torch::empty({n}, f);
    Tensor colors = torch::empty({n, 3}, f);
    splatkit::PreprocessOut out{means2d.data_ptr<float>(), conics.data_ptr<float>(), depths.data_ptr<float>(),
                                radii.data_ptr<int32_t>(), comp.data_ptr<float>(), colors.data_ptr<float>()};
#ifdef SPLATKIT_WITH_CUDA
    if (use_cuda(means)) splatkit::cuda::preprocess_forward(in, out); else
#endif
    { use_cuda(means); splatkit::cpu::preprocess_forward(in, out); }
    return {means2d, conics, depths, radii, comp, colors};
}

std::vector<Tensor> preprocess_backward(Tensor means, Tensor quats, Tensor scales, Tensor sh0, Tensor shN,
                                        Tensor viewmat, Tensor K, int64_t width, int64_t height, int64_t degree, double eps2d, Tensor radii,
                                        Tensor v_means2d, Tensor v_conics, Tensor v_depths, Tensor v_comp,
                                        Tensor v_colors, bool camera_grad) {
    auto in = preprocess_in(means, quats, scales, sh0, shN, viewmat, K, width, height, degree, eps2d, 0.0, 0.0);
    check(radii, "radii", torch::kInt32);
    for (auto* t : {&v_means2d, &v_conics, &v_depths, &v_comp, &v_colors}) check(*t, "gradient");
    Tensor v_means = torch::empty_like(means), v_quats = torch::empty_like(quats);
    Tensor v_scales = torch::empty_like(scales), v_sh0 = torch::empty_like(sh0), v_shN = torch::empty_like(shN);
    splatkit::PreprocessGradIn gi{radii.data_ptr<int32_t>(), v_means2d.data_ptr<float>(), v_conics.data_ptr<float>(),
                                  v_depths.data_ptr<float>(), v_comp.data_ptr<float>(), v_colors.data_ptr<float>()};
    Tensor camera = torch::zeros({camera_grad ? splatkit::kCameraSums : 0}, means.options());
    splatkit::PreprocessGradOut out{v_means.data_ptr<float>(), v_quats.data_ptr<float>(), v_scales.data_ptr<float>(),
                                    v_sh0.data_ptr<float>(), v_shN.data_ptr<float>(),
                                    camera_grad ? camera.data_ptr<float>() : nullptr};
#ifdef SPLATKIT_WITH_CUDA
    if (use_cuda(means)) splatkit::cuda::preprocess_backward(in, gi, out); else
#endif
    { use_cuda(means); splatkit::cpu::preprocess_backward(in, gi, out); }
    return {v_means, v_quats, v_scales, v_sh0, v_shN, camera};
}

#ifdef SPLATKIT_WITH_CUDA
int32_t* allocate_ids(void* ctx, int64_t count) {
    auto* holder = static_cast<Tensor*>(ctx);
    *holder = torch::empty({count}, holder->options());
    return holder->data_ptr<int32_t>();
}
#endif

// Returns (image H x W x 4, alpha, final_T, last, weight_sums, tile_offsets, ids).
std::vector<Tensor> blend_forward(Tensor means2d, Tensor conics, Tensor opacities, Tensor features, Tensor depths,
                                  Tensor radii, int64_t width, int64_t height) {
    check(means2d, "means2d");
    check(conics, "conics");
    check(opacities, "opacities");
    check(features, "features");
    check(depths, "depths");
    check(radii, "radii", torch::kInt32);
    TORCH_CHECK(features.dim() == 2 && features.size(1) == splatkit::kChannels, "features must be N x 4");
    const int n = (int)means2d.size(0), w = (int)width, h = (int)height;
    const int64_t tiles = (int64_t)((w + splatkit::kTileSize - 1) / splatkit::kTileSize) *
                          ((h + splatkit::kTileSize - 1) / splatkit::kTileSize);
    auto f = means2d.options();
    auto i32 = f.dtype(torch::kInt32);
    Tensor offsets, ids;
    if (use_cuda(means2d)) {
#ifdef SPLATKIT_WITH_CUDA
        offsets = torch::empty({tiles + 1}, i32);
        ids = torch::empty({0}, i32);
        splatkit::cuda::bin_tiles(n, w, h, means2d.data_ptr<float>(), conics.data_ptr<float>(),
                                  opacities.data_ptr<float>(), depths.data_ptr<float>(), radii.data_ptr<int32_t>(),
                                  offsets.data_ptr<int32_t>(), {&ids, allocate_ids});
#endif
    } else {
        std::vector<int32_t> off, id;
        splatkit::cpu::bin_tiles(n, w, h, means2d.data_ptr<float>(), conics.data_ptr<float>(),
                                 opacities.data_ptr<float>(), depths.data_ptr<float>(), radii.data_ptr<int32_t>(), off,
                                 id);
        offsets = torch::from_blob(off.data(), {(int64_t)off.size()}, i32).clone();
        ids = torch::from_blob(id.data(), {(int64_t)id.size()}, i32).clone();
    }
    Tensor image = torch::empty({height, width, splatkit::kChannels}, f), alpha = torch::empty({height, width}, f);
    Tensor final_T = torch::empty({height, width}, f), last = torch::empty({height, width}, i32);
    Tensor weight_sums = torch::zeros({n}, f);
    splatkit::BlendIn in{n, w, h, means2d.data_ptr<float>(), conics.data_ptr<float>(), opacities.data_ptr<float>(),
                         features.data_ptr<float>(), offsets.data_ptr<int32_t>(), ids.data_ptr<int32_t>()};
    splatkit::BlendOut out{image.data_ptr<float>(), alpha.data_ptr<float>(), final_T.data_ptr<float>(),
                           last.data_ptr<int32_t>(), weight_sums.data_ptr<float>()};
#ifdef SPLATKIT_WITH_CUDA
    if (means2d.is_cuda()) splatkit::cuda::blend_forward(in, out); else
#endif
    splatkit::cpu::blend_forward(in, out);
    return {image, alpha, final_T, last, weight_sums, offsets, ids};
}

// Returns (v_means2d, v_conics, v_opacities, v_features, absgrad).
std::vector<Tensor> blend_backward(Tensor means2d, Tensor conics, Tensor opacities, Tensor features,
                                   Tensor tile_offsets, Tensor ids, Tensor final_T, Tensor last, Tensor v_image,
                                   Tensor v_alpha, int64_t width, int64_t height) {
    check(v_image, "v_image");
    check(v_alpha, "v_alpha");
    const int n = (int)means2d.size(0);
    splatkit::BlendIn in{n, (int)width, (int)height, means2d.data_ptr<float>(), conics.data_ptr<float>(),
                         opacities.data_ptr<float>(), features.data_ptr<float>(), tile_offsets.data_ptr<int32_t>(),
                         ids.data_ptr<int32_t>()};
    splatkit::BlendGradIn gi{final_T.data_ptr<float>(), last.data_ptr<int32_t>(), v_image.data_ptr<float>(),
                             v_alpha.data_ptr<float>()};
    Tensor v_means2d = torch::zeros_like(means2d), v_conics = torch::zeros_like(conics);
    Tensor v_opacities = torch::zeros_like(opacities), v_features = torch::zeros_like(features);
    Tensor absgrad = torch::zeros_like(means2d);
    splatkit::BlendGradOut out{v_means2d.data_ptr<float>(), v_conics.data_ptr<float>(), v_opacities.data_ptr<float>(),
                               v_features.data_ptr<float>(), absgrad.data_ptr<float>()};
#ifdef SPLATKIT_WITH_CUDA
    if (means2d.is_cuda()) splatkit::cuda::blend_backward(in, gi, out); else
#endif
    splatkit::cpu::blend_backward(in, gi, out);
    return {v_means2d, v_conics, v_opacities, v_features, absgrad};
}

// Returns (loss, l1, ssim, mse) as a float64 tensor of 4 on the CPU, and dLoss/drender (H x W x C, a view of planes).
std::vector<Tensor> photometric_loss(Tensor render, Tensor target, c10::optional<Tensor> keep, double ssim_lambda,
                                     int64_t window, double sigma) {
    check(render, "render");
    check(target, "target");
    TORCH_CHECK(render.dim() == 3 && render.sizes() == target.sizes(), "render and target must be H x W x C alike");
    TORCH_CHECK(render.device() == target.device(), "render and target must be on one device");
    const int64_t h = render.size(0), w = render.size(1);
    TORCH_CHECK(window >= 1 && window <= splatkit::kSsimMaxWindow && window <= h && window <= w,
                "the SSIM window must fit the image and be at most ", splatkit::kSsimMaxWindow);
    // The kernels read channel planes (C x H x W): each pass then runs along contiguous rows.
    Tensor x = render.permute({2, 0, 1}).contiguous(), y = target.permute({2, 0, 1}).contiguous();
    splatkit::LossIn in{(int)h, (int)w, (int)render.size(2), x.data_ptr<float>(), y.data_ptr<float>(), nullptr,
                        (int)window, {}, (float)ssim_lambda, nullptr};
    Tensor scratch;
    if (render.is_cuda()) {
        scratch = torch::empty({splatkit::loss_scratch_floats((int)h, (int)w, (int)render.size(2), (int)window)},
                               render.options());
        in.device_scratch = scratch.data_ptr<float>();
    }
    splatkit::ssim_weights((int)window, (float)sigma, in.weights);
    Tensor keep_bytes;
    if (keep.has_value()) {
        keep_bytes = keep->ne(0).to(torch::kUInt8).contiguous();  // 0/1 whatever the mask's dtype
        TORCH_CHECK(keep_bytes.numel() == h * w && keep_bytes.device() == render.device(), "keep must be H x W");
        in.keep = keep_bytes.data_ptr<uint8_t>();
    }
    Tensor grad = torch::empty_like(x);
    splatkit::LossOut out{grad.data_ptr<float>(), 0.0, 0.0, 0.0};
#ifdef SPLATKIT_WITH_CUDA
    if (use_cuda(render)) splatkit::cuda::photometric_loss(in, out); else
#endif
    { use_cuda(render); splatkit::cpu::photometric_loss(in, out); }
    Tensor values = torch::tensor(
        {(1.0 - ssim_lambda) * out.l1 + ssim_lambda * (1.0 - out.ssim), out.l1, out.ssim, out.mse}, torch::kFloat64);
    return {values, grad.permute({1, 2, 0})};
}

// One Adam step of each parameter in `params`, in place (parameter, moments, and its step count: a float32 scalar,
// as torch's fused Adam keeps it). Parameters whose `masked` entry is set step only the rows where `mask` (uint8 or
// bool, one entry per row) is; the others step every value.
void adam_step(std::vector<Tensor> params, std::vector<Tensor> grads, std::vector<Tensor> exp_avgs,
               std::vector<Tensor> exp_avg_sqs, std::vector<Tensor> steps, std::vector<double> lrs,
               c10::optional<Tensor> mask, std::vector<bool> masked, double beta1, double beta2, double eps) {
    const size_t count = params.size();
    TORCH_CHECK(grads.size() == count && exp_avgs.size() == count && exp_avg_sqs.size() == count &&
                    steps.size() == count && lrs.size() == count && masked.size() == count,
                "adam: one gradient, two moments, a step count, a rate and a mask flag per parameter");
    Tensor mask_bytes;
    if (mask.has_value()) mask_bytes = mask->to(torch::kUInt8).contiguous();
    std::vector<splatkit::AdamIn> ins;
    for (size_t i = 0; i < count; ++i) {
        const Tensor& param = params[i];
        for (const Tensor* t : {&params[i], &grads[i], &exp_avgs[i], &exp_avg_sqs[i]}) check(*t, "adam tensor");
        TORCH_CHECK(grads[i].sizes() == param.sizes() && exp_avgs[i].sizes() == param.sizes() &&
                        exp_avg_sqs[i].sizes() == param.sizes(),
                    "adam: gradient and moments must be shaped as the parameter");
        TORCH_CHECK(param.dim() >= 1 && steps[i].numel() == 1 && steps[i].scalar_type() == torch::kFloat32,
                    "adam: a parameter with rows, and a float32 step count");
        const long long rows = param.size(0);
        const uint8_t* mask_ptr = nullptr;
        if (masked[i]) {
            TORCH_CHECK(mask_bytes.defined() && mask_bytes.numel() == rows && mask_bytes.device() == param.device(),
                        "adam: one mask entry per row");
            mask_ptr = mask_bytes.data_ptr<uint8_t>();
        }
        double step;
        if (steps[i].is_cuda()) {
            steps[i].add_(1);
            step = steps[i].item<double>();
        } else {
            float* count_ptr = steps[i].data_ptr<float>();
            step = *count_ptr += 1.0f;
        }
        const double bias1 = 1.0 - std::pow(beta1, step), bias2 = 1.0 - std::pow(beta2, step);
        ins.push_back({rows, rows > 0 ? (int)(param.numel() / rows) : 0, param.data_ptr<float>(),
                       grads[i].data_ptr<float>(), exp_avgs[i].data_ptr<float>(), exp_avg_sqs[i].data_ptr<float>(),
                       mask_ptr, {(float)beta1, (float)beta2, (float)eps, (float)(lrs[i] / bias1), (float)std::sqrt(bias2)}});
    }
    if (count == 0) return;
#ifdef SPLATKIT_WITH_CUDA
    if (use_cuda(params[0])) splatkit::cuda::adam(ins.data(), (int)count); else
#endif
    { use_cuda(params[0]); splatkit::cpu::adam(ins.data(), (int)count); }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "splatkit native rasterizer (CPU/OpenMP, optionally CUDA)";
    // The kernels run without the GIL, so a viewer thread rendering beside training (or any other Python
    // thread) is not frozen for the length of every kernel call.
    using release_gil = py::call_guard<py::gil_scoped_release>;
    m.def("preprocess_forward", &preprocess_forward, release_gil());
    m.def("preprocess_backward", &preprocess_backward, release_gil());
    m.def("blend_forward", &blend_forward, release_gil());
    m.def("blend_backward", &blend_backward, release_gil());
    m.def("photometric_loss", &photometric_loss, release_gil());
    m.def("adam_step", &adam_step, release_gil());
    m.def("has_cuda", []() { return kHaveCuda; });
    m.def("constants", []() {
        return std::map<std::string, double>{{"alpha_min", splatkit::kAlphaMin},
                                             {"alpha_max", splatkit::kAlphaMax},
                                             {"transmittance_min", splatkit::kTransmittanceMin},
                                             {"eps2d", splatkit::kEps2d},
                                             {"radius_sigmas", splatkit::kRadiusSigmas},
                                             {"near_plane", splatkit::kNearPlane},
                                             {"tile_size", splatkit::kTileSize}};
    });
}
