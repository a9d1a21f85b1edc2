// The plugin's runtime contract, the C++ twin of mlip_md.runtime (request.py, backend.py): what
// a caller asks of one evaluation (EvaluationRequest), what a backend can do (Capabilities), the
// edges it evaluates (EdgeBatch) and what it returns (ModelOutput), and the Backend interface
// the three kinds implement:
//
//   TorchScriptBackend  mlip_backend_torchscript.cpp  the model's TorchScript `evaluate`
//   FusedBackend        mlip_backend_fused.cpp        the fused descriptor kernel + the model's
//                                                     evaluate_features or the C readout (+ repulsion)
//   CompiledBackend     mlip_backend_compiled.cpp     AOTInductor graphs of a .pt2 package, with
//                                                     its TorchScript source as the fallback
//
// No libtorch here: Model (mlip_model.h) picks a backend and the pair style sees only float64
// host buffers.
#ifndef MLIP_BACKEND_H
#define MLIP_BACKEND_H

#include "mlip_model_info.h"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace MLIP {

// One call's needs beyond what every call produces (per-atom energies, member energies, forces
// as edge gradients or assembled).
struct EvaluationRequest {
  bool monitors = false;          // energy_sigma, mahalanobis, d_min, min_distance(_ratio) [n_local]
  bool force_sigma = false;       // per-member edge gradients member_edge_grad [K][E][3]
  bool edge_gradients = false;    // edge_grad [E][3] even from a backend that assembles forces (per-atom virial)
  bool virial = true;             // the global virial, with assembled forces
};

// What a backend can do (the same fields as mlip_md.runtime.request.Capabilities).
struct Capabilities {
  std::string kind;                    // "torchscript" | "fused" | "compiled"
  bool assembles_forces = false;       // forces + virial instead of edge_grad when no edge gradients are asked
  std::string force_sigma = "native";  // "native" | "fallback" (the TorchScript source computes it)
  std::vector<std::string> devices;    // "cpu", "cuda"
  std::vector<std::string> dtypes;     // precisions it can run in
  std::string description;             // the one-line text the pair style logs
};

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

// Model inputs in the contract's layout, filled by mlip_convert: species [n_all] atomic numbers;
// edges e = (src[e] centre < n_local, dst[e] neighbour); vectors [E*3] = r_dst - r_src (Angstrom).
struct EdgeBatch {
  int n_local = 0;
  std::vector<int64_t> species;
  EdgeArray<int64_t> src, dst;
  EdgeArray<double> vectors;
  size_t n_edges() const { return src.size(); }
};

// Float64 host views of the model outputs; valid until the backend's next evaluate().
// Optional outputs are nullptr when the model did not return them.
struct ModelOutput {
  int n_members = 1;
  const double *atomic_energy = nullptr;       // [n_local] eV
  const double *edge_grad = nullptr;           // [E*3] dE/d(vectors), or nullptr when:
  const double *forces = nullptr;              // [n_all*3] eV/A, assembled by the backend
  const double *virial = nullptr;              // [9] eV (W = -sum r (x) g, C order) with `forces`
  const double *energy_members = nullptr;      // [K*n_local]
  const double *energy_sigma = nullptr;        // [n_local] eV (calibrated by the model)
  const double *mahalanobis = nullptr;         // [n_local]
  const double *d_min = nullptr;               // [n_local]
  const double *min_distance = nullptr;        // [n_local] Angstrom
  const double *min_distance_ratio = nullptr;  // [n_local]
  const double *member_edge_grad = nullptr;    // [K*E*3]
};

class Backend {
 public:
  virtual ~Backend() = default;
  const ModelInfo &info() const { return info_; }    // info().dtype: the precision it runs in
  const Capabilities &capabilities() const { return capabilities_; }

  // Evaluate the batch with grad mode on; throws std::runtime_error with a message for the user.
  virtual ModelOutput evaluate(const EdgeBatch &batch, const EvaluationRequest &request) = 0;
  // Seconds the fused kernel (forward + backward) took in the last evaluate() (0: no kernel).
  virtual double kernel_seconds() const { return 0.0; }

 protected:
  Backend(ModelInfo info, Capabilities capabilities) :
      info_(std::move(info)), capabilities_(std::move(capabilities))
  {
  }
  ModelInfo info_;
  Capabilities capabilities_;
};

}    // namespace MLIP

#endif
