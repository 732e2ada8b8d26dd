// Byte patterns and checksums for test payloads: data derived from a seed, so a torn,
// stale or overwritten byte is caught. Test code only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace zcrpc::test {

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

inline void fillPattern(uint8_t* p, size_t n, uint64_t seed) {
  uint64_t s = mix64(seed + 0x9E3779B97F4A7C15ull);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    std::memcpy(p + i, &s, 8);
  }
  s = s * 6364136223846793005ull + 1442695040888963407ull;
  for (; i < n; ++i) p[i] = static_cast<uint8_t>(s >> (8 * (i % 8)));
}

inline uint64_t checksum(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull ^ n;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  for (; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return mix64(h);
}

}  // namespace zcrpc::test
