// What the backends and the factory share that needs libtorch (internal to the plugin: only the
// files of CMakeLists.txt's "torch" unity group include this header): loading a TorchScript model
// file, the batch as tensors, a model call's named outputs as ModelOutput's float64 views, and
// the constructors of the three backends, which mlip_model.cpp chooses between.
#ifndef MLIP_TORCH_H
#define MLIP_TORCH_H

#include "mlip_backend.h"

#include <torch/script.h>

#include <exception>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace MLIP {

// Name of the metadata inside a model file (TorchScript extra file, .pt2 package metadata key).
inline constexpr const char *kMetadataName = "mlip_md.json";

// The useful part of a libtorch / TorchScript exception: TorchScript tracebacks end with the
// Python-level message ("builtins.ValueError: ..."), C++ errors start with it.
std::string short_message(const std::exception &e, bool last_line);

torch::Dtype torch_dtype(const std::string &name);    // "float32" -> kFloat32, else kFloat64

// The outputs of one model call by name (tensors of any dtype and device), turned into
// ModelOutput's float64 host views, which stay valid until clear().
class TensorResults {
 public:
  void clear();
  torch::Tensor &operator[](const std::string &name) { return named_[name]; }
  void add(const c10::impl::GenericDict &dict);
  // atomic_energy, energy_members and (unless `assembled`: the backend sets forces and virial)
  // edge_grad are required; the monitors when request.monitors, member_edge_grad when
  // request.force_sigma. Throws std::runtime_error naming the missing or misshapen output.
  ModelOutput output(const ModelInfo &info, const EdgeBatch &batch, const EvaluationRequest &request,
                     bool assembled = false);

 private:
  const double *fetch(const ModelInfo &info, const char *key, int64_t expected, bool required);
  std::unordered_map<std::string, torch::Tensor> named_;
  std::vector<torch::Tensor> keep_;    // behind the pointers of the last output()
};

// The batch as the contract's inputs: species [n_all] and edge_index [2][E] (int64, copies),
// vectors [E][3] (a view of the batch's float64 buffer, converted when `dtype` differs), on `device`.
struct EdgeTensors {
  torch::Tensor species, edge_index, vectors;
};
EdgeTensors edge_tensors(const EdgeBatch &batch, torch::Dtype dtype, const c10::Device &device);

// A TorchScript model file, loaded and checked: the module in eval mode with its floating-point
// weights in the run precision (info.dtype; info.stored_dtype is the file's), on `device`.
struct TorchScriptModel {
  torch::jit::Module module;
  ModelInfo info;
  c10::Device device{torch::kCPU};
  torch::Dtype dtype = torch::kFloat64;
};
// requested_dtype: "" for the file's precision. Throws std::runtime_error (not loadable, no
// metadata, bad metadata, methods of the contract missing).
TorchScriptModel load_torchscript_model(const std::string &path, const c10::Device &device,
                                        const std::string &requested_dtype);
// Inference only from here on: freezing turns the weights into constants (10-30 % faster,
// identical results); a module that cannot be frozen is used as it is.
void freeze_for_inference(torch::jit::Module &module);

// The backends (mlip_backend_*.cpp).
std::unique_ptr<Backend> make_torchscript_backend(TorchScriptModel model);
// "" when the fused kernel computes this model's descriptor (and the C core its repulsion) on
// its device, else why not ("its metadata has no descriptor block", ...).
std::string fused_kernel_unavailable(const TorchScriptModel &model);
// native_readout: the C readout on steps without monitors and force sigma when the model's
// readout is an ensemble of MLPs; capabilities().description says whether it is used.
std::unique_ptr<Backend> make_fused_backend(TorchScriptModel model, bool native_readout);
std::unique_ptr<Backend> make_compiled_backend(const std::string &path, const c10::Device &device);

}    // namespace MLIP

#endif
