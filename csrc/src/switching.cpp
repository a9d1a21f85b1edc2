// Smooth switching functions: implementation of section 4 of mlip_md.h.
//
// s(r) = 1 for r <= r_inner, 0 for r >= r_outer and 1 - p(x) in between, with
// x = (r - r_inner) / (r_outer - r_inner) and p a polynomial (or trigonometric)
// step from p(0) = 0 to p(1) = 1 whose first k derivatives vanish at both ends
// (k = the continuity order returned by mlip_switch_continuity). Derivatives
// are with respect to r (chain rule: d/dr = 1/w d/dx, w = r_outer - r_inner).
// No allocation, no exceptions, no global mutable state: thread-safe.
#include "mlip_md.h"
#include "errors.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>

namespace {

constexpr double kPi = 3.14159265358979323846;

using mlip_detail::fail;

// The step p(x) on [0, 1] and its first two x-derivatives.
inline void step(int shape, double x, double *p, double *dp, double *d2p) {
    switch (shape) {
        case MLIP_SWITCH_SMOOTHERSTEP: {  // 10x^3 - 15x^4 + 6x^5, C^2
            const double x2 = x * x;
            *p = x2 * x * (10.0 + x * (-15.0 + 6.0 * x));
            *dp = 30.0 * x2 * (1.0 - x) * (1.0 - x);
            *d2p = 60.0 * x * (1.0 - x) * (1.0 - 2.0 * x);
            return;
        }
        case MLIP_SWITCH_C3: {  // 35x^4 - 84x^5 + 70x^6 - 20x^7, C^3
            const double x2 = x * x, x3 = x2 * x;
            const double u = 1.0 - x;
            *p = x2 * x2 * (35.0 + x * (-84.0 + x * (70.0 - 20.0 * x)));
            *dp = 140.0 * x3 * u * u * u;
            *d2p = 420.0 * x2 * u * u * (1.0 - 2.0 * x);
            return;
        }
        case MLIP_SWITCH_COSINE: {  // x - sin(2 pi x) / (2 pi), C^2
            const double a = 2.0 * kPi * x;
            *p = x - std::sin(a) / (2.0 * kPi);
            *dp = 1.0 - std::cos(a);
            *d2p = 2.0 * kPi * std::sin(a);
            return;
        }
        default: {  // MLIP_SWITCH_COSINE_C1: (1 - cos(pi x)) / 2, only C^1
            const double a = kPi * x;
            *p = 0.5 * (1.0 - std::cos(a));
            *dp = 0.5 * kPi * std::sin(a);
            *d2p = 0.5 * kPi * kPi * std::cos(a);
            return;
        }
    }
}

}  // namespace

extern "C" {

int mlip_switch_continuity(int shape) {
    switch (shape) {
        case MLIP_SWITCH_SMOOTHERSTEP: return 2;
        case MLIP_SWITCH_C3: return 3;
        case MLIP_SWITCH_COSINE: return 2;
        case MLIP_SWITCH_COSINE_C1: return 1;
        default: return -1;
    }
}

int mlip_switch_evaluate(int shape, double r_inner, double r_outer, const double *r,
                         int64_t n, double *s, double *ds, double *d2s, char *errbuf,
                         size_t errbuf_len) {
    if (errbuf != nullptr && errbuf_len > 0) errbuf[0] = '\0';
    if (mlip_switch_continuity(shape) < 0)
        return fail(errbuf, errbuf_len, "unknown switching shape %d (valid: 0..%d)", shape,
                    MLIP_SWITCH_N_SHAPES - 1);
    if (!(std::isfinite(r_inner) && std::isfinite(r_outer) && r_inner >= 0.0 &&
          r_outer > r_inner))
        return fail(errbuf, errbuf_len,
                    "switching radii must satisfy 0 <= r_inner < r_outer (finite), got "
                    "r_inner = %g, r_outer = %g",
                    r_inner, r_outer);
    if (n < 0) return fail(errbuf, errbuf_len, "negative count n = %lld", (long long)n);
    if (n > 0 && (r == nullptr || s == nullptr))
        return fail(errbuf, errbuf_len, "r and s must not be NULL when n > 0");
    const double width = r_outer - r_inner;
    const double inv_w = 1.0 / width;
    for (int64_t k = 0; k < n; ++k) {
        const double rk = r[k];
        if (!std::isfinite(rk))
            return fail(errbuf, errbuf_len, "distance %lld is not finite (%g)", (long long)k, rk);
        double v = 0.0, d1 = 0.0, d2 = 0.0;
        if (rk <= r_inner) {
            v = 1.0;
        } else if (rk < r_outer) {
            double p, dp, d2p;
            step(shape, (rk - r_inner) * inv_w, &p, &dp, &d2p);
            v = 1.0 - p;
            d1 = -dp * inv_w;
            d2 = -d2p * inv_w * inv_w;
        }
        s[k] = v;
        if (ds != nullptr) ds[k] = d1;
        if (d2s != nullptr) d2s[k] = d2;
    }
    return MLIP_OK;
}

}  // extern "C"
