#include "mlip_model.h"

#include "mlip_torch.h"

#include <torch/cuda.h>

#include <cstring>
#include <fstream>
#include <stdexcept>

namespace MLIP {

namespace {

// The file exists and is a zip archive (TorchScript .pt and AOTInductor .pt2 both are).
void check_model_file(const std::string &path)
{
  std::ifstream file(path, std::ios::binary);
  if (!file)
    throw std::runtime_error("model file " + path +
                             " does not exist or cannot be read; give the path of a .pt file "
                             "written by mlip-md train / mlip_md.model.save_model");
  char magic[4] = {0, 0, 0, 0};
  file.read(magic, 4);
  if (file.gcount() < 4 || std::memcmp(magic, "PK\x03\x04", 4) != 0)
    throw std::runtime_error("model file " + path +
                             " is not a TorchScript archive (corrupt or truncated?); re-export it "
                             "with mlip_md.model.save_model or mlip-md train");
}

c10::Device parse_device(const std::string &device)
{
  c10::Device parsed{torch::kCPU};
  try {
    parsed = c10::Device(device);
  } catch (std::exception &) {
    throw std::runtime_error("unknown device '" + device + "'; use cpu or cuda");
  }
  if (parsed.is_cuda() && !torch::cuda::is_available())
    throw std::runtime_error("device " + device +
                             " requested but this libtorch has no usable CUDA device; use device cpu");
  return parsed;
}

std::unique_ptr<Backend> open_compiled(const std::string &path, const c10::Device &device,
                                       const ModelOptions &options)
{
  if (options.fused == ModelOptions::Fused::Yes)
    throw std::runtime_error("fused yes: " + path + " is a compiled package, which runs its own graphs; the fused "
                             "descriptor kernel runs TorchScript .pt models (use the .pt, or drop fused yes)");
  std::unique_ptr<Backend> backend = make_compiled_backend(path, device);
  const std::string &built = backend->info().dtype;
  if (!options.dtype.empty() && options.dtype != built)
    throw std::runtime_error("dtype " + options.dtype + ": compiled package " + path + " was built for " + built +
                             "; build one with `mlip-md compile --dtype " + options.dtype + "` or use the .pt file");
  return backend;
}

// `fused yes` on a model the kernel cannot run: why, and what to do instead
std::string fused_refused(const std::string &path, const std::string &why, const c10::Device &device)
{
  return "fused yes: model " + path + " cannot use the fused descriptor kernel: " + why +
         (device.is_cpu() ? std::string("; re-export it with this mlip_md (mlip-md upgrade old.pt -o new.pt) "
                                        "or use fused no")
                          : "; use fused no with device " + device.str());
}

}    // namespace

bool is_compiled_path(const std::string &path)
{
  const std::string suffix = ".pt2";
  return path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Model::Model() = default;
Model::~Model() = default;

void Model::load(const std::string &path, const std::string &device, const ModelOptions &options)
{
  backend_.reset();
  choice_.clear();
  check_model_file(path);
  const c10::Device where = parse_device(device);
  if (is_compiled_path(path)) {
    backend_ = open_compiled(path, where, options);
    choice_ = "compiled graphs: the file is a .pt2 package (mlip-md compile); force sigma and ranks with fewer than "
              "two atoms, edges or neighbours run the TorchScript model it was compiled from, " +
              backend_->info().compiled->source;
    return;
  }
  TorchScriptModel model = load_torchscript_model(path, where, options.dtype);
  const std::string why = fused_kernel_unavailable(model);
  if (options.fused == ModelOptions::Fused::Yes && !why.empty()) throw std::runtime_error(fused_refused(path, why, where));
  if (options.fused == ModelOptions::Fused::No || !why.empty()) {
    backend_ = make_torchscript_backend(std::move(model));
    choice_ = "TorchScript: " + (why.empty() ? std::string("fused no") : "the descriptor kernel does not apply, " + why);
    return;
  }
  backend_ = make_fused_backend(std::move(model), options.native_readout);
  const int version = static_cast<int>(backend_->info().descriptor->version);    // 1 or 2: the kernel took it
  choice_ = backend_->capabilities().description + ": the model has a power_spectrum v" + std::to_string(version) +
            " descriptor block and runs on the CPU" +
            (backend_->capabilities().assembles_forces ? ", its readout is an ensemble of MLPs"
             : options.native_readout              ? "; its readout runs in TorchScript (not an ensemble of MLPs)"
                                                   : "; its readout runs in TorchScript (readout torchscript)");
}

const ModelInfo &Model::info() const
{
  static const ModelInfo none;
  return backend_ ? backend_->info() : none;
}

const Capabilities &Model::capabilities() const
{
  static const Capabilities none;
  return backend_ ? backend_->capabilities() : none;
}

ModelOutput Model::evaluate(const EdgeBatch &batch, const EvaluationRequest &request)
{
  if (!backend_) throw std::runtime_error("no model loaded");
  return backend_->evaluate(batch, request);
}

double Model::kernel_seconds() const
{
  return backend_ ? backend_->kernel_seconds() : 0.0;
}

}    // namespace MLIP
