// CompiledBackend: the AOTInductor graphs of a .pt2 package (`mlip-md compile`): "energy" on
// steps without monitors, "monitors" on steps with them (mlip_md.runtime.compiled). Force sigma
// and inputs the graphs were not traced for (fewer than two atoms, edges or neighbours on this
// rank) run the TorchScript model the package was compiled from (its path in the metadata),
// loaded on first need.
#include "mlip_torch.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <stdexcept>

namespace MLIP {

namespace {

using GraphLoader = torch::inductor::AOTIModelPackageLoader;

// The package's graphs ("energy", "monitors"; one may be missing) and its metadata.
std::map<std::string, std::unique_ptr<GraphLoader>> load_graphs(const std::string &path)
{
  std::map<std::string, std::unique_ptr<GraphLoader>> graphs;
  for (const char *name : {"energy", "monitors"}) {
    try {
      graphs[name] = std::make_unique<GraphLoader>(path, name);
    } catch (std::exception &) {
      // a package may hold one of the graphs only
    }
  }
  if (graphs.empty())
    throw std::runtime_error("could not load compiled model " + path +
                             ": no 'energy' or 'monitors' graph (corrupt, or built by another torch version or "
                             "for another CPU?); rebuild it with `mlip-md compile` or use the .pt file");
  return graphs;
}

ModelInfo package_info(const std::string &path, GraphLoader &graph)
{
  auto meta = graph.get_metadata();
  const std::string text = meta.count(kMetadataName) ? meta[kMetadataName] : std::string();
  if (text.empty())
    throw std::runtime_error("compiled model " + path + " has no " + kMetadataName +
                             " metadata; build it with `mlip-md compile`");
  ModelInfo info = parse_model_info(path, text);
  if (!info.compiled || info.compiled->outputs.empty())
    throw std::runtime_error("compiled model " + path + ": metadata lacks compiled.outputs; rebuild it");
  return info;
}

class CompiledBackend : public Backend {
 public:
  CompiledBackend(ModelInfo info, std::map<std::string, std::unique_ptr<GraphLoader>> graphs) :
      Backend(std::move(info), {"compiled", false, "fallback", {"cpu"}, {}, "compiled graphs"}),
      graphs_(std::move(graphs)), dtype_(torch_dtype(info_.dtype))
  {
    capabilities_.dtypes = {info_.dtype};
    for (const auto &entry : graphs_)
      if (!info_.compiled->outputs.count(entry.first))
        throw std::runtime_error("compiled model " + info_.path + ": no output names for graph '" + entry.first + "'");
  }

  ModelOutput evaluate(const EdgeBatch &batch, const EvaluationRequest &request) override
  {
    results_.clear();
    torch::AutoGradMode grad_mode(true);
    const int64_t n_all = static_cast<int64_t>(batch.species.size()), n_edges = batch.n_edges();
    const auto as_long = torch::TensorOptions().dtype(torch::kLong);
    // neighbour slots (position of each edge among its centre's edges) and their maximum
    std::vector<int64_t> count(batch.n_local, 0);
    torch::Tensor slot = torch::empty({n_edges}, as_long);
    int64_t *slot_ptr = slot.data_ptr<int64_t>(), max_nb = 0;
    for (int64_t e = 0; e < n_edges; ++e) {
      slot_ptr[e] = count[batch.src[e]]++;
      max_nb = std::max(max_nb, slot_ptr[e] + 1);
    }
    const std::string graph = (request.monitors || !graphs_.count("energy")) ? "monitors" : "energy";
    if (request.force_sigma || !graphs_.count(graph) || batch.n_local < 2 || n_edges < 2 || n_all < 2 || max_nb < 2)
      return fallback().evaluate(batch, request);
    const EdgeTensors in = edge_tensors(batch, dtype_, c10::Device(torch::kCPU));
    std::vector<torch::Tensor> inputs{in.species, in.species.slice(0, 0, batch.n_local).clone(), in.edge_index,
                                      in.vectors, slot, torch::empty({max_nb}, torch::TensorOptions().dtype(dtype_))};
    std::vector<torch::Tensor> values;
    try {
      values = graphs_[graph]->run(inputs);
    } catch (std::exception &e) {
      throw std::runtime_error("compiled model evaluation failed: " + short_message(e, true));
    }
    const std::vector<std::string> &names = info_.compiled->outputs.at(graph);
    if (values.size() != names.size())
      throw std::runtime_error("compiled model returned " + std::to_string(values.size()) + " outputs, its metadata names " +
                               std::to_string(names.size()));
    for (size_t k = 0; k < names.size(); ++k) results_[names[k]] = values[k];
    return results_.output(info_, batch, request);
  }

 private:
  std::map<std::string, std::unique_ptr<GraphLoader>> graphs_;
  torch::Dtype dtype_;
  TensorResults results_;
  std::unique_ptr<Backend> fallback_;

  // The TorchScript evaluate of the .pt the package was compiled from, in the package's precision.
  Backend &fallback()
  {
    if (!fallback_) {
      const std::string &source = info_.compiled->source;
      if (source.empty() || !std::ifstream(source))
        throw std::runtime_error("this step needs the TorchScript model " + info_.path + " was compiled from (force "
                                 "sigma, or fewer than two atoms / edges / neighbours on this rank), but '" +
                                 source + "' is not there; use the .pt file in pair_style mlip");
      fallback_ = make_torchscript_backend(load_torchscript_model(source, c10::Device(torch::kCPU), info_.dtype));
    }
    return *fallback_;
  }
};

}    // namespace

std::unique_ptr<Backend> make_compiled_backend(const std::string &path, const c10::Device &device)
{
  if (!device.is_cpu())
    throw std::runtime_error("compiled model " + path + " runs on the CPU only; use the .pt file with device " +
                             device.str());
  auto graphs = load_graphs(path);
  ModelInfo info = package_info(path, *graphs.begin()->second);
  return std::make_unique<CompiledBackend>(std::move(info), std::move(graphs));
}

}    // namespace MLIP
