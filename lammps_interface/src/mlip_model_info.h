// What a model file says about itself (its metadata, mlip_md.json), parsed once: the C++ twin of
// mlip_md.runtime.model_info.ModelInfo, with the same field names and meanings. Units: Angstrom
// and eV. Parsed with the JSON reader LAMMPS ships (json.h, nlohmann) in mlip_model_info.cpp.
// The required keys are validated with a message meant for the user; optional blocks
// (descriptor, calibration, monitors, repulsion, compiled) are absent or hold their defaults when
// a file predates them. Whether a backend can use a block (the fused kernel's descriptor version,
// the repulsion kind) is the backend's question, not the parser's.
#ifndef MLIP_MODEL_INFO_H
#define MLIP_MODEL_INFO_H

#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace MLIP {

// Periodic table: 0 / nullptr when unknown.
int atomic_number(const std::string &symbol);
const char *element_symbol(int z);

// Metadata block "descriptor": what a host needs to run the descriptor itself (the fused
// kernel). kind "" when not a string, version NaN when not a number; a size or radius is empty
// when the block lacks it (or it is not a number). Version 2 (species-compressed) adds
// `channels` (Q) and `radial_mixing` W [S][n_max][Q], flattened row-major (empty when the block
// has none); `malformed`: why radial_mixing cannot be read ("" when it can or is absent).
struct DescriptorSpec {
  std::string kind;
  double version = NAN;
  std::optional<double> n_species, n_max, l_max;
  std::optional<double> cutoff, switch_width;    // Angstrom
  std::optional<double> channels;
  std::vector<double> radial_mixing;
  std::string malformed;
};

// Variance calibration (mlip-md calibrate); uncalibrated files: 1, 0, 1.
struct Calibration {
  double energy_variance_scale = 1.0;
  double energy_variance_floor = 0.0;    // eV^2
  double force_variance_scale = 1.0;
};

// T^2 of one element's training environments and d_min of its held-out ones (NaN when absent).
struct MahalanobisStats {
  double empirical = NAN, training_max = NAN, dof = NAN;
};
struct DminStats {
  double empirical = NAN, holdout_max = NAN;
};

// Where the training data ends (metadata block "monitors").
struct DomainLimits {
  std::map<int, MahalanobisStats> mahalanobis;             // per atomic number
  std::map<int, DminStats> d_min;                          // per atomic number
  std::map<std::pair<int, int>, double> pair_min_distances;    // (za, zb) -> Angstrom, 0 = never seen

  // The largest per-atom T^2 of the training set over elements (training_max, else the empirical
  // quantile); inf without statistics.
  double mahalanobis_threshold() const;
  // The largest d_min of held-out training environments over elements (holdout_max, else
  // empirical); inf when the model has no d_min.
  double d_min_threshold() const;
  // Closest training distance of the element pair (Angstrom); inf when the pair never occurred.
  double pair_min_distance(int za, int zb) const;
};

// Metadata block "repulsion" (absent: no block, or kind "none"). Radii [S*S] in the order of the
// model's atomic numbers. `malformed`: why the radii table cannot be read ("" when it can).
struct RepulsionSpec {
  std::string kind;    // "" when the block has no kind
  double version = NAN;
  std::string switch_name;
  std::vector<int> atomic_numbers;
  std::vector<double> r_inner, r_outer;    // Angstrom
  std::string malformed;
};

// Metadata block "compiled" of a .pt2 package (mlip-md compile).
struct CompiledSpec {
  std::string format;
  int format_version = 0;
  std::string source, source_sha256, torch_version;    // "" when absent
  std::map<std::string, std::vector<std::string>> outputs;    // graph -> output names
};

struct ModelInfo {
  std::string path;
  int format_version = 0;
  std::vector<int> atomic_numbers;    // the elements the model knows, in its species order
  double cutoff = 0.0;                // Angstrom
  std::string dtype;                  // precision it runs in: "float64" | "float32"
  std::string stored_dtype;           // the file's
  int ensemble_size = 1;              // members K the model outputs
  std::string uq;                     // "ensemble" | "bll" | "evidential" ("" for older files)
  std::string architecture;
  long n_features = 0;                // 0 when absent
  std::optional<DescriptorSpec> descriptor;
  Calibration calibration;
  DomainLimits domain;
  std::optional<RepulsionSpec> repulsion;
  std::optional<CompiledSpec> compiled;

  std::vector<std::string> elements() const;    // symbols of atomic_numbers
  std::string element_list() const;             // "Cu, Ni"
  bool knows(int z) const;
};

// Parse and validate the metadata text of the model file `path`; throws std::runtime_error with
// a message meant for the user (invalid JSON, not an mlip_md model, a newer format, missing or
// bad required keys, units other than Angstrom / eV).
ModelInfo parse_model_info(const std::string &path, const std::string &text);

}    // namespace MLIP

#endif
