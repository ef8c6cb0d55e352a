// opbridge kernel host: a node's attributes as Python values, read once when ORT
// creates the kernel and handed to every call.
#include <cstring>
#include <string>
#include <vector>

#include "kernel.h"

namespace opbridge_host {

// Which attribute kind the node carries under `name`: "" when it has none, a
// KindName(), or "list" for an empty list (whose element kind ORT cannot tell).
// ORT's scalar and tensor getters check the attribute's type, but its list
// getters do not (they read the requested repeated field, empty for any other
// type), so list kinds are told apart by which list is non-empty.
std::string Kernel::ProbeAttributeKind(const OrtKernelInfo* info, const char* name) {
  auto ok = [this](OrtStatusPtr status) { return !Status(api, status); };
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

}  // namespace opbridge_host
