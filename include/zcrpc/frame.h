// zcrpc — the frame format shared by every transport (see docs/wire-format.md).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include <capnp/common.h>

namespace zcrpc {

/// Kind of a frame; the RPC core gives each a meaning.
enum class FrameKind : uint8_t {
  kRequest = 1,
  kResponse = 2,
  kError = 3,
  kOneWay = 4,
  kCancel = 5,
  kPing = 6,
  kPong = 7,
  kData = 8,  ///< a plain message from the transport API (no RPC meaning)
};
inline constexpr uint8_t kMaxFrameKind = 8;

/// Fixed frame header, exactly as it lies in transport memory (little-endian; zcrpc only
/// builds for little-endian hosts). Fields are plain integers: the peer is not trusted, so
/// readers copy the header out once and validate the copy (see `parseFrame`).
struct FrameHeader {
  uint32_t frameBytes;   ///< whole frame: header + inline segments + segment table
  uint8_t kind;          ///< FrameKind
  uint8_t flags;         ///< kFlagTraced or 0
  uint16_t segmentCount; ///< 1..kMaxSegments
  uint64_t callId;
  uint64_t interfaceId;  ///< Cap'n Proto type id of the interface
  uint16_t methodId;     ///< Cap'n Proto method ordinal
  uint16_t reserved;     ///< must be 0
  uint32_t tableOffset;  ///< byte offset of the segment table from the frame start
};
static_assert(sizeof(FrameHeader) == 32);

/// One segment table entry. `location` is the segment's word offset from the frame start
/// (inline), or kArenaBit | word offset into the connection's arena.
struct SegmentEntry {
  uint32_t words;
  uint32_t location;
};
static_assert(sizeof(SegmentEntry) == 8);

inline constexpr uint32_t kArenaBit = 0x8000'0000u;

/// Frame flag: a TraceContext follows the segment table (and ends the frame).
inline constexpr uint8_t kFlagTraced = 1;

/// Distributed-tracing context carried by a frame (W3C-style ids; 0 = none).
struct TraceContext {
  uint64_t traceId = 0;
  uint64_t spanId = 0;
  bool valid() const noexcept { return traceId != 0; }
};
static_assert(sizeof(TraceContext) == 16);
inline constexpr size_t kMaxSegments = 32;
inline constexpr size_t kFrameHeaderBytes = sizeof(FrameHeader);
inline constexpr size_t kDefaultMaxMessageBytes = size_t{64} << 20;

/// Which rule a refused frame broke, with the values the reason names (copies taken when
/// the frame was checked). Filled only when checkFrame() refuses a frame.
struct FrameRefusal {
  uint8_t rule = 0;         ///< 0 while nothing was refused
  uint32_t segment = 0;     ///< the segment concerned, when the rule is about one
  uint64_t value = 0;       ///< the offending size or offset
  uint64_t available = 0;   ///< bytes given to checkFrame
  uint64_t limit = 0;       ///< the limit that was passed (message size, arena words)
};

/// A frame validated against the bytes actually available. Segment pointers point into
/// the frame or the arena given to `parseFrame`; they borrow that memory.
struct ParsedFrame {
  FrameHeader header;  ///< a private copy: never read the header from shared memory again
  size_t segmentCount = 0;
  size_t payloadBytes = 0;  ///< sum of segment sizes
  TraceContext trace;       ///< from the frame, when it is kFlagTraced
  /// Segments in order, ready for capnp::SegmentArrayMessageReader.
  std::array<kj::ArrayPtr<const capnp::word>, kMaxSegments> segments;
  FrameRefusal refusal;  ///< why checkFrame() refused the frame (only then)
};

struct FrameLimits {
  size_t maxMessageBytes = kDefaultMaxMessageBytes;  ///< sum of segment sizes
  std::span<const std::byte> arena;                  ///< empty: arena segments are refused
};

/// Validates every field of the frame in `bytes` (which must be 8-byte aligned) and fills
/// `out`. Returns an empty string on success, else the reason the frame was refused.
/// `bytes` may extend past the frame (a stream buffer, ring padding): the frame's own
/// length field says where it ends, and must lie within `bytes`.
/// Thread-safe; reads each byte of the header and table exactly once.
std::string parseFrame(std::span<const std::byte> bytes, const FrameLimits& limits,
                       ParsedFrame& out);

/// The same check for the data path: true when the frame is valid; otherwise false, with
/// `out.refusal` saying why (frameRefusalReason() words it exactly as parseFrame would).
/// Thread-safe; reads each byte of the header and table exactly once.
bool checkFrame(std::span<const std::byte> bytes, const FrameLimits& limits,
                ParsedFrame& out) noexcept;
/// The reason checkFrame() refused `refused`, as text.
std::string frameRefusalReason(const ParsedFrame& refused);

/// Bytes needed for a frame with `segmentCount` table entries after `inlineBytes` of
/// header + inline segments.
constexpr size_t frameBytesWithTable(size_t inlineBytes, size_t segmentCount) {
  return inlineBytes + segmentCount * sizeof(SegmentEntry);
}

}  // namespace zcrpc
