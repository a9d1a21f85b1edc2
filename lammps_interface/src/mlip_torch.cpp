#include "mlip_torch.h"

#include <cstring>
#include <sstream>
#include <stdexcept>

namespace MLIP {

namespace {

// Floating-point parameters and buffers to `dtype`, integer ones (species tables, counts) kept:
// what torch.nn.Module.to(dtype) does in Python before mlip_md.model.save_model scripts a model
// (TorchScript's Module::to(dtype) would convert the integer buffers too).
void convert_floating(torch::jit::Module &module, torch::Dtype dtype)
{
  torch::NoGradGuard no_grad;
  auto convert = [dtype](torch::Tensor t) {
    if (t.is_floating_point() && t.scalar_type() != dtype) t.set_data(t.to(dtype));
  };
  for (const auto &p : module.named_parameters(true)) convert(p.value);
  for (const auto &b : module.named_buffers(true)) convert(b.value);
}

// The contract's methods, as mlip_md.model.io checks them: a foreign TorchScript module carrying
// copied metadata is refused on load, not on its first step.
void check_methods(const torch::jit::Module &module, const ModelInfo &info)
{
  for (const char *method : {"evaluate", "evaluate_features"})
    if ((info.descriptor || std::strcmp(method, "evaluate") == 0) && !module.find_method(method))
      throw std::runtime_error("model file " + info.path + " carries mlip_md metadata but its TorchScript module has no " +
                               method + " method (not a model exported by mlip_md, or a damaged one); re-export "
                               "the model with mlip-md upgrade or mlip-md train");
}

}    // namespace

std::string short_message(const std::exception &e, bool last_line)
{
  std::istringstream in(e.what());
  std::string line, first, last;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (first.empty()) first = line;
    last = line;
  }
  std::string out = last_line ? last : first;
  const std::string prefix = "builtins.";
  if (out.compare(0, prefix.size(), prefix) == 0) out = out.substr(prefix.size());
  return out.empty() ? std::string("unknown error") : out;
}

torch::Dtype torch_dtype(const std::string &name)
{
  return name == "float32" ? torch::kFloat32 : torch::kFloat64;
}

void TensorResults::clear()
{
  named_.clear();
  keep_.clear();
}

void TensorResults::add(const c10::impl::GenericDict &dict)
{
  for (const auto &item : dict) named_[item.key().toStringRef()] = item.value().toTensor();
}

const double *TensorResults::fetch(const ModelInfo &info, const char *key, int64_t expected, bool required)
{
  auto it = named_.find(key);
  if (it == named_.end() || !it->second.defined()) {
    if (required)
      throw std::runtime_error("model " + info.path + " returned no '" + key +
                               "' (not a model exported by mlip_md, or a damaged one); re-export it with "
                               "mlip-md upgrade or mlip-md train");
    return nullptr;
  }
  torch::Tensor t = it->second.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  if (expected >= 0 && t.numel() != expected)
    throw std::runtime_error(std::string("model output '") + key + "' has " + std::to_string(t.numel()) +
                             " values, expected " + std::to_string(expected));
  keep_.push_back(t);
  return t.data_ptr<double>();
}

ModelOutput TensorResults::output(const ModelInfo &info, const EdgeBatch &batch, const EvaluationRequest &request,
                                  bool assembled)
{
  const int64_t n_local = batch.n_local, n_edges = static_cast<int64_t>(batch.n_edges());
  ModelOutput out;
  out.atomic_energy = fetch(info, "atomic_energy", n_local, true);
  if (!assembled) out.edge_grad = fetch(info, "edge_grad", 3 * n_edges, true);
  out.energy_members = fetch(info, "energy_members", -1, true);
  out.n_members = n_local > 0 ? static_cast<int>(keep_.back().numel() / n_local) : info.ensemble_size;
  if (request.monitors) {
    out.energy_sigma = fetch(info, "energy_sigma", n_local, false);
    out.mahalanobis = fetch(info, "mahalanobis", n_local, false);
    out.d_min = fetch(info, "d_min", n_local, false);
    out.min_distance = fetch(info, "min_distance", n_local, false);
    out.min_distance_ratio = fetch(info, "min_distance_ratio", n_local, false);
  }
  if (request.force_sigma)
    out.member_edge_grad = fetch(info, "member_edge_grad", int64_t(out.n_members) * 3 * n_edges, true);
  return out;
}

EdgeTensors edge_tensors(const EdgeBatch &batch, torch::Dtype dtype, const c10::Device &device)
{
  const int64_t n_all = static_cast<int64_t>(batch.species.size());
  const int64_t n_edges = static_cast<int64_t>(batch.n_edges());
  const auto as_long = torch::TensorOptions().dtype(torch::kLong);
  const auto as_double = torch::TensorOptions().dtype(torch::kFloat64);
  EdgeTensors t;
  t.species = torch::empty({n_all}, as_long);
  if (n_all) std::memcpy(t.species.data_ptr<int64_t>(), batch.species.data(), n_all * sizeof(int64_t));
  t.edge_index = torch::empty({2, n_edges}, as_long);
  if (n_edges) {
    std::memcpy(t.edge_index.data_ptr<int64_t>(), batch.src.data(), n_edges * sizeof(int64_t));
    std::memcpy(t.edge_index.data_ptr<int64_t>() + n_edges, batch.dst.data(), n_edges * sizeof(int64_t));
    // zero-copy view of the host buffer; the model detaches it before taking gradients
    t.vectors = torch::from_blob(const_cast<double *>(batch.vectors.data()), {n_edges, 3}, as_double);
  } else {
    t.vectors = torch::zeros({0, 3}, as_double);
  }
  if (dtype != torch::kFloat64) t.vectors = t.vectors.to(dtype);
  if (!device.is_cpu()) {
    t.species = t.species.to(device);
    t.edge_index = t.edge_index.to(device);
    t.vectors = t.vectors.to(device);
  }
  return t;
}

TorchScriptModel load_torchscript_model(const std::string &path, const c10::Device &device,
                                        const std::string &requested_dtype)
{
  TorchScriptModel m;
  m.device = device;
  torch::jit::ExtraFilesMap extra{{kMetadataName, ""}};
  try {
    m.module = torch::jit::load(path, device, extra);
  } catch (std::exception &e) {
    throw std::runtime_error("could not load TorchScript model " + path + " (corrupt or truncated?): " +
                             short_message(e, false) + "; re-export it");
  }
  const std::string &text = extra[kMetadataName];
  if (text.empty())
    throw std::runtime_error("model file " + path + " is a TorchScript file but not an mlip_md model (no " +
                             kMetadataName + " metadata); export models with mlip_md.model.save_model");
  m.info = parse_model_info(path, text);
  check_methods(m.module, m.info);
  m.module.eval();
  const std::string dtype = requested_dtype.empty() ? m.info.stored_dtype : requested_dtype;
  if (dtype != "float64" && dtype != "float32")
    throw std::runtime_error("dtype must be float64 or float32, got '" + dtype + "'");
  m.info.dtype = dtype;
  m.dtype = torch_dtype(dtype);
  if (m.info.dtype != m.info.stored_dtype)
    convert_floating(m.module, m.dtype);    // `dtype float32`: weights and buffers in the run precision
  return m;
}

void freeze_for_inference(torch::jit::Module &module)
{
  std::vector<std::string> keep{"evaluate"};
  if (module.find_method("evaluate_features")) keep.push_back("evaluate_features");
  try {
    module = torch::jit::freeze(module, keep, /*optimize_numerics=*/false);
  } catch (std::exception &) {
  }
}

}    // namespace MLIP
