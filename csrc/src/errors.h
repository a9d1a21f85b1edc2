// Internal to csrc/src (not part of the C API): the error-message helper every
// function behind mlip_md.h uses to fill the caller's buffer.
#ifndef MLIP_MD_SRC_ERRORS_H
#define MLIP_MD_SRC_ERRORS_H

#include "mlip_md.h"

#include <cstdarg>
#include <cstddef>
#include <cstdio>

namespace mlip_detail {

// printf-style message into errbuf (always NUL-terminated when errbuf_len > 0);
// returns MLIP_ERR_INVALID_ARGUMENT so callers can `return fail(...)`.
#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 3, 4)))
#endif
inline int fail(char *errbuf, size_t errbuf_len, const char *fmt, ...) {
    if (errbuf != nullptr && errbuf_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        std::vsnprintf(errbuf, errbuf_len, fmt, ap);
        va_end(ap);
        errbuf[errbuf_len - 1] = '\0';
    }
    return MLIP_ERR_INVALID_ARGUMENT;
}

}  // namespace mlip_detail

#endif  // MLIP_MD_SRC_ERRORS_H
