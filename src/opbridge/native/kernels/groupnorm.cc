// mydomain::testgroupnorm: group normalization over [N, C, *] tensors.
//
// Inputs: X (float or float16, rank >= 2), num_groups (float or int64, one element),
// scale and bias (same type as X, shape [C]). Attribute: epsilon (float, default 1e-5).
// Y[n, c, ...] = (X[n, c, ...] - mean[n, g]) / sqrt(var[n, g] + epsilon) * scale[c] + bias[c]
// with g = c / (C / num_groups) and the biased variance, as torch.nn.functional.group_norm.
//
// Each (n, g) group is a contiguous block of (C / G) * prod(dims[2:]) elements. Work is
// split into tasks of whole groups run with KernelContext_ParallelFor. Per group the
// statistics use the two-pass algorithm (mean first, then the sum of squared deviations),
// which avoids the cancellation of E[x^2] - E[x]^2; a group usually fits in L2, so the
// second pass costs little memory bandwidth. float16 is computed in float32.
#include <opbridge/ort_kernel.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kernels.h"

// Hot loops get an AVX2+FMA clone picked at load time (GCC ifunc), so the shipped
// library stays portable to any x86-64 while using wide vectors where available.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define OPBRIDGE_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define OPBRIDGE_HOT
#endif

namespace opbridge::kernels {
namespace {

constexpr size_t kBlock = 4096;        // float partial sums are flushed to double per block
constexpr size_t kTaskElems = 1 << 16;  // rough work per ParallelFor task

// Explicit 8-lane vectors (GCC/Clang vector extensions): 256-bit registers in the
// AVX2 clone, pairs of 128-bit registers in the baseline one. Unlike auto-vectorised
// reductions this does not depend on the optimiser proving the loop safe.
typedef float V8 __attribute__((vector_size(32)));
constexpr size_t kWidth = 8;

// The helpers below are always inlined into their (possibly AVX2) callers, so the
// "AVX vector argument without AVX" ABI note GCC emits for them does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#define OPBRIDGE_INLINE inline __attribute__((always_inline))

OPBRIDGE_INLINE V8 Load(const float* p) {
  V8 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
OPBRIDGE_INLINE void Store(float* p, const V8& v) { __builtin_memcpy(p, &v, sizeof v); }
OPBRIDGE_INLINE double HorizontalSum(const V8& v) {
  double s = 0.0;
  for (size_t j = 0; j < kWidth; ++j) s += v[j];
  return s;
}

// Sum of x[0, n): float vector accumulators per block, blocks added in double.
OPBRIDGE_HOT double Sum(const float* x, size_t n) {
  double total = 0.0;
  for (size_t start = 0; start < n; start += kBlock) {
    const size_t len = std::min(kBlock, n - start);
    const float* p = x + start;
    // Four independent chains hide the add latency (one chain would be latency bound).
    V8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    size_t i = 0;
    for (; i + 4 * kWidth <= len; i += 4 * kWidth) {
      a0 += Load(p + i);
      a1 += Load(p + i + kWidth);
      a2 += Load(p + i + 2 * kWidth);
      a3 += Load(p + i + 3 * kWidth);
    }
    const V8 all = (a0 + a1) + (a2 + a3);
    double block = HorizontalSum(all);
    for (; i < len; ++i) block += p[i];
    total += block;
  }
  return total;
}

// Sum of (x - mean)^2 over x[0, n), same accumulation scheme as Sum.
OPBRIDGE_HOT double SumSquaredDeviation(const float* x, size_t n, float mean) {
  double total = 0.0;
  const V8 m = mean - V8{};
  for (size_t start = 0; start < n; start += kBlock) {
    const size_t len = std::min(kBlock, n - start);
    const float* p = x + start;
    V8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    size_t i = 0;
    for (; i + 4 * kWidth <= len; i += 4 * kWidth) {
      const V8 d0 = Load(p + i) - m;
      const V8 d1 = Load(p + i + kWidth) - m;
      const V8 d2 = Load(p + i + 2 * kWidth) - m;
      const V8 d3 = Load(p + i + 3 * kWidth) - m;
      a0 += d0 * d0;
      a1 += d1 * d1;
      a2 += d2 * d2;
      a3 += d3 * d3;
    }
    const V8 all = (a0 + a1) + (a2 + a3);
    double block = HorizontalSum(all);
    for (; i < len; ++i) {
      const double d = static_cast<double>(p[i]) - mean;
      block += d * d;
    }
    total += block;
  }
  return total;
}

// Shifted sums of x[0, n) in one pass: s1 = sum(x - k), s2 = sum((x - k)^2), float
// vector accumulators per block, blocks added in double. With k close to the data
// (the group's first element), var = s2/n - (s1/n)^2 does not suffer the
// cancellation of E[x^2] - E[x]^2, and the group is read once instead of twice.
OPBRIDGE_HOT void ShiftedSums(const float* x, size_t n, float k, double* s1_out, double* s2_out) {
  double s1 = 0.0, s2 = 0.0;
  const V8 vk = k - V8{};
  for (size_t start = 0; start < n; start += kBlock) {
    const size_t len = std::min(kBlock, n - start);
    const float* p = x + start;
    V8 a0 = {}, a1 = {}, q0 = {}, q1 = {};
    size_t i = 0;
    for (; i + 2 * kWidth <= len; i += 2 * kWidth) {
      const V8 d0 = Load(p + i) - vk;
      const V8 d1 = Load(p + i + kWidth) - vk;
      a0 += d0;
      a1 += d1;
      q0 += d0 * d0;
      q1 += d1 * d1;
    }
    double b1 = HorizontalSum(a0 + a1);
    double b2 = HorizontalSum(q0 + q1);
    for (; i < len; ++i) {
      const double d = static_cast<double>(p[i]) - k;
      b1 += d;
      b2 += d * d;
    }
    s1 += b1;
    s2 += b2;
  }
  *s1_out = s1;
  *s2_out = s2;
}

// y = x * a + b.
OPBRIDGE_HOT void Affine(const float* x, float* y, size_t n, float a, float b) {
  const V8 va = a - V8{};
  const V8 vb = b - V8{};
  size_t i = 0;
  for (; i + kWidth <= n; i += kWidth) Store(y + i, Load(x + i) * va + vb);
  for (; i < n; ++i) y[i] = x[i] * a + b;
}

struct Shape {
  size_t n = 0;         // batch
  size_t c = 0;         // channels
  size_t groups = 0;    // G
  size_t spatial = 0;   // prod(dims[2:])
  size_t channels_per_group() const { return c / groups; }
  size_t group_elems() const { return channels_per_group() * spatial; }
};

// Reads num_groups from a one-element float or int64 tensor and checks it.
template <typename G>
size_t ReadGroups(const Tensor<G>& num_groups, size_t channels) {
  const auto& shape = num_groups.Shape();
  OPBRIDGE_ENFORCE(num_groups.NumberOfElement() == 1 && shape.size() <= 1,
                   "num_groups must be a scalar or a 1-element 1-D tensor, got shape ",
                   ShapeStr(shape));
  const G raw = num_groups.Data()[0];
  double value = static_cast<double>(raw);
  OPBRIDGE_ENFORCE(std::isfinite(value) && value >= 1 && value == std::floor(value) &&
                       value <= static_cast<double>(std::numeric_limits<int32_t>::max()),
                   "num_groups must be a positive integer, got ", value);
  const auto groups = static_cast<size_t>(value);
  OPBRIDGE_ENFORCE(channels % groups == 0, "the number of channels (", channels,
                   ") must be divisible by num_groups (", groups, ")");
  return groups;
}

// Float view of a block of T; float input is used in place, float16 is converted.
struct FloatBlock {
  float storage[kBlock];
  const float* Load(const float* x, size_t) { return x; }
  const float* Load(const Float16* x, size_t n) {
    for (size_t i = 0; i < n; ++i) storage[i] = x[i].ToFloat();
    return storage;
  }
};

// Normalises one group of `count` elements per channel x `channels` channels.
template <typename T>
void NormalizeGroup(const T* x, T* y, const T* scale, const T* bias, size_t channels,
                    size_t spatial, float epsilon) {
  const size_t count = channels * spatial;
  if (count == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    double s1 = 0.0, s2 = 0.0;
    ShiftedSums(x, count, x[0], &s1, &s2);
    const double n = static_cast<double>(count);
    const double shifted_mean = s1 / n;
    const float mean = static_cast<float>(x[0] + shifted_mean);
    const double var = std::max(0.0, s2 / n - shifted_mean * shifted_mean);
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + epsilon));
    for (size_t c = 0; c < channels; ++c) {
      const float a = rstd * scale[c];
      const float b = bias[c] - mean * a;
      Affine(x + c * spatial, y + c * spatial, spatial, a, b);
    }
  } else {
    FloatBlock in;
    double sum = 0.0;
    for (size_t i = 0; i < count; i += kBlock) {
      const size_t len = std::min(kBlock, count - i);
      sum += Sum(in.Load(x + i, len), len);
    }
    const float mean = static_cast<float>(sum / static_cast<double>(count));
    double sq = 0.0;
    for (size_t i = 0; i < count; i += kBlock) {
      const size_t len = std::min(kBlock, count - i);
      sq += SumSquaredDeviation(in.Load(x + i, len), len, mean);
    }
    const float rstd = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(count) + epsilon));
    float out[kBlock];
    for (size_t c = 0; c < channels; ++c) {
      const float a = rstd * scale[c].ToFloat();
      const float b = bias[c].ToFloat() - mean * a;
      for (size_t i = 0; i < spatial; i += kBlock) {
        const size_t len = std::min(kBlock, spatial - i);
        const size_t offset = c * spatial + i;
        Affine(in.Load(x + offset, len), out, len, a, b);
        for (size_t k = 0; k < len; ++k) y[offset + k] = Float16(out[k]);
      }
    }
  }
}

template <typename T, typename G>
struct GroupNorm {
  float epsilon = 1e-5f;

  GroupNorm(const OrtApi* api, const OrtKernelInfo* info) {
    float value = 0.0f;
    if (OrtStatus* st = api->KernelInfoGetAttribute_float(info, "epsilon", &value)) {
      api->ReleaseStatus(st);
      int64_t as_int = 0;
      size_t size = 0;
      if (OrtStatus* st2 = api->KernelInfoGetAttribute_int64(info, "epsilon", &as_int)) {
        api->ReleaseStatus(st2);
        // A string attribute named epsilon is a malformed node; absent means default.
        if (OrtStatus* st3 = api->KernelInfoGetAttribute_string(info, "epsilon", nullptr, &size)) {
          api->ReleaseStatus(st3);
          return;
        }
        Fail(ORT_INVALID_ARGUMENT, "attribute epsilon must be a float");
      }
      value = static_cast<float>(as_int);
    }
    OPBRIDGE_ENFORCE(std::isfinite(value) && value >= 0.0f,
                     "attribute epsilon must be finite and >= 0, got ", value);
    epsilon = value;
  }

  Ort::Status Compute(OrtKernelContext* context, const Tensor<T>& X, const Tensor<G>& num_groups,
                      const Tensor<T>& scale, const Tensor<T>& bias, Tensor<T>& Y) const {
    // Every check happens before any data pointer is dereferenced.
    const std::vector<int64_t>& dims = X.Shape();
    OPBRIDGE_ENFORCE(dims.size() >= 2, "X must have rank >= 2 ([N, C, ...]), got shape ",
                     ShapeStr(dims));
    Shape shape;
    shape.n = static_cast<size_t>(dims[0]);
    shape.c = static_cast<size_t>(dims[1]);
    shape.spatial = 1;
    for (size_t i = 2; i < dims.size(); ++i) shape.spatial *= static_cast<size_t>(dims[i]);
    shape.groups = ReadGroups(num_groups, shape.c);
    const std::vector<int64_t> channel_shape{dims[1]};
    OPBRIDGE_ENFORCE(scale.Shape() == channel_shape, "scale must have shape [C] = ",
                     ShapeStr(channel_shape), ", got ", ShapeStr(scale.Shape()));
    OPBRIDGE_ENFORCE(bias.Shape() == channel_shape, "bias must have shape [C] = ",
                     ShapeStr(channel_shape), ", got ", ShapeStr(bias.Shape()));

    T* y = Y.Allocate(dims);
    const size_t items = shape.n * shape.groups;
    const size_t group_elems = shape.group_elems();
    if (items == 0 || group_elems == 0) return Ort::Status{nullptr};

    const T* x = X.Data();
    const T* gamma = scale.Data();
    const T* beta = bias.Data();
    const size_t per_task = std::max<size_t>(1, kTaskElems / group_elems);
    const size_t tasks = (items + per_task - 1) / per_task;
    const size_t cpg = shape.channels_per_group();
    const float eps = epsilon;
    ParallelFor(context, tasks, [&](size_t task) {
      const size_t end = std::min(items, (task + 1) * per_task);
      for (size_t item = task * per_task; item < end; ++item) {
        const size_t first_channel = (item % shape.groups) * cpg;
        const size_t offset = item * group_elems;
        NormalizeGroup(x + offset, y + offset, gamma + first_channel, beta + first_channel, cpg,
                       shape.spatial, eps);
      }
    });
    return Ort::Status{nullptr};
  }
};

}  // namespace

void AddGroupNorm(OpList& ops) {
  // One registration per type combination; ORT merges them into one schema.
  ops.Add<GroupNorm<float, float>>("mydomain", "testgroupnorm")
      .Add<GroupNorm<float, int64_t>>("mydomain", "testgroupnorm")
      .Add<GroupNorm<Float16, float>>("mydomain", "testgroupnorm")
      .Add<GroupNorm<Float16, int64_t>>("mydomain", "testgroupnorm");
}

}  // namespace opbridge::kernels
