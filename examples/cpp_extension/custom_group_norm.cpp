// The seed tutorial's PyTorch C++ operator, custom_group_norm(X, num_groups, scale, bias,
// eps), without Eigen and with its inputs checked.
//
// One source, two registration styles chosen at compile time:
//   * default: the seed's `torch::RegisterOperators`, as mynamespace::custom_group_norm;
//   * -DOPBRIDGE_TORCH_LIBRARY: today's TORCH_LIBRARY / TORCH_LIBRARY_IMPL, as
//     mynamespace_lib::custom_group_norm.
// The namespaces differ so both libraries can be loaded in one process (an op name can
// be registered only once). Both register a CPU kernel and a Meta kernel: the Meta one
// (shape only) is what torch.export traces with, so the op exports with either exporter.
//
// Semantics are torch.nn.functional.group_norm's (biased variance, per-channel scale
// and bias), which the seed's Eigen code matches when every group has one channel.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/script.h>

#include <cmath>
#include <cstdint>

namespace {

// Checks everything that does not need tensor data; shared by both kernels.
void CheckShapes(const at::Tensor& X, const at::Tensor& num_groups, const at::Tensor& scale,
                 const at::Tensor& bias, const at::Tensor& eps) {
  TORCH_CHECK(X.dim() >= 2, "custom_group_norm: X must have rank >= 2 ([N, C, ...]), got ",
              X.sizes());
  TORCH_CHECK(X.scalar_type() == at::kFloat, "custom_group_norm: X must be float32, got ",
              X.scalar_type());
  TORCH_CHECK(num_groups.numel() == 1, "custom_group_norm: num_groups must have one element");
  TORCH_CHECK(eps.numel() == 1, "custom_group_norm: eps must have one element");
  const int64_t channels = X.size(1);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == channels && bias.dim() == 1 &&
                  bias.size(0) == channels,
              "custom_group_norm: scale and bias must have shape [", channels, "], got ",
              scale.sizes(), " and ", bias.sizes());
}

at::Tensor custom_group_norm(at::Tensor X, at::Tensor num_groups, at::Tensor scale,
                             at::Tensor bias, at::Tensor eps) {
  CheckShapes(X, num_groups, scale, bias, eps);
  const double groups_value = num_groups.item<double>();  // float or integer tensor
  const double epsilon = eps.item<double>();
  const int64_t channels = X.size(1);
  TORCH_CHECK(std::isfinite(groups_value) && groups_value >= 1 &&
                  groups_value == std::floor(groups_value),
              "custom_group_norm: num_groups must be a positive integer, got ", groups_value);
  const auto groups = static_cast<int64_t>(groups_value);
  TORCH_CHECK(channels % groups == 0, "custom_group_norm: channels (", channels,
              ") must be divisible by num_groups (", groups, ")");
  TORCH_CHECK(std::isfinite(epsilon) && epsilon >= 0, "custom_group_norm: bad eps ", epsilon);

  const at::Tensor x = X.contiguous();
  const at::Tensor gamma = scale.to(at::kFloat).contiguous();
  const at::Tensor beta = bias.to(at::kFloat).contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t batch = x.size(0);
  const int64_t spatial = channels == 0 || batch == 0 ? 0 : x.numel() / (batch * channels);
  const int64_t per_group = channels / groups;
  const int64_t count = per_group * spatial;
  const float* in = x.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const float* g = gamma.data_ptr<float>();
  const float* b = beta.data_ptr<float>();
  if (count == 0) return out;

  // Two-pass mean / variance in double; the groups are independent.
  at::parallel_for(0, batch * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const float* xi = in + item * count;
      float* yi = y + item * count;
      double sum = 0.0;
      for (int64_t i = 0; i < count; ++i) sum += xi[i];
      const double mean = sum / static_cast<double>(count);
      double sq = 0.0;
      for (int64_t i = 0; i < count; ++i) sq += (xi[i] - mean) * (xi[i] - mean);
      const double inv_std = 1.0 / std::sqrt(sq / static_cast<double>(count) + epsilon);
      const int64_t first_channel = (item % groups) * per_group;
      for (int64_t c = 0; c < per_group; ++c) {
        const double a = inv_std * g[first_channel + c];
        const double shift = b[first_channel + c] - mean * a;
        for (int64_t s = 0; s < spatial; ++s) {
          const int64_t i = c * spatial + s;
          yi[i] = static_cast<float>(xi[i] * a + shift);
        }
      }
    }
  });
  return out;
}

// Shape-only kernel for tracing (FakeTensor / torch.export): no data is read.
at::Tensor custom_group_norm_meta(at::Tensor X, at::Tensor num_groups, at::Tensor scale,
                                  at::Tensor bias, at::Tensor eps) {
  CheckShapes(X, num_groups, scale, bias, eps);
  return at::empty_like(X);
}

constexpr const char* kSchema =
    "(Tensor X, Tensor num_groups, Tensor scale, Tensor bias, Tensor eps) -> Tensor";

}  // namespace

#ifdef OPBRIDGE_TORCH_LIBRARY

TORCH_LIBRARY(mynamespace_lib, m) {
  m.def((std::string("custom_group_norm") + kSchema).c_str());
}
TORCH_LIBRARY_IMPL(mynamespace_lib, CPU, m) { m.impl("custom_group_norm", &custom_group_norm); }
TORCH_LIBRARY_IMPL(mynamespace_lib, Meta, m) {
  m.impl("custom_group_norm", &custom_group_norm_meta);
}

#else

// The seed's form was `torch::RegisterOperators("mynamespace::custom_group_norm",
// &custom_group_norm)`, a catch-all kernel that tracing would call with data-less
// tensors; the same API with per-dispatch-key kernels keeps the style and exports.
static auto registry = torch::RegisterOperators().op(
    torch::RegisterOperators::options()
        .schema(std::string("mynamespace::custom_group_norm") + kSchema)
        .kernel<decltype(custom_group_norm), &custom_group_norm>(c10::DispatchKey::CPU)
        .kernel<decltype(custom_group_norm_meta), &custom_group_norm_meta>(
            c10::DispatchKey::Meta));

#endif
