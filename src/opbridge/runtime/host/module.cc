// opbridge kernel host: the CPython module `opbridge.runtime._host_ext`.
//
// Python-facing surface (used by opbridge/runtime/_host.py, which validates and
// normalizes KernelSpec objects first):
//   install(defs)      add or replace kernel definitions (see ParseOpDef)
//   installed()        [(domain, op_type, version), ...]
//   set_next_registration(overloads, versions)
//                      what this thread's next RegisterCustomOps call registers
//   live_kernels()     number of ORT kernel instances alive (for leak tests)
//   ORT_API_VERSION    ORT C API version the host was compiled against
//   bfloat16_dtype     numpy dtype used for bfloat16 (ml_dtypes) or uint16
#define OPBRIDGE_HOST_IMPORTS_NUMPY
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "host.h"

namespace opbridge_host {
namespace {

// numpy dtype per ORT element type (strong references, process lifetime).
constexpr int kMaxElementType = 32;
PyArray_Descr* g_descr[kMaxElementType] = {};

bool InitDescrTable() {
  struct Entry {
    ONNXTensorElementDataType type;
    int npy_type;
  };
  const Entry entries[] = {
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, NPY_FLOAT32},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, NPY_FLOAT64},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, NPY_HALF},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, NPY_INT8},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16, NPY_INT16},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, NPY_INT32},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, NPY_INT64},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, NPY_UINT8},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16, NPY_UINT16},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32, NPY_UINT32},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64, NPY_UINT64},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL, NPY_BOOL},
  };
  for (const Entry& entry : entries) {
    g_descr[entry.type] = PyArray_DescrFromType(entry.npy_type);
    if (g_descr[entry.type] == nullptr) return false;
  }
  // numpy has no bfloat16; ml_dtypes (installed with onnx) provides one. Without
  // it, bfloat16 tensors are exposed as their raw uint16 bit patterns.
  PyArray_Descr* bfloat16 = nullptr;
  PyObject* ml_dtypes = PyImport_ImportModule("ml_dtypes");
  if (ml_dtypes != nullptr) {
    PyObject* scalar_type = PyObject_GetAttrString(ml_dtypes, "bfloat16");
    if (scalar_type != nullptr && PyArray_DescrConverter(scalar_type, &bfloat16) != NPY_SUCCEED) {
      bfloat16 = nullptr;
    }
    Py_XDECREF(scalar_type);
    Py_DECREF(ml_dtypes);
  }
  PyErr_Clear();
  if (bfloat16 == nullptr) bfloat16 = PyArray_DescrFromType(NPY_UINT16);
  g_descr[ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16] = bfloat16;
  return bfloat16 != nullptr;
}

bool Supported(int type) {
  return type == ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING ||
         (type > 0 && type < kMaxElementType && g_descr[type] != nullptr);
}

// Parses (name, types, optional, variadic).
bool ParseIO(PyObject* item, IODef* out) {
  const char* name = nullptr;
  PyObject* types = nullptr;
  int optional = 0, variadic = 0;
  if (!PyArg_ParseTuple(item, "sOpp", &name, &types, &optional, &variadic)) return false;
  out->name = name;
  out->optional = optional != 0;
  out->variadic = variadic != 0;
  PyObject* seq = PySequence_Fast(types, "types must be a sequence of ints");
  if (seq == nullptr) return false;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); ++i) {
    long type = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
    if (type == -1 && PyErr_Occurred()) {
      Py_DECREF(seq);
      return false;
    }
    if (!Supported(static_cast<int>(type))) {
      Py_DECREF(seq);
      PyErr_Format(PyExc_ValueError, "element type %ld of '%s' is not supported", type, name);
      return false;
    }
    out->types.push_back(static_cast<ONNXTensorElementDataType>(type));
  }
  Py_DECREF(seq);
  return true;
}

bool ParseIOList(PyObject* list, std::vector<IODef>* out, const char* what) {
  PyObject* seq = PySequence_Fast(list, "inputs/outputs must be sequences");
  if (seq == nullptr) return false;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  for (Py_ssize_t i = 0; i < n; ++i) {
    IODef io;
    if (!ParseIO(PySequence_Fast_GET_ITEM(seq, i), &io)) {
      Py_DECREF(seq);
      return false;
    }
    if (io.variadic && i != n - 1) {
      Py_DECREF(seq);
      PyErr_Format(PyExc_ValueError, "only the last %s may be variadic ('%s' is not last)", what,
                   io.name.c_str());
      return false;
    }
    out->push_back(std::move(io));
  }
  Py_DECREF(seq);
  return true;
}

// Parses (domain, op_type, version, inputs, outputs, attrs, compute, signature),
// attrs being [(name, kind, default, required), ...].
std::shared_ptr<OpDef> ParseOpDef(PyObject* item) {
  const char *domain = nullptr, *op_type = nullptr, *signature = nullptr;
  int version = 0;
  PyObject *inputs = nullptr, *outputs = nullptr, *attrs = nullptr, *compute = nullptr;
  if (!PyArg_ParseTuple(item, "ssiOOOOs", &domain, &op_type, &version, &inputs, &outputs, &attrs,
                        &compute, &signature)) {
    return nullptr;
  }
  if (!PyCallable_Check(compute)) {
    PyErr_Format(PyExc_TypeError, "compute of %s::%s is not callable", domain, op_type);
    return nullptr;
  }
  if (version < 1) {
    PyErr_Format(PyExc_ValueError, "version of %s::%s must be >= 1", domain, op_type);
    return nullptr;
  }
  auto def = std::make_shared<OpDef>();
  def->domain = domain;
  def->op_type = op_type;
  def->version = version;
  def->signature = signature;
  Py_INCREF(compute);
  def->compute = compute;
  if (!ParseIOList(inputs, &def->inputs, "input") ||
      !ParseIOList(outputs, &def->outputs, "output")) {
    return nullptr;
  }
  if (def->outputs.empty()) {
    PyErr_Format(PyExc_ValueError, "%s::%s declares no outputs", domain, op_type);
    return nullptr;
  }

  PyObject* seq = PySequence_Fast(attrs, "attributes must be a sequence");
  if (seq == nullptr) return nullptr;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  def->kwnames = PyTuple_New(n);
  if (def->kwnames == nullptr) {
    Py_DECREF(seq);
    return nullptr;
  }
  for (Py_ssize_t i = 0; i < n; ++i) {
    const char* name = nullptr;
    int kind = 0, required = 0;
    PyObject* default_value = nullptr;
    if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "siOp", &name, &kind, &default_value,
                          &required)) {
      Py_DECREF(seq);
      return nullptr;
    }
    if (kind < static_cast<int>(AttrKind::kInt) || kind > static_cast<int>(AttrKind::kTensor)) {
      Py_DECREF(seq);
      PyErr_Format(PyExc_ValueError, "attribute '%s' has unknown kind %d", name, kind);
      return nullptr;
    }
    AttrDef attr;
    attr.name = name;
    attr.kind = static_cast<AttrKind>(kind);
    attr.required = required != 0;
    Py_INCREF(default_value);
    attr.default_value = default_value;
    def->attrs.push_back(attr);
    PyObject* key = PyUnicode_FromString(name);
    if (key == nullptr) {
      Py_DECREF(seq);
      return nullptr;
    }
    PyTuple_SET_ITEM(def->kwnames, i, key);
  }
  Py_DECREF(seq);
  def->layout = LayoutOf(*def);
  return def;
}

PyObject* Install(PyObject*, PyObject* arg) {
  PyObject* seq = PySequence_Fast(arg, "install() takes a sequence of kernel definitions");
  if (seq == nullptr) return nullptr;
  // Parse everything first so that one bad definition installs nothing.
  std::vector<std::shared_ptr<OpDef>> defs;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); ++i) {
    std::shared_ptr<OpDef> def = ParseOpDef(PySequence_Fast_GET_ITEM(seq, i));
    if (def == nullptr) {
      Py_DECREF(seq);
      return nullptr;
    }
    defs.push_back(std::move(def));
  }
  Py_DECREF(seq);
  for (auto& def : defs) InstallOpDef(std::move(def));
  Py_RETURN_NONE;
}

PyObject* Installed(PyObject*, PyObject*) {
  std::vector<InstalledKey> keys = InstalledKeys();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(keys.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < keys.size(); ++i) {
    PyObject* entry =
        Py_BuildValue("(ssi)", keys[i].domain.c_str(), keys[i].op_type.c_str(), keys[i].version);
    if (entry == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), entry);
  }
  return list;
}

PyObject* LiveKernels(PyObject*, PyObject*) { return PyLong_FromLong(LiveKernelCount()); }

// Parses {(domain, op_type): value} with `parse(value, key)` for each entry.
template <typename Parse>
bool ParseOpMap(PyObject* mapping, const char* what, Parse parse) {
  if (mapping == Py_None) return true;
  if (!PyDict_Check(mapping)) {
    PyErr_Format(PyExc_TypeError, "%s must be a dict or None", what);
    return false;
  }
  PyObject *key = nullptr, *value = nullptr;
  Py_ssize_t pos = 0;
  while (PyDict_Next(mapping, &pos, &key, &value)) {
    const char *domain = nullptr, *op_type = nullptr;
    if (!PyArg_ParseTuple(key, "ss", &domain, &op_type)) return false;
    if (!parse(value, OpKey(domain, op_type))) return false;
  }
  return true;
}

// set_next_registration(overloads, versions): see NextRegistration.
PyObject* SetNextRegistrationPy(PyObject*, PyObject* args) {
  PyObject *overloads = nullptr, *versions = nullptr;
  if (!PyArg_ParseTuple(args, "OO", &overloads, &versions)) return nullptr;
  NextRegistration next;
  bool ok = ParseOpMap(overloads, "overloads", [&](PyObject* value, const OpKey& key) {
    auto& variants = next.overloads[key];
    PyObject* outer = PySequence_Fast(value, "overloads must be sequences of int tuples");
    if (outer == nullptr) return false;
    bool good = true;
    for (Py_ssize_t i = 0; good && i < PySequence_Fast_GET_SIZE(outer); ++i) {
      PyObject* inner = PySequence_Fast(PySequence_Fast_GET_ITEM(outer, i),
                                        "an overload is a sequence of element types");
      if (inner == nullptr) {
        good = false;
        break;
      }
      std::vector<int> types;
      for (Py_ssize_t j = 0; good && j < PySequence_Fast_GET_SIZE(inner); ++j) {
        long type = PyLong_AsLong(PySequence_Fast_GET_ITEM(inner, j));
        if (type == -1 && PyErr_Occurred()) {
          good = false;
        } else if (type != 0 && !Supported(static_cast<int>(type))) {
          PyErr_Format(PyExc_ValueError, "unsupported element type %ld", type);
          good = false;
        } else {
          types.push_back(static_cast<int>(type));
        }
      }
      Py_DECREF(inner);
      if (good) variants.insert(std::move(types));
    }
    Py_DECREF(outer);
    return good;
  });
  ok = ok && ParseOpMap(versions, "versions", [&](PyObject* value, const OpKey& key) {
    long version = PyLong_AsLong(value);
    if (version == -1 && PyErr_Occurred()) return false;
    next.versions[key] = static_cast<int>(version);
    return true;
  });
  if (!ok) return nullptr;
  SetNextRegistration(std::move(next));
  Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    {"install", Install, METH_O,
     "install(defs) -> None\n\nAdds or replaces kernel definitions for sessions created later."},
    {"installed", Installed, METH_NOARGS,
     "installed() -> list[tuple[str, str, int]]\n\n(domain, op_type, version) of each definition."},
    {"set_next_registration", SetNextRegistrationPy, METH_VARARGS,
     "set_next_registration(overloads, versions) -> None\n\nFor this thread's next "
     "RegisterCustomOps call only: typed overloads {(domain, op_type): [input element types, ...]} and the "
     "model's opset per op {(domain, op_type): version}; each may be None."},
    {"live_kernels", LiveKernels, METH_NOARGS,
     "live_kernels() -> int\n\nNumber of kernel instances ONNX Runtime currently holds."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {
    PyModuleDef_HEAD_INIT,
    "opbridge.runtime._host_ext",
    "opbridge kernel host: runs Python kernels inside ONNX Runtime (also an ORT custom-op "
    "library).",
    -1,
    kMethods,
};

}  // namespace

OpDef::~OpDef() {
  Py_XDECREF(compute);
  Py_XDECREF(kwnames);
  for (AttrDef& attr : attrs) Py_XDECREF(attr.default_value);
}

PyArray_Descr* DescrFor(ONNXTensorElementDataType type) {
  int index = static_cast<int>(type);
  return index > 0 && index < kMaxElementType ? g_descr[index] : nullptr;
}

const char* TypeName(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return "uint16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return "uint32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: return "uint64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING: return "str";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX64: return "complex64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX128: return "complex128";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED: return "undefined";
    default: return "an unsupported element type";
  }
}

}  // namespace opbridge_host

PyMODINIT_FUNC PyInit__host_ext(void) {
  import_array();  // returns NULL with an ImportError set on failure
  if (!opbridge_host::InitDescrTable() || !opbridge_host::InstallArrayHooks()) return nullptr;
  PyObject* module = PyModule_Create(&opbridge_host::kModule);
  if (module == nullptr) return nullptr;
  PyObject* bfloat16 =
      reinterpret_cast<PyObject*>(opbridge_host::DescrFor(ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16));
  Py_INCREF(bfloat16);
  if (PyModule_AddIntConstant(module, "ORT_API_VERSION", ORT_API_VERSION) < 0 ||
      PyModule_AddObject(module, "bfloat16_dtype", bfloat16) < 0) {
    Py_DECREF(bfloat16);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
