// Fuzz harness for the i-PI wire codec (section 3 of csrc/include/mlip_md.h).
//
// Feeds arbitrary bytes to every decoder (and to the encoders as doubles),
// each time from a heap buffer of EXACTLY the input length so that
// AddressSanitizer catches any read past it, and checks the invariants of
// every successful result (abort() otherwise).
//
/* Two ways to build (from the repository root; do not commit the binaries):

   libFuzzer (clang):
     clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined \
         -DMLIP_LIBFUZZER -Icsrc/include tests/fuzz/ipi_codec_fuzz.cpp \
         csrc/src/ipi_codec.cpp -o /tmp/ipi_fuzz && /tmp/ipi_fuzz -max_total_time=60

   stand-alone random / mutation driver (gcc or clang):
     g++ -std=c++17 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all \
         -Icsrc/include tests/fuzz/ipi_codec_fuzz.cpp csrc/src/ipi_codec.cpp \
         -o /tmp/ipi_fuzz && /tmp/ipi_fuzz 60      # seconds [seed]
*/
#include "mlip_md.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            std::fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, \
                         __LINE__);                                              \
            std::abort();                                                        \
        }                                                                        \
    } while (0)

constexpr int32_t kMaxAtoms = 4096;

// successful decodes per decoder (coverage sanity check of the stand-alone driver)
unsigned long long n_ok[5];

// errbuf must always be NUL-terminated and non-empty after an error
void check_err(int st, const char *errbuf) {
    CHECK(st == MLIP_OK || st == MLIP_ERR_INVALID_ARGUMENT);
    if (st != MLIP_OK) {
        CHECK(std::memchr(errbuf, '\0', MLIP_ERRBUF_LEN) != nullptr);
        CHECK(errbuf[0] != '\0');
    }
}

// Exact-size heap copy: any over-read is a heap-buffer-overflow for ASan.
struct Exact {
    char *p;
    explicit Exact(const uint8_t *d, size_t n) : p(static_cast<char *>(std::malloc(n ? n : 1))) {
        if (n) std::memcpy(p, d, n);
    }
    ~Exact() { std::free(p); }
};

void decode_all(const uint8_t *data, size_t size) {
    Exact buf(data, size);
    char err[MLIP_ERRBUF_LEN];
    int st;

    int msg = -1;
    st = mlip_ipi_decode_header(buf.p, size, &msg, err, sizeof err);
    check_err(st, err);
    if (st == MLIP_OK) {
        ++n_ok[0];
        CHECK(size == MLIP_IPI_HEADER_LEN && msg >= 0 && msg < MLIP_IPI_N_MESSAGES);
        char out[MLIP_IPI_HEADER_LEN];
        CHECK(mlip_ipi_encode_header(msg, out, sizeof out, err, sizeof err) == MLIP_OK);
        CHECK(std::memcmp(out, buf.p, MLIP_IPI_HEADER_LEN) == 0);
    }
    // tiny error buffers must be handled too
    char tiny[3];
    st = mlip_ipi_decode_header(buf.p, size, &msg, tiny, sizeof tiny);
    CHECK(st != MLIP_OK || size == MLIP_IPI_HEADER_LEN);
    if (st != MLIP_OK) CHECK(tiny[2] == '\0' || tiny[1] == '\0' || tiny[0] == '\0');
    mlip_ipi_decode_header(buf.p, size, &msg, nullptr, 0);

    int32_t idx = -1, len = -1;
    st = mlip_ipi_decode_init_prefix(buf.p, size, &idx, &len, err, sizeof err);
    check_err(st, err);
    if (st == MLIP_OK) ++n_ok[1];
    if (st == MLIP_OK)
        CHECK(size == 8 && idx >= 0 && len >= 0 && len <= MLIP_IPI_MAX_INIT_LEN);

    int32_t n_hint = size > 0 ? 1 + data[0] % 16 : 3;
    for (int32_t expected : {-1, n_hint}) {
        double cell[9];
        int32_t n = -1;
        st = mlip_ipi_decode_posdata_prefix(buf.p, size, expected, kMaxAtoms, cell, &n, err,
                                            sizeof err);
        check_err(st, err);
        if (st == MLIP_OK) {
            ++n_ok[2];
            CHECK(size == MLIP_IPI_POSDATA_PREFIX_LEN && n >= 1 && n <= kMaxAtoms);
            CHECK(expected == -1 || n == expected);
            for (double v : cell) CHECK(std::isfinite(v));
        }
    }

    for (int32_t n : {n_hint, static_cast<int32_t>(size / 24 ? size / 24 : 1)}) {
        std::vector<double> pos(3 * static_cast<size_t>(n));
        st = mlip_ipi_decode_positions(buf.p, size, n, pos.data(), err, sizeof err);
        check_err(st, err);
        if (st == MLIP_OK) {
            ++n_ok[3];
            CHECK(size == 24 * static_cast<size_t>(n));
            for (double v : pos) CHECK(std::isfinite(v));
        }
    }

    double e, vir[9];
    int32_t n = -1, nx = -1;
    size_t xoff = 0;
    st = mlip_ipi_decode_forceready(buf.p, size, kMaxAtoms, &e, &n, nullptr, 0, vir, &xoff, &nx,
                                    err, sizeof err);
    check_err(st, err);
    if (st == MLIP_OK) {
        ++n_ok[4];
        CHECK(n >= 1 && n <= kMaxAtoms && nx >= 0 && std::isfinite(e));
        CHECK(xoff + static_cast<size_t>(nx) == size);
        CHECK(mlip_ipi_forceready_size(n, nx) == size);
        std::vector<double> f(3 * static_cast<size_t>(n));
        // capacity one short must be refused, exact capacity accepted
        if (n > 1)
            CHECK(mlip_ipi_decode_forceready(buf.p, size, kMaxAtoms, &e, &n, f.data(), n - 1,
                                             vir, &xoff, &nx, err, sizeof err) != MLIP_OK);
        CHECK(mlip_ipi_decode_forceready(buf.p, size, kMaxAtoms, &e, &n, f.data(), n, vir,
                                         &xoff, &nx, err, sizeof err) == MLIP_OK);
        for (double v : f) CHECK(std::isfinite(v));
        for (double v : vir) CHECK(std::isfinite(v));
        // re-encode: identical bytes except that -0/+0 and 1-ulp unit round trips may differ
        std::vector<char> out(size);
        CHECK(mlip_ipi_encode_forceready(e, f.data(), n, vir, buf.p + xoff, nx, out.data(),
                                         out.size(), nullptr, err, sizeof err) == MLIP_OK);
        CHECK(std::memcmp(out.data(), buf.p, MLIP_IPI_HEADER_LEN) == 0);
    }
}

// Encoders fed with the bytes reinterpreted as doubles (NaN, inf, huge, ...).
void encode_all(const uint8_t *data, size_t size) {
    size_t nd = size / 8;
    if (nd < 12) return;
    std::vector<double> d(nd);
    std::memcpy(d.data(), data, nd * 8);
    int32_t n = static_cast<int32_t>((nd - 10) / 3);
    if (n < 1) return;
    char err[MLIP_ERRBUF_LEN];
    size_t need = mlip_ipi_forceready_size(n, 0);
    CHECK(need > 0);
    // buffers exactly as large as needed (and one byte short: must be refused)
    std::vector<char> out(need);
    size_t written = 0;
    int st = mlip_ipi_encode_forceready(d[0], d.data() + 10, n, d.data() + 1, nullptr, 0,
                                        out.data(), need, &written, err, sizeof err);
    check_err(st, err);
    if (st == MLIP_OK) {
        CHECK(written == need);
        CHECK(mlip_ipi_encode_forceready(d[0], d.data() + 10, n, d.data() + 1, nullptr, 0,
                                         out.data(), need - 1, &written, err,
                                         sizeof err) != MLIP_OK);
        decode_all(reinterpret_cast<const uint8_t *>(out.data()), need);
    }
    size_t pneed = mlip_ipi_posdata_size(n);
    std::vector<char> pout(pneed);
    st = mlip_ipi_encode_posdata(d.data() + 1, d.data() + 10, n, pout.data(), pneed, &written,
                                 err, sizeof err);
    check_err(st, err);
    if (st == MLIP_OK) {
        CHECK(written == pneed);
        double cell[9];
        int32_t m = -1;
        st = mlip_ipi_decode_posdata_prefix(pout.data() + 12, 148, n, kMaxAtoms, cell, &m, err,
                                            sizeof err);
        // a cell accepted by the encoder is accepted by the decoder (same test,
        // up to rounding near the threshold)
        check_err(st, err);
        if (st == MLIP_OK) CHECK(m == n);
        std::vector<double> pos(3 * static_cast<size_t>(n));
        CHECK(mlip_ipi_decode_positions(pout.data() + 160, 24 * static_cast<size_t>(n), n,
                                        pos.data(), err, sizeof err) == MLIP_OK);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    decode_all(data, size);
    // the slices a driver hands to the decoders: after the header, the POSDATA
    // prefix, the positions
    constexpr size_t h = MLIP_IPI_HEADER_LEN, p = MLIP_IPI_POSDATA_PREFIX_LEN;
    if (size > h) decode_all(data + h, size - h);
    if (size >= h + p) decode_all(data + h, p);
    if (size > h + p) decode_all(data + h + p, size - h - p);
    encode_all(data, size);
    return 0;
}

#ifndef MLIP_LIBFUZZER
// ---------------------------------------------------------------------------
// Stand-alone driver: random inputs and mutations of valid messages.
namespace {

std::vector<uint8_t> valid_message(std::mt19937_64 &rng) {
    std::uniform_real_distribution<double> u(-5, 5);
    int32_t n = 1 + static_cast<int32_t>(rng() % 8);
    std::vector<char> out;
    char err[MLIP_ERRBUF_LEN];
    size_t w = 0;
    switch (rng() % 4) {
    case 0: {
        double cell[9] = {8, 0, 0, 0, 9, 0, 0, 0, 10};
        for (double &c : cell) c += u(rng) * 0.3;
        std::vector<double> pos(3 * static_cast<size_t>(n));
        for (double &p : pos) p = u(rng);
        out.resize(mlip_ipi_posdata_size(n));
        CHECK(mlip_ipi_encode_posdata(cell, pos.data(), n, out.data(), out.size(), &w, err,
                                      sizeof err) == MLIP_OK);
        break;
    }
    case 1: {
        std::vector<double> f(3 * static_cast<size_t>(n));
        for (double &x : f) x = u(rng);
        double vir[9];
        for (double &x : vir) x = u(rng);
        char extras[16];
        int32_t nx = static_cast<int32_t>(rng() % 16);
        for (int k = 0; k < nx; ++k) extras[k] = static_cast<char>(rng());
        out.resize(mlip_ipi_forceready_size(n, nx));
        CHECK(mlip_ipi_encode_forceready(u(rng), f.data(), n, vir, extras, nx, out.data(),
                                         out.size(), &w, err, sizeof err) == MLIP_OK);
        break;
    }
    case 2: {
        const char init[] = "seed: 1";
        out.resize(mlip_ipi_init_size(7));
        CHECK(mlip_ipi_encode_init(static_cast<int32_t>(rng() % 100), init, 7, out.data(),
                                   out.size(), &w, err, sizeof err) == MLIP_OK);
        break;
    }
    default:
        out.resize(MLIP_IPI_HEADER_LEN);
        CHECK(mlip_ipi_encode_header(static_cast<int>(rng() % MLIP_IPI_N_MESSAGES), out.data(),
                                     out.size(), err, sizeof err) == MLIP_OK);
    }
    return std::vector<uint8_t>(out.begin(), out.end());
}

void mutate(std::vector<uint8_t> &m, std::mt19937_64 &rng) {
    int ops = static_cast<int>(rng() % 5);
    for (int k = 0; k < ops; ++k) {
        switch (rng() % 5) {
        case 0:
            if (!m.empty()) m[rng() % m.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
            break;
        case 1:
            if (!m.empty()) m[rng() % m.size()] = static_cast<uint8_t>(rng());
            break;
        case 2:
            m.resize(m.empty() ? 0 : rng() % (m.size() + 1));
            break;
        case 3:
            for (int j = static_cast<int>(rng() % 32); j > 0; --j)
                m.push_back(static_cast<uint8_t>(rng()));
            break;
        default:
            if (m.size() >= 4) {
                static const int32_t vals[] = {0, -1, 1, 7, 0x7fffffff, INT32_MIN, 1 << 20};
                int32_t v = vals[rng() % 7];
                std::memcpy(m.data() + rng() % (m.size() - 3), &v, 4);
            }
        }
    }
}

}  // namespace

int main(int argc, char **argv) {
    double seconds = argc > 1 ? std::atof(argv[1]) : 10.0;
    uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 12345;
    std::mt19937_64 rng(seed);
    auto t0 = std::chrono::steady_clock::now();
    uint64_t iters = 0;
    for (;;) {
        std::vector<uint8_t> m;
        if (rng() % 3 == 0) {
            m.resize(rng() % 400);
            for (auto &b : m) b = static_cast<uint8_t>(rng());
        } else {
            m = valid_message(rng);
            mutate(m, rng);
        }
        LLVMFuzzerTestOneInput(m.data(), m.size());
        if ((++iters & 1023) == 0) {
            double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                            .count();
            if (dt >= seconds) break;
        }
    }
    std::printf("ipi_codec_fuzz: %llu inputs in %.0f s, no crash, no sanitizer report, all "
                "invariants held (seed %llu)\n",
                static_cast<unsigned long long>(iters), seconds,
                static_cast<unsigned long long>(seed));
    std::printf("successful decodes: header %llu, init prefix %llu, posdata prefix %llu, "
                "positions %llu, forceready %llu\n",
                n_ok[0], n_ok[1], n_ok[2], n_ok[3], n_ok[4]);
    return 0;
}
#endif
