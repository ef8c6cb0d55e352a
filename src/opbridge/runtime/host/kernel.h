// opbridge kernel host: what the files behind one kernel share.
//
//   kernel.cc      the Kernel: creation (node checks), Compute, ORT's callbacks
//   attributes.cc  node attributes -> Python values, read once per kernel
//   convert.cc     OrtValue <-> numpy: inputs lent, outputs checked and written
//   lifetime.cc    what a kernel keeps never sees memory ORT reuses
//   errors.cc      Python exceptions and ORT statuses -> messages
//
// RAII: Ref owns a PyObject reference, Status an OrtStatus, GilLock holds the
// GIL for a scope and GilRelease gives it up for one.
#ifndef OPBRIDGE_RUNTIME_HOST_KERNEL_H_
#define OPBRIDGE_RUNTIME_HOST_KERNEL_H_

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "host.h"

namespace opbridge_host {

// Outputs at least this large are copied with the GIL released, so that other
// Python threads (or other kernels) can run meanwhile.
constexpr size_t kReleaseGilCopyBytes = size_t{1} << 18;

// Upper bound on the Python traceback text carried in an ORT error.
constexpr size_t kMaxTracebackChars = 6000;

// The error text of a kernel interrupted by Ctrl-C (see opbridge/runtime/_session.py).
constexpr const char* kInterruptedMarker = "KeyboardInterrupt [opbridge:interrupted]";

inline bool PythonUsable() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsInitialized() && !Py_IsFinalizing();
#else
  return Py_IsInitialized() && !_Py_IsFinalizing();
#endif
}

// Owning PyObject* holder.
class Ref {
 public:
  Ref() = default;
  explicit Ref(PyObject* obj) : obj_(obj) {}
  Ref(const Ref&) = delete;
  Ref& operator=(const Ref&) = delete;
  Ref(Ref&& other) noexcept : obj_(other.obj_) { other.obj_ = nullptr; }
  Ref& operator=(Ref&& other) noexcept {
    if (this != &other) {
      PyObject* old = obj_;
      obj_ = other.obj_;
      other.obj_ = nullptr;
      Py_XDECREF(old);
    }
    return *this;
  }
  ~Ref() { Py_XDECREF(obj_); }
  PyObject* get() const { return obj_; }
  PyObject* release() {
    PyObject* obj = obj_;
    obj_ = nullptr;
    return obj;
  }
  explicit operator bool() const { return obj_ != nullptr; }

 private:
  PyObject* obj_ = nullptr;
};

// Owns an OrtStatus (nullptr is success) and releases it.
class Status {
 public:
  Status(const OrtApi* api, OrtStatusPtr status) : api_(api), status_(status) {}
  Status(const Status&) = delete;
  Status& operator=(const Status&) = delete;
  ~Status() {
    if (status_ != nullptr) api_->ReleaseStatus(status_);
  }
  explicit operator bool() const { return status_ != nullptr; }  // true: an error
  std::string Message() const { return status_ ? api_->GetErrorMessage(status_) : ""; }
  // Hands the status on (to ORT, as a callback's result).
  OrtStatusPtr release() { return std::exchange(status_, nullptr); }

 private:
  const OrtApi* api_;
  OrtStatusPtr status_;
};

// Holds the GIL for its scope, from any thread.
class GilLock {
 public:
  GilLock() : state_(PyGILState_Ensure()) {}
  GilLock(const GilLock&) = delete;
  GilLock& operator=(const GilLock&) = delete;
  ~GilLock() { PyGILState_Release(state_); }

 private:
  PyGILState_STATE state_;
};

// Releases the GIL (held by this thread) for its scope.
class GilRelease {
 public:
  GilRelease() : state_(PyEval_SaveThread()) {}
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;
  ~GilRelease() { PyEval_RestoreThread(state_); }

 private:
  PyThreadState* state_;
};

// errors.cc -------------------------------------------------------------------

// Releases an OrtStatus and returns its message.
std::string TakeMessage(const OrtApi* api, OrtStatusPtr status);
// Text of the pending Python exception ("ValueError: message" plus traceback); clears it.
std::string TakePythonError();
const char* KindName(AttrKind kind);
std::string AllowedTypes(const IODef& io);
// "(7, 3)" for a shape; symbolic dims (< 0) print as "?".
std::string ShapeText(const int64_t* dims, int rank);

// Ports -----------------------------------------------------------------------

inline bool TypeAllowed(const IODef& io, ONNXTensorElementDataType type) {
  return io.types.empty() || std::find(io.types.begin(), io.types.end(), type) != io.types.end();
}

// Spec index of the node input/output at `index` (the variadic one repeats).
inline size_t SpecIndex(const std::vector<IODef>& ports, size_t index) {
  if (index < ports.size()) return index;
  return ports.empty() ? 0 : ports.size() - 1;
}

inline bool HasVariadic(const std::vector<IODef>& ports) {
  return !ports.empty() && ports.back().variadic;
}

// Reads a size-queried string from one of ORT's (out, size) style getters.
template <typename Getter>
OrtStatusPtr ReadString(Getter getter, std::string* out) {
  size_t size = 0;
  if (OrtStatusPtr status = getter(nullptr, &size)) return status;
  std::string buffer(size, '\0');
  if (OrtStatusPtr status = getter(buffer.data(), &size)) return status;
  buffer.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
  *out = std::move(buffer);
  return nullptr;
}

// convert.cc ------------------------------------------------------------------

// Read-only numpy copy of an OrtValue tensor (used for tensor attributes).
PyObject* CopyTensorToNumpy(const OrtApi* api, const OrtValue* value, std::string* error);

// The kernel (kernel.cc; its attribute and conversion methods in attributes.cc
// and convert.cc) -------------------------------------------------------------

struct Kernel {
  const OrtApi* api = nullptr;
  OpDefPtr def;
  std::string where;  // "domain::Op (node 'name')" for messages
  // One value per attribute, in definition order (strong references).
  std::vector<PyObject*> attr_values;
  // Per node output: whether the node uses it, and its rank when the model
  // declares a shape (-1 otherwise).
  std::vector<bool> output_present;
  std::vector<int> output_rank;
  // Per node output: the declared dims (empty when unknown; < 0 for symbolic ones).
  std::vector<std::vector<int64_t>> output_dims;
  // Per node output: the element type the model declares (UNDEFINED if none).
  std::vector<ONNXTensorElementDataType> output_types;

  ~Kernel() {
    for (PyObject* value : attr_values) Py_XDECREF(value);
  }

  OrtStatusPtr Fail(OrtErrorCode code, const std::string& message) const {
    std::string text = "opbridge kernel host: " + where + ": " + message;
    return api->CreateStatus(code, text.c_str());
  }

  std::string Signature() const { return "expected signature: " + def->signature; }

  OrtStatusPtr Init(const OrtKernelInfo* info);
  OrtStatusPtr ReadAttribute(const OrtKernelInfo* info, const AttrDef& attr, PyObject** out);
  std::string ProbeAttributeKind(const OrtKernelInfo* info, const char* name);
  OrtStatusPtr Run(OrtKernelContext* context);
  OrtStatusPtr CallAndWrite(OrtKernelContext* context, PyObject* const* args, size_t n_positional,
                            size_t n_kwargs, size_t n_outputs, PyObject* out_arg);
  OrtStatusPtr MakeOutArgument(OrtKernelContext* context, size_t n_outputs, PyObject** out,
                               std::vector<PyObject*>* lent);
  OrtStatusPtr MakeInput(const OrtValue* value, size_t index, PyObject** out);
  OrtStatusPtr WriteOutput(OrtKernelContext* context, size_t index, PyObject* item);
};

}  // namespace opbridge_host

#endif  // OPBRIDGE_RUNTIME_HOST_KERNEL_H_
