// test.customop::CustomOpOne and CustomOpTwo, the ops of ONNX Runtime's custom-op
// test library that PyTorch's "Extending the ONNX registry" tutorial exports.
#include <opbridge/ort_kernel.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"

namespace opbridge::kernels {
namespace {

// Z = X + Y for float tensors of identical shape (no broadcasting, as in ORT's test op).
Ort::Status CustomOpOne(const Tensor<float>& x, const Tensor<float>& y, Tensor<float>& z) {
  const auto& shape = x.Shape();
  OPBRIDGE_ENFORCE(shape == y.Shape(), "X and Y must have the same shape, got ", ShapeStr(shape),
                   " and ", ShapeStr(y.Shape()));
  const int64_t n = x.NumberOfElement();
  float* out = z.Allocate(shape);
  const float* a = x.Data();
  const float* b = y.Data();
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
  return Ort::Status{nullptr};
}

// Rounds half to even, exactly as torch.round / numpy.round do.
inline float RoundHalfEven(float v) {
  const float r = std::round(v);  // half away from zero
  if (std::fabs(v - std::trunc(v)) == 0.5f) return 2.0f * std::round(v * 0.5f);
  return r;
}

// Y = int32(round_half_even(X)); values that do not fit int32 (and NaN) are errors.
Ort::Status CustomOpTwo(const Tensor<float>& x, Tensor<int32_t>& y) {
  const int64_t n = x.NumberOfElement();
  const float* in = x.Data();
  int32_t* out = y.Allocate(x.Shape());
  for (int64_t i = 0; i < n; ++i) {
    const float r = RoundHalfEven(in[i]);
    // [-2^31, 2^31) is exactly representable in float; NaN fails both comparisons.
    if (!(r >= -2147483648.0f && r < 2147483648.0f)) {
      Fail(ORT_INVALID_ARGUMENT, "element ", i, " (", in[i], ") does not fit in int32");
    }
    out[i] = static_cast<int32_t>(r);
  }
  return Ort::Status{nullptr};
}

}  // namespace

void AddCustomOps(OpList& ops) {
  ops.Add("test.customop", "CustomOpOne", CustomOpOne)
      .Add("test.customop", "CustomOpTwo", CustomOpTwo);
}

}  // namespace opbridge::kernels
