// opbridge kernel host: kernel creation (attributes), Compute and the
// numpy <-> OrtValue conversions.
//
// Compute runs on whatever thread ORT chooses (the caller of Run, or an
// inter-op pool thread), always without the GIL, so it takes the GIL with
// PyGILState_Ensure. Inputs reach Python as read-only numpy views of ORT's own
// buffers; each output is validated and then copied once into the buffer ORT
// allocates for it.
#include <algorithm>
#include <cstring>
#include <exception>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "host.h"

namespace opbridge_host {
namespace {

// Outputs at least this large are copied with the GIL released, so that other
// Python threads (or other kernels) can run meanwhile.
constexpr size_t kReleaseGilCopyBytes = size_t{1} << 18;

// Upper bound on the Python traceback text carried in an ORT error.
constexpr size_t kMaxTracebackChars = 6000;

// The error text of a kernel interrupted by Ctrl-C (see opbridge/runtime/_session.py).
constexpr const char* kInterruptedMarker = "KeyboardInterrupt [opbridge:interrupted]";

bool PythonUsable() {
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

// Releases an OrtStatus and returns its message.
std::string TakeMessage(const OrtApi* api, OrtStatusPtr status) {
  std::string message = api->GetErrorMessage(status);
  api->ReleaseStatus(status);
  return message;
}

// "ValueError" for builtins, "module.QualName" for other exception types.
std::string ExceptionTypeName(PyObject* type) {
  std::string name = "Exception";
  Ref qualname(PyObject_GetAttrString(type, "__qualname__"));
  const char* utf8 = qualname && PyUnicode_Check(qualname.get()) ? PyUnicode_AsUTF8(qualname.get())
                                                                 : nullptr;
  if (utf8 != nullptr) name = utf8;
  Ref module(PyObject_GetAttrString(type, "__module__"));
  utf8 = module && PyUnicode_Check(module.get()) ? PyUnicode_AsUTF8(module.get()) : nullptr;
  if (utf8 != nullptr && std::strcmp(utf8, "builtins") != 0) name = std::string(utf8) + "." + name;
  PyErr_Clear();
  return name;
}

// Text of the pending Python exception ("ValueError: message" plus traceback);
// clears it.
std::string TakePythonError() {
  PyObject *type = nullptr, *value = nullptr, *traceback = nullptr;
  PyErr_Fetch(&type, &value, &traceback);
  PyErr_NormalizeException(&type, &value, &traceback);
  Ref type_ref(type), value_ref(value), tb_ref(traceback);
  if (type == nullptr) return "unknown Python error";

  std::string text = ExceptionTypeName(type);
  if (value != nullptr) {
    Ref str(PyObject_Str(value));
    const char* utf8 = str ? PyUnicode_AsUTF8(str.get()) : nullptr;
    if (utf8 != nullptr && *utf8 != '\0') {
      text += ": ";
      text += utf8;
    }
    PyErr_Clear();
  }
  if (traceback != nullptr) {
    Ref module(PyImport_ImportModule("traceback"));
    Ref lines(module ? PyObject_CallMethod(module.get(), "format_tb", "O", traceback) : nullptr);
    Ref empty(PyUnicode_FromString(""));
    Ref joined(lines && empty ? PyUnicode_Join(empty.get(), lines.get()) : nullptr);
    const char* utf8 = joined ? PyUnicode_AsUTF8(joined.get()) : nullptr;
    if (utf8 != nullptr) {
      std::string tb = utf8;
      if (tb.size() > kMaxTracebackChars) tb = "...\n" + tb.substr(tb.size() - kMaxTracebackChars);
      text += "\nPython traceback (most recent call last):\n" + tb;
    }
    PyErr_Clear();
  }
  return text;
}

const char* KindName(AttrKind kind) {
  switch (kind) {
    case AttrKind::kInt: return "int";
    case AttrKind::kFloat: return "float";
    case AttrKind::kString: return "str";
    case AttrKind::kInts: return "ints";
    case AttrKind::kFloats: return "floats";
    case AttrKind::kStrings: return "strs";
    case AttrKind::kTensor: return "tensor";
  }
  return "?";
}

std::string AllowedTypes(const IODef& io) {
  if (io.types.empty()) return "any";
  std::string text;
  for (size_t i = 0; i < io.types.size(); ++i) {
    if (i) text += "|";
    text += TypeName(io.types[i]);
  }
  return text;
}

// "(7, 3)" for a shape; symbolic dims (< 0) print as "?".
std::string ShapeText(const int64_t* dims, int rank) {
  std::string text = "(";
  for (int i = 0; i < rank; ++i) {
    if (i) text += ", ";
    text += dims[i] < 0 ? std::string("?") : std::to_string(dims[i]);
  }
  return text + (rank == 1 ? ",)" : ")");
}

bool TypeAllowed(const IODef& io, ONNXTensorElementDataType type) {
  return io.types.empty() || std::find(io.types.begin(), io.types.end(), type) != io.types.end();
}

// Spec index of the node input/output at `index` (the variadic one repeats).
size_t SpecIndex(const std::vector<IODef>& ports, size_t index) {
  if (index < ports.size()) return index;
  return ports.empty() ? 0 : ports.size() - 1;
}

bool HasVariadic(const std::vector<IODef>& ports) {
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

// Read-only numpy copy of an OrtValue tensor (used for tensor attributes).
PyObject* CopyTensorToNumpy(const OrtApi* api, const OrtValue* value, std::string* error);

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

OrtStatusPtr Kernel::Init(const OrtKernelInfo* info) {
  const OpDef& d = *def;
  // Element types the model gives the node's inputs, checked against the
  // allowed sets now so that a mismatch fails at session creation.
  size_t n_inputs = 0;
  if (OrtStatusPtr status = api->KernelInfo_GetInputCount(info, &n_inputs)) return status;
  for (size_t i = 0; i < n_inputs && !d.inputs.empty(); ++i) {
    const IODef& io = d.inputs[SpecIndex(d.inputs, i)];
    if (io.types.empty()) continue;
    OrtTypeInfo* type_info = nullptr;
    if (OrtStatusPtr status = api->KernelInfo_GetInputTypeInfo(info, i, &type_info)) {
      api->ReleaseStatus(status);  // absent optional input: nothing to check
      continue;
    }
    const OrtTensorTypeAndShapeInfo* tensor_info = nullptr;
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    OrtStatusPtr status = api->CastTypeInfoToTensorInfo(type_info, &tensor_info);
    if (status == nullptr && tensor_info != nullptr) {
      status = api->GetTensorElementType(tensor_info, &type);
    }
    api->ReleaseTypeInfo(type_info);
    if (status != nullptr) {
      api->ReleaseStatus(status);
      continue;
    }
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED && !TypeAllowed(io, type)) {
      return Fail(ORT_INVALID_GRAPH, "input " + std::to_string(i) + " ('" + io.name + "') is " +
                                         TypeName(type) + ", but the op accepts " +
                                         AllowedTypes(io) + "; " + Signature());
    }
  }

  // Which outputs the node uses, their declared rank and element type.
  size_t n_outputs = 0;
  if (OrtStatusPtr status = api->KernelInfo_GetOutputCount(info, &n_outputs)) return status;
  output_present.assign(n_outputs, true);
  output_rank.assign(n_outputs, -1);
  output_dims.assign(n_outputs, {});
  output_types.assign(n_outputs, ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED);
  for (size_t i = 0; i < n_outputs; ++i) {
    std::string name;
    OrtStatusPtr status = ReadString(
        [&](char* out, size_t* size) { return api->KernelInfo_GetOutputName(info, i, out, size); },
        &name);
    if (status != nullptr) {
      api->ReleaseStatus(status);
    } else if (name.empty()) {
      output_present[i] = false;
      continue;
    }
    OrtTypeInfo* type_info = nullptr;
    if (OrtStatusPtr s = api->KernelInfo_GetOutputTypeInfo(info, i, &type_info)) {
      api->ReleaseStatus(s);
      continue;
    }
    const OrtTensorTypeAndShapeInfo* tensor_info = nullptr;
    if (OrtStatusPtr s = api->CastTypeInfoToTensorInfo(type_info, &tensor_info)) {
      api->ReleaseStatus(s);
    } else if (tensor_info != nullptr) {
      size_t rank = 0;
      if (api->TensorTypeAndShape_HasShape(tensor_info)) {
        if (OrtStatusPtr s = api->GetDimensionsCount(tensor_info, &rank)) {
          api->ReleaseStatus(s);
        } else {
          output_rank[i] = static_cast<int>(rank);
          std::vector<int64_t> dims(rank);
          if (OrtStatusPtr s2 = api->GetDimensions(tensor_info, dims.data(), rank)) {
            api->ReleaseStatus(s2);
          } else {
            output_dims[i] = std::move(dims);  // -1 (or 0 from ORT) for symbolic dims
          }
        }
      }
      ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
      if (OrtStatusPtr s = api->GetTensorElementType(tensor_info, &type)) {
        api->ReleaseStatus(s);
      } else {
        output_types[i] = type;
        const IODef* io = d.outputs.empty() ? nullptr : &d.outputs[SpecIndex(d.outputs, i)];
        if (io != nullptr && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED &&
            !TypeAllowed(*io, type)) {
          api->ReleaseTypeInfo(type_info);
          return Fail(ORT_INVALID_GRAPH, "the model declares output " + std::to_string(i) +
                                             " ('" + io->name + "') as " + TypeName(type) +
                                             ", but the op produces " + AllowedTypes(*io) + "; " +
                                             Signature());
        }
      }
    }
    api->ReleaseTypeInfo(type_info);
  }

  // Attributes are read once per node and handed to every call.
  for (const AttrDef& attr : d.attrs) {
    PyObject* value = nullptr;
    if (OrtStatusPtr status = ReadAttribute(info, attr, &value)) return status;
    attr_values.push_back(value);
  }
  return nullptr;
}

// Which attribute kind the node carries under `name`: "" when it has none, a
// KindName(), or "list" for an empty list (whose element kind ORT cannot tell).
// ORT's scalar and tensor getters check the attribute's type, but its list
// getters do not (they read the requested repeated field, empty for any other
// type), so list kinds are told apart by which list is non-empty.
std::string Kernel::ProbeAttributeKind(const OrtKernelInfo* info, const char* name) {
  auto ok = [this](OrtStatusPtr status) {
    if (status == nullptr) return true;
    api->ReleaseStatus(status);
    return false;
  };
  size_t n_ints = 0;
  // Fails only when the node has no attribute of that name.
  if (!ok(api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &n_ints))) return "";
  int64_t i64 = 0;
  float f32 = 0;
  size_t size = 0;
  if (ok(api->KernelInfoGetAttribute_int64(info, name, &i64))) return "int";
  if (ok(api->KernelInfoGetAttribute_float(info, name, &f32))) return "float";
  if (ok(api->KernelInfoGetAttribute_string(info, name, nullptr, &size))) return "str";
  OrtAllocator* allocator = nullptr;
  if (!ok(api->GetAllocatorWithDefaultOptions(&allocator))) return "list";
  OrtValue* tensor = nullptr;
  if (ok(api->KernelInfoGetAttribute_tensor(info, name, allocator, &tensor))) {
    api->ReleaseValue(tensor);
    return "tensor";
  }
  if (n_ints > 0) return "ints";
  size_t n_floats = 0;
  if (ok(api->KernelInfoGetAttributeArray_float(info, name, nullptr, &n_floats)) && n_floats > 0) {
    return "floats";
  }
  size_t n_strings = 0;
  // With a null output pointer this only reports the count.
  if (ok(api->KernelInfoGetAttributeArray_string(info, name, allocator, nullptr, &n_strings)) &&
      n_strings > 0) {
    return "strs";
  }
  return "list";
}

OrtStatusPtr Kernel::ReadAttribute(const OrtKernelInfo* info, const AttrDef& attr,
                                   PyObject** out) {
  const char* name = attr.name.c_str();
  const std::string present = ProbeAttributeKind(info, name);
  if (present.empty()) {
    if (attr.required) {
      return Fail(ORT_INVALID_GRAPH, "the node lacks required attribute '" + attr.name + "' (" +
                                         KindName(attr.kind) + "); " + Signature());
    }
    Py_INCREF(attr.default_value);
    *out = attr.default_value;
    return nullptr;
  }
  const bool list_kind = attr.kind == AttrKind::kInts || attr.kind == AttrKind::kFloats ||
                         attr.kind == AttrKind::kStrings;
  if (present != KindName(attr.kind) && !(present == "list" && list_kind)) {
    return Fail(ORT_INVALID_GRAPH, "attribute '" + attr.name + "' is " + present +
                                       " on the node, but the op declares it " +
                                       KindName(attr.kind) + "; " + Signature());
  }

  OrtStatusPtr status = nullptr;
  Ref value;
  switch (attr.kind) {
    case AttrKind::kInt: {
      int64_t v = 0;
      status = api->KernelInfoGetAttribute_int64(info, name, &v);
      if (!status) value = Ref(PyLong_FromLongLong(v));
      break;
    }
    case AttrKind::kFloat: {
      float v = 0;
      status = api->KernelInfoGetAttribute_float(info, name, &v);
      if (!status) value = Ref(PyFloat_FromDouble(v));
      break;
    }
    case AttrKind::kString: {
      std::string v;
      status = ReadString(
          [&](char* o, size_t* size) {
            return api->KernelInfoGetAttribute_string(info, name, o, size);
          },
          &v);
      if (!status) value = Ref(PyUnicode_DecodeUTF8(v.data(), v.size(), nullptr));
      break;
    }
    case AttrKind::kInts: {
      size_t size = 0;
      status = api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size);
      std::vector<int64_t> v(size);
      if (!status && size) status = api->KernelInfoGetAttributeArray_int64(info, name, v.data(), &size);
      if (!status) {
        value = Ref(PyList_New(static_cast<Py_ssize_t>(size)));
        for (size_t i = 0; value && i < size; ++i) {
          PyList_SET_ITEM(value.get(), i, PyLong_FromLongLong(v[i]));
        }
      }
      break;
    }
    case AttrKind::kFloats: {
      size_t size = 0;
      status = api->KernelInfoGetAttributeArray_float(info, name, nullptr, &size);
      std::vector<float> v(size);
      if (!status && size) status = api->KernelInfoGetAttributeArray_float(info, name, v.data(), &size);
      if (!status) {
        value = Ref(PyList_New(static_cast<Py_ssize_t>(size)));
        for (size_t i = 0; value && i < size; ++i) {
          PyList_SET_ITEM(value.get(), i, PyFloat_FromDouble(v[i]));
        }
      }
      break;
    }
    case AttrKind::kStrings: {
      OrtAllocator* allocator = nullptr;
      status = api->GetAllocatorWithDefaultOptions(&allocator);
      char** strings = nullptr;
      size_t size = 0;
      if (!status) {
        status = api->KernelInfoGetAttributeArray_string(info, name, allocator, &strings, &size);
      }
      if (!status) {
        value = Ref(PyList_New(static_cast<Py_ssize_t>(size)));
        for (size_t i = 0; i < size; ++i) {
          if (value) {
            PyObject* s = PyUnicode_DecodeUTF8(strings[i], std::strlen(strings[i]), nullptr);
            if (s == nullptr) {
              value = Ref();
            } else {
              PyList_SET_ITEM(value.get(), i, s);
            }
          }
          allocator->Free(allocator, strings[i]);
        }
        if (strings != nullptr) allocator->Free(allocator, strings);
      }
      break;
    }
    case AttrKind::kTensor: {
      OrtAllocator* allocator = nullptr;
      status = api->GetAllocatorWithDefaultOptions(&allocator);
      OrtValue* tensor = nullptr;
      if (!status) status = api->KernelInfoGetAttribute_tensor(info, name, allocator, &tensor);
      if (!status) {
        std::string error;
        value = Ref(CopyTensorToNumpy(api, tensor, &error));
        api->ReleaseValue(tensor);
        if (!value && !error.empty()) {
          return Fail(ORT_INVALID_GRAPH, "tensor attribute '" + attr.name + "': " + error);
        }
      }
      break;
    }
  }

  if (status != nullptr) {
    return Fail(ORT_INVALID_GRAPH,
                "cannot read attribute '" + attr.name + "': " + TakeMessage(api, status));
  }
  if (!value) {
    if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
      return Fail(ORT_INVALID_GRAPH, "string attribute '" + attr.name +
                                         "' is not valid UTF-8 text (" + TakePythonError() +
                                         "); ONNX string attributes must be UTF-8");
    }
    return Fail(ORT_FAIL, "cannot convert attribute '" + attr.name + "': " + TakePythonError());
  }
  *out = value.release();
  return nullptr;
}

// Object array of Python str decoded from an ORT string tensor.
PyObject* StringTensorToNumpy(const OrtApi* api, const OrtValue* value, int nd,
                              npy_intp* dims, size_t count, std::string* error) {
  size_t total = 0;
  std::vector<char> buffer;
  std::vector<size_t> offsets(count);
  if (count > 0) {
    if (OrtStatusPtr status = api->GetStringTensorDataLength(value, &total)) {
      *error = TakeMessage(api, status);
      return nullptr;
    }
    buffer.resize(total + 1);
    if (OrtStatusPtr status =
            api->GetStringTensorContent(value, buffer.data(), total, offsets.data(), count)) {
      *error = TakeMessage(api, status);
      return nullptr;
    }
  }
  Ref array(PyArray_SimpleNew(nd, dims, NPY_OBJECT));
  if (!array) return nullptr;
  auto** items = static_cast<PyObject**>(PyArray_DATA(reinterpret_cast<PyArrayObject*>(array.get())));
  for (size_t i = 0; i < count; ++i) {
    size_t begin = offsets[i];
    size_t end = i + 1 < count ? offsets[i + 1] : total;
    PyObject* s = PyUnicode_DecodeUTF8(buffer.data() + begin, static_cast<Py_ssize_t>(end - begin),
                                       "surrogateescape");
    if (s == nullptr) return nullptr;
    Py_XDECREF(items[i]);
    items[i] = s;
  }
  return array.release();
}

PyObject* CopyTensorToNumpy(const OrtApi* api, const OrtValue* value, std::string* error) {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  const int64_t* shape = nullptr;
  size_t nd = 0;
  if (OrtStatusPtr status = api->GetTensorElementTypeAndShapeDataReference(value, &type, &shape, &nd)) {
    *error = TakeMessage(api, status);
    return nullptr;
  }
  if (nd > NPY_MAXDIMS) {
    *error = "rank " + std::to_string(nd) + " exceeds numpy's limit";
    return nullptr;
  }
  npy_intp dims[NPY_MAXDIMS];
  size_t count = 1;
  for (size_t i = 0; i < nd; ++i) {
    dims[i] = static_cast<npy_intp>(shape[i]);
    count *= static_cast<size_t>(shape[i]);
  }
  PyObject* array = nullptr;
  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING) {
    array = StringTensorToNumpy(api, value, static_cast<int>(nd), dims, count, error);
  } else {
    PyArray_Descr* descr = DescrFor(type);
    if (descr == nullptr) {
      *error = std::string("element type ") + TypeName(type) + " is not supported";
      return nullptr;
    }
    Py_INCREF(descr);
    array = PyArray_NewFromDescr(&PyArray_Type, descr, static_cast<int>(nd), dims, nullptr,
                                 nullptr, 0, nullptr);
    if (array == nullptr) return nullptr;
    size_t nbytes = static_cast<size_t>(PyArray_NBYTES(reinterpret_cast<PyArrayObject*>(array)));
    if (nbytes > 0) {
      const void* data = nullptr;
      if (OrtStatusPtr status = api->GetTensorData(value, &data)) {
        Py_DECREF(array);
        *error = TakeMessage(api, status);
        return nullptr;
      }
      std::memcpy(PyArray_DATA(reinterpret_cast<PyArrayObject*>(array)), data, nbytes);
    }
  }
  if (array != nullptr) {
    // Shared by every call of the kernel: keep kernels from mutating it.
    PyArray_CLEARFLAGS(reinterpret_cast<PyArrayObject*>(array), NPY_ARRAY_WRITEABLE);
  }
  return array;
}

OrtStatusPtr Kernel::MakeInput(const OrtValue* value, size_t index, PyObject** out) {
  const IODef& io = def->inputs[SpecIndex(def->inputs, index)];
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  const int64_t* shape = nullptr;
  size_t nd = 0;
  if (OrtStatusPtr status = api->GetTensorElementTypeAndShapeDataReference(value, &type, &shape, &nd)) {
    return Fail(ORT_INVALID_ARGUMENT, "input " + std::to_string(index) + " ('" + io.name +
                                          "') is not a tensor: " + TakeMessage(api, status));
  }
  if (!TypeAllowed(io, type)) {
    return Fail(ORT_INVALID_ARGUMENT, "input " + std::to_string(index) + " ('" + io.name +
                                          "') is " + TypeName(type) + ", but the op accepts " +
                                          AllowedTypes(io) + "; " + Signature());
  }
  if (nd > NPY_MAXDIMS) {
    return Fail(ORT_INVALID_ARGUMENT, "input " + std::to_string(index) + " has rank " +
                                          std::to_string(nd) + ", more than numpy supports");
  }
  npy_intp dims[NPY_MAXDIMS];
  size_t count = 1;
  for (size_t i = 0; i < nd; ++i) {
    dims[i] = static_cast<npy_intp>(shape[i]);
    count *= static_cast<size_t>(shape[i]);
  }

  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING) {
    std::string error;
    PyObject* array = StringTensorToNumpy(api, value, static_cast<int>(nd), dims, count, &error);
    if (array == nullptr) {
      if (error.empty()) error = TakePythonError();
      return Fail(ORT_FAIL, "cannot convert string input " + std::to_string(index) + ": " + error);
    }
    PyArray_CLEARFLAGS(reinterpret_cast<PyArrayObject*>(array), NPY_ARRAY_WRITEABLE);
    *out = array;
    return nullptr;
  }

  PyArray_Descr* descr = DescrFor(type);
  if (descr == nullptr) {
    return Fail(ORT_NOT_IMPLEMENTED, std::string("input element type ") + TypeName(type) +
                                         " is not supported by the kernel host");
  }
  const void* data = nullptr;
  if (count > 0) {
    if (OrtStatusPtr status = api->GetTensorData(value, &data)) {
      return Fail(ORT_FAIL, "cannot read input " + std::to_string(index) + ": " +
                                TakeMessage(api, status));
    }
  }
  // Zero-copy, read-only view of ORT's buffer; Run reclaims it after the call.
  PyObject* array = LendArray(descr, static_cast<int>(nd), dims, const_cast<void*>(data),
                              /*writable=*/false);
  if (array == nullptr) {
    return Fail(ORT_FAIL, "cannot wrap input " + std::to_string(index) + ": " + TakePythonError());
  }
  *out = array;
  return nullptr;
}

bool IsStringKind(PyArrayObject* array) {
  char kind = PyArray_DESCR(array)->kind;
  return kind == 'U' || kind == 'S' || kind == 'O' || kind == 'T';
}

// numpy name of an array's dtype, for messages.
std::string DtypeName(PyArrayObject* array) {
  Ref str(PyObject_Str(reinterpret_cast<PyObject*>(PyArray_DESCR(array))));
  const char* utf8 = str ? PyUnicode_AsUTF8(str.get()) : nullptr;
  if (utf8 == nullptr) {
    PyErr_Clear();
    return "?";
  }
  return utf8;
}

// Whether `array` can be written into an ORT tensor of element type `type`.
bool Matches(PyArrayObject* array, ONNXTensorElementDataType type) {
  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING) return IsStringKind(array);
  PyArray_Descr* descr = DescrFor(type);
  return descr != nullptr && PyArray_EquivTypes(PyArray_DESCR(array), descr);
}

// The element type an array carries, from the host's point of view (UNDEFINED
// when it is none of the supported ones).
ONNXTensorElementDataType ElementTypeOf(PyArrayObject* array) {
  if (IsStringKind(array)) return ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING;
  PyArray_Descr* descr = PyArray_DESCR(array);
  if (!PyTypeNum_ISUSERDEF(descr->type_num) && PyArray_ISNOTSWAPPED(array)) {
    const npy_intp size = PyArray_ITEMSIZE(array);
    switch (descr->kind) {
      case 'f':
        if (size == 2) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
        if (size == 4) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        if (size == 8) return ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
        break;
      case 'i':
        if (size == 1) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
        if (size == 2) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16;
        if (size == 4) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
        if (size == 8) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
        break;
      case 'u':
        if (size == 1) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
        if (size == 2) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16;
        if (size == 4) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32;
        if (size == 8) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64;
        break;
      case 'b':
        return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
      default:
        break;
    }
  }
  if (Matches(array, ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16)) {
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

// Whether `array` is acceptable for a port allowing `io.types`.
bool Allowed(const IODef& io, PyArrayObject* array) {
  if (io.types.empty()) return ElementTypeOf(array) != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  for (ONNXTensorElementDataType type : io.types) {
    if (Matches(array, type)) return true;
  }
  return false;
}

OrtStatusPtr Kernel::WriteOutput(OrtKernelContext* context, size_t index, PyObject* item) {
  const IODef& io = def->outputs[SpecIndex(def->outputs, index)];
  // Built only on the error paths: this function is on every call's hot path.
  auto label = [&] { return "output " + std::to_string(index) + " ('" + io.name + "')"; };

  Ref array_ref;
  if (PyArray_Check(item)) {
    Py_INCREF(item);
    array_ref = Ref(item);
  } else if (PyArray_IsScalar(item, Generic)) {
    // numpy scalars (e.g. from x.sum()) are 0-d arrays with a definite dtype.
    array_ref = Ref(PyArray_FromScalar(item, nullptr));
    if (!array_ref) return Fail(ORT_FAIL, label() + ": " + TakePythonError());
  } else {
    std::string got = item == Py_None ? "None" : Py_TYPE(item)->tp_name;
    return Fail(ORT_FAIL, label() + " must be a numpy.ndarray, got " + got + "; " + Signature());
  }
  auto* array = reinterpret_cast<PyArrayObject*>(array_ref.get());

  if (!Allowed(io, array)) {
    return Fail(ORT_FAIL, label() + " has dtype " + DtypeName(array) + ", but the op declares " +
                              AllowedTypes(io) + "; " + Signature());
  }
  int rank = PyArray_NDIM(array);
  if (index < output_rank.size() && output_rank[index] >= 0 && output_rank[index] != rank) {
    return Fail(ORT_FAIL, label() + " has rank " + std::to_string(rank) + ", but the model declares rank " +
                              std::to_string(output_rank[index]) + "; " + Signature());
  }

  int64_t dims[NPY_MAXDIMS];
  for (int i = 0; i < rank; ++i) dims[i] = static_cast<int64_t>(PyArray_DIM(array, i));
  if (index < output_dims.size() && static_cast<int>(output_dims[index].size()) == rank) {
    const std::vector<int64_t>& declared = output_dims[index];
    for (int i = 0; i < rank; ++i) {
      if (declared[i] > 0 && declared[i] != dims[i]) {
        return Fail(ORT_FAIL, label() + " has shape " + ShapeText(dims, rank) +
                                  ", but the model declares " + ShapeText(declared.data(), rank) +
                                  " (axis " + std::to_string(i) + "); " + Signature());
      }
    }
  }
  OrtValue* value = nullptr;
  if (OrtStatusPtr status = api->KernelContext_GetOutput(context, index, dims,
                                                         static_cast<size_t>(rank), &value)) {
    return Fail(ORT_FAIL, "cannot allocate " + label() + ": " + TakeMessage(api, status));
  }
  if (value == nullptr) return Fail(ORT_FAIL, "ORT gave no buffer for " + label());

  // The node's element type (from the model or ORT's inference) is what ORT
  // allocated; the result must match it exactly, no silent casts.
  ONNXTensorElementDataType ort_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  const int64_t* shape = nullptr;
  size_t nd = 0;
  if (OrtStatusPtr status = api->GetTensorElementTypeAndShapeDataReference(value, &ort_type, &shape, &nd)) {
    return Fail(ORT_FAIL, label() + ": " + TakeMessage(api, status));
  }
  if (!Matches(array, ort_type)) {
    return Fail(ORT_FAIL, label() + " has dtype " + DtypeName(array) + ", but the node's output is " +
                              TypeName(ort_type) + "; " + Signature());
  }

  if (ort_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING) {
    // ORT owns std::string elements; each is sized and then filled byte for
    // byte, so embedded NUL characters survive.
    Ref flat(PyArray_Ravel(array, NPY_CORDER));
    Ref items(flat ? PyArray_ToList(reinterpret_cast<PyArrayObject*>(flat.get())) : nullptr);
    if (!items) return Fail(ORT_FAIL, label() + ": " + TakePythonError());
    Py_ssize_t n = PyList_GET_SIZE(items.get());
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* element = PyList_GET_ITEM(items.get(), i);
      Ref encoded;
      if (PyUnicode_Check(element)) {
        encoded = Ref(PyUnicode_AsEncodedString(element, "utf-8", "surrogateescape"));
        if (!encoded) return Fail(ORT_FAIL, label() + ": " + TakePythonError());
      } else if (PyBytes_Check(element)) {
        Py_INCREF(element);
        encoded = Ref(element);
      } else {
        return Fail(ORT_FAIL, label() + " is a string output, but element " + std::to_string(i) +
                                  " is " + Py_TYPE(element)->tp_name + ", not str or bytes");
      }
      const size_t length = static_cast<size_t>(PyBytes_GET_SIZE(encoded.get()));
      char* buffer = nullptr;
      if (OrtStatusPtr status = api->GetResizedStringTensorElementBuffer(
              value, static_cast<size_t>(i), length, &buffer)) {
        return Fail(ORT_FAIL, label() + ": " + TakeMessage(api, status));
      }
      if (length > 0) std::memcpy(buffer, PyBytes_AS_STRING(encoded.get()), length);
    }
    return nullptr;
  }

  size_t nbytes = static_cast<size_t>(PyArray_NBYTES(array));
  if (nbytes == 0) return nullptr;
  void* target = nullptr;
  if (OrtStatusPtr status = api->GetTensorMutableData(value, &target)) {
    return Fail(ORT_FAIL, label() + ": " + TakeMessage(api, status));
  }
  const void* source = PyArray_DATA(array);
  if (source == target) return nullptr;  // already in place
  if (PyArray_IS_C_CONTIGUOUS(array)) {
    if (nbytes >= kReleaseGilCopyBytes) {
      PyThreadState* state = PyEval_SaveThread();
      std::memcpy(target, source, nbytes);
      PyEval_RestoreThread(state);
    } else {
      std::memcpy(target, source, nbytes);
    }
    return nullptr;
  }
  // Strided result (e.g. a transposed view): let numpy gather it into ORT's
  // buffer, still a single pass.
  PyArray_Descr* descr = PyArray_DESCR(array);
  Py_INCREF(descr);
  Ref destination(PyArray_NewFromDescr(&PyArray_Type, descr, rank, PyArray_DIMS(array), nullptr,
                                       target, NPY_ARRAY_CARRAY, nullptr));
  if (!destination ||
      PyArray_CopyInto(reinterpret_cast<PyArrayObject*>(destination.get()), array) < 0) {
    return Fail(ORT_FAIL, "cannot copy " + label() + ": " + TakePythonError());
  }
  return nullptr;
}

OrtStatusPtr Kernel::Run(OrtKernelContext* context) {
  const OpDef& d = *def;
  size_t n_inputs = 0;
  if (OrtStatusPtr status = api->KernelContext_GetInputCount(context, &n_inputs)) return status;
  size_t n_outputs = 0;
  if (OrtStatusPtr status = api->KernelContext_GetOutputCount(context, &n_outputs)) return status;

  // Positional arguments: one per declared input (None when absent), the
  // variadic one repeated once per node input it covers.
  const bool variadic_in = HasVariadic(d.inputs);
  const size_t n_fixed = d.inputs.size() - (variadic_in ? 1 : 0);
  const size_t n_positional = variadic_in ? std::max(n_inputs, n_fixed) : d.inputs.size();
  const size_t n_attrs = attr_values.size();

  // Slot 0 stays free so that the callee may use PY_VECTORCALL_ARGUMENTS_OFFSET.
  // Small calls (the common case) keep the argument array on the stack.
  const size_t n_kwargs = n_attrs + (d.writes_out ? 1 : 0);
  const size_t n_args = 1 + n_positional + n_kwargs;
  PyObject* stack_args[16];
  std::vector<PyObject*> heap_args;
  PyObject** args = stack_args;
  if (n_args > std::size(stack_args)) {
    heap_args.resize(n_args);
    args = heap_args.data();
  }
  std::fill(args, args + n_args, nullptr);
  struct ArgsGuard {
    PyObject** args;
    size_t n;
    ~ArgsGuard() {
      for (size_t i = 0; i < n; ++i) Py_XDECREF(args[i]);
    }
  } guard{args, n_args};

  for (size_t i = 0; i < n_positional; ++i) {
    const OrtValue* value = nullptr;
    if (i < n_inputs) {
      if (OrtStatusPtr status = api->KernelContext_GetInput(context, i, &value)) return status;
    }
    if (value == nullptr) {
      Py_INCREF(Py_None);
      args[1 + i] = Py_None;
      continue;
    }
    if (OrtStatusPtr status = MakeInput(value, i, &args[1 + i])) return status;
  }
  for (size_t j = 0; j < n_attrs; ++j) {
    PyObject* value = attr_values[j];
    // Lists are copied per call so that a kernel mutating one cannot affect the
    // next call.
    args[1 + n_positional + j] = PyList_Check(value) ? PyList_GetSlice(value, 0, PY_SSIZE_T_MAX)
                                                     : (Py_INCREF(value), value);
    if (args[1 + n_positional + j] == nullptr) return Fail(ORT_FAIL, TakePythonError());
  }

  // out=: arrays over the buffers ORT allocates for the outputs, when the model
  // declares all their shapes (else None, and the kernel returns new arrays).
  std::vector<PyObject*> lent_outputs;  // borrowed from the `out` argument
  if (d.writes_out) {
    PyObject** slot = &args[1 + n_positional + n_attrs];
    if (OrtStatusPtr status = MakeOutArgument(context, n_outputs, slot, &lent_outputs)) {
      return status;
    }
  }

  BirthScope scope;
  OrtStatusPtr status = CallAndWrite(context, args + 1, n_positional, n_kwargs, n_outputs,
                                     d.writes_out ? args[1 + n_positional + n_attrs] : nullptr);
  for (PyObject* array : lent_outputs) {
    // A kernel that kept `out` must not write into ORT's buffer later.
    if (ReclaimLent(array, scope) < 0) {
      if (status == nullptr) status = Fail(ORT_FAIL, TakePythonError());
      PyErr_Clear();
    }
  }

  // Every reference this call made is gone by now (the exception and its
  // traceback included); anything beyond ours means the kernel kept an input or
  // something derived from it, which must not see ORT's memory once it is reused.
  for (size_t i = 0; i < n_positional; ++i) {
    PyObject* arg = args[1 + i];
    if (arg == Py_None || !PyArray_Check(arg) || PyArray_CHKFLAGS(reinterpret_cast<PyArrayObject*>(arg), NPY_ARRAY_OWNDATA)) continue;
    int kept = ReclaimLent(arg, scope);
    if (kept < 0) {
      if (status == nullptr) status = Fail(ORT_FAIL, TakePythonError());
      PyErr_Clear();
    } else if (kept > 0 && status == nullptr) {
      // Only successful calls warn: a failed call's frames may linger in a
      // reference cycle until the garbage collector runs.
      if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                           "opbridge kernel host: %s kept a reference to input %zu (or to an "
                           "array or tensor made from it) after returning; it now holds a private "
                           "copy, which costs a copy on every such call. Copy what a kernel keeps.",
                           where.c_str(), i) < 0) {
        status = Fail(ORT_FAIL, TakePythonError());
      }
    }
  }
  return status;
}

OrtStatusPtr Kernel::MakeOutArgument(OrtKernelContext* context, size_t n_outputs,
                                     PyObject** out, std::vector<PyObject*>* lent) {
  bool ready = n_outputs > 0;
  for (size_t j = 0; ready && j < n_outputs; ++j) {
    if (!output_present[j]) continue;
    ready = output_rank[j] >= 0 && static_cast<int>(output_dims[j].size()) == output_rank[j] &&
            DescrFor(output_types[j]) != nullptr &&
            std::all_of(output_dims[j].begin(), output_dims[j].end(),
                        [](int64_t dim) { return dim >= 0; });
  }
  if (!ready) {
    Py_INCREF(Py_None);
    *out = Py_None;
    return nullptr;
  }
  Ref tuple(n_outputs > 1 ? PyTuple_New(static_cast<Py_ssize_t>(n_outputs)) : nullptr);
  if (n_outputs > 1 && !tuple) return Fail(ORT_FAIL, TakePythonError());
  Ref single;
  for (size_t j = 0; j < n_outputs; ++j) {
    Ref array;
    if (!output_present[j]) {
      Py_INCREF(Py_None);
      array = Ref(Py_None);
    } else {
      const std::vector<int64_t>& dims = output_dims[j];
      OrtValue* value = nullptr;
      if (OrtStatusPtr status =
              api->KernelContext_GetOutput(context, j, dims.data(), dims.size(), &value)) {
        return Fail(ORT_FAIL, "cannot allocate output " + std::to_string(j) + ": " +
                                  TakeMessage(api, status));
      }
      void* data = nullptr;
      if (OrtStatusPtr status = api->GetTensorMutableData(value, &data)) {
        return Fail(ORT_FAIL, "output " + std::to_string(j) + ": " + TakeMessage(api, status));
      }
      npy_intp np_dims[NPY_MAXDIMS];
      for (size_t i = 0; i < dims.size(); ++i) np_dims[i] = static_cast<npy_intp>(dims[i]);
      array = Ref(LendArray(DescrFor(output_types[j]), static_cast<int>(dims.size()), np_dims,
                            data, /*writable=*/true));
      if (!array) return Fail(ORT_FAIL, TakePythonError());
      lent->push_back(array.get());
    }
    if (n_outputs > 1) {
      PyTuple_SET_ITEM(tuple.get(), static_cast<Py_ssize_t>(j), array.release());
    } else {
      single = std::move(array);
    }
  }
  *out = n_outputs > 1 ? tuple.release() : single.release();
  return nullptr;
}

OrtStatusPtr Kernel::CallAndWrite(OrtKernelContext* context, PyObject* const* args,
                                  size_t n_positional, size_t n_kwargs, size_t n_outputs,
                                  PyObject* out_arg) {
  const OpDef& d = *def;
  Ref result(PyObject_Vectorcall(d.compute, args, n_positional | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                 n_kwargs == 0 ? nullptr : d.kwnames));
  if (!result) {
    if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
      PyErr_Clear();
      // opbridge.Session turns this marker back into KeyboardInterrupt.
      return Fail(ORT_RUNTIME_EXCEPTION, kInterruptedMarker);
    }
    return Fail(ORT_RUNTIME_EXCEPTION, "the kernel raised " + TakePythonError());
  }

  // The kernel wrote ORT's outputs through `out` and returned None.
  if (result.get() == Py_None && out_arg != nullptr && out_arg != Py_None) return nullptr;

  // A single array, or a tuple/list with one entry per output. A list is copied
  // into a tuple first: large outputs are copied without the GIL, and another
  // thread may change the kernel's list meanwhile.
  PyObject* single[1] = {result.get()};
  PyObject* const* items = single;
  size_t n_items = 1;
  const bool sequence = PyTuple_Check(result.get()) || PyList_Check(result.get());
  if (PyList_Check(result.get())) {
    result = Ref(PyList_AsTuple(result.get()));
    if (!result) return Fail(ORT_FAIL, TakePythonError());
  }
  if (sequence) {
    items = &PyTuple_GET_ITEM(result.get(), 0);
    n_items = static_cast<size_t>(PyTuple_GET_SIZE(result.get()));
  }
  const bool variadic_out = HasVariadic(d.outputs);
  const size_t expected = variadic_out ? n_outputs : d.outputs.size();
  if (n_items != expected) {
    std::string what = sequence ? std::to_string(n_items) + " values"
                                : std::string("1 value (") + Py_TYPE(result.get())->tp_name + ")";
    return Fail(ORT_FAIL, "the kernel returned " + what + ", expected " + std::to_string(expected) +
                              (variadic_out ? " (one per node output)" : "") + "; " + Signature());
  }
  for (size_t j = 0; j < n_outputs && j < n_items; ++j) {
    if (j < output_present.size() && !output_present[j]) continue;  // node does not use it
    if (OrtStatusPtr status = WriteOutput(context, j, items[j])) return status;
  }
  return nullptr;
}

// Releases a definition from a thread that does not hold the GIL: the last
// reference must be dropped under it, or leaked when Python is gone.
void DropWithoutGil(OpDefPtr def) {
  if (def == nullptr) return;
  if (!PythonUsable()) {
    (void)new OpDefPtr(std::move(def));  // deliberately leaked
    return;
  }
  PyGILState_STATE gil = PyGILState_Ensure();
  def.reset();
  PyGILState_Release(gil);
}

}  // namespace

OrtStatusPtr ORT_API_CALL CreateKernelV2(const OrtCustomOp* op, const OrtApi* api,
                                         const OrtKernelInfo* info, void** kernel_out) {
  *kernel_out = nullptr;
  std::string layout;
  OpDefPtr def = CurrentDefFor(op, &layout);
  std::string node_name;
  OrtStatusPtr name_status = ReadString(
      [&](char* out, size_t* size) { return api->KernelInfo_GetNodeName(info, out, size); },
      &node_name);
  if (name_status != nullptr) api->ReleaseStatus(name_status);
  std::string where = (def ? def->QualifiedName() : std::string("?")) + " (node '" + node_name + "')";

  if (def == nullptr || def->layout != layout) {
    DropWithoutGil(std::move(def));
    std::string message = "opbridge kernel host: " + where +
                          " was re-installed with a different signature after these "
                          "SessionOptions registered the host; register the host on new "
                          "SessionOptions";
    return api->CreateStatus(ORT_FAIL, message.c_str());
  }
  if (!PythonUsable()) {
    DropWithoutGil(std::move(def));
    return api->CreateStatus(ORT_FAIL, "opbridge kernel host: the Python interpreter is not running");
  }

  PyGILState_STATE gil = PyGILState_Ensure();
  OrtStatusPtr status = nullptr;
  Kernel* kernel = nullptr;
  try {
    kernel = new Kernel();
    kernel->api = api;
    kernel->def = std::move(def);
    kernel->where = std::move(where);
    status = kernel->Init(info);
  } catch (const std::exception& e) {
    status = api->CreateStatus(ORT_FAIL, (std::string("opbridge kernel host: ") + e.what()).c_str());
  }
  if (status != nullptr) {
    delete kernel;  // holds Python references: still under the GIL
    kernel = nullptr;
  }
  PyGILState_Release(gil);
  if (kernel != nullptr) {
    NoteKernelCreated();
    *kernel_out = kernel;
  }
  return status;
}

OrtStatusPtr ORT_API_CALL KernelComputeV2(void* opaque, OrtKernelContext* context) {
  auto* kernel = static_cast<Kernel*>(opaque);
  if (!PythonUsable()) {
    return kernel->Fail(ORT_FAIL, "the Python interpreter is shutting down");
  }
  PyGILState_STATE gil = PyGILState_Ensure();
  OrtStatusPtr status = nullptr;
  try {
    status = kernel->Run(context);
  } catch (const std::exception& e) {
    status = kernel->Fail(ORT_FAIL, e.what());
  }
  // No Python error may leak into whatever this thread runs next.
  if (PyErr_Occurred()) PyErr_Clear();
  PyGILState_Release(gil);
  return status;
}

void ORT_API_CALL KernelDestroy(void* opaque) {
  auto* kernel = static_cast<Kernel*>(opaque);
  if (kernel == nullptr) return;
  NoteKernelDestroyed();
  if (!PythonUsable()) return;  // interpreter gone: leak rather than touch it
  PyGILState_STATE gil = PyGILState_Ensure();
  delete kernel;
  PyGILState_Release(gil);
}

}  // namespace opbridge_host
