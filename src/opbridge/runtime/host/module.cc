// opbridge kernel host: the CPython module `opbridge.runtime._host_ext`.
//
// Python-facing surface (used by opbridge/runtime/_host.py, which validates and
// normalizes KernelSpec objects first):
//   install(defs)      add or replace kernel definitions (HostOpDef objects, see ParseOpDef)
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

// The extension reads kernel definitions by attribute name: the one declaration
// of their fields is `HostOpDef`, `HostPort` and `HostAttr` in
// opbridge/runtime/_host.py. A missing or mistyped field is a TypeError naming it.
class Fields {
 public:
  Fields(PyObject* obj, const char* what) : obj_(obj), what_(what) {}

  PyObject* Get(const char* name) {  // new reference, or nullptr with an error set
    PyObject* value = PyObject_GetAttrString(obj_, name);
    if (value == nullptr) {
      PyErr_Format(PyExc_TypeError, "%s has no field '%s' (see opbridge.runtime._host.%s)",
                   what_, name, what_);
    }
    return value;
  }
  bool Str(const char* name, std::string* out) {
    PyObject* value = Get(name);
    if (value == nullptr) return false;
    const char* utf8 = PyUnicode_Check(value) ? PyUnicode_AsUTF8(value) : nullptr;
    if (utf8 == nullptr) {
      PyErr_Clear();
      PyErr_Format(PyExc_TypeError, "%s.%s must be a str", what_, name);
    } else {
      *out = utf8;
    }
    Py_DECREF(value);
    return utf8 != nullptr;
  }
  bool Int(const char* name, long* out) {
    PyObject* value = Get(name);
    if (value == nullptr) return false;
    const bool is_int = PyLong_Check(value);
    *out = is_int ? PyLong_AsLong(value) : -1;
    Py_DECREF(value);
    if (*out == -1 && (PyErr_Occurred() || !is_int)) {
      PyErr_Clear();
      PyErr_Format(PyExc_TypeError, "%s.%s must be an int", what_, name);
      return false;
    }
    return true;
  }
  bool Bool(const char* name, bool* out) {
    PyObject* value = Get(name);
    if (value == nullptr) return false;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    if (truth < 0) return false;
    *out = truth != 0;
    return true;
  }

 private:
  PyObject* obj_;
  const char* what_;
};

// Calls `each(item)` for every element of the sequence field `name` of `obj`.
template <typename Each>
bool ForEach(Fields& fields, const char* name, Each each) {
  PyObject* value = fields.Get(name);
  if (value == nullptr) return false;
  PyObject* seq = PySequence_Fast(value, "a field that must be a sequence is not one");
  Py_DECREF(value);
  if (seq == nullptr) return false;
  bool ok = true;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  for (Py_ssize_t i = 0; ok && i < n; ++i) ok = each(PySequence_Fast_GET_ITEM(seq, i), i, n);
  Py_DECREF(seq);
  return ok;
}

// Parses a HostPort.
bool ParseIO(PyObject* item, IODef* out) {
  Fields fields(item, "HostPort");
  if (!fields.Str("name", &out->name) || !fields.Bool("optional", &out->optional) ||
      !fields.Bool("variadic", &out->variadic)) {
    return false;
  }
  return ForEach(fields, "types", [&](PyObject* type_obj, Py_ssize_t, Py_ssize_t) {
    long type = PyLong_AsLong(type_obj);
    if (type == -1 && PyErr_Occurred()) return false;
    if (!Supported(static_cast<int>(type))) {
      PyErr_Format(PyExc_ValueError, "element type %ld of '%s' is not supported", type,
                   out->name.c_str());
      return false;
    }
    out->types.push_back(static_cast<ONNXTensorElementDataType>(type));
    return true;
  });
}

bool ParseIOList(Fields& fields, const char* field, std::vector<IODef>* out, const char* what) {
  return ForEach(fields, field, [&](PyObject* item, Py_ssize_t i, Py_ssize_t n) {
    IODef io;
    if (!ParseIO(item, &io)) return false;
    if (io.variadic && i != n - 1) {
      PyErr_Format(PyExc_ValueError, "only the last %s may be variadic ('%s' is not last)", what,
                   io.name.c_str());
      return false;
    }
    out->push_back(std::move(io));
    return true;
  });
}

// Parses a HostOpDef.
std::shared_ptr<OpDef> ParseOpDef(PyObject* item) {
  auto def = std::make_shared<OpDef>();
  Fields fields(item, "HostOpDef");
  long version = 0;
  if (!fields.Str("domain", &def->domain) || !fields.Str("op_type", &def->op_type) ||
      !fields.Int("version", &version) || !fields.Str("signature", &def->signature) ||
      !fields.Bool("writes_out", &def->writes_out)) {
    return nullptr;
  }
  const char* domain = def->domain.c_str();
  const char* op_type = def->op_type.c_str();
  def->compute = fields.Get("compute");
  if (def->compute == nullptr) return nullptr;
  if (!PyCallable_Check(def->compute)) {
    PyErr_Format(PyExc_TypeError, "compute of %s::%s is not callable", domain, op_type);
    return nullptr;
  }
  if (version < 1) {
    PyErr_Format(PyExc_ValueError, "version of %s::%s must be >= 1", domain, op_type);
    return nullptr;
  }
  def->version = static_cast<int>(version);
  if (!ParseIOList(fields, "inputs", &def->inputs, "input") ||
      !ParseIOList(fields, "outputs", &def->outputs, "output")) {
    return nullptr;
  }
  if (def->outputs.empty()) {
    PyErr_Format(PyExc_ValueError, "%s::%s declares no outputs", domain, op_type);
    return nullptr;
  }
  std::vector<PyObject*> names;
  bool ok = ForEach(fields, "attributes", [&](PyObject* entry, Py_ssize_t, Py_ssize_t) {
    Fields attr_fields(entry, "HostAttr");
    AttrDef attr;
    long kind = 0;
    if (!attr_fields.Str("name", &attr.name) || !attr_fields.Int("kind", &kind) ||
        !attr_fields.Bool("required", &attr.required)) {
      return false;
    }
    if (kind < static_cast<long>(AttrKind::kInt) || kind > static_cast<long>(AttrKind::kTensor)) {
      PyErr_Format(PyExc_ValueError, "attribute '%s' has unknown kind %ld", attr.name.c_str(),
                   kind);
      return false;
    }
    attr.kind = static_cast<AttrKind>(kind);
    attr.default_value = attr_fields.Get("default");
    if (attr.default_value == nullptr) return false;
    def->attrs.push_back(attr);  // owns default_value from here on
    PyObject* key = PyUnicode_FromString(attr.name.c_str());
    if (key == nullptr) return false;
    names.push_back(key);
    return true;
  });
  // Keyword names of a call: the attributes, then `out` for kernels that take it.
  const size_t n_names = names.size() + (def->writes_out ? 1 : 0);
  def->kwnames = ok ? PyTuple_New(static_cast<Py_ssize_t>(n_names)) : nullptr;
  for (size_t i = 0; i < names.size(); ++i) {
    if (def->kwnames != nullptr) {
      PyTuple_SET_ITEM(def->kwnames, static_cast<Py_ssize_t>(i), names[i]);
    } else {
      Py_DECREF(names[i]);
    }
  }
  if (def->kwnames == nullptr) return nullptr;
  if (def->writes_out) {
    PyObject* out = PyUnicode_FromString("out");
    if (out == nullptr) return nullptr;
    PyTuple_SET_ITEM(def->kwnames, static_cast<Py_ssize_t>(names.size()), out);
  }
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
