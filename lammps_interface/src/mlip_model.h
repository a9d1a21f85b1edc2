// Loading an exported mlip_md model: Model picks the backend (mlip_backend.h) from the file and
// the pair style's options, keeps why it chose it, and delegates every evaluation to it; the
// C++ twin of mlip_md.runtime.factory.open_model. No libtorch in this header: the backends and
// the factory are the plugin's only files that include it (compiled as one translation unit,
// see CMakeLists.txt).
#ifndef MLIP_MODEL_H
#define MLIP_MODEL_H

#include "mlip_backend.h"

#include <memory>
#include <string>

namespace MLIP {

// How to run a model (pair_style mlip keywords `fused`, `readout` and `dtype`).
struct ModelOptions {
  enum class Fused { Auto, Yes, No };
  // Auto: the fused descriptor kernel when the model supports it (TorchScript .pt with a
  // power_spectrum v1 descriptor block and evaluate_features, on the CPU); Yes: required.
  Fused fused = Fused::Auto;
  // With the fused kernel and an ensemble-MLP readout: evaluate the readout in C++ on steps
  // without monitors and force sigma (`readout native`, default), or always with the model's
  // TorchScript evaluate_features (`readout torchscript`).
  bool native_readout = true;
  std::string dtype;    // "" = the model's own; "float32" / "float64": converted on load (.pt only)
};

// True for an AOTInductor package (written by `mlip-md compile`): the one place that looks at
// the ".pt2" suffix.
bool is_compiled_path(const std::string &path);

class Model {
 public:
  Model();
  ~Model();
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  // Load the file on `device` ("cpu", "cuda", "cuda:1") and pick its backend: a .pt2 package ->
  // compiled graphs; a .pt whose descriptor the fused kernel computes (unless fused no) -> the
  // fused kernel; else the TorchScript evaluate. Throws std::runtime_error with a message meant
  // for the user (missing file, not a model, corrupt, bad metadata, fused yes impossible).
  void load(const std::string &path, const std::string &device, const ModelOptions &options = {});
  bool loaded() const { return backend_ != nullptr; }

  // The chosen backend's model description (info().dtype: the precision it runs in,
  // info().stored_dtype: the file's), capabilities and why it was chosen, e.g. "fused descriptor
  // kernel and C readout: the model has a power_spectrum v1 descriptor block ...".
  const ModelInfo &info() const;
  const Capabilities &capabilities() const;
  const std::string &choice() const { return choice_; }

  ModelOutput evaluate(const EdgeBatch &batch, const EvaluationRequest &request);
  double kernel_seconds() const;    // of the last evaluate(): the fused kernel's share

 private:
  std::unique_ptr<Backend> backend_;
  std::string choice_;
};

}    // namespace MLIP

#endif
