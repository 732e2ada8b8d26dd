// zcrpc — the frame format shared by every transport (see docs/wire-format.md).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

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
  kData = 8,     ///< a plain message from the transport API (no RPC meaning)
  kRelease = 9,  ///< capability releases only (a `releases` extension record, null root)
  /// A chunk of a stream (a `-> stream` method): a request that the receiver answers only
  /// when it fails (or its handler defers or writes results); see docs/wire-format.md.
  kStreamRequest = 10,
};
inline constexpr uint8_t kMaxFrameKind = 10;

/// Fixed frame header, exactly as it lies in transport memory (little-endian; zcrpc only
/// builds for little-endian hosts). Fields are plain integers: the peer is not trusted, so
/// readers copy the header out once and validate the copy (see `parseFrame`).
struct FrameHeader {
  uint32_t frameBytes;   ///< whole frame: header + inline segments + segment table
  uint8_t kind;          ///< FrameKind
  uint8_t flags;         ///< kFlagTraced | kFlagExtended, or 0
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

/// Frame flag: a TraceContext follows the segment table (and ends the frame, unless the
/// frame is kFlagExtended too).
inline constexpr uint8_t kFlagTraced = 1;
/// Frame flag: an extension area follows the segment table (and the TraceContext when
/// kFlagTraced) and ends the frame: a sequence of records, each an ExtensionHeader and its
/// payload (see docs/wire-format.md).
inline constexpr uint8_t kFlagExtended = 2;

/// Header of one record of a frame's extension area. `bytes` counts the header too; it is
/// a multiple of 8 and at least 8; the records fill the area exactly.
struct ExtensionHeader {
  uint16_t type;      ///< an ExtensionType; the RPC layer ignores types it does not know
  uint16_t reserved;  ///< must be 0
  uint32_t bytes;
};
static_assert(sizeof(ExtensionHeader) == 8);

/// Types of extension records. Their payloads (little-endian, after the 8-byte header):
namespace extension {
/// `u32 exportId, u32 0`: the call goes to export `exportId` of the receiver instead of
/// its bootstrap services.
inline constexpr uint16_t kTarget = 1;
/// `u32 count, u32 0`, then count x `{u32 id; u8 kind; u8[3] 0}` (CapDescriptor): the
/// capabilities the message's Cap'n Proto capability pointers index, in order.
inline constexpr uint16_t kCapTable = 2;
/// `u32 count, u32 0`, then count x `{u32 exportId; u32 refs}`: the sender drops `refs`
/// references to each of the receiver's exports.
inline constexpr uint16_t kReleases = 3;
/// Reserved (a W3C trace context travels as the metadata entry "traceparent").
inline constexpr uint16_t kTraceParent = 4;
/// `u32 count, u32 0`, then count x `{u16 keyBytes; u16 0; u32 valueBytes}`, key, value,
/// zeros to 8 bytes: a request's metadata (zcrpc/metadata.h).
inline constexpr uint16_t kMetadata = 5;
}  // namespace extension

/// CapDescriptor kinds in a kCapTable record.
enum class CapKind : uint8_t {
  kNone = 0,            ///< a null capability
  kSenderHosted = 1,    ///< an export of the sender (`id` is its export id)
  kReceiverHosted = 2,  ///< an export of the receiver, handed back (`id` is that export id)
};

/// Records per extension area, at most.
inline constexpr size_t kMaxExtensionRecords = 8;
/// Bytes of an extension area, at most (parseFrame refuses a larger one). A transport may
/// carry less (Connection::maxExtensionBytes()).
inline constexpr size_t kMaxExtensionBytes = 16 << 10;

/// Where one record of a received frame's extension area lies: a private copy of its
/// header's fields, validated by checkFrame(). `offset` counts from the start of the
/// extension area (ParsedFrame::extensionArea) to the record's header.
struct ExtensionRecord {
  uint16_t type = 0;
  uint32_t offset = 0;
  uint32_t bytes = 0;  ///< the record's, header included
};

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
  /// The extension area (kFlagExtended), in the memory given to parseFrame: its records'
  /// payloads are read from there, so whoever reads one copies it once, validates the
  /// copy and uses only that. Empty when the frame has none.
  const std::byte* extensionArea = nullptr;
  uint32_t extensionBytes = 0;
  uint32_t extensionCount = 0;
  std::array<ExtensionRecord, kMaxExtensionRecords> extensions;
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

/// For Connection::send(), when a message has an extension area
/// (OutgoingMessage::setExtensions): true when `area` is one that checkFrame() accepts, of
/// at most `most` bytes (the connection's maxExtensionBytes()). Cheap: no allocation. A
/// bad area is refused by name on the sender's side instead of being sent for the peer to
/// refuse: refuseExtensionArea() throws InvalidArgument naming `where` and the fault.
bool extensionAreaFits(kj::ArrayPtr<const capnp::word> area, size_t most) noexcept;
[[noreturn]] void refuseExtensionArea(kj::ArrayPtr<const capnp::word> area, size_t most,
                                      std::string_view where);
/// For Connection::send(): throws InvalidArgument naming `where` unless a message of
/// `segmentCount` segments and extension area `extension` fits one frame (at most
/// kMaxSegments segments; an area extensionAreaFits() takes, of at most `mostExtension`
/// bytes). Inline the test that passes for a plain message.
void checkFrameShapeSlow(size_t segmentCount, kj::ArrayPtr<const capnp::word> extension,
                         size_t mostExtension, std::string_view where);
inline void checkFrameShape(size_t segmentCount, kj::ArrayPtr<const capnp::word> extension,
                            size_t mostExtension, std::string_view where) {
  if (segmentCount > kMaxSegments || extension.size() != 0) [[unlikely]]
    checkFrameShapeSlow(segmentCount, extension, mostExtension, where);
}

/// Bytes needed for a frame with `segmentCount` table entries after `inlineBytes` of
/// header + inline segments.
constexpr size_t frameBytesWithTable(size_t inlineBytes, size_t segmentCount) {
  return inlineBytes + segmentCount * sizeof(SegmentEntry);
}

}  // namespace zcrpc
