// opbridge kernel host: shared declarations.
//
// The host is one shared object that is both the CPython extension module
// `opbridge.runtime._host_ext` and an ONNX Runtime custom-op library (it exports
// `RegisterCustomOps`). Python imports it first and fills the registry of kernel
// definitions; ONNX Runtime later dlopen()s the very same path, which yields the
// already-loaded image, so both sides see one registry.
//
// Locking rules:
//  * The registry is guarded by a std::mutex and never touches Python objects'
//    reference counts while holding it, so RegisterCustomOps (called by ORT
//    without the GIL) never needs the GIL.
//  * Every place that may drop the last reference to an OpDef holds the GIL,
//    because OpDef owns Python references.
#ifndef OPBRIDGE_RUNTIME_HOST_HOST_H_
#define OPBRIDGE_RUNTIME_HOST_HOST_H_

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef NPY_NO_DEPRECATED_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#endif
// All translation units share one numpy C-API table; only module.cc imports it.
#define PY_ARRAY_UNIQUE_SYMBOL opbridge_host_ARRAY_API
#ifndef OPBRIDGE_HOST_IMPORTS_NUMPY
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "onnxruntime_c_api.h"

namespace opbridge_host {

// Attribute kinds, in the order the Python side encodes them.
enum class AttrKind : int {
  kInt = 0,
  kFloat = 1,
  kString = 2,
  kInts = 3,
  kFloats = 4,
  kStrings = 5,
  kTensor = 6,
};

// One input or output of a kernel definition.
struct IODef {
  std::string name;
  // Allowed element types; empty means any tensor type.
  std::vector<ONNXTensorElementDataType> types;
  bool optional = false;
  bool variadic = false;
};

// One attribute of a kernel definition.
struct AttrDef {
  std::string name;
  AttrKind kind = AttrKind::kInt;
  PyObject* default_value = nullptr;  // strong reference (may be Py_None)
  bool required = false;
};

// Everything the host knows about one (domain, op_type, version). Immutable once
// built; owns Python references, so it must be destroyed with the GIL held.
struct OpDef {
  std::string domain;
  std::string op_type;
  int version = 1;
  std::vector<IODef> inputs;
  std::vector<IODef> outputs;
  std::vector<AttrDef> attrs;
  PyObject* compute = nullptr;  // strong reference
  PyObject* kwnames = nullptr;  // strong reference: attribute names (+ "out", see writes_out)
  // The kernel takes `out=`: arrays over the outputs ORT allocates, when the model
  // declares their shapes, for it to write in place.
  bool writes_out = false;
  std::string signature;        // human readable, for error messages
  std::string layout;           // canonical I/O signature as ORT sees it

  OpDef() = default;
  OpDef(const OpDef&) = delete;
  OpDef& operator=(const OpDef&) = delete;
  ~OpDef();

  std::string QualifiedName() const { return domain + "::" + op_type; }
};

using OpDefPtr = std::shared_ptr<const OpDef>;

// Builds the canonical layout string of an OpDef (what ORT's schema depends on).
std::string LayoutOf(const OpDef& def);

// Registry (registry.cc) -----------------------------------------------------

// Adds or replaces the definition for (domain, op_type, version). Requires the GIL
// (the replaced definition may be destroyed here).
void InstallOpDef(OpDefPtr def);

// (domain, op_type, version) of every installed definition.
struct InstalledKey {
  std::string domain;
  std::string op_type;
  int version;
};
std::vector<InstalledKey> InstalledKeys();

using OpKey = std::pair<std::string, std::string>;  // (domain, op_type)

// What the calling thread's next RegisterCustomOps call registers (see registry.cc).
struct NextRegistration {
  // Per op: input element types of typed overloads (0 = leave that input generic).
  std::map<OpKey, std::set<std::vector<int>>> overloads;
  // Per op: the model's opset for its domain (newest version not above it).
  std::map<OpKey, int> versions;

  bool operator<(const NextRegistration& other) const {
    return std::tie(overloads, versions) < std::tie(other.overloads, other.versions);
  }
};
void SetNextRegistration(NextRegistration next);

// Number of kernels (one per ORT node instance) currently alive.
long LiveKernelCount();

// Element types (module.cc) --------------------------------------------------

// numpy dtype used for an ORT element type, or nullptr when the host does not
// support it. Borrowed reference.
PyArray_Descr* DescrFor(ONNXTensorElementDataType type);

// Human-readable name of an ORT element type ("float32", "str", ...).
const char* TypeName(ONNXTensorElementDataType type);

// Kernel (kernel.cc) -----------------------------------------------------------

// OrtCustomOp callbacks implemented in kernel.cc.
OrtStatusPtr ORT_API_CALL CreateKernelV2(const OrtCustomOp* op, const OrtApi* api,
                                         const OrtKernelInfo* info, void** kernel);
OrtStatusPtr ORT_API_CALL KernelComputeV2(void* kernel, OrtKernelContext* context);
void ORT_API_CALL KernelDestroy(void* kernel);

// The current definition behind one of the host's OrtCustomOp objects, and the
// layout that op object was registered with.
OpDefPtr CurrentDefFor(const OrtCustomOp* op, std::string* layout_out);

void NoteKernelCreated();

// Lent buffers (lifetime.cc) --------------------------------------------------

// Hooks ndarray's tp_alloc/tp_free so that BirthScope can see the arrays a kernel
// makes. Called once, when the module is imported.
bool InstallArrayHooks();

// Records every ndarray allocated on this thread while it lives (one kernel
// call). Requires the GIL for its whole life.
class BirthScope {
 public:
  BirthScope();
  ~BirthScope();
  BirthScope(const BirthScope&) = delete;
  BirthScope& operator=(const BirthScope&) = delete;

  void Add(PyObject* array);
  // Arrays born in this scope that are still alive.
  std::vector<PyObject*> Survivors() const;

 private:
  BirthScope* outer_;
  std::vector<PyObject*> born_;
};

// A C-contiguous numpy array over `data` that ORT owns: read-only (its base is a
// marker object, so the flag cannot be turned back on) unless `writable`.
PyObject* LendArray(PyArray_Descr* descr, int nd, npy_intp* dims, void* data, bool writable);

// After the call: when anything still references `lent` (directly, as the base of
// a derived view, or from a tensor's storage), gives `lent` and every surviving
// array of `scope` that points into its buffer a private copy of the data.
// Returns 1 when it did, 0 when nothing was kept, -1 with a Python error set.
int ReclaimLent(PyObject* lent, const BirthScope& scope);
void NoteKernelDestroyed();

}  // namespace opbridge_host

#endif  // OPBRIDGE_RUNTIME_HOST_HOST_H_
