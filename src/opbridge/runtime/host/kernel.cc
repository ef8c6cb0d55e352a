// opbridge kernel host: the Kernel, one per ORT node: its creation (the node's
// types, shapes and attributes checked against the definition), Compute and
// ORT's callbacks.
//
// Compute runs on whatever thread ORT chooses (the caller of Run, or an
// inter-op pool thread), always without the GIL, so it takes the GIL with
// GilLock. Inputs are lent to the kernel (convert.cc, lifetime.cc); outputs are
// written into the buffers ORT allocates (through `out=`, or copied once).
#include <algorithm>
#include <exception>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernel.h"

namespace opbridge_host {

namespace {

// What the model declares for one node input or output.
struct Declared {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  int rank = -1;              // -1: no shape
  std::vector<int64_t> dims;  // < 0 (or 0 from ORT) for symbolic dims
};

// Reads a type info (which it releases); anything ORT cannot tell stays unknown.
Declared ReadDeclared(const OrtApi* api, OrtTypeInfo* raw) {
  Declared declared;
  const OrtTensorTypeAndShapeInfo* tensor_info = nullptr;
  if (!Status(api, api->CastTypeInfoToTensorInfo(raw, &tensor_info)) && tensor_info != nullptr) {
    if (Status(api, api->GetTensorElementType(tensor_info, &declared.type))) {
      declared.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    }
    size_t rank = 0;
    if (api->TensorTypeAndShape_HasShape(tensor_info) &&
        !Status(api, api->GetDimensionsCount(tensor_info, &rank))) {
      std::vector<int64_t> dims(rank);
      if (!Status(api, api->GetDimensions(tensor_info, dims.data(), rank))) {
        declared.rank = static_cast<int>(rank);
        declared.dims = std::move(dims);
      }
    }
  }
  api->ReleaseTypeInfo(raw);
  return declared;
}

}  // namespace

OrtStatusPtr Kernel::Init(const OrtKernelInfo* info) {
  const OpDef& d = *def;
  // Element types the model gives the node's inputs, checked against the
  // allowed sets now so that a mismatch fails at session creation.
  size_t n_inputs = 0;
  if (OrtStatusPtr status = api->KernelInfo_GetInputCount(info, &n_inputs)) return status;
  // Whether every input has a static shape in the model. When one is dynamic, a
  // static shape declared on an output may be the example's size an exporter wrote
  // while tracing (TorchScript does), so outputs are then only checked by rank.
  bool inputs_static = true;
  for (size_t i = 0; i < n_inputs && !d.inputs.empty(); ++i) {
    const IODef& io = d.inputs[SpecIndex(d.inputs, i)];
    OrtTypeInfo* type_info = nullptr;
    if (Status absent{api, api->KernelInfo_GetInputTypeInfo(info, i, &type_info)}) {
      continue;  // an absent optional input: nothing to check
    }
    const Declared declared = ReadDeclared(api, type_info);
    inputs_static = inputs_static && declared.rank >= 0 &&
                    std::all_of(declared.dims.begin(), declared.dims.end(),
                                [](int64_t dim) { return dim > 0; });
    const ONNXTensorElementDataType type = declared.type;
    if (io.types.empty()) continue;
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED && !TypeAllowed(io, type)) {
      return Fail(ORT_INVALID_GRAPH, "input " + std::to_string(i) + " ('" + io.name + "') is " +
                                         TypeName(type) + ", but the op accepts " +
                                         AllowedTypes(io) + "; " + Signature());
    }
  }

  // Which outputs the node uses, their declared shape and element type.
  size_t n_outputs = 0;
  if (OrtStatusPtr status = api->KernelInfo_GetOutputCount(info, &n_outputs)) return status;
  output_present.assign(n_outputs, true);
  output_rank.assign(n_outputs, -1);
  output_dims.assign(n_outputs, {});
  output_types.assign(n_outputs, ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED);
  for (size_t i = 0; i < n_outputs; ++i) {
    std::string name;
    Status no_name(api, ReadString(
                            [&](char* out, size_t* size) {
                              return api->KernelInfo_GetOutputName(info, i, out, size);
                            },
                            &name));
    if (!no_name && name.empty()) {
      output_present[i] = false;
      continue;
    }
    OrtTypeInfo* type_info = nullptr;
    if (Status unknown{api, api->KernelInfo_GetOutputTypeInfo(info, i, &type_info)}) continue;
    Declared declared = ReadDeclared(api, type_info);
    output_types[i] = declared.type;
    output_rank[i] = declared.rank;
    if (inputs_static) output_dims[i] = std::move(declared.dims);
    const IODef* io = d.outputs.empty() ? nullptr : &d.outputs[SpecIndex(d.outputs, i)];
    if (io != nullptr && declared.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED &&
        !TypeAllowed(*io, declared.type)) {
      return Fail(ORT_INVALID_GRAPH, "the model declares output " + std::to_string(i) + " ('" +
                                         io->name + "') as " + TypeName(declared.type) +
                                         ", but the op produces " + AllowedTypes(*io) + "; " +
                                         Signature());
    }
  }

  // Attributes are read once per node and handed to every call.
  for (const AttrDef& attr : d.attrs) {
    PyObject* value = nullptr;
    if (OrtStatusPtr status = ReadAttribute(info, attr, &value)) return status;
    attr_values.push_back(value);
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

namespace {

// Releases a definition from a thread that does not hold the GIL: the last
// reference must be dropped under it, or leaked when Python is gone.
void DropWithoutGil(OpDefPtr def) {
  if (def == nullptr) return;
  if (!PythonUsable()) {
    (void)new OpDefPtr(std::move(def));  // deliberately leaked
    return;
  }
  GilLock gil;
  def.reset();
}

}  // namespace

OrtStatusPtr ORT_API_CALL CreateKernelV2(const OrtCustomOp* op, const OrtApi* api,
                                         const OrtKernelInfo* info, void** kernel_out) {
  *kernel_out = nullptr;
  std::string layout;
  OpDefPtr def = CurrentDefFor(op, &layout);
  std::string node_name;
  Status name_status(api, ReadString(
      [&](char* out, size_t* size) { return api->KernelInfo_GetNodeName(info, out, size); },
      &node_name));  // no name: messages say ''

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

  std::unique_ptr<Kernel> kernel;
  OrtStatusPtr status = nullptr;
  {
    GilLock gil;  // the kernel holds Python references: made and dropped under the GIL
    try {
      kernel = std::make_unique<Kernel>();
      kernel->api = api;
      kernel->def = std::move(def);
      kernel->where = std::move(where);
      status = kernel->Init(info);
    } catch (const std::exception& e) {
      status = api->CreateStatus(ORT_FAIL, (std::string("opbridge kernel host: ") + e.what()).c_str());
    }
    if (status != nullptr) kernel.reset();
  }
  if (kernel != nullptr) {
    NoteKernelCreated();
    *kernel_out = kernel.release();
  }
  return status;
}

OrtStatusPtr ORT_API_CALL KernelComputeV2(void* opaque, OrtKernelContext* context) {
  auto* kernel = static_cast<Kernel*>(opaque);
  if (!PythonUsable()) {
    return kernel->Fail(ORT_FAIL, "the Python interpreter is shutting down");
  }
  GilLock gil;
  OrtStatusPtr status = nullptr;
  try {
    status = kernel->Run(context);
  } catch (const std::exception& e) {
    status = kernel->Fail(ORT_FAIL, e.what());
  }
  // No Python error may leak into whatever this thread runs next.
  if (PyErr_Occurred()) PyErr_Clear();
  return status;
}

void ORT_API_CALL KernelDestroy(void* opaque) {
  auto* kernel = static_cast<Kernel*>(opaque);
  if (kernel == nullptr) return;
  NoteKernelDestroyed();
  if (!PythonUsable()) return;  // interpreter gone: leak rather than touch it
  GilLock gil;
  delete kernel;
}

}  // namespace opbridge_host

