// opbridge kernel host: the registry of kernel definitions and the ONNX Runtime
// entry point `RegisterCustomOps`.
//
// Lifetimes. ORT keeps raw pointers to the OrtCustomOpDomain and OrtCustomOp
// objects a library registers, for as long as any SessionOptions or session uses
// them, and never says when that ends. So every ORT-facing object here lives for
// the rest of the process. To keep that bounded they are shared: one Slot per
// (domain, op_type, version) ever installed, one HostOp per distinct ORT-visible
// signature of a slot, and one set of domains per distinct registration. Python
// references, which can be large (closures over models), are NOT held by those
// permanent objects: a slot holds the current definition, and each kernel takes
// its own reference to the definition that was current when it was created.
//
// Versions. ORT builds a single schema per custom op name, whose since-version
// is the first registered op's start version, and then only uses kernels that
// start at that version: it cannot pick a kernel by the model's opset. So each
// registration lists one version per op, with start version 1 (so that any
// opset import finds it): the newest installed version not newer than the
// model's opset for that domain when the Python side says which model the
// session is for (the oldest one if all are newer), else the newest installed
// version.
//
// Typed overloads. ORT types a node's outputs at session creation. For an output
// that allows several element types it copies the type of the op's last input
// that allows several types, ignoring what the model declares; only when no such
// input exists does it take the model's declared type. So for nodes whose input
// types are known (the Python side reads them from the model), the host also
// registers overloads of the op whose inputs are fixed to those types, listed
// before the generic op, and ORT then keeps the model's output types.
//
// Both of these come from the Python side through SetNextRegistration and apply
// to the next RegisterCustomOps call made on the same thread only: ORT calls
// RegisterCustomOps synchronously from register_custom_ops_library, so that is
// the registration of that model's SessionOptions, even while other threads
// register the host on their own SessionOptions.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <thread>
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
  std::vector<int> fixed_inputs;  // typed overload: input element types (0 = as generic)
  std::string layout;
  std::vector<PortLayout> inputs;
  std::vector<PortLayout> outputs;
};

namespace {

// What ORT sees of one input or output: exactly one allowed type is declared;
// otherwise UNDEFINED (ORT then accepts any tensor type and the kernel checks the
// allowed set).
PortLayout MakePort(const IODef& io) {
  PortLayout port{};
  port.type = io.types.size() == 1 ? io.types[0] : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  port.characteristic = io.variadic   ? INPUT_OUTPUT_VARIADIC
                        : io.optional ? INPUT_OUTPUT_OPTIONAL
                                      : INPUT_OUTPUT_REQUIRED;
  port.min_arity = io.optional ? 0 : 1;
  port.homogeneous = io.types.size() == 1 ? 1 : 0;
  return port;
}

// Computes what ORT sees of a definition.
void PortLayouts(const OpDef& def, std::vector<PortLayout>* inputs,
                 std::vector<PortLayout>* outputs) {
  int undefined = 0;
  for (const IODef& io : def.inputs) {
    PortLayout port = MakePort(io);
    if (port.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED) ++undefined;
    inputs->push_back(port);
  }
  for (const IODef& io : def.outputs) {
    PortLayout port = MakePort(io);
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
  std::map<std::tuple<Slot*, std::string, std::vector<int>>, HostOp*> ops;
  // Bumped when the set of slots or any slot's ORT-visible layout changes.
  uint64_t layout_generation = 1;
  // Domains built per (layout generation, registration); older entries are kept
  // alive because SessionOptions that registered them may still create sessions.
  std::map<std::pair<uint64_t, NextRegistration>, std::vector<OrtCustomOpDomain*>> built;
  // Per thread, what its next RegisterCustomOps call registers beyond the defaults.
  std::map<std::thread::id, NextRegistration> next;
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
// Every registered op serves all opset versions (see "Versions" above).
int ORT_API_CALL GetStartVersion(const OrtCustomOp*) { return 1; }
int ORT_API_CALL GetEndVersion(const OrtCustomOp*) { return INT_MAX; }

// Returns the shared HostOp for (slot, its current layout), generic when
// `fixed_inputs` is empty. Requires the registry mutex.
HostOp* HostOpFor(Registry& reg, Slot* slot, const std::vector<int>& fixed_inputs) {
  const OpDef& def = *slot->current;
  auto key = std::make_tuple(slot, def.layout, fixed_inputs);
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
  op->fixed_inputs = fixed_inputs;
  PortLayouts(def, &op->inputs, &op->outputs);
  // Only the declared types change; characteristics must stay identical to the
  // generic op's, or ORT rejects the overload set.
  for (size_t i = 0; i < fixed_inputs.size() && i < op->inputs.size(); ++i) {
    if (fixed_inputs[i] != 0 && op->inputs[i].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED) {
      op->inputs[i].type = static_cast<ONNXTensorElementDataType>(fixed_inputs[i]);
    }
  }
  reg.ops.emplace(key, op);
  return op;
}

// Builds one OrtCustomOpDomain per domain name from the current slots, as
// `next` asks. Requires the registry mutex.
OrtStatusPtr BuildDomains(Registry& reg, const OrtApi* api, const NextRegistration& next,
                          std::vector<OrtCustomOpDomain*>* out) {
  // The one version of each op this registration uses: the newest not above the
  // model's opset; when every installed version is newer, the oldest one (what a
  // registration without the model would accept as well).
  std::map<std::string, std::map<std::string, Slot*>> chosen;  // domain -> op_type -> slot
  for (auto& entry : reg.slots) {  // ordered by (domain, op_type, version)
    Slot* slot = entry.second;
    Slot*& current = chosen[slot->domain][slot->op_type];
    auto wanted = next.versions.find(OpKey(slot->domain, slot->op_type));
    const bool fits = wanted == next.versions.end() || slot->version <= wanted->second;
    if (current == nullptr || fits) current = slot;  // newer fitting versions win
  }

  for (auto& [name, ops] : chosen) {
    OrtCustomOpDomain* domain = nullptr;
    if (OrtStatusPtr status = api->CreateCustomOpDomain(name.c_str(), &domain)) return status;
    for (auto& [op_type, slot] : ops) {
      // Typed overloads first: ORT types outputs from the first op whose input
      // types match the node, and its kernel lookup is content with any match.
      auto typed = next.overloads.find(OpKey(name, op_type));
      if (typed != next.overloads.end()) {
        for (const auto& fixed : typed->second) {
          if (fixed.size() != slot->current->inputs.size()) continue;
          if (OrtStatusPtr status = api->CustomOpDomain_Add(domain, HostOpFor(reg, slot, fixed))) {
            return status;
          }
        }
      }
      if (OrtStatusPtr status = api->CustomOpDomain_Add(domain, HostOpFor(reg, slot, {}))) {
        return status;
      }
    }
    out->push_back(domain);
  }
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

OpDefPtr CurrentDefFor(const OrtCustomOp* op, std::string* layout_out) {
  const HostOp* self = Self(op);
  Registry& reg = Reg();
  std::lock_guard<std::mutex> lock(reg.mutex);
  *layout_out = self->layout;
  return self->slot->current;
}

void SetNextRegistration(NextRegistration next) {
  Registry& reg = Reg();
  std::lock_guard<std::mutex> lock(reg.mutex);
  if (next.overloads.empty() && next.versions.empty()) {
    reg.next.erase(std::this_thread::get_id());
  } else {
    reg.next[std::this_thread::get_id()] = std::move(next);
  }
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
    opbridge_host::NextRegistration next;
    auto mine = reg.next.find(std::this_thread::get_id());
    if (mine != reg.next.end()) {
      next = std::move(mine->second);
      reg.next.erase(mine);
    }
    auto key = std::make_pair(reg.layout_generation, std::move(next));
    auto it = reg.built.find(key);
    if (it == reg.built.end()) {
      std::vector<OrtCustomOpDomain*> built;
      if (OrtStatusPtr status = opbridge_host::BuildDomains(reg, api, key.second, &built)) {
        return status;
      }
      it = reg.built.emplace(std::move(key), std::move(built)).first;
    }
    domains = it->second;
  } catch (const std::exception& e) {
    std::string message = std::string("opbridge kernel host: cannot register kernels: ") + e.what();
    return api->CreateStatus(ORT_FAIL, message.c_str());
  }
  for (OrtCustomOpDomain* domain : domains) {
    if (OrtStatusPtr status = api->AddCustomOpDomain(options, domain)) return status;
  }
  return nullptr;
}
