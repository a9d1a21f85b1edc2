#include "mlip_fused.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <utility>

namespace MLIP {

namespace {

// grow-only resize: never shrinks the capacity, at least one element (the kernel refuses NULL)
template <typename T> T *sized(std::vector<T> &buffer, int64_t n)
{
  buffer.resize(static_cast<size_t>(std::max<int64_t>(n, 1)));
  return buffer.data();
}

void check(int status, const char *errbuf, const char *what)
{
  if (status != MLIP_OK)
    throw std::runtime_error(std::string("fused descriptor kernel (") + what + "): " + errbuf);
}

}    // namespace

std::string fused_descriptor_params(const ModelInfo &info, mlip_power_spectrum_params &params)
{
  if (!info.descriptor) return "its metadata has no descriptor block";
  const DescriptorSpec &block = *info.descriptor;
  if (block.kind != "power_spectrum") return "its descriptor is not the built-in power spectrum";
  if (block.version != 1.0 && block.version != 2.0)
    return "its descriptor version is neither 1 nor 2 (the versions this plugin's kernel computes)";
  const std::pair<const char *, const std::optional<double> &> numbers[] = {
      {"n_species", block.n_species}, {"n_max", block.n_max}, {"l_max", block.l_max},
      {"cutoff", block.cutoff},       {"switch_width", block.switch_width}};
  for (const auto &entry : numbers)
    if (!entry.second || !std::isfinite(*entry.second))
      return std::string("its descriptor block lacks a numeric '") + entry.first + "'";
  params = mlip_power_spectrum_params{};
  params.n_species = static_cast<int32_t>(*block.n_species);
  params.n_max = static_cast<int32_t>(*block.n_max);
  params.l_max = static_cast<int32_t>(*block.l_max);
  params.cutoff = *block.cutoff;
  params.switch_width = *block.switch_width;
  if (block.version == 2.0) {    // species-compressed: Q channels mixed by W [S][n_max][Q]
    if (!block.malformed.empty()) return block.malformed;
    if (!block.channels || block.radial_mixing.empty())
      return "its compressed (version 2) descriptor block lacks 'channels' or 'radial_mixing'";
    if (!(*block.channels >= 1.0 && *block.channels <= MLIP_POWER_SPECTRUM_MAX_CHANNELS))
      return "its descriptor block's channels is outside 1.." + std::to_string(MLIP_POWER_SPECTRUM_MAX_CHANNELS);
    params.n_channels = static_cast<int32_t>(*block.channels);
    params.radial_mixing = block.radial_mixing.data();    // FusedDescriptor keeps its own copy
  }
  char errbuf[512] = {0};
  if (mlip_power_spectrum_check(&params, errbuf, sizeof(errbuf)) != MLIP_OK)
    return std::string("its descriptor parameters are outside what the kernel supports: ") + errbuf;
  const int64_t d = mlip_power_spectrum_n_features(&params);
  if (info.n_features > 0 && d != info.n_features)
    return "its descriptor has " + std::to_string(d) + " features by the kernel's count but the model " +
           std::to_string(info.n_features);
  return "";
}

FusedDescriptor::FusedDescriptor(const mlip_power_spectrum_params &params, const std::vector<int> &atomic_numbers,
                                 bool single) :
    params_(params), single_(single)
{
  if (params_.radial_mixing != nullptr) {    // own the mixing matrix: the caller's may not outlive us
    const int64_t size = int64_t(params_.n_species) * params_.n_max * std::max(params_.n_channels, 0);
    mixing_.assign(params_.radial_mixing, params_.radial_mixing + size);
    params_.radial_mixing = mixing_.data();
  }
  n_features_ = mlip_power_spectrum_n_features(&params_);
  density_size_ = mlip_power_spectrum_density_size(&params_);
  if (n_features_ < 0 || density_size_ < 0) throw std::runtime_error("invalid power-spectrum parameters");
  if (static_cast<int>(atomic_numbers.size()) != params_.n_species)
    throw std::runtime_error("the descriptor has " + std::to_string(params_.n_species) + " species but the model " +
                             std::to_string(atomic_numbers.size()) + " elements; re-export the model");
  int max_z = 0;
  for (int z : atomic_numbers) max_z = std::max(max_z, z);
  z_to_index_.assign(max_z + 1, -1);
  for (size_t k = 0; k < atomic_numbers.size(); ++k) z_to_index_[atomic_numbers[k]] = static_cast<int64_t>(k);
}

const void *FusedDescriptor::vectors(const EdgeBatch &batch) const
{
  if (single_) return f_vectors_.data();
  return batch.vectors.empty() ? d_edge_grad_.data() : batch.vectors.data();    // any non-NULL when E = 0
}

void FusedDescriptor::prepare(const EdgeBatch &batch)
{
  n_local_ = batch.n_local;
  n_all_ = static_cast<int64_t>(batch.species.size());
  n_edges_ = static_cast<int64_t>(batch.n_edges());
  int64_t *species = sized(species_index_, n_all_);
  for (int64_t k = 0; k < n_all_; ++k) {
    const int64_t z = batch.species[k];
    species[k] = (z >= 0 && z < static_cast<int64_t>(z_to_index_.size())) ? z_to_index_[z] : -1;
    if (species[k] < 0)
      throw std::runtime_error("atomic number " + std::to_string(z) + " is not one of the model's elements");
  }
  int64_t *edges = sized(edge_index_, 2 * n_edges_);
  std::copy(batch.src.begin(), batch.src.end(), edges);
  std::copy(batch.dst.begin(), batch.dst.end(), edges + n_edges_);
  sized(d_edge_grad_, 3 * n_edges_);    // also the non-NULL stand-in of vectors() when E = 0
  if (single_) {
    float *v = sized(f_vectors_, 3 * n_edges_);
    for (int64_t k = 0; k < 3 * n_edges_; ++k) v[k] = static_cast<float>(batch.vectors[k]);
  }
}

void FusedDescriptor::forward(const EdgeBatch &batch)
{
  prepare(batch);
  const int64_t *species = species_index_.data(), *edges = edge_index_.data();
  char errbuf[512] = {0};
  if (single_) {
    check(mlip_power_spectrum_forward_f32(&params_, n_local_, n_all_, species, n_edges_, edges, f_vectors_.data(),
                                          sized(f_density_, n_local_ * density_size_),
                                          sized(f_features_, n_local_ * n_features_), errbuf, sizeof(errbuf)),
          errbuf, "forward");
  } else {
    check(mlip_power_spectrum_forward_f64(&params_, n_local_, n_all_, species, n_edges_, edges,
                                          static_cast<const double *>(vectors(batch)),
                                          sized(d_density_, n_local_ * density_size_),
                                          sized(d_features_, n_local_ * n_features_), errbuf, sizeof(errbuf)),
          errbuf, "forward");
  }
}

void *FusedDescriptor::feature_grad(int n_rows)
{
  const int64_t n = int64_t(n_rows) * n_local_ * n_features_;
  return single_ ? static_cast<void *>(sized(f_grad_, n)) : sized(d_grad_, n);
}

double *FusedDescriptor::backward(const EdgeBatch &batch, int n_rows)
{
  if (n_local_ != batch.n_local || n_edges_ != static_cast<int64_t>(batch.n_edges()))
    throw std::runtime_error("fused descriptor kernel: backward on another batch than the forward pass");
  char errbuf[512] = {0};
  const int64_t n_out = int64_t(n_rows) * 3 * n_edges_;
  double *out = sized(d_edge_grad_, n_out);
  if (single_) {
    float *g = sized(f_edge_grad_, n_out);
    check(mlip_power_spectrum_backward_f32(&params_, n_local_, n_all_, species_index_.data(), n_edges_,
                                           edge_index_.data(), f_vectors_.data(), f_density_.data(), n_rows,
                                           f_grad_.data(), g, errbuf, sizeof(errbuf)),
          errbuf, "backward");
    for (int64_t k = 0; k < n_out; ++k) out[k] = g[k];
  } else {
    check(mlip_power_spectrum_backward_f64(&params_, n_local_, n_all_, species_index_.data(), n_edges_,
                                           edge_index_.data(), static_cast<const double *>(vectors(batch)),
                                           d_density_.data(), n_rows, d_grad_.data(), out, errbuf, sizeof(errbuf)),
          errbuf, "backward");
  }
  return out;
}

double *FusedDescriptor::backward_forces(const EdgeBatch &batch, bool with_virial, double *&virial)
{
  if (n_local_ != batch.n_local || n_edges_ != static_cast<int64_t>(batch.n_edges()))
    throw std::runtime_error("fused descriptor kernel: backward on another batch than the forward pass");
  char errbuf[512] = {0};
  double *forces = sized(forces_, 3 * n_all_);
  std::fill(forces, forces + 3 * n_all_, 0.0);
  std::fill(virial_, virial_ + 9, 0.0);
  if (single_)
    check(mlip_power_spectrum_backward_forces_f32(&params_, n_local_, n_all_, species_index_.data(), n_edges_,
                                                  edge_index_.data(), f_vectors_.data(), f_density_.data(),
                                                  f_grad_.data(), forces, with_virial ? virial_ : nullptr, errbuf,
                                                  sizeof(errbuf)),
          errbuf, "backward");
  else
    check(mlip_power_spectrum_backward_forces_f64(&params_, n_local_, n_all_, species_index_.data(), n_edges_,
                                                  edge_index_.data(), static_cast<const double *>(vectors(batch)),
                                                  d_density_.data(), d_grad_.data(), forces, with_virial ? virial_ : nullptr,
                                                  errbuf, sizeof(errbuf)),
          errbuf, "backward");
  virial = virial_;
  return forces;
}

double *FusedDescriptor::energy_forces(const EdgeBatch &batch, FusedReadout &readout, bool with_virial,
                                       double *&virial)
{
  prepare(batch);
  readout.size_outputs(n_local_);
  char errbuf[512] = {0};
  double *forces = sized(forces_, 3 * n_all_);
  std::fill(forces, forces + 3 * n_all_, 0.0);
  std::fill(virial_, virial_ + 9, 0.0);
  double *w = with_virial ? virial_ : nullptr;
  if (single_)
    check(mlip_power_spectrum_energy_forces_f32(&params_, readout.handle(), n_local_, n_all_, species_index_.data(),
                                                n_edges_, edge_index_.data(), f_vectors_.data(),
                                                static_cast<float *>(readout.atomic_energy()),
                                                static_cast<float *>(readout.member_energy()), forces, w, errbuf,
                                                sizeof(errbuf)),
          errbuf, "energy and forces");
  else
    check(mlip_power_spectrum_energy_forces_f64(&params_, readout.handle(), n_local_, n_all_, species_index_.data(),
                                                n_edges_, edge_index_.data(),
                                                static_cast<const double *>(vectors(batch)),
                                                static_cast<double *>(readout.atomic_energy()),
                                                static_cast<double *>(readout.member_energy()), forces, w, errbuf,
                                                sizeof(errbuf)),
          errbuf, "energy and forces");
  virial = virial_;
  return forces;
}

FusedReadout::FusedReadout(const mlip_mlp_readout_spec &spec, bool single) :
    n_members_(spec.n_members), single_(single)
{
  char errbuf[512] = {0};
  if (mlip_mlp_readout_create(&spec, single ? 32 : 64, &readout_, errbuf, sizeof(errbuf)) != MLIP_OK)
    throw std::runtime_error(std::string("C readout: ") + errbuf);
}

FusedReadout::~FusedReadout() { mlip_mlp_readout_free(readout_); }

void FusedReadout::size_outputs(int64_t n)
{
  if (single_) {
    sized(f_energy_, n);
    sized(f_members_, n_members_ * n);
  } else {
    sized(d_energy_, n);
    sized(d_members_, n_members_ * n);
  }
}

void FusedReadout::evaluate(FusedDescriptor &descriptor)
{
  const int64_t n = descriptor.n_local();
  char errbuf[512] = {0};
  void *grad = descriptor.feature_grad(1);
  size_outputs(n);
  if (single_)
    check(mlip_mlp_readout_evaluate_f32(readout_, n, descriptor.species_index(),
                                        static_cast<const float *>(descriptor.features()), f_energy_.data(),
                                        f_members_.data(), static_cast<float *>(grad), errbuf, sizeof(errbuf)),
          errbuf, "readout");
  else
    check(mlip_mlp_readout_evaluate_f64(readout_, n, descriptor.species_index(),
                                        static_cast<const double *>(descriptor.features()), d_energy_.data(),
                                        d_members_.data(), static_cast<double *>(grad), errbuf, sizeof(errbuf)),
          errbuf, "readout");
}

std::string repulsion_params(const ModelInfo &info, std::vector<double> &inner, std::vector<double> &outer)
{
  inner.clear();
  outer.clear();
  if (!info.repulsion) return "";    // no block (written before the repulsion existed) or kind "none"
  const RepulsionSpec &block = *info.repulsion;
  if (block.kind.empty()) return block.malformed;
  if (block.kind != "zbl" || block.version != 1.0 || block.switch_name != "smootherstep")
    return "its repulsion is '" + block.kind + "' (version " +
           (std::isfinite(block.version) ? std::to_string(static_cast<int>(block.version)) : "?") +
           "); this plugin's C core implements 'zbl' version 1 with the smootherstep switch";
  if (!block.malformed.empty()) return block.malformed;
  inner = block.r_inner;
  outer = block.r_outer;
  return "";
}

FusedRepulsion::FusedRepulsion(const std::vector<int> &atomic_numbers, const std::vector<double> &inner,
                               const std::vector<double> &outer)
{
  std::vector<int32_t> z(atomic_numbers.begin(), atomic_numbers.end());
  mlip_repulsion_spec spec{};
  spec.n_species = static_cast<int32_t>(z.size());
  spec.atomic_numbers = z.data();
  spec.r_inner = inner.data();
  spec.r_outer = outer.data();
  char errbuf[512] = {0};
  if (inner.size() != z.size() * z.size() || outer.size() != inner.size())
    throw std::runtime_error("repulsion: radii are not [S][S]");
  if (mlip_repulsion_create(&spec, &repulsion_, errbuf, sizeof(errbuf)) != MLIP_OK)
    throw std::runtime_error(std::string("repulsion: ") + errbuf);
}

FusedRepulsion::~FusedRepulsion() { mlip_repulsion_free(repulsion_); }

const double *FusedRepulsion::evaluate(const FusedDescriptor &descriptor, const EdgeBatch &batch, double *edge_grad,
                                       double *forces, double *virial)
{
  const int64_t n_local = descriptor.n_local();
  double *energy = sized(energy_, n_local);
  int64_t active = 0;
  char errbuf[512] = {0};
  if (descriptor.single())
    check(mlip_repulsion_evaluate_f32(repulsion_, n_local, descriptor.n_all(), descriptor.species_index(),
                                      descriptor.n_edges(), descriptor.edge_index(),
                                      static_cast<const float *>(descriptor.vectors(batch)), energy, edge_grad, forces,
                                      virial, &active, errbuf, sizeof(errbuf)),
          errbuf, "repulsion");
  else
    check(mlip_repulsion_evaluate_f64(repulsion_, n_local, descriptor.n_all(), descriptor.species_index(),
                                      descriptor.n_edges(), descriptor.edge_index(),
                                      static_cast<const double *>(descriptor.vectors(batch)), energy, edge_grad,
                                      forces, virial, &active, errbuf, sizeof(errbuf)),
          errbuf, "repulsion");
  return active ? energy : nullptr;
}

}    // namespace MLIP
