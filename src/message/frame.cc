#include "zcrpc/frame.h"

#include <cstring>

#include "zcrpc/error.h"

namespace zcrpc {

namespace {

const capnp::word kEmptySegment{};

// The rules of checkFrame(), in the order they are checked (FrameRefusal::rule).
enum Rule : uint8_t {
  kAccepted = 0,
  kMisaligned,
  kShorterThanHeader,
  kLengthBeyondBytes,
  kLengthNotWords,
  kUnknownKind,
  kUnknownFlags,
  kReservedSet,
  kSegmentCount,
  kTableMisplaced,
  kTableNotAtEnd,
  kFirstSegmentEmpty,
  kEmptySegmentOutOfRange,
  kMessageTooLarge,
  kOutsideArena,
  kInlineOverlap,
  // Extension area (kFlagExtended); checked between kTableNotAtEnd and the segments.
  kExtensionEmpty,
  kExtensionTooLarge,
  kExtensionTooManyRecords,
  kExtensionRecordReserved,
  kExtensionRecordSize,
};

// Out of line and cold: the data path pays for a refusal only when there is one.
[[gnu::cold, gnu::noinline]] bool refuse(ParsedFrame& out, Rule rule, uint64_t available,
                                         size_t segment = 0, uint64_t value = 0,
                                         uint64_t limit = 0) noexcept {
  out.refusal = FrameRefusal{rule, static_cast<uint32_t>(segment), value, available, limit};
  return false;
}

/// The walk over an extension area of `areaBytes` bytes at `area` that checkFrame() and
/// extensionAreaFits() share: each record header copied out once and validated, then
/// given to `record(index, type, offset, bytes)`. On a fault returns
/// `refused(rule, index, value, limit)`; else true.
template <class Record, class Refused>
inline bool walkExtensions(const std::byte* area, uint64_t areaBytes, Record&& record,
                           Refused&& refused) noexcept {
  if (areaBytes == 0) return refused(kExtensionEmpty, 0, 0, 0);
  if (areaBytes > kMaxExtensionBytes)
    return refused(kExtensionTooLarge, 0, areaBytes, kMaxExtensionBytes);
  uint64_t at = 0;
  uint32_t n = 0;
  while (at < areaBytes) {
    if (n == kMaxExtensionRecords) return refused(kExtensionTooManyRecords, n, at, kMaxExtensionRecords);
    ExtensionHeader r;
    std::memcpy(&r, area + at, sizeof r);  // areaBytes is a multiple of 8: a whole header
    if (r.reserved != 0) return refused(kExtensionRecordReserved, n, r.reserved, 0);
    const uint64_t recordBytes = r.bytes;
    if (recordBytes < sizeof r || recordBytes % 8 != 0 || recordBytes > areaBytes - at)
      return refused(kExtensionRecordSize, n, recordBytes, areaBytes - at);
    record(n++, r.type, static_cast<uint32_t>(at), static_cast<uint32_t>(recordBytes));
    at += recordBytes;
  }
  return true;
}

/// The extension area of `areaBytes` bytes at `area`: each record header copied out once,
/// validated, and its copy put in `out.extensions`.
[[gnu::noinline]] bool checkExtensions(const std::byte* area, uint64_t areaBytes,
                                       uint64_t available, ParsedFrame& out) noexcept {
  uint32_t count = 0;
  const bool ok = walkExtensions(
      area, areaBytes,
      [&](uint32_t n, uint16_t type, uint32_t at, uint32_t bytes) {
        out.extensions[n] = ExtensionRecord{type, at, bytes};
        count = n + 1;
      },
      [&](Rule rule, size_t n, uint64_t value, uint64_t limit) {
        return refuse(out, rule, available, n, value, limit);
      });
  if (!ok) return false;
  out.extensionArea = area;
  out.extensionBytes = static_cast<uint32_t>(areaBytes);
  out.extensionCount = count;
  return true;
}

}  // namespace

bool checkFrame(std::span<const std::byte> bytes, const FrameLimits& limits,
                ParsedFrame& out) noexcept {
  const uint64_t available = bytes.size();
  if (reinterpret_cast<uintptr_t>(bytes.data()) % 8 != 0)
    return refuse(out, kMisaligned, available);
  if (available < kFrameHeaderBytes) return refuse(out, kShorterThanHeader, available);
  // Copy the header out once; validate and use only the copy (the peer may be writing).
  FrameHeader& h = out.header;
  std::memcpy(&h, bytes.data(), sizeof h);
  const uint64_t frameBytes = h.frameBytes;
  if (frameBytes > available) return refuse(out, kLengthBeyondBytes, available);
  if (frameBytes % 8 != 0) return refuse(out, kLengthNotWords, available);
  if (h.kind == 0 || h.kind > kMaxFrameKind) return refuse(out, kUnknownKind, available);
  if (h.flags & ~(kFlagTraced | kFlagExtended)) return refuse(out, kUnknownFlags, available);
  const uint64_t traceBytes = (h.flags & kFlagTraced) ? sizeof(TraceContext) : 0;
  if (h.reserved != 0) return refuse(out, kReservedSet, available);
  const size_t count = h.segmentCount;
  if (count == 0 || count > kMaxSegments) return refuse(out, kSegmentCount, available);
  const uint64_t tableOffset = h.tableOffset;
  if (tableOffset < kFrameHeaderBytes || tableOffset % 8 != 0)
    return refuse(out, kTableMisplaced, available);
  const uint64_t tableEnd = tableOffset + count * sizeof(SegmentEntry) + traceBytes;
  out.extensionArea = nullptr;
  out.extensionBytes = 0;
  out.extensionCount = 0;
  if (!(h.flags & kFlagExtended)) [[likely]] {
    if (tableEnd != frameBytes) return refuse(out, kTableNotAtEnd, available);
  } else {
    if (tableEnd > frameBytes) return refuse(out, kTableNotAtEnd, available);
    if (!checkExtensions(bytes.data() + tableEnd, frameBytes - tableEnd, available, out))
      return false;
  }
  out.trace = TraceContext{};
  if (traceBytes)
    std::memcpy(&out.trace, bytes.data() + tableEnd - traceBytes, sizeof out.trace);

  const auto* base = reinterpret_cast<const capnp::word*>(bytes.data());
  const auto* arena = reinterpret_cast<const capnp::word*>(limits.arena.data());
  const std::byte* tableBytes = bytes.data() + tableOffset;
  const uint64_t arenaWords = limits.arena.size() / 8;
  uint64_t nextInlineWord = kFrameHeaderBytes / 8;  // inline segments ascend without overlap
  const uint64_t tableWord = tableOffset / 8;
  uint64_t total = 0;
  for (size_t i = 0; i < count; ++i) {
    // Each entry is copied out once (one 8-byte load) and only the copy is used.
    SegmentEntry entry;
    std::memcpy(&entry, tableBytes + i * sizeof(SegmentEntry), sizeof entry);
    const uint64_t words = entry.words;
    const uint32_t loc = entry.location;
    if (words == 0) {
      if (i == 0) return refuse(out, kFirstSegmentEmpty, available);
      // An empty segment (e.g. empty external data) occupies nothing; its location need
      // only be in range. Cap'n Proto readers take a zero-length segment for a missing
      // one, so it reads as one zero word that lies outside the frame.
      if ((loc & kArenaBit) ? (loc & ~kArenaBit) > arenaWords : loc > tableWord)
        return refuse(out, kEmptySegmentOutOfRange, available, i);
      out.segments[i] = kj::ArrayPtr<const capnp::word>(&kEmptySegment, 1);
      continue;
    }
    total += words * 8;
    if (total > limits.maxMessageBytes)
      return refuse(out, kMessageTooLarge, available, i, total, limits.maxMessageBytes);
    if (loc & kArenaBit) {
      const uint64_t offset = loc & ~kArenaBit;
      if (offset > arenaWords || words > arenaWords - offset)
        return refuse(out, kOutsideArena, available, i, offset, arenaWords);
      out.segments[i] = kj::ArrayPtr<const capnp::word>(arena + offset, words);
    } else {
      const uint64_t offset = loc;
      if (offset < nextInlineWord || offset > tableWord || words > tableWord - offset)
        return refuse(out, kInlineOverlap, available, i, offset);
      out.segments[i] = kj::ArrayPtr<const capnp::word>(base + offset, words);
      nextInlineWord = offset + words;
    }
  }
  out.segmentCount = count;
  out.payloadBytes = total;
  return true;
}

std::string frameRefusalReason(const ParsedFrame& refused) {
  const FrameRefusal& r = refused.refusal;
  const FrameHeader& h = refused.header;
  const uint64_t frameBytes = h.frameBytes;
  const std::string i = std::to_string(r.segment);
  switch (r.rule) {
    case kAccepted: return {};
    case kMisaligned: return "frame is not 8-byte aligned";
    case kShorterThanHeader:
      return "frame of " + std::to_string(r.available) + " bytes is shorter than its header";
    case kLengthBeyondBytes:
      return "frame length " + std::to_string(frameBytes) + " exceeds the " +
             std::to_string(r.available) + " bytes available";
    case kLengthNotWords:
      return "frame length " + std::to_string(frameBytes) + " is not a multiple of 8";
    case kUnknownKind: return "unknown frame kind " + std::to_string(h.kind);
    case kUnknownFlags: return "unknown frame flags " + std::to_string(h.flags);
    case kReservedSet: return "reserved header field is not zero";
    case kSegmentCount:
      return "segment count " + std::to_string(h.segmentCount) + " outside 1.." +
             std::to_string(kMaxSegments);
    case kTableMisplaced:
      return "segment table offset " + std::to_string(h.tableOffset) + " is misplaced";
    case kTableNotAtEnd:
      return "segment table of " + std::to_string(h.segmentCount) + " entries at offset " +
             std::to_string(h.tableOffset) +
             ((h.flags & kFlagExtended) ? " passes the end of the " : " does not end the ") +
             std::to_string(frameBytes) + "-byte frame" +
             ((h.flags & kFlagTraced) ? " (before its trace context)" : "");
    case kExtensionEmpty: return "frame is marked extended but has no extension records";
    case kExtensionTooLarge:
      return "extension area of " + std::to_string(r.value) + " bytes exceeds the maximum " +
             std::to_string(r.limit);
    case kExtensionTooManyRecords:
      return "extension area has more than " + std::to_string(r.limit) + " records";
    case kExtensionRecordReserved:
      return "extension record " + i + " has a non-zero reserved field";
    case kExtensionRecordSize:
      return "extension record " + i + " claims " + std::to_string(r.value) +
             " bytes (at least 8, a multiple of 8, at most the " + std::to_string(r.limit) +
             " left in the area)";
    case kFirstSegmentEmpty: return "first segment is empty";
    case kEmptySegmentOutOfRange: return "empty segment " + i + " has a location out of range";
    case kMessageTooLarge:
      return "message of at least " + std::to_string(r.value) + " bytes exceeds the maximum " +
             std::to_string(r.limit);
    case kOutsideArena:
      return "segment " + i + " lies outside the arena" +
             (r.limit ? "" : " (this transport has none)");
    case kInlineOverlap:
      return "segment " + i + " at word " + std::to_string(r.value) +
             " overlaps the header, the table or an earlier segment";
  }
  return "frame refused (rule " + std::to_string(r.rule) + ")";
}

bool extensionAreaFits(kj::ArrayPtr<const capnp::word> area, size_t most) noexcept {
  const uint64_t size = area.size() * sizeof(capnp::word);
  return size <= most &&
         walkExtensions(reinterpret_cast<const std::byte*>(area.begin()), size,
                        [](uint32_t, uint16_t, uint32_t, uint32_t) {},
                        [](Rule, size_t, uint64_t, uint64_t) { return false; });
}

void checkFrameShapeSlow(size_t segmentCount, kj::ArrayPtr<const capnp::word> extension,
                         size_t mostExtension, std::string_view where) {
  if (segmentCount > kMaxSegments)
    throw InvalidArgument("message on " + std::string(where) + " has more than " +
                          std::to_string(kMaxSegments) + " segments");
  if (extension.size() && !extensionAreaFits(extension, mostExtension))
    refuseExtensionArea(extension, mostExtension, where);
}

void refuseExtensionArea(kj::ArrayPtr<const capnp::word> area, size_t most, std::string_view where) {
  const auto* bytes = reinterpret_cast<const std::byte*>(area.begin());
  const uint64_t size = area.size() * sizeof(capnp::word);
  ParsedFrame parsed;
  std::string why = "extension area refused";
  if (size > most)
    why = "extension area of " + std::to_string(size) + " bytes exceeds the " +
          std::to_string(most) + " this connection carries";
  else if (!checkExtensions(bytes, size, size, parsed))
    why = frameRefusalReason(parsed);
  throw InvalidArgument("message on " + std::string(where) + ": " + why);
}

std::string parseFrame(std::span<const std::byte> bytes, const FrameLimits& limits,
                       ParsedFrame& out) {
  if (checkFrame(bytes, limits, out)) return {};
  return frameRefusalReason(out);
}

}  // namespace zcrpc
