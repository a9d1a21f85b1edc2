#include "mlip_model.h"

#include "mlip_fused.h"
#include "mlip_json.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <map>

namespace MLIP {

namespace {

const char *const kSymbols[] = {
    "X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si",
    "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu",
    "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru",
    "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr",
    "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",
    "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac",
    "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
const int kMaxZ = 118;
const char *const kMetadataName = "mlip_md.json";
const char *const kFormatName = "mlip_md.model";
const int kFormatVersion = 1;

// The useful part of a libtorch / TorchScript exception: TorchScript tracebacks end with the
// Python-level message ("builtins.ValueError: ..."), C++ errors start with it.
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

double number_or(const JsonValue *v, double fallback)
{
  return (v && v->is_number()) ? v->number : fallback;
}

}    // namespace

int atomic_number(const std::string &symbol)
{
  for (int z = 1; z <= kMaxZ; ++z)
    if (symbol == kSymbols[z]) return z;
  return 0;
}

const char *element_symbol(int z)
{
  return (z >= 1 && z <= kMaxZ) ? kSymbols[z] : nullptr;
}

bool ModelInfo::knows(int z) const
{
  for (int a : atomic_numbers)
    if (a == z) return true;
  return false;
}

std::string ModelInfo::element_list() const
{
  std::string out;
  for (size_t k = 0; k < atomic_numbers.size(); ++k) {
    if (k) out += ", ";
    const char *s = element_symbol(atomic_numbers[k]);
    out += s ? s : std::to_string(atomic_numbers[k]);
  }
  return out;
}

struct Model::Impl {
  torch::jit::Module module;
  c10::Device device{torch::kCPU};
  torch::Dtype dtype = torch::kFloat64;
  std::vector<torch::Tensor> keep;    // outputs behind the pointers of the last ModelOutput
  // compiled package (.pt2, `mlip-md compile`): AOTInductor graphs "energy" / "monitors",
  // the names of their outputs, and the TorchScript source for what they do not cover
  bool compiled = false;
  std::map<std::string, std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> graphs;
  std::map<std::string, std::vector<std::string>> outputs;
  std::string source_path;
  std::unique_ptr<Model> source;
  // fused descriptor kernel (TorchScript models with a power_spectrum v1 descriptor), or null
  std::unique_ptr<FusedDescriptor> fused;
  // its C readout (ensemble-MLP models), used on steps without monitors and force sigma, or null
  std::unique_ptr<FusedReadout> readout;
  // the model's short-range repulsion, which evaluate_features leaves to the host, or null
  std::unique_ptr<FusedRepulsion> repulsion;
  double kernel_seconds = 0.0;    // of the last evaluate()
};

static bool ends_with(const std::string &s, const std::string &tail)
{
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

Model::Model() = default;
Model::~Model() = default;

bool Model::loaded() const
{
  return impl_ != nullptr;
}

// metadata["monitors"] -> info.pair_min_distance ("29-29": Angstrom), info.mahalanobis_max
// (largest training_max over elements, else empirical) and info.d_min_max (holdout_max, else
// empirical), as mlip_md.monitor.domain_thresholds reads them. Missing entries stay unknown.
static void parse_domain_limits(const JsonValue &meta, ModelInfo &info)
{
  const JsonValue *monitors = meta.get("monitors");
  if (!monitors) return;
  if (const JsonValue *pairs = monitors->get("pair_min_distance"))
    for (size_t k = 0; k < pairs->keys.size(); ++k) {
      const std::string &name = pairs->keys[k];
      const size_t dash = name.find('-');
      if (dash == std::string::npos || !pairs->items[k].is_number()) continue;
      info.pair_min_distance.push_back(
          {std::atoi(name.substr(0, dash).c_str()), std::atoi(name.substr(dash + 1).c_str()), pairs->items[k].number});
    }
  auto largest = [monitors](const char *signal, const char *key) {
    double value = 0.0;
    const JsonValue *block = monitors->get(signal);
    const JsonValue *per_element = block ? block->get("per_element") : nullptr;
    if (per_element)
      for (const JsonValue &element : per_element->items) {
        const JsonValue *v = element.get(key);
        if (!v || !v->is_number()) v = element.get("empirical");
        if (v && v->is_number() && v->number > value) value = v->number;
      }
    return value;
  };
  info.mahalanobis_max = largest("mahalanobis", "training_max");
  info.d_min_max = largest("d_min", "holdout_max");
}

static ModelInfo parse_metadata(const std::string &path, const std::string &text)
{
  JsonValue meta;
  try {
    meta = parse_json(text);
  } catch (std::exception &e) {
    throw std::runtime_error("model file " + path + ": " + e.what() + "; re-export the model");
  }
  const JsonValue *format = meta.get("format");
  if (!format || !format->is_string() || format->text != kFormatName)
    throw std::runtime_error("model file " + path + " is not an mlip_md model (metadata format is not '" +
                             std::string(kFormatName) + "')");
  ModelInfo info;
  info.path = path;
  const JsonValue *version = meta.get("format_version");
  if (!version || !version->is_number())
    throw std::runtime_error("model file " + path + ": metadata has no format_version; re-export the model");
  info.format_version = static_cast<int>(version->number);
  if (info.format_version > kFormatVersion)
    throw std::runtime_error("model file " + path + " uses model format " +
                             std::to_string(info.format_version) + ", newer than this plugin reads (" +
                             std::to_string(kFormatVersion) + "); rebuild the plugin from a newer mlip_md");
  for (const char *key : {"atomic_numbers", "cutoff", "dtype", "ensemble_size"})
    if (!meta.get(key))
      throw std::runtime_error("model file " + path + ": metadata lacks '" + key + "'; re-export the model");
  const JsonValue *numbers = meta.get("atomic_numbers");
  if (numbers->type != JsonValue::Array || numbers->items.empty())
    throw std::runtime_error("model file " + path + ": metadata atomic_numbers is not a non-empty list");
  for (const JsonValue &z : numbers->items) {
    if (!z.is_number() || !element_symbol(static_cast<int>(z.number)))
      throw std::runtime_error("model file " + path + ": metadata atomic_numbers holds an invalid entry");
    info.atomic_numbers.push_back(static_cast<int>(z.number));
  }
  info.cutoff = number_or(meta.get("cutoff"), 0.0);
  if (!(info.cutoff > 0.0) || !std::isfinite(info.cutoff))
    throw std::runtime_error("model file " + path + ": metadata cutoff must be a positive number (Angstrom)");
  const JsonValue *dtype = meta.get("dtype");
  info.dtype = dtype->is_string() ? dtype->text : "";
  if (info.dtype != "float64" && info.dtype != "float32")
    throw std::runtime_error("model file " + path + ": metadata dtype must be float64 or float32, got '" +
                             info.dtype + "'");
  info.ensemble_size = static_cast<int>(number_or(meta.get("ensemble_size"), 1.0));
  if (info.ensemble_size < 1)
    throw std::runtime_error("model file " + path + ": metadata ensemble_size must be >= 1");
  if (const JsonValue *cal = meta.get("calibration")) {
    info.energy_variance_scale = number_or(cal->get("energy_variance_scale"), 1.0);
    info.force_variance_scale = number_or(cal->get("force_variance_scale"), 1.0);
  }
  if (const JsonValue *units = meta.get("units")) {
    const JsonValue *length = units->get("length");
    const JsonValue *energy = units->get("energy");
    if ((length && length->text != "angstrom") || (energy && energy->text != "eV"))
      throw std::runtime_error("model file " + path +
                               ": model units are not angstrom/eV; pair_style mlip needs units metal");
  }
  parse_domain_limits(meta, info);
  return info;
}

// Precision to run a model stored in `stored` ("float64"/"float32") with `pair_style mlip ... dtype D`.
static torch::Dtype run_dtype(const std::string &stored, const std::string &requested)
{
  const std::string &name = requested.empty() ? stored : requested;
  if (name != "float64" && name != "float32")
    throw std::runtime_error("dtype must be float64 or float32, got '" + name + "'");
  return name == "float32" ? torch::kFloat32 : torch::kFloat64;
}

// Floating-point parameters and buffers to `dtype`, integer ones (species tables, counts) kept:
// what torch.nn.Module.to(dtype) does in Python before mlip_md.model.save_model scripts a model
// (TorchScript's Module::to(dtype) would convert the integer buffers too).
static void convert_floating(torch::jit::Module &module, torch::Dtype dtype)
{
  torch::NoGradGuard no_grad;
  auto convert = [dtype](torch::Tensor t) {
    if (t.is_floating_point() && t.scalar_type() != dtype) t.set_data(t.to(dtype));
  };
  for (const auto &p : module.named_parameters(true)) convert(p.value);
  for (const auto &b : module.named_buffers(true)) convert(b.value);
}

// Inference only from here on: freezing turns the weights into constants, so the weight
// reshapes every call of the readout does fold away (10-30 % faster, identical results:
// optimize_numerics off). A module that cannot be frozen is used as it is.
static void freeze_for_inference(torch::jit::Module &module)
{
  std::vector<std::string> keep{"evaluate"};
  if (module.find_method("evaluate_features")) keep.push_back("evaluate_features");
  try {
    module = torch::jit::freeze(module, keep, /*optimize_numerics=*/false);
  } catch (std::exception &) {
  }
}

// The model's readout for the C kernel (mlip_md.h section 7) when it is an ensemble of SiLU MLPs
// (architecture power_spectrum_ensemble_mlp, uq ensemble), else null; read before freezing.
static std::unique_ptr<FusedReadout> make_fused_readout(torch::jit::Module &module, const JsonValue &meta,
                                                        bool single)
{
  const JsonValue *architecture = meta.get("architecture");
  const JsonValue *uq = meta.get("uq");
  if (!architecture || !architecture->is_string() || architecture->text != "power_spectrum_ensemble_mlp" || !uq ||
      !uq->is_string() || uq->text != "ensemble")
    return nullptr;
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
static void check_repulsion_buffers(torch::jit::Module &module, const std::vector<double> &inner,
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

void Model::load(const std::string &path, const std::string &device, const ModelOptions &options)
{
  impl_.reset();
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
  auto impl = std::make_unique<Impl>();
  try {
    impl->device = c10::Device(device);
  } catch (std::exception &) {
    throw std::runtime_error("unknown device '" + device + "'; use cpu or cuda");
  }
  if (impl->device.is_cuda() && !torch::cuda::is_available())
    throw std::runtime_error("device " + device +
                             " requested but this libtorch has no usable CUDA device; use device cpu");

  if (ends_with(path, ".pt2")) {
    if (options.fused == ModelOptions::Fused::Yes)
      throw std::runtime_error("fused yes: " + path + " is a compiled package, which runs its own graphs; the fused "
                               "descriptor kernel runs TorchScript .pt models (use the .pt, or drop fused yes)");
    load_compiled(path, *impl);
    if (!options.dtype.empty() && options.dtype != info_.dtype)
      throw std::runtime_error("dtype " + options.dtype + ": compiled package " + path + " was built for " +
                               info_.dtype + "; build one with `mlip-md compile --dtype " + options.dtype +
                               "` or use the .pt file");
    impl_ = std::move(impl);
    return;
  }

  torch::jit::ExtraFilesMap extra{{kMetadataName, ""}};
  try {
    impl->module = torch::jit::load(path, impl->device, extra);
  } catch (std::exception &e) {
    throw std::runtime_error("could not load TorchScript model " + path + " (corrupt or truncated?): " +
                             short_message(e, false) + "; re-export it");
  }
  const std::string &text = extra[kMetadataName];
  if (text.empty())
    throw std::runtime_error("model file " + path + " is a TorchScript file but not an mlip_md model (no " +
                             kMetadataName + " metadata); export models with mlip_md.model.save_model");
  info_ = parse_metadata(path, text);
  // the contract's methods, as mlip_md.model.io checks them: a foreign TorchScript module carrying
  // copied metadata is refused here, not on its first step
  const bool has_descriptor = parse_json(text).get("descriptor") != nullptr;
  for (const char *method : {"evaluate", "evaluate_features"})
    if ((has_descriptor || std::strcmp(method, "evaluate") == 0) && !impl->module.find_method(method))
      throw std::runtime_error("model file " + path + " carries mlip_md metadata but its TorchScript module has no " +
                               method + " method (not a model exported by mlip_md, or a damaged one); re-export "
                               "the model with mlip-md upgrade or mlip-md train");
  impl->module.eval();
  impl->dtype = run_dtype(info_.dtype, options.dtype);
  if (info_.dtype != (impl->dtype == torch::kFloat32 ? "float32" : "float64"))
    convert_floating(impl->module, impl->dtype);    // `dtype float32`: weights and buffers in the run precision

  // fused descriptor kernel: needs the metadata's descriptor block and evaluate_features
  mlip_power_spectrum_params params{};
  const JsonValue meta = parse_json(text);
  const JsonValue *n_features = meta.get("n_features");
  std::string why = fused_descriptor_params(meta, n_features && n_features->is_number() ?
                                                      static_cast<int64_t>(n_features->number) : 0, params);
  if (why.empty() && !impl->module.find_method("evaluate_features"))
    why = "its TorchScript module has no evaluate_features method";
  std::vector<double> repulsion_inner, repulsion_outer;    // empty: no repulsion
  if (why.empty()) why = repulsion_params(meta, info_.atomic_numbers, repulsion_inner, repulsion_outer);
  if (why.empty() && !impl->device.is_cpu()) why = "the kernel runs on the CPU, the model on " + device;
  if (options.fused == ModelOptions::Fused::Yes && !why.empty())
    throw std::runtime_error(
        "fused yes: model " + path + " cannot use the fused descriptor kernel: " + why +
        (impl->device.is_cpu() ? std::string("; re-export it with this mlip_md (mlip-md upgrade old.pt -o new.pt) "
                                             "or use fused no")
                               : std::string("; use fused no with device ") + device));
  if (options.fused != ModelOptions::Fused::No && why.empty())
    impl->fused = std::make_unique<FusedDescriptor>(params, info_.atomic_numbers, impl->dtype == torch::kFloat32);
  if (impl->fused && options.native_readout)
    impl->readout = make_fused_readout(impl->module, meta, impl->dtype == torch::kFloat32);
  if (impl->fused) {
    check_repulsion_buffers(impl->module, repulsion_inner, repulsion_outer, path);
    if (!repulsion_outer.empty())
      impl->repulsion = std::make_unique<FusedRepulsion>(info_.atomic_numbers, repulsion_inner, repulsion_outer);
  }
  freeze_for_inference(impl->module);
  impl_ = std::move(impl);
}

void Model::load_compiled(const std::string &path, Impl &m)
{
  if (!m.device.is_cpu())
    throw std::runtime_error("compiled model " + path + " runs on the CPU only; use the .pt file with device " +
                             m.device.str());
  for (const char *name : {"energy", "monitors"}) {
    try {
      m.graphs[name] = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, name);
    } catch (std::exception &) {
      // a package may hold one of the graphs only
    }
  }
  if (m.graphs.empty())
    throw std::runtime_error("could not load compiled model " + path +
                             ": no 'energy' or 'monitors' graph (corrupt, or built by another torch version or "
                             "for another CPU?); rebuild it with `mlip-md compile` or use the .pt file");
  auto meta = m.graphs.begin()->second->get_metadata();
  const std::string text = meta.count(kMetadataName) ? meta[kMetadataName] : std::string();
  if (text.empty())
    throw std::runtime_error("compiled model " + path + " has no " + kMetadataName +
                             " metadata; build it with `mlip-md compile`");
  info_ = parse_metadata(path, text);
  const JsonValue all = parse_json(text);
  const JsonValue *compiled = all.get("compiled");
  const JsonValue *outputs = compiled ? compiled->get("outputs") : nullptr;
  if (!outputs) throw std::runtime_error("compiled model " + path + ": metadata lacks compiled.outputs; rebuild it");
  for (auto &entry : m.graphs) {
    const JsonValue *names = outputs->get(entry.first);
    if (!names || names->type != JsonValue::Array)
      throw std::runtime_error("compiled model " + path + ": no output names for graph '" + entry.first + "'");
    for (const JsonValue &name : names->items) m.outputs[entry.first].push_back(name.text);
  }
  const JsonValue *source = compiled->get("source");
  if (source && source->is_string()) m.source_path = source->text;
  m.compiled = true;
  m.dtype = info_.dtype == "float32" ? torch::kFloat32 : torch::kFloat64;
}

bool Model::compiled() const
{
  return impl_ && impl_->compiled;
}

bool Model::native_readout() const
{
  return impl_ && impl_->readout;
}

bool Model::fused() const
{
  return impl_ && impl_->fused;
}

double Model::kernel_seconds() const
{
  return impl_ ? impl_->kernel_seconds : 0.0;
}

std::string Model::dtype() const
{
  if (!impl_) return info_.dtype;
  return impl_->dtype == torch::kFloat32 ? "float32" : "float64";
}

// The fused path: kernel forward -> the model's evaluate_features -> kernel backward, one call
// for the mean row and (force sigma) the K member rows, then the short-range repulsion (when the
// model has one) added to the energies and every gradient row. The edge gradients go into
// `results` as float64 views of the kernel's buffers: edge_grad [E, 3], member_edge_grad [K, E, 3].
static void evaluate_fused(torch::jit::Module &module, FusedDescriptor &fused, FusedReadout *readout,
                           FusedRepulsion *repulsion, torch::Dtype dtype, const EdgeBatch &batch, bool monitors,
                           bool force_sigma, bool per_edge, bool virial,
                           std::unordered_map<std::string, torch::Tensor> &results, double &kernel_seconds)
{
  using clock = std::chrono::steady_clock;
  auto start = clock::now();
  const int64_t n_all = static_cast<int64_t>(batch.species.size());
  const int64_t n_edges = static_cast<int64_t>(batch.n_edges());
  const int64_t n_local = batch.n_local, d = fused.n_features();
  const auto longs = torch::TensorOptions().dtype(torch::kLong);
  const auto reals = torch::TensorOptions().dtype(dtype);
  const auto doubles = torch::TensorOptions().dtype(torch::kFloat64);
  // per-centre repulsion energies [n_local] (float64; null: none) joined to atomic_energy,
  // energy and every member of `results` (in place when `in_place`: the C readout's own buffers)
  auto add_pair_energies = [&](const double *pair, bool in_place) {
    if (!pair) return;
    torch::Tensor e = torch::from_blob(const_cast<double *>(pair), {n_local}, doubles).to(dtype);
    if (in_place) {
      results["atomic_energy"].add_(e);
      results["energy_members"].add_(e.unsqueeze(0));
    } else {
      results["atomic_energy"] = results["atomic_energy"] + e;
      results["energy_members"] = results["energy_members"] + e.unsqueeze(0);
    }
    results["energy"] = results["atomic_energy"].sum();
  };
  auto energies = [&] {
    torch::Tensor atomic = torch::from_blob(readout->atomic_energy(), {n_local}, reals);
    results["atomic_energy"] = atomic;
    results["energy"] = atomic.sum();
    results["energy_members"] = torch::from_blob(readout->member_energy(), {readout->n_members(), n_local}, reals);
  };
  if (readout && !monitors && !force_sigma && !per_edge) {
    // one pass (kernel time includes the C readout): forces and virial accumulated in the
    // kernel's edge loop; own keys, as compiled packages return "forces" / "virial" of their own
    double *w = nullptr;
    double *forces = fused.energy_forces(batch, *readout, virial, w);
    energies();
    if (repulsion) add_pair_energies(repulsion->evaluate(fused, batch, nullptr, forces, virial ? w : nullptr), true);
    kernel_seconds = std::chrono::duration<double>(clock::now() - start).count();
    results["kernel_forces"] = torch::from_blob(forces, {n_all, 3}, doubles);
    results["kernel_virial"] = torch::from_blob(w, {3, 3}, doubles);
    return;
  }
  fused.forward(batch);
  kernel_seconds = std::chrono::duration<double>(clock::now() - start).count();
  if (readout && !monitors && !force_sigma) {    // per-atom virial: C readout, then edge gradients
    readout->evaluate(fused);
    start = clock::now();
    energies();
    double *edge_grad = fused.backward(batch, 1);
    if (repulsion) add_pair_energies(repulsion->evaluate(fused, batch, edge_grad, nullptr, nullptr), true);
    results["edge_grad"] = torch::from_blob(edge_grad, {n_edges, 3}, doubles);
    kernel_seconds += std::chrono::duration<double>(clock::now() - start).count();
    return;
  }
  // views of the host buffers (no copies); the model only reads them
  torch::Tensor species = torch::from_blob(const_cast<int64_t *>(batch.species.data()), {n_all}, longs);
  torch::Tensor features = torch::from_blob(fused.features(), {n_local, d}, reals);
  torch::Tensor edge_index = torch::from_blob(fused.edge_index(), {2, n_edges}, longs);
  torch::Tensor vectors = torch::from_blob(const_cast<void *>(fused.vectors(batch)), {n_edges, 3}, reals);
  c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
  try {
    std::vector<torch::jit::IValue> args{species, features, edge_index, vectors, n_local, monitors, force_sigma};
    dict = module.get_method("evaluate_features")(std::move(args)).toGenericDict();
  } catch (std::exception &e) {
    throw std::runtime_error("model evaluation failed: " + short_message(e, true));
  }
  for (const auto &item : dict) results[item.key().toStringRef()] = item.value().toTensor();

  auto it = results.find("feature_grad");
  if (it == results.end())
    throw std::runtime_error("the model's evaluate_features returned no 'feature_grad' (not a model exported by "
                             "mlip_md, or a damaged one); re-export it with mlip-md upgrade");
  const torch::Tensor grad = it->second.detach();
  if (grad.dim() != 2 || grad.size(0) != n_local || grad.size(1) != d)
    throw std::runtime_error("model output 'feature_grad' has shape " + c10::str(grad.sizes()) + ", expected [" +
                             std::to_string(n_local) + ", " + std::to_string(d) + "]");
  torch::Tensor members;
  if (force_sigma && (it = results.find("member_feature_grad")) != results.end()) {
    members = it->second.detach();
    if (members.dim() != 3 || members.size(1) != n_local || members.size(2) != d)
      throw std::runtime_error("model output 'member_feature_grad' has shape " + c10::str(members.sizes()) +
                               ", expected [K, " + std::to_string(n_local) + ", " + std::to_string(d) + "]");
  }
  const int64_t k = members.defined() ? members.size(0) : 0;
  torch::Tensor rows = torch::from_blob(fused.feature_grad(static_cast<int>(1 + k)), {1 + k, n_local, d}, reals);
  rows[0].copy_(grad);
  if (k) rows.slice(0, 1).copy_(members);
  start = clock::now();
  double *edge_grad = fused.backward(batch, static_cast<int>(1 + k));
  if (repulsion) {    // the same pair term on the mean row and every member row
    const double *pair = nullptr;
    for (int64_t row = 0; row <= k; ++row) {
      pair = repulsion->evaluate(fused, batch, edge_grad + 3 * n_edges * row, nullptr, nullptr);
      if (!pair) break;    // no edge inside r_outer: nothing was added, nor would be to the other rows
    }
    add_pair_energies(pair, false);
  }
  kernel_seconds += std::chrono::duration<double>(clock::now() - start).count();
  results["edge_grad"] = torch::from_blob(edge_grad, {n_edges, 3}, doubles);
  if (k) results["member_edge_grad"] = torch::from_blob(edge_grad + 3 * n_edges, {k, n_edges, 3}, doubles);
}

ModelOutput Model::evaluate(const EdgeBatch &batch, bool monitors, bool force_sigma, bool per_edge, bool virial)
{
  if (!impl_) throw std::runtime_error("no model loaded");
  Impl &m = *impl_;
  m.keep.clear();
  m.kernel_seconds = 0.0;
  torch::AutoGradMode grad_mode(true);    // forces come from autograd inside the model

  const int64_t n_all = static_cast<int64_t>(batch.species.size());
  const int64_t n_edges = static_cast<int64_t>(batch.n_edges());
  std::unordered_map<std::string, torch::Tensor> results;
  if (m.fused) {
    evaluate_fused(m.module, *m.fused, m.readout.get(), m.repulsion.get(), m.dtype, batch, monitors, force_sigma,
                   per_edge, virial, results, m.kernel_seconds);
  } else {
    auto as_long = torch::TensorOptions().dtype(torch::kLong);
    auto as_double = torch::TensorOptions().dtype(torch::kFloat64);

    torch::Tensor species = torch::empty({n_all}, as_long);
    if (n_all) std::memcpy(species.data_ptr<int64_t>(), batch.species.data(), n_all * sizeof(int64_t));
    torch::Tensor edge_index = torch::empty({2, n_edges}, as_long);
    torch::Tensor vectors;
    if (n_edges) {
      std::memcpy(edge_index.data_ptr<int64_t>(), batch.src.data(), n_edges * sizeof(int64_t));
      std::memcpy(edge_index.data_ptr<int64_t>() + n_edges, batch.dst.data(), n_edges * sizeof(int64_t));
      // zero-copy view of the host buffer; the model detaches it before taking gradients
      vectors = torch::from_blob(const_cast<double *>(batch.vectors.data()), {n_edges, 3}, as_double);
    } else {
      vectors = torch::zeros({0, 3}, as_double);
    }
    if (m.dtype != torch::kFloat64) vectors = vectors.to(m.dtype);
    if (!m.device.is_cpu()) {
      species = species.to(m.device);
      edge_index = edge_index.to(m.device);
      vectors = vectors.to(m.device);
    }

    if (m.compiled) {
      // neighbour slots (position of each edge among its centre's edges) and their maximum
      std::vector<int64_t> count(batch.n_local, 0);
      torch::Tensor slot = torch::empty({n_edges}, as_long);
      int64_t *slot_ptr = slot.data_ptr<int64_t>();
      int64_t max_nb = 0;
      for (int64_t e = 0; e < n_edges; ++e) {
        slot_ptr[e] = count[batch.src[e]]++;
        if (slot_ptr[e] + 1 > max_nb) max_nb = slot_ptr[e] + 1;
      }
      const std::string graph = (monitors || !m.graphs.count("energy")) ? "monitors" : "energy";
      if (force_sigma || !m.graphs.count(graph) || batch.n_local < 2 || n_edges < 2 || n_all < 2 || max_nb < 2)
        return source_model().evaluate(batch, monitors, force_sigma);
      std::vector<torch::Tensor> inputs{species, species.slice(0, 0, batch.n_local).clone(), edge_index, vectors,
                                        slot, torch::empty({max_nb}, torch::TensorOptions().dtype(m.dtype))};
      std::vector<torch::Tensor> values;
      try {
        values = m.graphs[graph]->run(inputs);
      } catch (std::exception &e) {
        throw std::runtime_error("compiled model evaluation failed: " + short_message(e, true));
      }
      const std::vector<std::string> &names = m.outputs[graph];
      if (values.size() != names.size())
        throw std::runtime_error("compiled model returned " + std::to_string(values.size()) + " outputs, its metadata names " +
                                 std::to_string(names.size()));
      for (size_t k = 0; k < names.size(); ++k) results[names[k]] = values[k];
    } else {
      c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
      try {
        std::vector<torch::jit::IValue> args{species,         edge_index, vectors,
                                             int64_t(batch.n_local), monitors, force_sigma};
        dict = m.module.get_method("evaluate")(std::move(args)).toGenericDict();
      } catch (std::exception &e) {
        throw std::runtime_error("model evaluation failed: " + short_message(e, true));
      }
      for (const auto &item : dict) results[item.key().toStringRef()] = item.value().toTensor();
    }
  }

  const int64_t n_local = batch.n_local;
  auto fetch = [&](const char *key, int64_t expected, bool required) -> const double * {
    auto it = results.find(std::string(key));
    if (it == results.end()) {
      if (required)
        throw std::runtime_error("model " + info_.path + " returned no '" + key +
                                 "' (not a model exported by mlip_md, or a damaged one); re-export it with "
                                 "mlip-md upgrade or mlip-md train");
      return nullptr;
    }
    torch::Tensor t = it->second.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    if (expected >= 0 && t.numel() != expected)
      throw std::runtime_error(std::string("model output '") + key + "' has " + std::to_string(t.numel()) +
                               " values, expected " + std::to_string(expected));
    m.keep.push_back(t);
    return t.data_ptr<double>();
  };

  ModelOutput out;
  out.atomic_energy = fetch("atomic_energy", n_local, true);
  out.forces = fetch("kernel_forces", 3 * n_all, false);
  if (out.forces)
    out.virial = fetch("kernel_virial", 9, true);
  else
    out.edge_grad = fetch("edge_grad", 3 * n_edges, true);
  out.energy_members = fetch("energy_members", -1, true);
  const int64_t n_members_values = m.keep.back().numel();
  out.n_members = n_local > 0 ? static_cast<int>(n_members_values / n_local) : info_.ensemble_size;
  if (monitors) {
    out.energy_sigma = fetch("energy_sigma", n_local, false);
    out.mahalanobis = fetch("mahalanobis", n_local, false);
    out.d_min = fetch("d_min", n_local, false);
    out.min_distance = fetch("min_distance", n_local, false);
    out.min_distance_ratio = fetch("min_distance_ratio", n_local, false);
  }
  if (force_sigma) out.member_edge_grad = fetch("member_edge_grad", int64_t(out.n_members) * 3 * n_edges, true);
  return out;
}

Model &Model::source_model()
{
  Impl &m = *impl_;
  if (!m.source) {
    if (m.source_path.empty() || !std::ifstream(m.source_path))
      throw std::runtime_error("this step needs the TorchScript model " + info_.path + " was compiled from (force "
                               "sigma, or fewer than two atoms / edges / neighbours on this rank), but '" +
                               m.source_path + "' is not there; use the .pt file in pair_style mlip");
    m.source = std::make_unique<Model>();
    ModelOptions options;    // the TorchScript evaluate, as before the fused kernel existed
    options.fused = ModelOptions::Fused::No;
    options.dtype = info_.dtype;    // mlip-md compile --dtype: run the .pt alike
    m.source->load(m.source_path, "cpu", options);
  }
  return *m.source;
}

}    // namespace MLIP
