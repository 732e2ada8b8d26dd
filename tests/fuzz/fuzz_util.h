// zcrpc — helpers the fuzz targets share (test code only).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "os/os.h"
#include "zcrpc/transport.h"

namespace zcrpc::fuzz {

/// Reads the input front to back; running out gives zeros (never fails).
class InputReader final {
 public:
  InputReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t u16() { return static_cast<uint16_t>(byte() | byte() << 8); }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t{byte()} << (8 * i);
    return v;
  }
  /// Up to `n` bytes (fewer at the end), copied into `out` (the rest of `out` is zeroed).
  void bytes(void* out, size_t n) {
    size_t take = std::min(n, size_ - pos_);
    std::memset(out, 0, n);
    if (take) std::memcpy(out, data_ + pos_, take);
    pos_ += take;
  }
  std::span<const uint8_t> rest() {
    auto r = std::span<const uint8_t>(data_ + pos_, size_ - pos_);
    pos_ = size_;
    return r;
  }
  bool done() const { return pos_ >= size_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

/// Receives from `c` until it is closed, times out (`idle` with nothing) or `most`
/// messages came; each one is read in place in full (a generic traversal under the
/// connection's reader limits; malformed content only makes it throw, which is caught).
/// Returns how many messages came.
size_t drainMessages(Connection& c, std::chrono::milliseconds idle, size_t most = 256);

/// A blocking tcp socket connected to 127.0.0.1:port (throws on failure).
os::Fd connectLoopbackTcp(uint16_t port);
/// A tcp socket listening on 127.0.0.1 with an ephemeral port; `port` receives it.
os::Fd listenLoopbackTcp(uint16_t& port);
/// The port of "tcp://host:port".
uint16_t portOf(const std::string& endpoint);
/// Writes what the socket takes within `timeout` (stops early if the peer closes).
void writeSome(int fd, std::span<const uint8_t> bytes, std::chrono::milliseconds timeout);
/// True when `fd` became readable or hung up within `timeout`.
bool readableOrClosed(int fd, std::chrono::milliseconds timeout);

}  // namespace zcrpc::fuzz
