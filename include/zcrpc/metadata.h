// zcrpc — per-call metadata: small key/value pairs a request carries beside its params, as
// gRPC's metadata (a tenant, a request id, an auth token), and the W3C trace context
// (`traceparent`) carried as one of them, as HTTP and gRPC carry it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace zcrpc {

/// The metadata of one request: set by the caller (`RawRequest::metadata()`, or a Tracer in
/// onClientCallBegin), read by the handler (`CallContext::metadata()`) and the server's
/// Tracer. It travels in the frame's extension area (docs/wire-format.md, record 5), not
/// in the params; standard Cap'n Proto peers (capnp://) have no place for it and do not
/// get it. Setting nothing costs nothing. Threads: as the request or call it belongs to.
class Metadata final {
 public:
  static constexpr size_t kMaxEntries = 32;
  static constexpr size_t kMaxKeyBytes = 64;
  static constexpr size_t kMaxValueBytes = 1024;

  /// Sets `key` to `value`, replacing an earlier value. A key is 1..64 bytes of lowercase
  /// letters, digits, '-', '_' and '.'; a value at most 1024 bytes of anything; at most 32
  /// entries. Throws InvalidArgument naming what is wrong. (All of it must also fit the
  /// connection's extension area: send() says so when it does not.)
  void set(std::string_view key, std::string_view value);
  /// The value of `key`, if set.
  std::optional<std::string_view> get(std::string_view key) const noexcept;
  /// Removes `key`; false when it was not set.
  bool erase(std::string_view key) noexcept;
  void clear() noexcept { entries_.clear(); }
  bool empty() const noexcept { return entries_.empty(); }
  size_t size() const noexcept { return entries_.size(); }
  /// In the order they were first set (and arrived).
  const std::vector<std::pair<std::string, std::string>>& entries() const noexcept { return entries_; }

  /// Why `key` cannot be a key, or empty when it can.
  static std::string keyFault(std::string_view key);

 private:
  std::vector<std::pair<std::string, std::string>> entries_;
};

/// A W3C Trace Context (level 1) `traceparent`: "00-<trace id>-<parent id>-<flags>" in
/// lowercase hex, carried as the metadata entry `traceparent` (kKey). zcrpc's own
/// TraceContext (64-bit ids, in the frame header) stays as it is; a Tracer that speaks W3C
/// reads and writes this entry instead (examples/tracing).
struct TraceParent {
  static constexpr std::string_view kKey = "traceparent";
  std::array<uint8_t, 16> traceId{};
  std::array<uint8_t, 8> parentId{};
  uint8_t flags = 0;  ///< bit 0: sampled

  /// Both ids non-zero, as the specification requires.
  bool valid() const noexcept;
  /// "00-" + 32 hex + "-" + 16 hex + "-" + 2 hex.
  std::string format() const;
  /// A version-00 traceparent (or a later version's first four fields, as the specification
  /// asks of a version-00 reader); nullopt when `text` is not one (bad length, uppercase
  /// or non-hex digits, version ff, an all-zero id).
  static std::optional<TraceParent> parse(std::string_view text) noexcept;
  /// The traceparent in `m`, if it has a valid one.
  static std::optional<TraceParent> from(const Metadata& m) noexcept;
};

}  // namespace zcrpc
