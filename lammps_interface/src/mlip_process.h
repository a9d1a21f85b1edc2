// Process-wide settings pair_style mlip makes once per rank, as mlip_md's Python engines do
// (mlip_md/process.py): torch's intra-op thread count and glibc's malloc behaviour.
#ifndef MLIP_PROCESS_H
#define MLIP_PROCESS_H

#include <string>

namespace MLIP {

// Set torch's intra-op threads of this rank: `requested` (> 0, the pair style's `threads N`),
// else OMP_NUM_THREADS when set, else 1 (one thread per MPI rank: the fused kernel is
// single-threaded and ranks share the cores). Returns the log text, e.g.
// "1 torch thread per rank (default: one per rank; threads N or OMP_NUM_THREADS for more)".
// Throws std::runtime_error for a malformed OMP_NUM_THREADS.
std::string configure_threads(int requested);

// Keep freed memory in the process (mallopt: trim threshold 2 GiB, mmap threshold 32 MiB) so
// the model's per-step buffers are not returned to the kernel and faulted in again; skipped
// with MLIP_MD_MALLOC=system or when GLIBC_TUNABLES is set. Returns the log text.
std::string keep_freed_memory();

}    // namespace MLIP

#endif
