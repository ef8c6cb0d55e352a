// opbridge kernel host: the registry of kernel definitions and the ONNX Runtime
// entry point `RegisterCustomOps`.
//
// Lifetimes. ORT keeps raw pointers to the OrtCustomOpDomain and OrtCustomOp
// objects a library registers, for as long as any SessionOptions or session uses
// them, and never says when that ends. So every ORT-facing object here lives for
// the rest of the process. To keep that bounded they are shared: one Slot per
// (domain, op_type, version) ever installed, one HostOp per distinct ORT-visible
// signature of a slot, and one set of domains per registry layout. Python
// references, which can be large (closures over models), are NOT held by those
// permanent objects: a slot holds the current definition, and each kernel takes
// its own reference to the definition that was current when it was created.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "host.h"

namespace opbridge_host {

// ORT's view of one input or output: declared type (UNDEFINED when several are
// allowed) and characteristic.
struct PortLayout {
  ONNXTensorElementDataType type;
  OrtCustomOpInputOutputCharacteristic characteristic;
  int min_arity;
  int homogeneous;
};

struct Slot {
  std::string domain;
  std::string op_type;
  int version = 1;
  OpDefPtr current;  // guarded by the registry mutex
};

// One registered ORT custom op. Inherits OrtCustomOp so that the pointer ORT
// passes back to each callback converts back with a static_cast.
struct HostOp : OrtCustomOp {
  Slot* slot = nullptr;
  std::string layout;
  int end_version = INT_MAX;
  std::vector<PortLayout> inputs;
  std::vector<PortLayout> outputs;
};

namespace {

// Computes what ORT sees of a definition. Inputs with exactly one allowed type
// declare it; others are UNDEFINED (ORT then accepts any tensor type and the
// kernel checks the allowed set).
void PortLayouts(const OpDef& def, std::vector<PortLayout>* inputs,
                 std::vector<PortLayout>* outputs) {
  int undefined = 0;
  for (const IODef& io : def.inputs) {
    PortLayout port{};
    port.type = io.types.size() == 1 ? io.types[0] : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    port.characteristic = io.variadic   ? INPUT_OUTPUT_VARIADIC
                          : io.optional ? INPUT_OUTPUT_OPTIONAL
                                        : INPUT_OUTPUT_REQUIRED;
    port.min_arity = io.optional ? 0 : 1;
    port.homogeneous = io.types.size() == 1 ? 1 : 0;
    if (port.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED) ++undefined;
    inputs->push_back(port);
  }
  for (const IODef& io : def.outputs) {
    PortLayout port{};
    port.type = io.types.size() == 1 ? io.types[0] : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    port.characteristic = io.variadic   ? INPUT_OUTPUT_VARIADIC
                          : io.optional ? INPUT_OUTPUT_OPTIONAL
                                        : INPUT_OUTPUT_REQUIRED;
    port.min_arity = io.optional ? 0 : 1;
    port.homogeneous = io.types.size() == 1 ? 1 : 0;
    if (port.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED) {
      // ORT refuses (at session creation) a required output of undefined type
      // unless exactly one undefined-type port precedes it, because it wants to
      // copy that input's type. The node's declared output type works just as
      // well, so such outputs are declared optional, which skips that check;
      // the kernel still writes them whenever the node uses them.
      if (port.characteristic == INPUT_OUTPUT_REQUIRED && undefined != 1) {
        port.characteristic = INPUT_OUTPUT_OPTIONAL;
      }
      ++undefined;
    }
    outputs->push_back(port);
  }
}

struct Registry {
  std::mutex mutex;
  std::map<std::tuple<std::string, std::string, int>, Slot*> slots;
  std::map<std::tuple<Slot*, std::string, int>, HostOp*> ops;
  // Bumped when the set of slots or any slot's ORT-visible layout changes.
  uint64_t layout_generation = 1;
  uint64_t built_generation = 0;
  std::vector<OrtCustomOpDomain*> domains;  // for built_generation
  std::atomic<long> live_kernels{0};
};

// Never destroyed: ORT may call into the host from its own threads or static
// destructors after ours would have run.
Registry& Reg() {
  static Registry* registry = new Registry();
  return *registry;
}

const HostOp* Self(const OrtCustomOp* op) { return static_cast<const HostOp*>(op); }

const char* ORT_API_CALL GetName(const OrtCustomOp* op) {
  return Self(op)->slot->op_type.c_str();
}
const char* ORT_API_CALL GetExecutionProviderType(const OrtCustomOp*) {
  return nullptr;  // CPU execution provider
}
ONNXTensorElementDataType ORT_API_CALL GetInputType(const OrtCustomOp* op, size_t i) {
  return Self(op)->inputs.at(i).type;
}
size_t ORT_API_CALL GetInputTypeCount(const OrtCustomOp* op) { return Self(op)->inputs.size(); }
ONNXTensorElementDataType ORT_API_CALL GetOutputType(const OrtCustomOp* op, size_t i) {
  return Self(op)->outputs.at(i).type;
}
size_t ORT_API_CALL GetOutputTypeCount(const OrtCustomOp* op) {
  return Self(op)->outputs.size();
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetInputCharacteristic(const OrtCustomOp* op,
                                                                         size_t i) {
  return Self(op)->inputs.at(i).characteristic;
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetOutputCharacteristic(const OrtCustomOp* op,
                                                                          size_t i) {
  return Self(op)->outputs.at(i).characteristic;
}
OrtMemType ORT_API_CALL GetInputMemoryType(const OrtCustomOp*, size_t) {
  return OrtMemTypeDefault;
}
int ORT_API_CALL GetVariadicInputMinArity(const OrtCustomOp* op) {
  const auto& ports = Self(op)->inputs;
  return ports.empty() ? 1 : ports.back().min_arity;
}
int ORT_API_CALL GetVariadicInputHomogeneity(const OrtCustomOp* op) {
  const auto& ports = Self(op)->inputs;
  return ports.empty() ? 0 : ports.back().homogeneous;
}
int ORT_API_CALL GetVariadicOutputMinArity(const OrtCustomOp* op) {
  const auto& ports = Self(op)->outputs;
  return ports.empty() ? 1 : ports.back().min_arity;
}
int ORT_API_CALL GetVariadicOutputHomogeneity(const OrtCustomOp* op) {
  const auto& ports = Self(op)->outputs;
  return ports.empty() ? 0 : ports.back().homogeneous;
}
int ORT_API_CALL GetStartVersion(const OrtCustomOp* op) { return Self(op)->slot->version; }
int ORT_API_CALL GetEndVersion(const OrtCustomOp* op) { return Self(op)->end_version; }

// Returns the shared HostOp for (slot, its current layout, end_version).
// Requires the registry mutex.
HostOp* HostOpFor(Registry& reg, Slot* slot, int end_version) {
  const OpDef& def = *slot->current;
  auto key = std::make_tuple(slot, def.layout, end_version);
  auto it = reg.ops.find(key);
  if (it != reg.ops.end()) return it->second;

  auto* op = new HostOp();
  // Zero every callback first so that fields this host does not implement
  // (shape inference, in-place and alias maps) read as "not provided".
  OrtCustomOp* base = op;
  *base = OrtCustomOp{};
  op->version = ORT_API_VERSION;
  op->CreateKernel = nullptr;  // the V2 entry points below are used instead
  op->KernelCompute = nullptr;
  op->GetName = GetName;
  op->GetExecutionProviderType = GetExecutionProviderType;
  op->GetInputType = GetInputType;
  op->GetInputTypeCount = GetInputTypeCount;
  op->GetOutputType = GetOutputType;
  op->GetOutputTypeCount = GetOutputTypeCount;
  op->KernelDestroy = KernelDestroy;
  op->GetInputCharacteristic = GetInputCharacteristic;
  op->GetOutputCharacteristic = GetOutputCharacteristic;
  op->GetInputMemoryType = GetInputMemoryType;
  op->GetVariadicInputMinArity = GetVariadicInputMinArity;
  op->GetVariadicInputHomogeneity = GetVariadicInputHomogeneity;
  op->GetVariadicOutputMinArity = GetVariadicOutputMinArity;
  op->GetVariadicOutputHomogeneity = GetVariadicOutputHomogeneity;
  op->CreateKernelV2 = CreateKernelV2;
  op->KernelComputeV2 = KernelComputeV2;
  op->InferOutputShapeFn = nullptr;
  op->GetStartVersion = GetStartVersion;
  op->GetEndVersion = GetEndVersion;

  op->slot = slot;
  op->layout = def.layout;
  op->end_version = end_version;
  PortLayouts(def, &op->inputs, &op->outputs);
  reg.ops.emplace(key, op);
  return op;
}

// Builds one OrtCustomOpDomain per domain name from the current slots.
// Requires the registry mutex.
OrtStatusPtr BuildDomains(Registry& reg, const OrtApi* api) {
  std::map<std::string, std::vector<Slot*>> by_domain;
  for (auto& entry : reg.slots) by_domain[entry.second->domain].push_back(entry.second);

  std::vector<OrtCustomOpDomain*> domains;
  for (auto& [name, slots] : by_domain) {
    // ORT builds one schema per op name from the first op it sees, so list the
    // versions of each op in ascending order.
    std::sort(slots.begin(), slots.end(), [](const Slot* a, const Slot* b) {
      return std::tie(a->op_type, a->version) < std::tie(b->op_type, b->version);
    });
    OrtCustomOpDomain* domain = nullptr;
    if (OrtStatusPtr status = api->CreateCustomOpDomain(name.c_str(), &domain)) return status;
    for (size_t i = 0; i < slots.size(); ++i) {
      // A version of an op serves nodes up to the next installed version.
      int end_version = INT_MAX;
      if (i + 1 < slots.size() && slots[i + 1]->op_type == slots[i]->op_type) {
        end_version = slots[i + 1]->version - 1;
      }
      HostOp* op = HostOpFor(reg, slots[i], end_version);
      if (OrtStatusPtr status = api->CustomOpDomain_Add(domain, op)) return status;
    }
    domains.push_back(domain);
  }
  // Earlier domains stay alive (leaked on purpose): SessionOptions that already
  // registered them may still create sessions.
  reg.domains = std::move(domains);
  reg.built_generation = reg.layout_generation;
  return nullptr;
}

}  // namespace

std::string LayoutOf(const OpDef& def) {
  std::vector<PortLayout> inputs, outputs;
  PortLayouts(def, &inputs, &outputs);
  std::string layout;
  auto append = [&layout](const std::vector<PortLayout>& ports) {
    for (const PortLayout& port : ports) {
      char buf[64];
      std::snprintf(buf, sizeof(buf), "%d/%d/%d/%d,", static_cast<int>(port.type),
                    static_cast<int>(port.characteristic), port.min_arity, port.homogeneous);
      layout += buf;
    }
  };
  append(inputs);
  layout += "->";
  append(outputs);
  return layout;
}

void InstallOpDef(OpDefPtr def) {
  Registry& reg = Reg();
  OpDefPtr replaced;  // dropped after unlocking: its destructor may run Python code
  {
    std::lock_guard<std::mutex> lock(reg.mutex);
    auto key = std::make_tuple(def->domain, def->op_type, def->version);
    auto it = reg.slots.find(key);
    if (it == reg.slots.end()) {
      auto* slot = new Slot();
      slot->domain = def->domain;
      slot->op_type = def->op_type;
      slot->version = def->version;
      slot->current = std::move(def);
      reg.slots.emplace(key, slot);
      ++reg.layout_generation;
    } else {
      Slot* slot = it->second;
      if (slot->current->layout != def->layout) ++reg.layout_generation;
      replaced = std::move(slot->current);
      slot->current = std::move(def);
    }
  }
}

std::vector<InstalledKey> InstalledKeys() {
  Registry& reg = Reg();
  std::lock_guard<std::mutex> lock(reg.mutex);
  std::vector<InstalledKey> keys;
  for (auto& entry : reg.slots) {
    keys.push_back({entry.second->domain, entry.second->op_type, entry.second->version});
  }
  return keys;
}

OpDefPtr CurrentDefFor(const HostOp* op, std::string* layout_out) {
  Registry& reg = Reg();
  std::lock_guard<std::mutex> lock(reg.mutex);
  *layout_out = op->layout;
  return op->slot->current;
}

long LiveKernelCount() { return Reg().live_kernels.load(); }
void NoteKernelCreated() { Reg().live_kernels.fetch_add(1); }
void NoteKernelDestroyed() { Reg().live_kernels.fetch_sub(1); }

}  // namespace opbridge_host

// ONNX Runtime calls this once per SessionOptions.register_custom_ops_library.
// It must not need the GIL: the caller may or may not hold it.
extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  using opbridge_host::Reg;
  using opbridge_host::Registry;
  if (api_base == nullptr) return nullptr;  // nothing to report the error through
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // The runtime is older than the headers the host was built with. API
    // version 1 always exists and is enough to report that.
    const OrtApi* oldest = api_base->GetApi(1);
    std::string message = "opbridge kernel host was built against ONNX Runtime API version " +
                          std::to_string(ORT_API_VERSION) +
                          " but the loaded runtime is ONNX Runtime " +
                          std::string(api_base->GetVersionString()) +
                          "; upgrade onnxruntime or rebuild opbridge against its headers";
    return oldest == nullptr ? nullptr : oldest->CreateStatus(ORT_FAIL, message.c_str());
  }
  std::vector<OrtCustomOpDomain*> domains;
  try {
    Registry& reg = Reg();
    std::lock_guard<std::mutex> lock(reg.mutex);
    if (reg.built_generation != reg.layout_generation) {
      if (OrtStatusPtr status = opbridge_host::BuildDomains(reg, api)) return status;
    }
    domains = reg.domains;
  } catch (const std::exception& e) {
    std::string message = std::string("opbridge kernel host: cannot register kernels: ") + e.what();
    return api->CreateStatus(ORT_FAIL, message.c_str());
  }
  for (OrtCustomOpDomain* domain : domains) {
    if (OrtStatusPtr status = api->AddCustomOpDomain(options, domain)) return status;
  }
  return nullptr;
}
