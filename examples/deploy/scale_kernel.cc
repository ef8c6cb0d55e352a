// example::ScaleShift(X, factor: float, shift: int) = X * factor + shift, for float32 tensors.
// Build:  opbridge build scale_shift scale_kernel.cc -o deploy/
#include <opbridge/ort_kernel.h>

struct ScaleShift {
  float factor;
  float shift;

  // Attributes are read once per node, when ONNX Runtime creates the kernel.
  ScaleShift(const OrtApi*, const OrtKernelInfo* info)
      : factor(opbridge::Attribute<float>(info, "factor")),                      // required
        shift(static_cast<float>(opbridge::Attribute<int64_t>(info, "shift", 0)))  // optional
  {}

  Ort::Status Compute(const opbridge::Tensor<float>& x, opbridge::Tensor<float>& y) const {
    float* out = y.Allocate(x.Shape());
    const float* in = x.Data();
    for (int64_t i = 0; i < x.NumberOfElement(); ++i) out[i] = in[i] * factor + shift;
    return Ort::Status{nullptr};
  }
};

OPBRIDGE_REGISTER_OPS(ops) { ops.Add<ScaleShift>("example", "ScaleShift"); }
