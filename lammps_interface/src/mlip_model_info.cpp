#include "mlip_model_info.h"

#include "json.h"    // LAMMPS_NS::json (nlohmann), shipped with the LAMMPS headers

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <stdexcept>

using LAMMPS_NS::json;

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
const char *const kFormatName = "mlip_md.model";
const int kFormatVersion = 1;

// Python's json writes NaN, Infinity and -Infinity, which JSON (and nlohmann) lack: outside
// strings they become the strings "NaN", "Infinity", "-Infinity", which number() reads back.
std::string quote_non_finite(const std::string &text)
{
  if (text.find("NaN") == std::string::npos && text.find("Infinity") == std::string::npos) return text;
  std::string out;
  out.reserve(text.size() + 16);
  bool in_string = false;
  for (size_t k = 0; k < text.size(); ++k) {
    const char c = text[k];
    if (in_string) {
      out += c;
      if (c == '\\' && k + 1 < text.size()) out += text[++k];
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (const char *word : {"NaN", "Infinity", "-Infinity"}) {
      const size_t n = std::char_traits<char>::length(word);
      if (text.compare(k, n, word) == 0) {
        out += '"' + std::string(word) + '"';
        k += n - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

const json *member(const json &object, const char *key)
{
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

// A JSON number (or a non-finite one quoted by quote_non_finite); empty otherwise.
std::optional<double> number(const json *v)
{
  if (!v) return std::nullopt;
  if (v->is_number()) return v->get<double>();
  if (v->is_string()) {
    const std::string &s = v->get_ref<const std::string &>();
    if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
    if (s == "Infinity") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
  }
  return std::nullopt;
}

double number_or(const json *v, double fallback)
{
  return number(v).value_or(fallback);
}

// A number as an int (truncated, as Python's int()); `fallback` when it is not a finite number.
int int_or(const json *v, int fallback)
{
  const std::optional<double> x = number(v);
  return (x && std::isfinite(*x) && std::abs(*x) < 2e9) ? static_cast<int>(*x) : fallback;
}

std::string string_or(const json *v, const std::string &fallback)
{
  return (v && v->is_string()) ? v->get<std::string>() : fallback;
}

[[noreturn]] void bad_file(const std::string &path, const std::string &what)
{
  throw std::runtime_error("model file " + path + what);
}

// radial_mixing [n_species][n_max][channels] of a version-2 descriptor block, flattened into
// spec.radial_mixing: "" when it has that shape and holds numbers, else why not.
std::string read_mixing(const json &mixing, DescriptorSpec &spec)
{
  if (!spec.n_species || !spec.n_max || !spec.channels)
    return "its descriptor block has radial_mixing but lacks n_species, n_max or channels";
  const double dims[3] = {*spec.n_species, *spec.n_max, *spec.channels};
  for (double d : dims)
    if (!(d >= 1.0 && d < 1e6)) return "its descriptor block's n_species, n_max or channels is not a positive size";
  const size_t s = static_cast<size_t>(dims[0]), n = static_cast<size_t>(dims[1]), q = static_cast<size_t>(dims[2]);
  const std::string wrong = "its descriptor block's radial_mixing is not a [" + std::to_string(s) + "][" +
                            std::to_string(n) + "][" + std::to_string(q) + "] array of numbers";
  if (!mixing.is_array() || mixing.size() != s) return wrong;
  for (const json &species : mixing) {
    if (!species.is_array() || species.size() != n) return wrong;
    for (const json &row : species) {
      if (!row.is_array() || row.size() != q) return wrong;
      for (const json &v : row) {
        const std::optional<double> w = number(&v);
        if (!w) return wrong;
        spec.radial_mixing.push_back(*w);
      }
    }
  }
  return "";
}

DescriptorSpec parse_descriptor(const json &block)
{
  DescriptorSpec spec;
  spec.kind = string_or(member(block, "kind"), "");
  spec.version = number_or(member(block, "version"), NAN);
  spec.n_species = number(member(block, "n_species"));
  spec.n_max = number(member(block, "n_max"));
  spec.l_max = number(member(block, "l_max"));
  spec.cutoff = number(member(block, "cutoff"));
  spec.switch_width = number(member(block, "switch_width"));
  spec.channels = number(member(block, "channels"));
  if (const json *mixing = member(block, "radial_mixing")) spec.malformed = read_mixing(*mixing, spec);
  if (!spec.malformed.empty()) spec.radial_mixing.clear();
  return spec;
}

Calibration parse_calibration(const json *block)
{
  Calibration c;
  if (!block) return c;
  c.energy_variance_scale = number_or(member(*block, "energy_variance_scale"), 1.0);
  c.energy_variance_floor = number_or(member(*block, "energy_variance_floor"), 0.0);
  c.force_variance_scale = number_or(member(*block, "force_variance_scale"), 1.0);
  return c;
}

// metadata["monitors"]: per_element statistics keyed by atomic number ("29"), pair_min_distance
// keyed "29-28". Entries that are not numbers are left out.
DomainLimits parse_domain(const json *monitors)
{
  DomainLimits d;
  if (!monitors) return d;
  auto per_element = [monitors](const char *signal) -> const json * {
    const json *block = member(*monitors, signal);
    const json *table = block ? member(*block, "per_element") : nullptr;
    return (table && table->is_object()) ? table : nullptr;
  };
  if (const json *table = per_element("mahalanobis"))
    for (const auto &item : table->items())
      d.mahalanobis[std::atoi(item.key().c_str())] = {number_or(member(item.value(), "empirical"), NAN),
                                                      number_or(member(item.value(), "training_max"), NAN),
                                                      number_or(member(item.value(), "dof"), NAN)};
  if (const json *table = per_element("d_min"))
    for (const auto &item : table->items())
      d.d_min[std::atoi(item.key().c_str())] = {number_or(member(item.value(), "empirical"), NAN),
                                                number_or(member(item.value(), "holdout_max"), NAN)};
  if (const json *pairs = member(*monitors, "pair_min_distance"); pairs && pairs->is_object())
    for (const auto &item : pairs->items()) {
      const std::string &name = item.key();
      const size_t dash = name.find('-');
      const std::optional<double> distance = number(&item.value());
      if (dash == std::string::npos || !distance) continue;
      d.pair_min_distances[{std::atoi(name.substr(0, dash).c_str()), std::atoi(name.substr(dash + 1).c_str())}] =
          *distance;
    }
  return d;
}

// The radii r_inner / r_outer [S][S] of a repulsion block: "" and `radii` filled, else why not.
std::string read_radii(const json &block, const char *key, size_t s, std::vector<double> &radii)
{
  const json *rows = member(block, key);
  const std::string shape = "[" + std::to_string(s) + "][" + std::to_string(s) + "]";
  if (!rows || !rows->is_array() || rows->size() != s)
    return std::string("its repulsion block lacks ") + key + " " + shape;
  for (const json &row : *rows) {
    if (!row.is_array() || row.size() != s) return std::string("its repulsion block's ") + key + " is not " + shape;
    for (const json &v : row) {
      const std::optional<double> r = number(&v);
      if (!r) return std::string("its repulsion block's ") + key + " holds a non-number";
      radii.push_back(*r);
    }
  }
  return "";
}

// metadata["repulsion"] (kind zbl, version 1, switch smootherstep, radii in the order of
// `atomic_numbers`); empty without a block or with kind "none".
std::optional<RepulsionSpec> parse_repulsion(const json *block, const std::vector<int> &atomic_numbers)
{
  if (!block) return std::nullopt;
  RepulsionSpec spec;
  spec.kind = string_or(member(*block, "kind"), "");
  if (spec.kind == "none") return std::nullopt;
  spec.version = number_or(member(*block, "version"), NAN);
  spec.switch_name = string_or(member(*block, "switch"), "");
  if (spec.kind.empty()) {
    spec.malformed = "its repulsion block has no kind";
    return spec;
  }
  const json *numbers = member(*block, "atomic_numbers");
  const size_t s = atomic_numbers.size();
  if (!numbers || !numbers->is_array() || numbers->size() != s) {
    spec.malformed = "its repulsion block does not list the model's atomic numbers";
    return spec;
  }
  for (const json &z : *numbers) spec.atomic_numbers.push_back(int_or(&z, 0));
  if (spec.atomic_numbers != atomic_numbers) {
    spec.malformed = "its repulsion block lists other atomic numbers than the model";
    return spec;
  }
  spec.malformed = read_radii(*block, "r_inner", s, spec.r_inner);
  if (spec.malformed.empty()) spec.malformed = read_radii(*block, "r_outer", s, spec.r_outer);
  return spec;
}

std::optional<CompiledSpec> parse_compiled(const json *block)
{
  if (!block || !block->is_object()) return std::nullopt;
  CompiledSpec spec;
  spec.format = string_or(member(*block, "format"), "");
  spec.format_version = int_or(member(*block, "format_version"), 0);
  spec.source = string_or(member(*block, "source"), "");
  spec.source_sha256 = string_or(member(*block, "source_sha256"), "");
  spec.torch_version = string_or(member(*block, "torch_version"), "");
  if (const json *outputs = member(*block, "outputs"))
    for (const auto &graph : outputs->items()) {
      if (!graph.value().is_array()) continue;
      std::vector<std::string> &names = spec.outputs[graph.key()];
      for (const json &name : graph.value()) names.push_back(string_or(&name, ""));
    }
  return spec;
}

// format, format_version and the required keys, as mlip_md.model.io.check_metadata
void check_format(const std::string &path, const json &meta, ModelInfo &info)
{
  if (string_or(member(meta, "format"), "") != kFormatName)
    bad_file(path, " is not an mlip_md model (metadata format is not '" + std::string(kFormatName) + "')");
  if (!number(member(meta, "format_version"))) bad_file(path, ": metadata has no format_version; re-export the model");
  info.format_version = int_or(member(meta, "format_version"), kFormatVersion + 1);
  if (info.format_version > kFormatVersion)
    bad_file(path, " uses model format " + std::to_string(info.format_version) + ", newer than this plugin reads (" +
                       std::to_string(kFormatVersion) + "); rebuild the plugin from a newer mlip_md");
  for (const char *key : {"atomic_numbers", "cutoff", "dtype", "ensemble_size"})
    if (!member(meta, key)) bad_file(path, ": metadata lacks '" + std::string(key) + "'; re-export the model");
}

void parse_required(const std::string &path, const json &meta, ModelInfo &info)
{
  const json &numbers = *member(meta, "atomic_numbers");
  if (!numbers.is_array() || numbers.empty())
    bad_file(path, ": metadata atomic_numbers is not a non-empty list");
  for (const json &z : numbers) {
    const int value = int_or(&z, 0);
    if (!element_symbol(value)) bad_file(path, ": metadata atomic_numbers holds an invalid entry");
    info.atomic_numbers.push_back(value);
  }
  info.cutoff = number_or(member(meta, "cutoff"), 0.0);
  if (!(info.cutoff > 0.0) || !std::isfinite(info.cutoff))
    bad_file(path, ": metadata cutoff must be a positive number (Angstrom)");
  info.stored_dtype = info.dtype = string_or(member(meta, "dtype"), "");
  if (info.dtype != "float64" && info.dtype != "float32")
    bad_file(path, ": metadata dtype must be float64 or float32, got '" + info.dtype + "'");
  info.ensemble_size = int_or(member(meta, "ensemble_size"), 1);
  if (info.ensemble_size < 1) bad_file(path, ": metadata ensemble_size must be >= 1");
  if (const json *units = member(meta, "units")) {
    const json *length = member(*units, "length"), *energy = member(*units, "energy");
    if ((length && string_or(length, "") != "angstrom") || (energy && string_or(energy, "") != "eV"))
      bad_file(path, ": model units are not angstrom/eV; pair_style mlip needs units metal");
  }
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

double DomainLimits::mahalanobis_threshold() const
{
  double largest = -INFINITY;
  for (const auto &entry : mahalanobis) {
    const MahalanobisStats &s = entry.second;
    const double v = std::isnan(s.training_max) ? s.empirical : s.training_max;
    if (!std::isnan(v)) largest = std::max(largest, v);
  }
  return largest == -INFINITY ? INFINITY : largest;
}

double DomainLimits::d_min_threshold() const
{
  double largest = -INFINITY;
  for (const auto &entry : d_min) {
    const double v = std::isnan(entry.second.holdout_max) ? entry.second.empirical : entry.second.holdout_max;
    if (!std::isnan(v)) largest = std::max(largest, v);
  }
  return largest == -INFINITY ? INFINITY : largest;
}

double DomainLimits::pair_min_distance(int za, int zb) const
{
  const auto it = pair_min_distances.find({za, zb});
  return (it != pair_min_distances.end() && it->second > 0.0) ? it->second : INFINITY;
}

std::vector<std::string> ModelInfo::elements() const
{
  std::vector<std::string> out;
  for (int z : atomic_numbers) out.push_back(element_symbol(z) ? element_symbol(z) : std::to_string(z));
  return out;
}

std::string ModelInfo::element_list() const
{
  std::string out;
  for (const std::string &symbol : elements()) out += (out.empty() ? "" : ", ") + symbol;
  return out;
}

bool ModelInfo::knows(int z) const
{
  return std::find(atomic_numbers.begin(), atomic_numbers.end(), z) != atomic_numbers.end();
}

ModelInfo parse_model_info(const std::string &path, const std::string &text)
{
  json meta;
  try {
    meta = json::parse(quote_non_finite(text));
  } catch (std::exception &e) {
    bad_file(path, ": invalid JSON metadata (" + std::string(e.what()) + "); re-export the model");
  }
  ModelInfo info;
  info.path = path;
  check_format(path, meta, info);
  parse_required(path, meta, info);
  info.uq = string_or(member(meta, "uq"), "");
  info.architecture = string_or(member(meta, "architecture"), "");
  info.n_features = int_or(member(meta, "n_features"), 0);
  if (const json *block = member(meta, "descriptor"); block && block->is_object())
    info.descriptor = parse_descriptor(*block);
  info.calibration = parse_calibration(member(meta, "calibration"));
  info.domain = parse_domain(member(meta, "monitors"));
  info.repulsion = parse_repulsion(member(meta, "repulsion"), info.atomic_numbers);
  info.compiled = parse_compiled(member(meta, "compiled"));
  return info;
}

}    // namespace MLIP
