#include "frame_fuzz_entry.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include <capnp/any.h>
#include <capnp/message.h>
#include <kj/exception.h>

#include "zcrpc/frame.h"

namespace zcrpc::fuzz {
namespace {

// Small on purpose: a fuzz input must not be able to make one run slow.
constexpr uint64_t kTraversalLimitWords = 64 * 1024;
constexpr int kNestingLimit = 16;
constexpr int kMaxDepth = 32;          // our own recursion bound, beyond capnp's
constexpr uint32_t kMaxNodes = 20000;  // pointers and list elements visited per message
constexpr uint32_t kMaxListElements = 1024;
constexpr uint32_t kMaxReadErrors = 8;  // kj exceptions are costly: stop a hopeless walk
constexpr size_t kTightMaxMessageBytes = 1024;

volatile uint64_t gSink = 0;  // keeps the reads of message bytes from being optimised away

[[noreturn]] void broken(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "frame fuzz: broken promise: %s%s%s\n", what, detail.empty() ? "" : ": ",
               detail.c_str());
  std::fflush(stderr);
  std::abort();
}

/// An 8-byte-aligned heap copy of exactly `size` bytes (rounded up to whole words: the
/// bytes past `size` are never handed to parseFrame, and checkAccepted() proves that no
/// accepted segment reaches them).
class AlignedCopy final {
 public:
  AlignedCopy(const uint8_t* data, size_t size) : words_((size + 7) / 8), size_(size) {
    if (size) std::memcpy(words_.data(), data, size);
  }
  std::span<const std::byte> bytes() const {
    return {reinterpret_cast<const std::byte*>(words_.data()), size_};
  }

 private:
  std::vector<uint64_t> words_;
  size_t size_;
};

bool within(const void* p, size_t n, std::span<const std::byte> region) {
  auto* b = static_cast<const std::byte*>(p);
  return b >= region.data() && n <= region.size() &&
         static_cast<size_t>(b - region.data()) <= region.size() - n;
}

/// Everything the header of frame.h promises about an accepted frame.
void checkAccepted(std::span<const std::byte> bytes, const FrameLimits& limits,
                   const ParsedFrame& f) {
  FrameHeader raw;
  std::memcpy(&raw, bytes.data(), sizeof raw);
  if (std::memcmp(&raw, &f.header, sizeof raw) != 0) broken("header copy differs from the input");
  const FrameHeader& h = f.header;
  if (h.frameBytes > bytes.size() || h.frameBytes % 8 != 0) broken("frame length out of bounds");
  if (h.kind == 0 || h.kind > kMaxFrameKind || (h.flags & ~(kFlagTraced | kFlagExtended)) != 0 ||
      h.reserved != 0)
    broken("bad kind, flags or reserved field accepted");
  const size_t traceBytes = (h.flags & kFlagTraced) ? sizeof(TraceContext) : 0;
  if (f.segmentCount != h.segmentCount || f.segmentCount == 0 || f.segmentCount > kMaxSegments)
    broken("segment count", std::to_string(f.segmentCount));
  const size_t tableEnd = frameBytesWithTable(h.tableOffset, f.segmentCount) + traceBytes;
  if (h.tableOffset < kFrameHeaderBytes || h.tableOffset % 8 != 0 ||
      tableEnd + f.extensionBytes != h.frameBytes)
    broken("segment table placement");
  // The extension area: present exactly when flagged, ends the frame, and its records
  // (copies of their headers) tile it with valid sizes.
  if (((h.flags & kFlagExtended) != 0) != (f.extensionBytes != 0) ||
      (f.extensionBytes && f.extensionArea != bytes.data() + tableEnd) ||
      f.extensionBytes > kMaxExtensionBytes || f.extensionCount > kMaxExtensionRecords ||
      (f.extensionBytes != 0) != (f.extensionCount != 0))
    broken("extension area placement");
  uint64_t at = 0;
  for (uint32_t r = 0; r < f.extensionCount; ++r) {
    const ExtensionRecord& rec = f.extensions[r];
    ExtensionHeader raw;
    std::memcpy(&raw, f.extensionArea + rec.offset, sizeof raw);
    if (rec.offset != at || rec.bytes < sizeof raw || rec.bytes % 8 != 0 ||
        rec.bytes != raw.bytes || rec.type != raw.type || raw.reserved != 0)
      broken("extension record", std::to_string(r));
    at += rec.bytes;
  }
  if (at != f.extensionBytes) broken("extension records do not fill the area");
  if (f.segments[0].size() == 0) broken("empty first segment accepted");

  const std::span<const std::byte> inlineArea =
      bytes.subspan(kFrameHeaderBytes, h.tableOffset - kFrameHeaderBytes);
  const std::byte* nextInline = inlineArea.data();
  size_t total = 0;
  for (size_t i = 0; i < f.segmentCount; ++i) {
    auto seg = f.segments[i];
    SegmentEntry entry;
    std::memcpy(&entry, bytes.data() + h.tableOffset + i * sizeof entry, sizeof entry);
    if (entry.words == 0) {
      // An empty segment reads as one zero word that lies outside the frame.
      static const capnp::word kZero{};
      if (i == 0 || seg.size() != 1 || std::memcmp(seg.begin(), &kZero, sizeof kZero) != 0)
        broken("empty segment not mapped to one zero word", std::to_string(i));
      continue;
    }
    size_t n = seg.size() * sizeof(capnp::word);
    total += n;
    if (reinterpret_cast<uintptr_t>(seg.begin()) % 8 != 0)
      broken("segment not 8-byte aligned", std::to_string(i));
    if (n == 0) continue;  // an empty later segment may point anywhere; it is never read
    if (within(seg.begin(), n, inlineArea)) {
      auto* b = reinterpret_cast<const std::byte*>(seg.begin());
      if (b < nextInline) broken("inline segments overlap or descend", std::to_string(i));
      nextInline = b + n;
    } else if (!within(seg.begin(), n, limits.arena)) {
      broken("segment outside the inline area and the arena", std::to_string(i));
    }
  }
  if (total != f.payloadBytes) broken("payloadBytes is not the sum of the segment sizes");
  if (total > limits.maxMessageBytes) broken("message larger than maxMessageBytes accepted");
}

/// Walks a message generically and reads every byte the reader hands out, checking that it
/// lies inside one of the frame's segments.
class Walker final {
 public:
  explicit Walker(const ParsedFrame& f) : frame_(f) {}

  void walkRoot(capnp::MessageReader& reader) {
    try {
      walkPointer(reader.getRoot<capnp::AnyPointer>(), 0);
    } catch (const kj::Exception&) {
      // A malformed message: refusing it is the right answer.
    }
  }

  uint64_t checksum() const { return sum_; }

 private:
  bool spend() { return ++nodes_ <= kMaxNodes && errors_ < kMaxReadErrors; }

  void consume(const void* p, size_t n, const char* what) {
    if (n == 0) return;
    bool inside = false;
    for (size_t i = 0; i < frame_.segmentCount && !inside; ++i) {
      auto s = frame_.segments[i];
      inside = within(p, n, std::span<const std::byte>(
                                reinterpret_cast<const std::byte*>(s.begin()),
                                s.size() * sizeof(capnp::word)));
    }
    if (!inside) broken("the Cap'n Proto reader handed out bytes outside the segments", what);
    auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) sum_ = sum_ * 31 + b[i];
  }

  void walkPointer(capnp::AnyPointer::Reader p, int depth) {
    if (depth > kMaxDepth || !spend()) return;
    try {
      switch (p.getPointerType()) {
        case capnp::PointerType::NULL_:
        case capnp::PointerType::CAPABILITY:  // no capability table: nothing to read
          return;
        case capnp::PointerType::STRUCT:
          walkStruct(p.getAs<capnp::AnyStruct>(), depth);
          return;
        case capnp::PointerType::LIST: {
          auto list = p.getAs<capnp::AnyList>();
          walkList(list, depth);
          if (list.getElementSize() == capnp::ElementSize::BYTE) tryText(p);
          return;
        }
      }
    } catch (const kj::Exception&) {
      // Bad pointer, traversal or nesting limit: siblings are still worth reading.
      ++errors_;
    }
  }

  void walkStruct(capnp::AnyStruct::Reader s, int depth) {
    auto data = s.getDataSection();
    consume(data.begin(), data.size(), "struct data section");
    auto ptrs = s.getPointerSection();
    for (uint32_t i = 0; i < ptrs.size() && i < kMaxListElements; ++i)
      walkPointer(ptrs[i], depth + 1);
  }

  void walkList(capnp::AnyList::Reader l, int depth) {
    switch (l.getElementSize()) {
      case capnp::ElementSize::POINTER: {
        auto list = l.as<capnp::List<capnp::AnyPointer>>();
        for (uint32_t i = 0; i < list.size() && i < kMaxListElements && spend(); ++i)
          walkPointer(list[i], depth + 1);
        return;
      }
      case capnp::ElementSize::INLINE_COMPOSITE: {
        auto list = l.as<capnp::List<capnp::AnyStruct>>();
        for (uint32_t i = 0; i < list.size() && i < kMaxListElements && spend(); ++i)
          walkStruct(list[i], depth + 1);
        return;
      }
      default: {
        auto raw = l.getRawBytes();
        consume(raw.begin(), raw.size(), "list bytes");
        return;
      }
    }
  }

  // A byte list may be Text: reading it as Text checks the NUL terminator.
  void tryText(capnp::AnyPointer::Reader p) {
    try {
      auto t = p.getAs<capnp::Text>();
      consume(t.begin(), t.size() + 1, "text");
    } catch (const kj::Exception&) {
      ++errors_;
    }
  }

  const ParsedFrame& frame_;
  uint32_t nodes_ = 0;
  uint32_t errors_ = 0;
  uint64_t sum_ = 0;
};

void readInPlace(const ParsedFrame& f) {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = kTraversalLimitWords;
  options.nestingLimit = kNestingLimit;
  try {
    capnp::SegmentArrayMessageReader reader(
        kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>(f.segments.data(), f.segmentCount),
        options);
    Walker walker(f);
    walker.walkRoot(reader);
    gSink = walker.checksum();
  } catch (const kj::Exception&) {
  }
}

/// Parses `bytes` with `limits`; on success checks the result and reads the message.
bool parseAndRead(std::span<const std::byte> bytes, const FrameLimits& limits) {
  ParsedFrame f;
  std::string why = parseFrame(bytes, limits, f);
  if (!why.empty()) return false;
  checkAccepted(bytes, limits, f);
  // The same bytes must give the same verdict: parseFrame keeps no state.
  ParsedFrame again;
  if (!parseFrame(bytes, limits, again).empty() || again.payloadBytes != f.payloadBytes)
    broken("parseFrame is not deterministic");
  readInPlace(f);
  return true;
}

}  // namespace

FrameFuzzOutcome runFrameInput(const uint8_t* data, size_t size) noexcept {
  FrameFuzzOutcome outcome;
  const FrameLimits noArena;  // default maximum, no arena

  // 1. The whole input is the frame buffer; anything after the frame is ignored.
  AlignedCopy whole(data, size);
  outcome.acceptedWhole = parseAndRead(whole.bytes(), noArena);

  // 2. The frame's own length field splits the input: the frame, then the arena.
  size_t frameLen = size;
  if (size >= sizeof(uint32_t)) {
    uint32_t declared;
    std::memcpy(&declared, data, sizeof declared);
    frameLen = std::min<size_t>(declared, size);
  }
  AlignedCopy frame(data, frameLen);
  AlignedCopy arena(data + frameLen, size - frameLen);
  FrameLimits withArena;
  withArena.arena = arena.bytes();
  outcome.acceptedSplit = parseAndRead(frame.bytes(), withArena);

  // 3. A tight size limit must refuse exactly the messages above it.
  FrameLimits tight = withArena;
  tight.maxMessageBytes = kTightMaxMessageBytes;
  ParsedFrame loose;
  bool looseOk = parseFrame(frame.bytes(), withArena, loose).empty();
  bool tightOk = parseAndRead(frame.bytes(), tight);
  if (tightOk != (looseOk && loose.payloadBytes <= kTightMaxMessageBytes))
    broken("maxMessageBytes is not applied exactly");

  // The split keeps the frame whole, and an arena can only make more segments resolve.
  if (outcome.acceptedWhole && !outcome.acceptedSplit)
    broken("frame accepted without an arena but refused with one");
  return outcome;
}

}  // namespace zcrpc::fuzz
