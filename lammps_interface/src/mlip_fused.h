// The fused power-spectrum kernel of the C++ core (csrc/src/power_spectrum.cpp, C API in
// mlip_md.h section 5) as the plugin uses it: the model's descriptor forward and its exact
// backward in one pass over the edges, with every buffer kept between steps (sized once, grown
// when the system grows). No libtorch here: FusedBackend (mlip_backend_fused.cpp) wraps these
// buffers as tensors around the model's `evaluate_features` call.
//
//   forward(batch)            features [n_local][D]           (run precision: double or float)
//   feature_grad(K) <- fill   dF_k / d features [K][n_local][D]
//   backward(batch, K)        dF_k / d edge vectors [K][E][3]  (float64, eV/Angstrom)
//
// FusedReadout is the model's readout in C++ (csrc/src/mlp_readout.cpp, mlip_md.h section 7),
// used between forward and backward on steps that need neither monitors nor force sigma.
// FusedRepulsion is the model's short-range repulsion (csrc/src/repulsion.cpp, section 8), which
// the model's evaluate_features leaves to the host: added to the energies and edge gradients (or
// forces and virial) of every fused step.
#ifndef MLIP_FUSED_H
#define MLIP_FUSED_H

#include "mlip_backend.h"    // EdgeBatch
#include "mlip_md.h"
#include "mlip_model_info.h"

#include <cstdint>
#include <string>
#include <vector>

namespace MLIP {

// Why the fused kernel cannot compute this model's descriptor ("" when it can; then `params`
// is filled): the descriptor block must be kind power_spectrum, version 1 (one-hot species) or
// 2 (species-compressed: channels and radial_mixing; params.radial_mixing then points into
// info's copy of W), valid for the kernel, and its feature count equal info.n_features (0:
// unchecked).
std::string fused_descriptor_params(const ModelInfo &info, mlip_power_spectrum_params &params);

class FusedReadout;

class FusedDescriptor {
 public:
  // atomic_numbers: the model's elements; species index = position in this list.
  // single: run in float32 (else float64). params.radial_mixing (version 2) is copied.
  FusedDescriptor(const mlip_power_spectrum_params &params, const std::vector<int> &atomic_numbers, bool single);
  FusedDescriptor(const FusedDescriptor &) = delete;    // params_ points into mixing_
  FusedDescriptor &operator=(const FusedDescriptor &) = delete;

  int64_t n_features() const { return n_features_; }
  bool single() const { return single_; }

  // Forward pass over the batch's edges; throws std::runtime_error on bad input.
  void forward(const EdgeBatch &batch);
  // After forward(): features [n_local][D], edge_index [2][E], edge vectors [E][3] in the run
  // precision (the batch's own float64 vectors, or their float32 copy); valid until the next forward.
  void *features() { return single_ ? static_cast<void *>(f_features_.data()) : d_features_.data(); }
  int64_t *edge_index() { return edge_index_.data(); }
  const int64_t *edge_index() const { return edge_index_.data(); }
  // After forward(): species index [n_all] (0..S-1) and the number of centres.
  const int64_t *species_index() const { return species_index_.data(); }
  int64_t n_local() const { return n_local_; }
  int64_t n_all() const { return n_all_; }
  int64_t n_edges() const { return n_edges_; }
  const void *vectors(const EdgeBatch &batch) const;

  // Buffer [n_rows][n_local][D] (run precision) for the rows of dF/d features: fill it, then
  // call backward() with the same n_rows.
  void *feature_grad(int n_rows);
  // Backward pass: float64 edge gradients [n_rows][E][3], valid until the next call (the
  // caller may add to them: FusedRepulsion).
  double *backward(const EdgeBatch &batch, int n_rows);
  // Backward pass of row 0 straight to forces [n_all][3] and (with_virial) virial [3][3]
  // (float64, eV/Angstrom and eV, section 6's convention; the virial is zero without
  // with_virial) without edge gradients; valid until the next call.
  double *backward_forces(const EdgeBatch &batch, bool with_virial, double *&virial);
  // Instead of forward() + readout.evaluate() + backward_forces(): one pass over blocks of
  // centres that computes each centre's basis once (mlip_power_spectrum_energy_forces_*). Fills
  // readout.atomic_energy() and readout.member_energy(); returns forces as backward_forces()
  // does. features() and backward() are not valid after it.
  double *energy_forces(const EdgeBatch &batch, FusedReadout &readout, bool with_virial, double *&virial);

 private:
  mlip_power_spectrum_params params_;
  std::vector<double> mixing_;    // W [S][n_max][Q] params_.radial_mixing points into (version 2)
  int64_t n_features_ = 0, density_size_ = 0;
  bool single_ = false;
  // species indices, edges and (float32) vectors of the batch for the kernel
  void prepare(const EdgeBatch &batch);
  std::vector<int64_t> z_to_index_;    // atomic number -> species index, -1 when unknown
  int64_t n_local_ = 0, n_all_ = 0, n_edges_ = 0;    // of the last forward()
  std::vector<int64_t> species_index_, edge_index_;
  std::vector<double> d_density_, d_features_, d_grad_, d_edge_grad_, forces_;
  double virial_[9] = {};
  std::vector<float> f_vectors_, f_density_, f_features_, f_grad_, f_edge_grad_;
};

class FusedReadout {
 public:
  // spec: the model's readout weights (copied); single: run in float32. Throws std::runtime_error.
  FusedReadout(const mlip_mlp_readout_spec &spec, bool single);
  ~FusedReadout();
  FusedReadout(const FusedReadout &) = delete;
  FusedReadout &operator=(const FusedReadout &) = delete;

  int n_members() const { return n_members_; }
  // Readout of the descriptor's last forward(): fills atomic_energy() [n_local] and
  // member_energy() [K][n_local] (eV, run precision) and writes dE/d features into
  // descriptor.feature_grad(1), ready for descriptor.backward(batch, 1).
  void evaluate(FusedDescriptor &descriptor);
  void *atomic_energy() { return single_ ? static_cast<void *>(f_energy_.data()) : d_energy_.data(); }
  void *member_energy() { return single_ ? static_cast<void *>(f_members_.data()) : d_members_.data(); }
  // For FusedDescriptor::energy_forces: the packed readout, and outputs sized for n atoms.
  const mlip_mlp_readout *handle() const { return readout_; }
  void size_outputs(int64_t n);

 private:
  mlip_mlp_readout *readout_ = nullptr;
  int n_members_ = 0;
  bool single_ = false;
  std::vector<double> d_energy_, d_members_;
  std::vector<float> f_energy_, f_members_;
};

// The model's short-range repulsion (info.repulsion: kind zbl, version 1, switch smootherstep,
// r_inner / r_outer [S][S] in the order of info.atomic_numbers): "" when the C core can evaluate
// it (then `inner` and `outer` hold the S*S radii in Angstrom; both empty when the model has no
// repulsion), else why not.
std::string repulsion_params(const ModelInfo &info, std::vector<double> &inner, std::vector<double> &outer);

class FusedRepulsion {
 public:
  // atomic_numbers [S] and the radii of repulsion_params(); throws std::runtime_error.
  FusedRepulsion(const std::vector<int> &atomic_numbers, const std::vector<double> &inner,
                 const std::vector<double> &outer);
  ~FusedRepulsion();
  FusedRepulsion(const FusedRepulsion &) = delete;
  FusedRepulsion &operator=(const FusedRepulsion &) = delete;

  // After descriptor.forward() or energy_forces() on `batch`: per-centre repulsion energies
  // [n_local] (eV, float64, valid until the next call), or null when no edge is inside its
  // pair's r_outer (in domain: nothing to add); its gradient is added to edge_grad [E][3],
  // forces [n_all][3] and virial [9] (float64, each may be null).
  const double *evaluate(const FusedDescriptor &descriptor, const EdgeBatch &batch, double *edge_grad,
                         double *forces, double *virial);

 private:
  mlip_repulsion *repulsion_ = nullptr;
  std::vector<double> energy_;
};

}    // namespace MLIP

#endif
