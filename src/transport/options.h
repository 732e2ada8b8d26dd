// zcrpc — the limits of ConnectionOptions every transport enforces, checked in one place.
#pragma once

#include <cstdint>
#include <string_view>

#include "zcrpc/transport.h"

namespace zcrpc {

constexpr bool isPowerOfTwo(uint64_t v) { return v && !(v & (v - 1)); }

/// ConnectionOptions::ringBytes (and a peer's announced ring): a power of two in this range.
inline constexpr uint32_t kMinRingBytes = 4096;
inline constexpr uint32_t kMaxRingBytes = 1u << 30;
/// ConnectionOptions::maxMessageBytes: frame lengths are 32-bit, with room for the header,
/// segment table and trace context below 4 GiB.
inline constexpr uint64_t kMinMessageBytes = 64;
inline constexpr uint64_t kMaxMessageBytes = (uint64_t{1} << 32) - 4096;
/// ConnectionOptions::maxLeases: a power of two up to this.
inline constexpr uint32_t kMaxLeases = 1u << 20;

constexpr bool validRingBytes(uint64_t n) {
  return isPowerOfTwo(n) && n >= kMinRingBytes && n <= kMaxRingBytes;
}
constexpr bool validMaxMessageBytes(uint64_t n) {
  return n >= kMinMessageBytes && n <= kMaxMessageBytes;
}

/// Checks ringBytes, maxMessageBytes and maxLeases against the limits above; throws
/// InvalidArgument naming the value and the limit. `ringName` says what ringBytes sizes in
/// the message: "ring" (shm, loopback), "tcp buffer", "rdma ring".
void checkConnectionOptions(const ConnectionOptions& o, std::string_view ringName);

}  // namespace zcrpc
