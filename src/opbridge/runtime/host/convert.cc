// opbridge kernel host: OrtValue <-> numpy. Inputs are lent to Python as
// read-only arrays over ORT's buffers (lifetime.cc reclaims what a kernel keeps);
// each output is checked (dtype, rank, declared shape) and copied once into the
// buffer ORT allocates for it, or not at all when the kernel wrote it in place.
#include <cstring>
#include <string>
#include <vector>

#include "kernel.h"

namespace opbridge_host {

// Object array of Python str decoded from an ORT string tensor.
static PyObject* StringTensorToNumpy(const OrtApi* api, const OrtValue* value, int nd,
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

static bool IsStringKind(PyArrayObject* array) {
  char kind = PyArray_DESCR(array)->kind;
  return kind == 'U' || kind == 'S' || kind == 'O' || kind == 'T';
}

// numpy name of an array's dtype, for messages.
static std::string DtypeName(PyArrayObject* array) {
  Ref str(PyObject_Str(reinterpret_cast<PyObject*>(PyArray_DESCR(array))));
  const char* utf8 = str ? PyUnicode_AsUTF8(str.get()) : nullptr;
  if (utf8 == nullptr) {
    PyErr_Clear();
    return "?";
  }
  return utf8;
}

// Whether `array` can be written into an ORT tensor of element type `type`.
static bool Matches(PyArrayObject* array, ONNXTensorElementDataType type) {
  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING) return IsStringKind(array);
  PyArray_Descr* descr = DescrFor(type);
  return descr != nullptr && PyArray_EquivTypes(PyArray_DESCR(array), descr);
}

// The element type an array carries, from the host's point of view (UNDEFINED
// when it is none of the supported ones).
static ONNXTensorElementDataType ElementTypeOf(PyArrayObject* array) {
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
static bool Allowed(const IODef& io, PyArrayObject* array) {
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
      GilRelease unlocked;  // the result tuple owns every array meanwhile
      std::memcpy(target, source, nbytes);
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

}  // namespace opbridge_host
