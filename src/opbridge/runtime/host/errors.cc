// opbridge kernel host: Python exceptions and ORT statuses as message text.
#include <cstring>
#include <string>

#include "kernel.h"

namespace opbridge_host {

std::string TakeMessage(const OrtApi* api, OrtStatusPtr status) {
  return Status(api, status).Message();
}

namespace {

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

}  // namespace

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

}  // namespace opbridge_host
