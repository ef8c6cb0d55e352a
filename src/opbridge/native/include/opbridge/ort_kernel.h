// opbridge/ort_kernel.h: write ONNX Runtime custom-op kernels as plain functions.
//
// A kernel library is one or more .cc files that include this header, define kernel
// functions (or kernel structs), and contain exactly one registration list:
//
//   #include <opbridge/ort_kernel.h>
//
//   Ort::Status AddFloats(const opbridge::Tensor<float>& x, const opbridge::Tensor<float>& y,
//                         opbridge::Tensor<float>& z) {
//     OPBRIDGE_ENFORCE(x.Shape() == y.Shape(), "x and y must have the same shape");
//     float* out = z.Allocate(x.Shape());
//     for (int64_t i = 0; i < x.NumberOfElement(); ++i) out[i] = x.Data()[i] + y.Data()[i];
//     return Ort::Status{nullptr};
//   }
//
//   OPBRIDGE_REGISTER_OPS(ops) {
//     ops.Add("my.domain", "AddFloats", AddFloats);
//   }
//
// Kernel arguments use ONNX Runtime's lite custom-op types (onnxruntime_lite_custom_op.h):
// `const Tensor<T>&` inputs, `Tensor<T>&` outputs, optionally a leading `OrtKernelContext*`.
// The input/output element types of the ONNX node are inferred from the signature; to
// accept several types, register the same op name once per type combination.
//
// A kernel that needs node attributes is a struct with a constructor
// `K(const OrtApi* api, const OrtKernelInfo* info)` and a member
// `Ort::Status Compute(...)` (or `void Compute(...)`), registered with `ops.Add<K>(...)`.
// The constructor reads attributes with `opbridge::Attribute<T>(info, "name", fallback)`
// (T: float, int64_t, std::string, std::vector<float>, std::vector<int64_t>).
//
// What the header supplies:
//   * `RegisterCustomOps` (the only exported symbol; build with -fvisibility=hidden).
//     It checks that the running ONNX Runtime provides the API version these headers
//     were compiled against, and otherwise returns an error status instead of crashing.
//   * Every C++ exception thrown while creating or running a kernel becomes an
//     OrtStatus carrying the op name and the message; nothing unwinds into ORT.
//   * Op objects and Ort custom-op domains are created once per process and never
//     freed, so any number of SessionOptions (and sessions) can register the library.
//
// Build with -DORT_API_MANUAL_INIT and without linking libonnxruntime
// (opbridge.native.build_library does both).
#pragma once

#ifndef ORT_API_MANUAL_INIT
#error "opbridge kernels must be compiled with -DORT_API_MANUAL_INIT (the library must not link onnxruntime)"
#endif

#include <onnxruntime_lite_custom_op.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define OPBRIDGE_EXPORT __attribute__((visibility("default")))

// Nothing of opbridge's own is exported, even without -fvisibility=hidden.
#pragma GCC visibility push(hidden)

namespace opbridge {

template <typename T>
using Tensor = Ort::Custom::Tensor<T>;
using Float16 = Ort::Float16_t;

/// Highest opset version a registration covers when no end version is given.
constexpr int kMaxOpsetVersion = static_cast<int>(MAX_CUSTOM_OP_END_VER);

namespace detail {

inline void StreamAll(std::ostringstream&) {}
template <typename First, typename... Rest>
void StreamAll(std::ostringstream& out, const First& first, const Rest&... rest) {
  out << first;
  StreamAll(out, rest...);
}

}  // namespace detail

/// Formats `parts` with operator<< and throws Ort::Exception with `code`.
template <typename... Parts>
[[noreturn]] void Fail(OrtErrorCode code, const Parts&... parts) {
  std::ostringstream out;
  detail::StreamAll(out, parts...);
  throw Ort::Exception(out.str(), code);
}

/// Renders a shape as "[2, 3, 4]" for error messages.
inline std::string ShapeStr(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

/// Throws ORT_INVALID_ARGUMENT with the streamed message when `cond` is false.
#define OPBRIDGE_ENFORCE(cond, ...)                                  \
  do {                                                               \
    if (!(cond)) ::opbridge::Fail(ORT_INVALID_ARGUMENT, __VA_ARGS__); \
  } while (0)

/// Runs `fn(i)` for i in [0, total) on the session's intra-op thread pool.
///
/// `fn` may throw; the first exception is rethrown on the calling thread after
/// all iterations finished (ORT's callback interface cannot carry exceptions).
template <typename Fn>
void ParallelFor(OrtKernelContext* context, size_t total, Fn&& fn) {
  if (total == 0) return;
  if (total == 1) {
    fn(size_t{0});
    return;
  }
  using Callable = std::remove_reference_t<Fn>;
  struct Shared {
    Callable* fn;
    std::mutex mutex;
    std::exception_ptr error;
  } shared{&fn, {}, nullptr};
  auto trampoline = [](void* data, size_t i) {
    auto* s = static_cast<Shared*>(data);
    try {
      (*s->fn)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(s->mutex);
      if (!s->error) s->error = std::current_exception();
    }
  };
  Ort::ThrowOnError(Ort::GetApi().KernelContext_ParallelFor(context, trampoline, total, 0, &shared));
  if (shared.error) std::rethrow_exception(shared.error);
}

namespace detail {

// Takes ownership of an OrtStatus: true when it was OK (null).
inline bool Succeeded(OrtStatus* status) {
  if (status == nullptr) return true;
  Ort::GetApi().ReleaseStatus(status);
  return false;
}

// The ONNX type of attribute `name` ("float", "int", "string", "floats", "ints", or
// "list" for an empty list), or "" when the node has no such attribute. Probing by type
// keeps "absent" and "wrong type" apart without depending on ONNX Runtime's error texts.
// (ONNX Runtime reads a list attribute of the other element type as an empty list.)
inline std::string AttributeKind(const OrtKernelInfo* info, const char* name) {
  const OrtApi& api = Ort::GetApi();
  float f = 0.0f;
  int64_t i = 0;
  size_t size = 0;
  if (Succeeded(api.KernelInfoGetAttribute_float(info, name, &f))) return "float";
  if (Succeeded(api.KernelInfoGetAttribute_int64(info, name, &i))) return "int";
  if (Succeeded(api.KernelInfoGetAttribute_string(info, name, nullptr, &size))) return "string";
  size_t floats = 0;
  size_t ints = 0;
  const bool has_floats =
      Succeeded(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &floats));
  const bool has_ints = Succeeded(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &ints));
  if (has_floats && floats > 0) return "floats";
  if (has_ints && ints > 0) return "ints";
  return has_floats || has_ints ? "list" : "";
}

template <typename T>
struct AttributeTraits;  // float, int64_t, std::string, std::vector<float>, std::vector<int64_t>

template <>
struct AttributeTraits<float> {
  static constexpr const char* kKind = "float";
  static bool Read(const OrtKernelInfo* info, const char* name, float& out) {
    return Succeeded(Ort::GetApi().KernelInfoGetAttribute_float(info, name, &out));
  }
};

template <>
struct AttributeTraits<int64_t> {
  static constexpr const char* kKind = "int";
  static bool Read(const OrtKernelInfo* info, const char* name, int64_t& out) {
    return Succeeded(Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &out));
  }
};

template <>
struct AttributeTraits<std::string> {
  static constexpr const char* kKind = "string";
  static bool Read(const OrtKernelInfo* info, const char* name, std::string& out) {
    const OrtApi& api = Ort::GetApi();
    size_t size = 0;  // includes the terminating NUL
    if (!Succeeded(api.KernelInfoGetAttribute_string(info, name, nullptr, &size))) return false;
    std::string value(size, '\0');
    Ort::ThrowOnError(api.KernelInfoGetAttribute_string(info, name, value.data(), &size));
    value.resize(size > 0 ? size - 1 : 0);
    out = std::move(value);
    return true;
  }
};

// Reads an array attribute with one of the C API's KernelInfoGetAttributeArray_* calls.
template <typename E, typename Get>
bool ReadArray(const OrtKernelInfo* info, const char* name, std::vector<E>& out, Get get) {
  size_t size = 0;
  if (!Succeeded(get(info, name, nullptr, &size))) return false;
  std::vector<E> values(size);
  if (size > 0) Ort::ThrowOnError(get(info, name, values.data(), &size));
  out = std::move(values);
  return true;
}

template <>
struct AttributeTraits<std::vector<float>> {
  static constexpr const char* kKind = "floats";
  static bool Read(const OrtKernelInfo* info, const char* name, std::vector<float>& out) {
    return ReadArray(info, name, out, Ort::GetApi().KernelInfoGetAttributeArray_float);
  }
};

template <>
struct AttributeTraits<std::vector<int64_t>> {
  static constexpr const char* kKind = "ints";
  static bool Read(const OrtKernelInfo* info, const char* name, std::vector<int64_t>& out) {
    return ReadArray(info, name, out, Ort::GetApi().KernelInfoGetAttributeArray_int64);
  }
};

template <typename T>
struct IsVector : std::false_type {};
template <typename E>
struct IsVector<std::vector<E>> : std::true_type {};

template <typename T>
bool ReadAttribute(const OrtKernelInfo* info, const char* name, T& out) {
  using Traits = AttributeTraits<T>;
  if (Traits::Read(info, name, out)) {
    if constexpr (IsVector<T>::value) {
      // An empty result may be a non-empty list of the other element type.
      if (out.empty()) {
        const std::string kind = AttributeKind(info, name);
        if (kind != Traits::kKind && kind != "list") {
          Fail(ORT_INVALID_ARGUMENT, "attribute '", name, "' must be of type ", Traits::kKind,
               ", the node has a ", kind);
        }
      }
    }
    return true;
  }
  const std::string kind = AttributeKind(info, name);
  if (!kind.empty()) {
    Fail(ORT_INVALID_ARGUMENT, "attribute '", name, "' must be of type ", Traits::kKind,
         ", the node has a ", kind);
  }
  return false;
}

}  // namespace detail

/// Reads node attribute `name` in a kernel struct's constructor; `fallback` when absent.
///
/// T is `float`, `int64_t`, `std::string`, `std::vector<float>` or `std::vector<int64_t>`
/// (ONNX's float, int, string, floats, ints). An attribute of another type is an error
/// naming the attribute and both types, never a silent default:
///
///   struct Scale {
///     float factor;
///     Scale(const OrtApi*, const OrtKernelInfo* info)
///         : factor(opbridge::Attribute<float>(info, "factor", 1.0f)) {}
///     ...
///   };
template <typename T>
T Attribute(const OrtKernelInfo* info, const char* name, T fallback) {
  T value;
  if (detail::ReadAttribute(info, name, value)) return value;
  return fallback;
}

/// Reads required node attribute `name`; its absence is an error naming it.
template <typename T>
T Attribute(const OrtKernelInfo* info, const char* name) {
  T value;
  if (!detail::ReadAttribute(info, name, value)) {
    Fail(ORT_INVALID_ARGUMENT, "required attribute '", name, "' (",
         detail::AttributeTraits<T>::kKind, ") is missing");
  }
  return value;
}

namespace detail {

// Converts the exception being handled into an OrtStatus owned by the caller.
inline OrtStatus* StatusFromCurrentException(const std::string& where) noexcept {
  OrtErrorCode code = ORT_FAIL;
  std::string message;
  try {
    try {
      throw;
    } catch (const Ort::Exception& e) {
      code = e.GetOrtErrorCode();
      message = e.what();
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
      message = "unknown C++ exception";
    }
    if (!where.empty()) message = where + ": " + message;
  } catch (...) {
    message = "out of memory while reporting an error";
  }
  return Ort::GetApi().CreateStatus(code, message.c_str());
}

// Per-kernel state shared by the function and struct adapters.
struct KernelBase {
  size_t num_input = 0;
  size_t num_output = 0;
  std::string ep;
  std::string where;  // "domain::name", prefixed to error messages
};

// All op adapters derive from OrtLiteCustomOp, which fills in the OrtCustomOp
// schema callbacks (names, element types, opset range) from the argument types.
// ORT only ever sees the OrtCustomOp base (at offset 0).
struct OpBase : Ort::Custom::OrtLiteCustomOp {
  OpBase(const char* name, int since, int end)
      : Ort::Custom::OrtLiteCustomOp(name, "CPUExecutionProvider", {}, since, end) {
    // Only the status-returning V2 entry points are used: they let every error
    // come back as an OrtStatus instead of unwinding through ORT.
    OrtCustomOp::CreateKernel = {};
    OrtCustomOp::KernelCompute = {};
  }
};

template <typename Kernel>
OrtStatus* InitKernelBase(Kernel& kernel, const OrtCustomOp* op, const OrtApi* api,
                          const OrtKernelInfo* info) {
  const auto* self = static_cast<const Ort::Custom::OrtLiteCustomOp*>(op);
  kernel.ep = self->execution_provider_;
  if (OrtStatus* st = api->KernelInfo_GetInputCount(info, &kernel.num_input)) return st;
  return api->KernelInfo_GetOutputCount(info, &kernel.num_output);
}

template <typename... Args>
struct FunctionOp : OpBase {
  using Fn = Ort::Status (*)(Args...);
  using VoidFn = void (*)(Args...);
  struct Kernel : KernelBase {
    Fn fn = nullptr;
    VoidFn void_fn = nullptr;
  };

  FunctionOp(const char* name, std::string where, Fn fn, VoidFn void_fn, int since, int end)
      : OpBase(name, since, end) {
    compute_fn_return_status_ = reinterpret_cast<void*>(fn);
    compute_fn_ = reinterpret_cast<void*>(void_fn);
    where_ = std::move(where);
    ParseArgs<Args...>(input_types_, output_types_);
    OrtCustomOp::CreateKernelV2 = [](const OrtCustomOp* op, const OrtApi* api,
                                     const OrtKernelInfo* info, void** out) -> OrtStatusPtr {
      *out = nullptr;
      const auto* self = static_cast<const FunctionOp*>(op);
      try {
        auto kernel = std::make_unique<Kernel>();
        if (OrtStatus* st = InitKernelBase(*kernel, op, api, info)) return st;
        kernel->where = self->where_;
        kernel->fn = reinterpret_cast<Fn>(self->compute_fn_return_status_);
        kernel->void_fn = reinterpret_cast<VoidFn>(self->compute_fn_);
        *out = kernel.release();
        return nullptr;
      } catch (...) {
        return StatusFromCurrentException(self->where_);
      }
    };
    OrtCustomOp::KernelComputeV2 = [](void* op_kernel, OrtKernelContext* context) -> OrtStatusPtr {
      auto* kernel = static_cast<Kernel*>(op_kernel);
      try {
        Ort::Custom::ArgPtrs args;
        auto tuple = CreateTuple<0, 0, Args...>(context, args, kernel->num_input,
                                                kernel->num_output, kernel->ep);
        Ort::Status status{nullptr};
        if (kernel->fn) {
          status = std::apply([kernel](Args const&... a) { return kernel->fn(a...); }, tuple);
        } else {
          std::apply([kernel](Args const&... a) { kernel->void_fn(a...); }, tuple);
        }
        if (status.IsOK()) return nullptr;
        return Ort::GetApi().CreateStatus(
            status.GetErrorCode(), (kernel->where + ": " + status.GetErrorMessage()).c_str());
      } catch (...) {
        return StatusFromCurrentException(kernel->where);
      }
    };
    OrtCustomOp::KernelDestroy = [](void* op_kernel) { delete static_cast<Kernel*>(op_kernel); };
  }

  std::string where_;  // "domain::name"
};

template <typename K>
struct StructOp : OpBase {
  struct Kernel : KernelBase {
    std::unique_ptr<K> impl;
  };

  StructOp(const char* name, std::string where, int since, int end) : OpBase(name, since, end) {
    where_ = std::move(where);
    SetCompute(&K::Compute);
    OrtCustomOp::CreateKernelV2 = [](const OrtCustomOp* op, const OrtApi* api,
                                     const OrtKernelInfo* info, void** out) -> OrtStatusPtr {
      *out = nullptr;
      const auto* self = static_cast<const StructOp*>(op);
      try {
        auto kernel = std::make_unique<Kernel>();
        if (OrtStatus* st = InitKernelBase(*kernel, op, api, info)) return st;
        kernel->where = self->where_;
        kernel->impl = std::make_unique<K>(api, info);
        *out = kernel.release();
        return nullptr;
      } catch (...) {
        return StatusFromCurrentException(self->where_);
      }
    };
    OrtCustomOp::KernelDestroy = [](void* op_kernel) { delete static_cast<Kernel*>(op_kernel); };
  }

  template <typename R, typename... Args>
  void SetCompute(R (K::*)(Args...)) {
    SetComputeImpl<R, Args...>();
  }
  template <typename R, typename... Args>
  void SetCompute(R (K::*)(Args...) const) {
    SetComputeImpl<R, Args...>();
  }

  template <typename R, typename... Args>
  void SetComputeImpl() {
    static_assert(std::is_same_v<R, Ort::Status> || std::is_same_v<R, void>,
                  "Compute must return Ort::Status or void");
    ParseArgs<Args...>(input_types_, output_types_);
    OrtCustomOp::KernelComputeV2 = [](void* op_kernel, OrtKernelContext* context) -> OrtStatusPtr {
      auto* kernel = static_cast<Kernel*>(op_kernel);
      try {
        Ort::Custom::ArgPtrs args;
        auto tuple = CreateTuple<0, 0, Args...>(context, args, kernel->num_input,
                                                kernel->num_output, kernel->ep);
        K* impl = kernel->impl.get();
        if constexpr (std::is_same_v<R, void>) {
          std::apply([impl](Args const&... a) { impl->Compute(a...); }, tuple);
          return nullptr;
        } else {
          Ort::Status status =
              std::apply([impl](Args const&... a) { return impl->Compute(a...); }, tuple);
          if (status.IsOK()) return nullptr;
          return Ort::GetApi().CreateStatus(
              status.GetErrorCode(), (kernel->where + ": " + status.GetErrorMessage()).c_str());
        }
      } catch (...) {
        return StatusFromCurrentException(kernel->where);
      }
    };
  }

  std::string where_;  // "domain::name"
};

}  // namespace detail

/// The registration list filled in by `OPBRIDGE_REGISTER_OPS`.
class OpList {
 public:
  /// Registers a kernel function returning Ort::Status for `domain::name`.
  template <typename... Args>
  OpList& Add(const std::string& domain, const std::string& name, Ort::Status (*fn)(Args...),
              int since_version = 1, int end_version = kMaxOpsetVersion) {
    CheckEntry(domain, name, fn != nullptr, since_version, end_version);
    using Op = detail::FunctionOp<Args...>;
    Keep(domain, std::make_shared<Op>(name.c_str(), Where(domain, name), fn, nullptr,
                                      since_version, end_version));
    return *this;
  }

  /// Registers a kernel function that reports errors by throwing.
  template <typename... Args>
  OpList& Add(const std::string& domain, const std::string& name, void (*fn)(Args...),
              int since_version = 1, int end_version = kMaxOpsetVersion) {
    CheckEntry(domain, name, fn != nullptr, since_version, end_version);
    using Op = detail::FunctionOp<Args...>;
    Keep(domain, std::make_shared<Op>(name.c_str(), Where(domain, name), nullptr, fn,
                                      since_version, end_version));
    return *this;
  }

  /// Registers kernel struct `K` (constructed per node from its OrtKernelInfo).
  template <typename K>
  OpList& Add(const std::string& domain, const std::string& name, int since_version = 1,
              int end_version = kMaxOpsetVersion) {
    CheckEntry(domain, name, true, since_version, end_version);
    using Op = detail::StructOp<K>;
    Keep(domain, std::make_shared<Op>(name.c_str(), Where(domain, name), since_version,
                                      end_version));
    return *this;
  }

  struct Entry {
    std::string domain;
    // shared_ptr remembers the concrete type, so a rejected list is freed correctly.
    std::shared_ptr<Ort::Custom::OrtLiteCustomOp> op;
  };
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  static void CheckEntry(const std::string& domain, const std::string& name, bool has_fn,
                         int since_version, int end_version) {
    if (domain.empty() || domain == "ai.onnx" || domain == "ai.onnx.ml") {
      Fail(ORT_INVALID_ARGUMENT, "op '", name, "': custom ops need their own domain, got '",
           domain, "'");
    }
    if (name.empty()) Fail(ORT_INVALID_ARGUMENT, "empty op name in domain '", domain, "'");
    if (!has_fn) Fail(ORT_INVALID_ARGUMENT, domain, "::", name, ": kernel function is null");
    if (since_version < 1 || end_version < since_version) {
      Fail(ORT_INVALID_ARGUMENT, domain, "::", name, ": invalid opset range [", since_version,
           ", ", end_version, "]");
    }
  }
  static std::string Where(const std::string& domain, const std::string& name) {
    return domain + "::" + name;
  }
  void Keep(const std::string& domain, std::shared_ptr<Ort::Custom::OrtLiteCustomOp> op) {
    entries_.push_back(Entry{domain, std::move(op)});
  }

  std::vector<Entry> entries_;
};

namespace detail {

inline bool SameTypes(const Ort::Custom::OrtLiteCustomOp* a, const Ort::Custom::OrtLiteCustomOp* b) {
  return a->input_types_ == b->input_types_ && a->output_types_ == b->output_types_;
}

// Rejects lists ORT would only fail on later (or mis-resolve): duplicates and
// same-named ops whose input/output counts differ.
inline void Validate(const OpList& list) {
  const auto& entries = list.entries();
  if (entries.empty()) Fail(ORT_INVALID_ARGUMENT, "the registration list is empty");
  for (size_t i = 0; i < entries.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      const auto* a = entries[i].op.get();
      const auto* b = entries[j].op.get();
      if (entries[i].domain != entries[j].domain || a->op_name_ != b->op_name_) continue;
      const std::string where = entries[i].domain + "::" + a->op_name_;
      if (a->input_types_.size() != b->input_types_.size() ||
          a->output_types_.size() != b->output_types_.size()) {
        Fail(ORT_INVALID_ARGUMENT, where,
             " is registered twice with different numbers of inputs or outputs");
      }
      const bool overlap = a->start_ver_ <= b->end_ver_ && b->start_ver_ <= a->end_ver_;
      if (overlap && SameTypes(a, b)) {
        Fail(ORT_INVALID_ARGUMENT, where,
             " is registered twice for the same element types and overlapping opset versions");
      }
    }
  }
}

struct Registry {
  OpList ops;  // owns the op objects the domains point at
  std::vector<OrtCustomOpDomain*> domains;
};

// Builds the op objects and domains. The macro below calls this once per
// process and keeps the result forever: ORT keeps raw pointers to them in every
// session that used them, and a session may outlive static destructors at
// interpreter exit.
inline const Registry* BuildRegistry(void (*fill)(OpList&)) {
  auto result = std::make_unique<Registry>();
  fill(result->ops);
  Validate(result->ops);
  std::vector<std::string> names;
  try {
    for (const auto& entry : result->ops.entries()) {
      size_t index = 0;
      while (index < names.size() && names[index] != entry.domain) ++index;
      if (index == names.size()) {
        OrtCustomOpDomain* domain = nullptr;
        Ort::ThrowOnError(Ort::GetApi().CreateCustomOpDomain(entry.domain.c_str(), &domain));
        names.push_back(entry.domain);
        result->domains.push_back(domain);
      }
      Ort::ThrowOnError(
          Ort::GetApi().CustomOpDomain_Add(result->domains[index], entry.op.get()));
    }
  } catch (...) {
    for (OrtCustomOpDomain* domain : result->domains) Ort::GetApi().ReleaseCustomOpDomain(domain);
    throw;
  }
  return result.release();
}

// Error for a runtime older than the headers: GetApi(ORT_API_VERSION) returned
// null, so the status is created through API version 1, which every ONNX Runtime
// provides (CreateStatus has been in the table since 1.0).
inline OrtStatus* VersionMismatch(const OrtApiBase* api_base) noexcept {
  const OrtApi* v1 = api_base->GetApi(1);
  if (v1 == nullptr) return nullptr;  // Not an ONNX Runtime we can talk to at all.
  const char* runtime = api_base->GetVersionString ? api_base->GetVersionString() : "?";
  char message[512];
  std::snprintf(message, sizeof message,
                "this custom-op library was compiled against ONNX Runtime headers with "
                "ORT_API_VERSION %d, but the loaded ONNX Runtime %s does not provide that API "
                "version; rebuild the library with headers no newer than the runtime",
                ORT_API_VERSION, runtime ? runtime : "?");
  return v1->CreateStatus(ORT_FAIL, message);
}

inline OrtStatus* Register(OrtSessionOptions* options, const OrtApiBase* api_base,
                           const Registry* (*registry)()) noexcept {
  // ORT always passes its api base; with none there is no way to build a status.
  if (api_base == nullptr) return nullptr;
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return VersionMismatch(api_base);
  static std::once_flag init;
  std::call_once(init, [api] { Ort::InitApi(api); });
  try {
    for (OrtCustomOpDomain* domain : registry()->domains) {
      Ort::ThrowOnError(api->AddCustomOpDomain(options, domain));
    }
    return nullptr;
  } catch (...) {
    return StatusFromCurrentException("opbridge RegisterCustomOps");
  }
}

}  // namespace detail
}  // namespace opbridge

#pragma GCC visibility pop

/// Defines the library's registration list and its exported RegisterCustomOps.
///
/// Use exactly once per library:
///   OPBRIDGE_REGISTER_OPS(ops) { ops.Add("domain", "Op", Kernel); }
///
/// The registry lives in a function-local static of this translation unit (not in
/// an inline function), so two opbridge libraries in one process never share it,
/// even when built without -fvisibility=hidden.
#define OPBRIDGE_REGISTER_OPS(list)                                               \
  static void OpbridgeFillOps(::opbridge::OpList& list);                         \
  static const ::opbridge::detail::Registry* OpbridgeRegistry() {                \
    static const ::opbridge::detail::Registry* registry =                        \
        ::opbridge::detail::BuildRegistry(&OpbridgeFillOps);                      \
    return registry;                                                              \
  }                                                                               \
  extern "C" OPBRIDGE_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(           \
      OrtSessionOptions* options, const OrtApiBase* api_base) {                   \
    return ::opbridge::detail::Register(options, api_base, &OpbridgeRegistry);   \
  }                                                                               \
  static void OpbridgeFillOps(::opbridge::OpList& list)
