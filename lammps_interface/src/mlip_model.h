// Loading an exported mlip_md model (TorchScript + mlip_md.json metadata) and calling its
// `evaluate` method, or, with the fused descriptor kernel (mlip_fused), the kernel's forward,
// the model's `evaluate_features` and the kernel's backward. mlip_model.cpp is the only file
// that includes libtorch; the rest of the plugin sees plain float64 buffers (see DESIGN.md,
// "The exported model").
#ifndef MLIP_MODEL_H
#define MLIP_MODEL_H

#include <cstdint>
#include <memory>
#include <utility>
#include <string>
#include <vector>

namespace MLIP {

// What the plugin needs from the metadata.
struct ModelInfo {
  std::string path;
  int format_version = 0;
  std::vector<int> atomic_numbers;    // elements the model knows
  double cutoff = 0.0;                // Angstrom
  std::string dtype;                  // "float64" or "float32"
  int ensemble_size = 1;
  double energy_variance_scale = 1.0;
  double force_variance_scale = 1.0;
  bool knows(int z) const;
  std::string element_list() const;    // "Cu, Ni"
  // Where the training data ends (metadata "monitors"; pair_style mlip's close-contact and
  // out-of-domain checks, mlip_monitor): the closest distance per element pair in training
  // (Angstrom), the largest per-atom T^2 of the training set and the largest held-out d_min
  // (largest over elements; 0 = unknown, not checked).
  struct PairDistance {
    int za, zb;
    double distance;
  };
  std::vector<PairDistance> pair_min_distance;
  double mahalanobis_max = 0.0;
  double d_min_max = 0.0;
};

// Model inputs in the contract's layout, filled by mlip_convert:
// species [n_all] atomic numbers; edges e = (src[e] centre < n_local, dst[e] neighbour);
// vectors [E*3] = r_dst - r_src (Angstrom).
// std::allocator whose resize() leaves new elements uninitialised: the edge arrays are sized
// for every listed pair and cut to the kept ones each step, and zero-filling the difference
// again on the next step cost as much as writing the edges.
template <typename T> struct UninitAllocator : std::allocator<T> {
  template <typename U> struct rebind {
    using other = UninitAllocator<U>;
  };
  UninitAllocator() = default;
  template <typename U> UninitAllocator(const UninitAllocator<U> &) noexcept {}
  template <typename U> void construct(U *p) noexcept { ::new (static_cast<void *>(p)) U; }
  template <typename U, typename... Args> void construct(U *p, Args &&...args)
  {
    ::new (static_cast<void *>(p)) U(std::forward<Args>(args)...);
  }
};
template <typename T> using EdgeArray = std::vector<T, UninitAllocator<T>>;

struct EdgeBatch {
  int n_local = 0;
  std::vector<int64_t> species;
  EdgeArray<int64_t> src, dst;
  EdgeArray<double> vectors;
  size_t n_edges() const { return src.size(); }
};

// Float64 host views of the model outputs; valid until the next evaluate().
// Optional outputs are nullptr when the model did not return them.
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

struct ModelOutput {
  int n_members = 1;
  const double *atomic_energy = nullptr;       // [n_local] eV
  const double *edge_grad = nullptr;           // [E*3] dE/d(vectors), or nullptr when:
  const double *forces = nullptr;              // [n_all*3] eV/A, assembled in the fused kernel
  const double *virial = nullptr;              // [9] eV (W = -sum r (x) g, C order) with `forces`
  const double *energy_members = nullptr;      // [K*n_local]
  const double *energy_sigma = nullptr;        // [n_local] eV (calibrated by the model)
  const double *mahalanobis = nullptr;         // [n_local]
  const double *d_min = nullptr;               // [n_local]
  const double *min_distance = nullptr;        // [n_local] Angstrom
  const double *min_distance_ratio = nullptr;  // [n_local]
  const double *member_edge_grad = nullptr;    // [K*E*3]
};

class Model {
 public:
  Model();
  ~Model();
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  // Load the file on `device` ("cpu", "cuda", "cuda:1"); throws std::runtime_error with a
  // message meant for the user (missing file, not a model, corrupt, bad metadata).
  void load(const std::string &path, const std::string &device, const ModelOptions &options = {});
  bool loaded() const;
  const ModelInfo &info() const { return info_; }

  // Run model.evaluate(...) with grad mode on; throws std::runtime_error.
  // per_edge: edge gradients are needed (per-atom virial); otherwise the fused kernel with the
  // C readout may return assembled forces (and, when `virial`, the virial) instead.
  ModelOutput evaluate(const EdgeBatch &batch, bool monitors, bool force_sigma, bool per_edge = true,
                       bool virial = true);

  // True for an AOTInductor package (path ending in .pt2, written by `mlip-md compile`): its
  // compiled graphs run instead of TorchScript; force sigma and tiny inputs use the .pt it was
  // compiled from (path in its metadata).
  bool compiled() const;
  // True when the fused descriptor kernel computes the descriptor.
  bool fused() const;
  // True when the fused path evaluates the readout in C++ on steps without monitors.
  bool native_readout() const;
  // Precision the model runs in: "float64" or "float32" (info().dtype is the stored one).
  std::string dtype() const;
  // Seconds the fused kernel (forward + backward) took in the last evaluate() (0 unfused).
  double kernel_seconds() const;

 private:
  struct Impl;
  void load_compiled(const std::string &path, Impl &impl);
  Model &source_model();
  std::unique_ptr<Impl> impl_;
  ModelInfo info_;
};

// Periodic table helpers: 0 / nullptr when unknown.
int atomic_number(const std::string &symbol);
const char *element_symbol(int z);

}    // namespace MLIP

#endif
