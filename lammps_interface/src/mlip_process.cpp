#include "mlip_process.h"

#include <ATen/Parallel.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace MLIP {

std::string configure_threads(int requested)
{
  int threads = 1;
  std::string source = "default: one per rank; threads N or OMP_NUM_THREADS for more";
  if (requested > 0) {
    threads = requested;
    source = "pair_style keyword threads";
  } else if (const char *env = std::getenv("OMP_NUM_THREADS"); env && *env) {
    char *end = nullptr;
    const long value = std::strtol(env, &end, 10);
    if (*end != '\0' || value < 1)
      throw std::runtime_error(std::string("OMP_NUM_THREADS='") + env +
                               "' is not a whole number >= 1; set it to the threads per rank, e.g. OMP_NUM_THREADS=1");
    threads = static_cast<int>(value);
    source = "OMP_NUM_THREADS";
  }
  at::set_num_threads(threads);
  return std::to_string(threads) + " torch thread" + (threads == 1 ? "" : "s") + " per rank (" + source + ")";
}

std::string keep_freed_memory()
{
  const char *mode = std::getenv("MLIP_MD_MALLOC");
  if (mode && std::string(mode) == "system") return "glibc defaults (MLIP_MD_MALLOC=system)";
  if (const char *tunables = std::getenv("GLIBC_TUNABLES")) return std::string("GLIBC_TUNABLES=") + tunables;
#if defined(__GLIBC__)
  // mmap first: setting the trim threshold alone switches off glibc's dynamic mmap threshold
  if (mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1 && mallopt(M_TRIM_THRESHOLD, 2147483647) == 1)
    return "keeps freed memory";
  return "glibc defaults (mallopt refused)";
#else
  return "system defaults";
#endif
}

}    // namespace MLIP
