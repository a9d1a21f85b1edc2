// FusedBackend: the descriptor from the fused C++ kernel (mlip_fused.h), the rest of the model
// from its TorchScript evaluate_features or, on steps without monitors and force sigma, from the
// C readout; the model's short-range repulsion (which evaluate_features leaves to the host) from
// the C core. The C++ twin of mlip_md.runtime.fused.FusedBackend. Three paths:
//
//   one pass      C readout, no edge gradients asked: energies, forces and virial accumulated in
//                 the kernel's edge loop (mlip_power_spectrum_energy_forces_*)
//   C readout     per-atom virial: kernel forward, C readout, kernel backward to edge gradients
//   TorchScript   monitors or force sigma (or readout torchscript): kernel forward, the model's
//                 evaluate_features, kernel backward of the mean row and the K member rows
#include "mlip_fused.h"
#include "mlip_torch.h"

#include <chrono>
#include <cmath>
#include <map>
#include <stdexcept>

namespace MLIP {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start)
{
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The model's readout for the C kernel (mlip_md.h section 7) when it is an ensemble of SiLU MLPs
// (architecture power_spectrum_ensemble_mlp, uq ensemble), else null; read before freezing.
std::unique_ptr<FusedReadout> make_fused_readout(torch::jit::Module &module, const ModelInfo &info, bool single)
{
  if (info.architecture != "power_spectrum_ensemble_mlp" || info.uq != "ensemble") return nullptr;
  std::map<std::string, torch::Tensor> named;
  for (const auto &p : module.named_parameters(true)) named[p.name] = p.value;
  for (const auto &b : module.named_buffers(true)) named[b.name] = b.value;
  auto as_double = [&named](const std::string &name) {
    auto it = named.find(name);
    if (it == named.end()) throw std::runtime_error("model has no tensor '" + name + "'; re-export it");
    return it->second.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  };
  std::vector<torch::Tensor> weights, biases;
  for (int l = 0; named.count("readout.layers." + std::to_string(l) + ".weight"); ++l) {
    weights.push_back(as_double("readout.layers." + std::to_string(l) + ".weight"));
    biases.push_back(as_double("readout.layers." + std::to_string(l) + ".bias"));
  }
  if (weights.size() < 2 || weights[0].dim() != 4) return nullptr;
  std::vector<int32_t> sizes{static_cast<int32_t>(weights[0].size(2))};
  std::vector<const double *> w, b;
  for (size_t l = 0; l < weights.size(); ++l) {
    sizes.push_back(static_cast<int32_t>(weights[l].size(3)));
    w.push_back(weights[l].data_ptr<double>());
    b.push_back(biases[l].data_ptr<double>());
  }
  torch::Tensor mean = as_double("feature_mean"), scale = as_double("feature_scale");
  torch::Tensor reference = as_double("atomic_reference_energy"), energy_scale = as_double("energy_scale");
  mlip_mlp_readout_spec spec{};
  spec.n_species = static_cast<int32_t>(weights[0].size(0));
  spec.n_members = static_cast<int32_t>(weights[0].size(1));
  spec.n_layers = static_cast<int32_t>(weights.size());
  spec.sizes = sizes.data();
  spec.weights = w.data();
  spec.biases = b.data();
  spec.feature_mean = mean.data_ptr<double>();
  spec.feature_scale = scale.data_ptr<double>();
  spec.reference_energy = reference.data_ptr<double>();
  spec.energy_scale = energy_scale.item<double>();
  return std::make_unique<FusedReadout>(spec, single);
}

// The fused path takes the repulsion radii from the metadata, the TorchScript evaluate from the
// module's buffers repulsion_inner / repulsion_outer: refuse a file where they disagree (its
// engines would disagree). Read before freezing.
void check_repulsion_buffers(torch::jit::Module &module, const std::vector<double> &inner,
                             const std::vector<double> &outer, const std::string &path)
{
  torch::Tensor buffers[2];
  for (const auto &b : module.named_buffers(false)) {
    if (b.name == "repulsion_inner") buffers[0] = b.value.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    if (b.name == "repulsion_outer") buffers[1] = b.value.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  }
  const bool module_has = buffers[1].defined() && buffers[1].numel() > 0 && buffers[1].max().item<double>() > 0.0;
  const std::string fix = "; re-export the model (python -c \"from mlip_md.model.io import reexport; "
                          "reexport('old.pt', 'new.pt')\")";
  if (module_has != !outer.empty())
    throw std::runtime_error("model file " + path + ": its TorchScript module " + (module_has ? "has" : "lacks") +
                             " a short-range repulsion but its metadata says otherwise" + fix);
  if (!module_has) return;
  const std::vector<double> *meta[2] = {&inner, &outer};
  for (int k = 0; k < 2; ++k) {
    if (!buffers[k].defined() || buffers[k].numel() != static_cast<int64_t>(meta[k]->size()))
      throw std::runtime_error("model file " + path + ": the repulsion radii of module and metadata differ" + fix);
    const double *stored = buffers[k].data_ptr<double>();
    for (size_t i = 0; i < meta[k]->size(); ++i)
      if (std::abs(stored[i] - (*meta[k])[i]) > 1e-6 * std::abs((*meta[k])[i]))
        throw std::runtime_error("model file " + path + ": the repulsion radii of module and metadata differ" + fix);
  }
}

// The fused path takes a compressed descriptor's radial mixing W from the metadata, the
// TorchScript evaluate from the module's buffer descriptor.radial_mixing: refuse a file where they
// disagree (as mlip_md.runtime.fused.kernel_params). Read before freezing.
void check_mixing_buffer(torch::jit::Module &module, const ModelInfo &info)
{
  if (!info.descriptor || info.descriptor->radial_mixing.empty()) return;
  const std::vector<double> &meta = info.descriptor->radial_mixing;
  const std::string fix = "; re-export the model (mlip-md upgrade old.pt -o new.pt)";
  torch::Tensor stored;
  for (const auto &b : module.named_buffers(true))
    if (b.name == "descriptor.radial_mixing") stored = b.value.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  if (!stored.defined())
    throw std::runtime_error("model file " + info.path + ": its metadata has a compressed descriptor but its "
                             "TorchScript module has no descriptor.radial_mixing buffer" + fix);
  const double *w = stored.data_ptr<double>();
  bool same = stored.numel() == static_cast<int64_t>(meta.size());
  for (size_t k = 0; same && k < meta.size(); ++k) same = std::abs(w[k] - meta[k]) <= 1e-7 + 1e-6 * std::abs(meta[k]);
  if (!same)
    throw std::runtime_error("model file " + info.path + ": the radial mixing W of its TorchScript module differs "
                             "from the metadata's" + fix);
}

mlip_power_spectrum_params kernel_params(const ModelInfo &info)
{
  mlip_power_spectrum_params params{};
  const std::string why = fused_descriptor_params(info, params);
  if (!why.empty()) throw std::runtime_error("model file " + info.path + ": " + why);
  return params;
}

class FusedBackend : public Backend {
 public:
  FusedBackend(TorchScriptModel model, bool native_readout) :
      Backend(model.info, {"fused", false, "native", {"cpu"}, {"float64", "float32"}, "fused descriptor kernel"}),
      module_(std::move(model.module)), dtype_(model.dtype),
      descriptor_(kernel_params(info_), info_.atomic_numbers, model.dtype == torch::kFloat32)
  {
    if (native_readout) readout_ = make_fused_readout(module_, info_, descriptor_.single());
    std::vector<double> inner, outer;
    const std::string why = repulsion_params(info_, inner, outer);
    if (!why.empty()) throw std::runtime_error("model file " + info_.path + ": " + why);
    check_repulsion_buffers(module_, inner, outer, info_.path);
    check_mixing_buffer(module_, info_);
    if (!outer.empty()) repulsion_ = std::make_unique<FusedRepulsion>(info_.atomic_numbers, inner, outer);
    freeze_for_inference(module_);
    capabilities_.assembles_forces = readout_ != nullptr;
    if (readout_) capabilities_.description = "fused descriptor kernel and C readout";
  }

  ModelOutput evaluate(const EdgeBatch &batch, const EvaluationRequest &request) override
  {
    results_.clear();
    kernel_seconds_ = 0.0;
    torch::AutoGradMode grad_mode(true);    // evaluate_features takes dE/d features by autograd
    const bool c_readout = readout_ && !request.monitors && !request.force_sigma;
    if (c_readout && !request.edge_gradients) return one_pass(batch, request);
    const Clock::time_point start = Clock::now();
    descriptor_.forward(batch);
    kernel_seconds_ = seconds_since(start);
    return c_readout ? with_c_readout(batch, request) : with_evaluate_features(batch, request);
  }

  double kernel_seconds() const override { return kernel_seconds_; }

 private:
  torch::jit::Module module_;
  torch::Dtype dtype_;
  FusedDescriptor descriptor_;
  std::unique_ptr<FusedReadout> readout_;        // ensemble-MLP models with readout native, else null
  std::unique_ptr<FusedRepulsion> repulsion_;    // models with a short-range repulsion, else null
  TensorResults results_;
  double kernel_seconds_ = 0.0;                  // of the last evaluate()

  // One pass (the kernel's time includes the C readout's): forces and virial from the kernel.
  ModelOutput one_pass(const EdgeBatch &batch, const EvaluationRequest &request)
  {
    const Clock::time_point start = Clock::now();
    double *virial = nullptr;
    double *forces = descriptor_.energy_forces(batch, *readout_, request.virial, virial);
    readout_energies(batch.n_local);
    if (repulsion_)
      add_pair_energies(repulsion_->evaluate(descriptor_, batch, nullptr, forces, request.virial ? virial : nullptr),
                        batch.n_local, true);
    kernel_seconds_ = seconds_since(start);
    ModelOutput out = results_.output(info_, batch, request, /*assembled=*/true);
    out.forces = forces;
    out.virial = virial;
    return out;
  }

  // After forward(): the C readout, then the edge gradients of its energy (per-atom virial).
  ModelOutput with_c_readout(const EdgeBatch &batch, const EvaluationRequest &request)
  {
    readout_->evaluate(descriptor_);
    const Clock::time_point start = Clock::now();
    readout_energies(batch.n_local);
    double *edge_grad = descriptor_.backward(batch, 1);
    if (repulsion_)
      add_pair_energies(repulsion_->evaluate(descriptor_, batch, edge_grad, nullptr, nullptr), batch.n_local, true);
    results_["edge_grad"] = edge_rows(edge_grad, 1, batch).squeeze(0);
    kernel_seconds_ += seconds_since(start);
    return results_.output(info_, batch, request);
  }

  // After forward(): the model's evaluate_features, then the kernel's backward of its feature
  // gradients (mean row, and with force sigma the K member rows), the repulsion on every row.
  ModelOutput with_evaluate_features(const EdgeBatch &batch, const EvaluationRequest &request)
  {
    call_evaluate_features(batch, request);
    const int64_t k = load_feature_grads(batch.n_local, request.force_sigma);
    const Clock::time_point start = Clock::now();
    double *edge_grad = descriptor_.backward(batch, static_cast<int>(1 + k));
    if (repulsion_) {    // the same pair term on the mean row and every member row
      const double *pair = nullptr;
      for (int64_t row = 0; row <= k; ++row) {
        pair = repulsion_->evaluate(descriptor_, batch, edge_grad + 3 * batch.n_edges() * row, nullptr, nullptr);
        if (!pair) break;    // no edge inside r_outer: nothing was added, nor would be to the other rows
      }
      add_pair_energies(pair, batch.n_local, false);
    }
    kernel_seconds_ += seconds_since(start);
    torch::Tensor rows = edge_rows(edge_grad, 1 + k, batch);
    results_["edge_grad"] = rows[0];
    if (k) results_["member_edge_grad"] = rows.slice(0, 1);
    return results_.output(info_, batch, request);
  }

  // evaluate_features(species, features, edge_index, vectors, n_local, monitors, force_sigma) on
  // views of the host buffers (no copies; the model only reads them)
  void call_evaluate_features(const EdgeBatch &batch, const EvaluationRequest &request)
  {
    const int64_t n_all = static_cast<int64_t>(batch.species.size()), n_edges = batch.n_edges();
    const auto longs = torch::TensorOptions().dtype(torch::kLong), reals = torch::TensorOptions().dtype(dtype_);
    torch::Tensor species = torch::from_blob(const_cast<int64_t *>(batch.species.data()), {n_all}, longs);
    torch::Tensor features =
        torch::from_blob(descriptor_.features(), {int64_t(batch.n_local), descriptor_.n_features()}, reals);
    torch::Tensor edge_index = torch::from_blob(descriptor_.edge_index(), {2, n_edges}, longs);
    torch::Tensor vectors = torch::from_blob(const_cast<void *>(descriptor_.vectors(batch)), {n_edges, 3}, reals);
    try {
      std::vector<torch::jit::IValue> args{species,        features,         edge_index, vectors, int64_t(batch.n_local),
                                           request.monitors, request.force_sigma};
      results_.add(module_.get_method("evaluate_features")(std::move(args)).toGenericDict());
    } catch (std::exception &e) {
      throw std::runtime_error("model evaluation failed: " + short_message(e, true));
    }
  }

  // feature_grad [n_local][D] (and member_feature_grad [K][n_local][D] with force sigma) into
  // the kernel's rows; returns K (0 without member rows)
  int64_t load_feature_grads(int64_t n_local, bool force_sigma)
  {
    const int64_t d = descriptor_.n_features();
    const torch::Tensor grad = feature_grads(n_local, d);
    torch::Tensor members;
    if (force_sigma) members = optional_member_grads(n_local, d);
    const int64_t k = members.defined() ? members.size(0) : 0;
    torch::Tensor rows = torch::from_blob(descriptor_.feature_grad(static_cast<int>(1 + k)), {1 + k, n_local, d},
                                          torch::TensorOptions().dtype(dtype_));
    rows[0].copy_(grad);
    if (k) rows.slice(0, 1).copy_(members);
    return k;
  }

  torch::Tensor feature_grads(int64_t n_local, int64_t d)
  {
    const torch::Tensor &grad = results_["feature_grad"];
    if (!grad.defined())
      throw std::runtime_error("the model's evaluate_features returned no 'feature_grad' (not a model exported by "
                               "mlip_md, or a damaged one); re-export it with mlip-md upgrade");
    if (grad.dim() != 2 || grad.size(0) != n_local || grad.size(1) != d)
      throw std::runtime_error("model output 'feature_grad' has shape " + c10::str(grad.sizes()) + ", expected [" +
                               std::to_string(n_local) + ", " + std::to_string(d) + "]");
    return grad.detach();
  }

  torch::Tensor optional_member_grads(int64_t n_local, int64_t d)
  {
    const torch::Tensor &members = results_["member_feature_grad"];
    if (!members.defined()) return members;
    if (members.dim() != 3 || members.size(1) != n_local || members.size(2) != d)
      throw std::runtime_error("model output 'member_feature_grad' has shape " + c10::str(members.sizes()) +
                               ", expected [K, " + std::to_string(n_local) + ", " + std::to_string(d) + "]");
    return members.detach();
  }

  // the kernel's float64 edge gradients [rows][E][3] as a tensor view
  static torch::Tensor edge_rows(double *edge_grad, int64_t rows, const EdgeBatch &batch)
  {
    return torch::from_blob(edge_grad, {rows, static_cast<int64_t>(batch.n_edges()), 3},
                            torch::TensorOptions().dtype(torch::kFloat64));
  }

  // the C readout's energies (run precision) as the outputs atomic_energy and energy_members
  void readout_energies(int64_t n_local)
  {
    const auto reals = torch::TensorOptions().dtype(dtype_);
    results_["atomic_energy"] = torch::from_blob(readout_->atomic_energy(), {n_local}, reals);
    results_["energy_members"] = torch::from_blob(readout_->member_energy(), {readout_->n_members(), n_local}, reals);
  }

  // per-centre repulsion energies [n_local] (float64; null: none) joined to atomic_energy and
  // every member (in place when `in_place`: the C readout's own buffers)
  void add_pair_energies(const double *pair, int64_t n_local, bool in_place)
  {
    if (!pair) return;
    torch::Tensor e = torch::from_blob(const_cast<double *>(pair), {n_local}, torch::TensorOptions().dtype(torch::kFloat64))
                          .to(dtype_);
    torch::Tensor &atomic = results_["atomic_energy"], &members = results_["energy_members"];
    if (in_place) {
      atomic.add_(e);
      members.add_(e.unsqueeze(0));
    } else {
      atomic = atomic + e;
      members = members + e.unsqueeze(0);
    }
  }
};

}    // namespace

std::string fused_kernel_unavailable(const TorchScriptModel &model)
{
  mlip_power_spectrum_params params{};
  std::string why = fused_descriptor_params(model.info, params);
  if (why.empty() && !model.module.find_method("evaluate_features"))
    why = "its TorchScript module has no evaluate_features method";
  std::vector<double> inner, outer;
  if (why.empty()) why = repulsion_params(model.info, inner, outer);
  if (why.empty() && !model.device.is_cpu()) why = "the kernel runs on the CPU, the model on " + model.device.str();
  return why;
}

std::unique_ptr<Backend> make_fused_backend(TorchScriptModel model, bool native_readout)
{
  return std::make_unique<FusedBackend>(std::move(model), native_readout);
}

}    // namespace MLIP
