#include "zcrpc/frame.h"

#include <cstring>

namespace zcrpc {

namespace {
const capnp::word kEmptySegment{};
}

std::string parseFrame(std::span<const std::byte> bytes, const FrameLimits& limits,
                       ParsedFrame& out) {
  if (reinterpret_cast<uintptr_t>(bytes.data()) % 8 != 0) return "frame is not 8-byte aligned";
  if (bytes.size() < kFrameHeaderBytes)
    return "frame of " + std::to_string(bytes.size()) + " bytes is shorter than its header";
  // Copy the header out once; validate and use only the copy (the peer may be writing).
  FrameHeader& h = out.header;
  std::memcpy(&h, bytes.data(), sizeof h);
  const uint64_t frameBytes = h.frameBytes;
  if (frameBytes > bytes.size())
    return "frame length " + std::to_string(frameBytes) + " exceeds the " +
           std::to_string(bytes.size()) + " bytes available";
  if (frameBytes % 8 != 0) return "frame length " + std::to_string(frameBytes) + " is not a multiple of 8";
  if (h.kind == 0 || h.kind > kMaxFrameKind) return "unknown frame kind " + std::to_string(h.kind);
  if (h.flags & ~kFlagTraced) return "unknown frame flags " + std::to_string(h.flags);
  const uint64_t traceBytes = (h.flags & kFlagTraced) ? sizeof(TraceContext) : 0;
  if (h.reserved != 0) return "reserved header field is not zero";
  const size_t count = h.segmentCount;
  if (count == 0 || count > kMaxSegments)
    return "segment count " + std::to_string(count) + " outside 1.." + std::to_string(kMaxSegments);
  const uint64_t tableOffset = h.tableOffset;
  if (tableOffset < kFrameHeaderBytes || tableOffset % 8 != 0)
    return "segment table offset " + std::to_string(tableOffset) + " is misplaced";
  if (tableOffset + count * sizeof(SegmentEntry) + traceBytes != frameBytes)
    return "segment table of " + std::to_string(count) + " entries at offset " +
           std::to_string(tableOffset) + " does not end the " + std::to_string(frameBytes) +
           "-byte frame" + (traceBytes ? " (before its trace context)" : "");
  out.trace = TraceContext{};
  if (traceBytes)
    std::memcpy(&out.trace, bytes.data() + frameBytes - traceBytes, sizeof out.trace);
  std::array<SegmentEntry, kMaxSegments> table;
  std::memcpy(table.data(), bytes.data() + tableOffset, count * sizeof(SegmentEntry));

  const auto* base = reinterpret_cast<const capnp::word*>(bytes.data());
  const auto* arena = reinterpret_cast<const capnp::word*>(limits.arena.data());
  const uint64_t arenaWords = limits.arena.size() / 8;
  uint64_t nextInlineWord = kFrameHeaderBytes / 8;  // inline segments ascend without overlap
  const uint64_t tableWord = tableOffset / 8;
  uint64_t total = 0;
  for (size_t i = 0; i < count; ++i) {
    const uint64_t words = table[i].words;
    const uint32_t loc = table[i].location;
    if (words == 0 && i == 0) return "first segment is empty";
    if (words == 0) {
      // An empty segment (e.g. empty external data) occupies nothing; its location need
      // only be in range. Cap'n Proto readers take a zero-length segment for a missing
      // one, so it reads as one zero word that lies outside the frame.
      if ((loc & kArenaBit) ? (loc & ~kArenaBit) > arenaWords : loc > tableWord)
        return "empty segment " + std::to_string(i) + " has a location out of range";
      out.segments[i] = kj::ArrayPtr<const capnp::word>(&kEmptySegment, 1);
      continue;
    }
    total += words * 8;
    if (total > limits.maxMessageBytes)
      return "message of at least " + std::to_string(total) + " bytes exceeds the maximum " +
             std::to_string(limits.maxMessageBytes);
    if (loc & kArenaBit) {
      const uint64_t offset = loc & ~kArenaBit;
      if (offset > arenaWords || words > arenaWords - offset)
        return "segment " + std::to_string(i) + " lies outside the arena" +
               (arenaWords ? "" : " (this transport has none)");
      out.segments[i] = kj::ArrayPtr<const capnp::word>(arena + offset, words);
    } else {
      const uint64_t offset = loc;
      if (offset < nextInlineWord || offset > tableWord || words > tableWord - offset)
        return "segment " + std::to_string(i) + " at word " + std::to_string(offset) +
               " overlaps the header, the table or an earlier segment";
      out.segments[i] = kj::ArrayPtr<const capnp::word>(base + offset, words);
      nextInlineWord = offset + words;
    }
  }
  out.segmentCount = count;
  out.payloadBytes = total;
  return {};
}

}  // namespace zcrpc
