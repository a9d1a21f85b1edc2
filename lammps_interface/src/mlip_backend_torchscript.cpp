// TorchScriptBackend: the model's TorchScript `evaluate(species, edge_index, edge_vectors,
// n_local, compute_monitors, compute_force_sigma)` (mlip_md.runtime.torchscript), on the CPU or
// a CUDA device, returning edge gradients the host assembles.
#include "mlip_torch.h"

#include <stdexcept>

namespace MLIP {

namespace {

class TorchScriptBackend : public Backend {
 public:
  explicit TorchScriptBackend(TorchScriptModel model) :
      Backend(model.info, {"torchscript", false, "native", {"cpu", "cuda"}, {"float64", "float32"}, "TorchScript"}),
      module_(std::move(model.module)), device_(model.device), dtype_(model.dtype)
  {
    freeze_for_inference(module_);
  }

  ModelOutput evaluate(const EdgeBatch &batch, const EvaluationRequest &request) override
  {
    results_.clear();
    torch::AutoGradMode grad_mode(true);    // forces come from autograd inside the model
    const EdgeTensors in = edge_tensors(batch, dtype_, device_);
    try {
      std::vector<torch::jit::IValue> args{in.species, in.edge_index, in.vectors, int64_t(batch.n_local),
                                           request.monitors, request.force_sigma};
      results_.add(module_.get_method("evaluate")(std::move(args)).toGenericDict());
    } catch (std::exception &e) {
      throw std::runtime_error("model evaluation failed: " + short_message(e, true));
    }
    return results_.output(info_, batch, request);
  }

 private:
  torch::jit::Module module_;
  c10::Device device_;
  torch::Dtype dtype_;
  TensorResults results_;
};

}    // namespace

std::unique_ptr<Backend> make_torchscript_backend(TorchScriptModel model)
{
  return std::make_unique<TorchScriptBackend>(std::move(model));
}

}    // namespace MLIP
