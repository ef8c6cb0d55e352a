// opbridge kernel host: the lifetime of the buffers lent to Python.
//
// Inputs reach a kernel as numpy arrays over ONNX Runtime's own buffers (no
// copy), and ORT reuses that memory as soon as Compute returns. Whatever the
// kernel keeps must therefore never point there afterwards:
//
//  * the lent array itself: its data pointer is switched to a private copy;
//  * numpy arrays derived from it during the call (x[::1], x.reshape(...),
//    np.asarray(x[1:]), tensor.numpy()): every ndarray allocated on the calling
//    thread during the call is recorded (a hook on ndarray's tp_alloc/tp_free,
//    active only for that thread and call), and the survivors whose data lies in
//    the lent buffer are switched to the same offset in the copy;
//  * torch tensors made by opbridge's torch route: redirected by that route
//    (runtime/_torch_route, UntypedStorage._swap_data_ptr_).
//
// The check that anything was kept is one reference count per input, so calls
// that keep nothing (the normal case) pay nothing but the bookkeeping of the
// arrays they allocate.
#include <algorithm>
#include <unordered_map>
#include <vector>

#include "host.h"

namespace opbridge_host {
namespace {

allocfunc g_array_alloc = nullptr;  // ndarray's own tp_alloc
freefunc g_array_free = nullptr;    // ndarray's own tp_free
thread_local BirthScope* t_scope = nullptr;
// Every array born inside a live scope, and that scope. Guarded by the GIL.
std::unordered_map<PyObject*, BirthScope*>* g_born = nullptr;

PyObject* TrackedAlloc(PyTypeObject* type, Py_ssize_t n) {
  PyObject* obj = g_array_alloc(type, n);
  if (obj != nullptr && t_scope != nullptr) t_scope->Add(obj);
  return obj;
}

void TrackedFree(void* p) {
  if (!g_born->empty()) g_born->erase(static_cast<PyObject*>(p));
  g_array_free(p);
}

// base of the arrays lent to kernels: an object that exports no writable buffer,
// so numpy refuses `x.flags.writeable = True`, and whose text says what it is.
PyObject* g_lent_marker = nullptr;

}  // namespace

bool InstallArrayHooks() {
  g_born = new std::unordered_map<PyObject*, BirthScope*>();
  g_lent_marker = PyUnicode_FromString(
      "opbridge kernel host: ONNX Runtime's buffer, lent read-only for one call");
  if (g_lent_marker == nullptr) return false;
  g_array_alloc = PyArray_Type.tp_alloc;
  g_array_free = PyArray_Type.tp_free;
  if (g_array_alloc == nullptr || g_array_free == nullptr) {
    PyErr_SetString(PyExc_ImportError, "numpy's ndarray type has no tp_alloc/tp_free");
    return false;
  }
  PyArray_Type.tp_alloc = TrackedAlloc;
  PyArray_Type.tp_free = TrackedFree;
  return true;
}

BirthScope::BirthScope() : outer_(t_scope) { t_scope = this; }

BirthScope::~BirthScope() {
  t_scope = outer_;
  for (PyObject* obj : born_) {
    auto it = g_born->find(obj);
    if (it != g_born->end() && it->second == this) g_born->erase(it);
  }
}

void BirthScope::Add(PyObject* obj) {
  (*g_born)[obj] = this;
  born_.push_back(obj);
}

std::vector<PyObject*> BirthScope::Survivors() const {
  std::vector<PyObject*> alive;
  for (PyObject* obj : born_) {
    auto it = g_born->find(obj);
    if (it != g_born->end() && it->second == this) alive.push_back(obj);
  }
  // An address freed and reused within the call is listed twice.
  std::sort(alive.begin(), alive.end());
  alive.erase(std::unique(alive.begin(), alive.end()), alive.end());
  return alive;
}

PyObject* LendArray(PyArray_Descr* descr, int nd, npy_intp* dims, void* data, bool writable) {
  Py_INCREF(descr);
  int flags = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | (writable ? NPY_ARRAY_WRITEABLE : 0);
  PyObject* array =
      PyArray_NewFromDescr(&PyArray_Type, descr, nd, dims, nullptr, data, flags, nullptr);
  if (array == nullptr) return nullptr;
  if (!writable) {
    Py_INCREF(g_lent_marker);
    if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(array), g_lent_marker) < 0) {
      Py_DECREF(array);
      return nullptr;
    }
  }
  return array;
}

int ReclaimLent(PyObject* lent, const BirthScope& scope) {
  // `lent` is referenced once by the caller; numpy views derived from it hold it
  // through their base, tensors from torch.from_numpy through their storage.
  if (Py_REFCNT(lent) <= 1) return 0;
  auto* view = reinterpret_cast<PyArrayObject*>(lent);
  char* begin = static_cast<char*>(PyArray_DATA(view));
  const size_t nbytes = static_cast<size_t>(PyArray_NBYTES(view));
  PyObject* copy = PyArray_NewCopy(view, NPY_CORDER);
  if (copy == nullptr) return -1;
  char* fresh = static_cast<char*>(PyArray_DATA(reinterpret_cast<PyArrayObject*>(copy)));
  if (nbytes > 0) {
    for (PyObject* obj : scope.Survivors()) {
      if (obj == lent || obj == copy) continue;
      auto* fields = reinterpret_cast<PyArrayObject_fields*>(obj);
      if (fields->data >= begin && fields->data < begin + nbytes) {
        fields->data = fresh + (fields->data - begin);  // its base chain keeps `lent` alive
      }
    }
  }
  auto* fields = reinterpret_cast<PyArrayObject_fields*>(lent);
  PyObject* old_base = fields->base;
  fields->data = fresh;
  fields->base = copy;  // owns the copy from now on
  Py_XDECREF(old_base);
  return 1;
}

}  // namespace opbridge_host
