// Writes the seed corpus of the frame fuzzer: small valid frames built from real Cap'n
// Proto messages, and invalid ones that each break one rule of parseFrame. The seeds are
// committed (tests/fuzz/corpus/); re-run this after a change to the frame format:
//
//   build/tests/fuzz/make_frame_corpus tests/fuzz/corpus
//
// Each seed is a frame followed, for `arena-*` seeds, by the arena its arena segments
// point into. Naming rules: see frame_corpus_test.cc.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <capnp/any.h>
#include <capnp/message.h>

#include "zcrpc/frame.h"

namespace {

using zcrpc::FrameHeader;
using zcrpc::FrameKind;
using zcrpc::kArenaBit;
using zcrpc::SegmentEntry;

using Bytes = std::vector<uint8_t>;

struct Placement {
  bool inArena = false;
  uint32_t gapWords = 0;  ///< unused words before the segment (inline or in the arena)
};

/// A frame laid out as the ring transport lays it out: header, inline segments, table,
/// then (outside the frame) the arena.
Bytes encode(FrameKind kind, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
             const std::vector<Placement>& placement = {}) {
  Bytes frame(sizeof(FrameHeader)), arena;
  std::vector<SegmentEntry> table;
  for (size_t i = 0; i < segments.size(); ++i) {
    Placement p = i < placement.size() ? placement[i] : Placement{};
    Bytes& where = p.inArena ? arena : frame;
    where.resize(where.size() + p.gapWords * 8);
    uint32_t word = static_cast<uint32_t>(where.size() / 8);
    auto seg = segments[i].asBytes();
    where.insert(where.end(), seg.begin(), seg.end());
    table.push_back({static_cast<uint32_t>(segments[i].size()), p.inArena ? kArenaBit | word : word});
  }
  FrameHeader h{};
  h.kind = static_cast<uint8_t>(kind);
  h.segmentCount = static_cast<uint16_t>(segments.size());
  h.callId = 0x0102030405060708;
  h.interfaceId = 0xd1e2a3b4c5f60718;  // any 64-bit Cap'n Proto type id
  h.methodId = 3;
  h.tableOffset = static_cast<uint32_t>(frame.size());
  h.frameBytes = static_cast<uint32_t>(frame.size() + table.size() * sizeof(SegmentEntry));
  std::memcpy(frame.data(), &h, sizeof h);
  auto* t = reinterpret_cast<const uint8_t*>(table.data());
  frame.insert(frame.end(), t, t + table.size() * sizeof(SegmentEntry));
  frame.insert(frame.end(), arena.begin(), arena.end());
  return frame;
}

Bytes encode(FrameKind kind, capnp::MessageBuilder& msg, const std::vector<Placement>& p = {}) {
  return encode(kind, msg.getSegmentsForOutput(), p);
}

/// One extension record: header and payload words.
Bytes record(uint16_t type, std::vector<uint64_t> payload, uint32_t claimedBytes = 0) {
  zcrpc::ExtensionHeader r{type, 0, static_cast<uint32_t>(8 + payload.size() * 8)};
  if (claimedBytes) r.bytes = claimedBytes;
  Bytes b(sizeof r);
  std::memcpy(b.data(), &r, sizeof r);
  auto* p = reinterpret_cast<const uint8_t*>(payload.data());
  b.insert(b.end(), p, p + payload.size() * 8);
  return b;
}

/// `frame` (no arena after it) with an extension area of `records` appended, flagged
/// extended, and traced with a trace context before it when `traced`.
Bytes extended(Bytes frame, const std::vector<Bytes>& records, bool traced = false) {
  FrameHeader h;
  std::memcpy(&h, frame.data(), sizeof h);
  frame.resize(h.frameBytes);
  if (traced) {
    const zcrpc::TraceContext t{0x1111222233334444, 0x5555666677778888};
    auto* p = reinterpret_cast<const uint8_t*>(&t);
    frame.insert(frame.end(), p, p + sizeof t);
    h.flags |= zcrpc::kFlagTraced;
  }
  for (const Bytes& r : records) frame.insert(frame.end(), r.begin(), r.end());
  h.flags |= zcrpc::kFlagExtended;
  h.frameBytes = static_cast<uint32_t>(frame.size());
  std::memcpy(frame.data(), &h, sizeof h);
  return frame;
}

template <typename T>
Bytes patched(Bytes b, size_t offset, T value) {
  std::memcpy(b.data() + offset, &value, sizeof value);
  return b;
}

size_t tableEntry(const Bytes& b, size_t i, bool location) {
  FrameHeader h;
  std::memcpy(&h, b.data(), sizeof h);
  return h.tableOffset + i * sizeof(SegmentEntry) + (location ? offsetof(SegmentEntry, location) : 0);
}

/// Root struct: two data words; Text, Data, List(UInt64).
void fillSmall(capnp::MessageBuilder& msg) {
  auto s = msg.getRoot<capnp::AnyPointer>().initAsAnyStruct(2, 3);
  auto data = s.getDataSection();
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 17 + 1);
  auto ptrs = s.getPointerSection();
  ptrs[0].setAs<capnp::Text>("hello, zcrpc");
  const uint8_t blob[] = {0, 1, 2, 3, 250, 251, 252, 253, 254};
  ptrs[1].setAs<capnp::Data>(capnp::Data::Reader(blob, sizeof blob));
  auto list = ptrs[2].initAs<capnp::List<uint64_t>>(5);
  for (uint32_t i = 0; i < list.size(); ++i) list.set(i, uint64_t{i} << 40 | i);
}

/// Root struct with a list of structs, each with a Text: spills over several small
/// fixed-size segments, so far pointers and landing pads appear.
void fillMulti(capnp::MessageBuilder& msg) {
  auto s = msg.getRoot<capnp::AnyPointer>().initAsAnyStruct(1, 2);
  s.getDataSection()[0] = 42;
  auto ptrs = s.getPointerSection();
  ptrs[0].setAs<capnp::Text>("first");
  auto items = ptrs[1].initAsListOfAnyStruct(1, 1, 4);
  for (uint32_t i = 0; i < items.size(); ++i) {
    items[i].getDataSection()[0] = static_cast<uint8_t>(i);
    items[i].getPointerSection()[0].setAs<capnp::Text>(std::string(10 + i * 7, 'a' + i));
  }
}

/// A chain of structs deeper than the fuzzer's nesting limit (16).
void fillDeep(capnp::MessageBuilder& msg) {
  auto p = msg.getRoot<capnp::AnyPointer>();
  for (int depth = 0; depth < 24; ++depth) {
    auto s = p.initAsAnyStruct(1, 1);
    s.getDataSection()[0] = static_cast<uint8_t>(depth);
    p = s.getPointerSection()[0];
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  std::filesystem::path dir = argv[1];
  std::filesystem::create_directories(dir);
  int written = 0;
  auto write = [&](const std::string& name, const Bytes& b) {
    std::ofstream out(dir / (name + ".bin"), std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", name.c_str());
      std::exit(1);
    }
    ++written;
  };

  capnp::MallocMessageBuilder small;
  fillSmall(small);
  capnp::MallocMessageBuilder multi(8, capnp::AllocationStrategy::FIXED_SIZE);
  fillMulti(multi);
  capnp::MallocMessageBuilder deep;
  fillDeep(deep);
  const size_t multiSegments = multi.getSegmentsForOutput().size();
  if (multiSegments < 3 || multiSegments > zcrpc::kMaxSegments) {
    std::fprintf(stderr, "multi-segment seed has %zu segments\n", multiSegments);
    return 1;
  }

  // ---- accepted ----
  const Bytes okSmall = encode(FrameKind::kRequest, small);
  write("ok-single-segment", okSmall);
  write("ok-multi-segment", encode(FrameKind::kResponse, multi));
  write("ok-deep-nesting", encode(FrameKind::kOneWay, deep));
  {
    Bytes b = okSmall;  // trailing bytes after the frame (a stream buffer, ring padding)
    b.insert(b.end(), 24, 0xEE);
    write("ok-trailing-bytes", b);
  }
  {
    std::vector<Placement> gaps(multiSegments);
    gaps[1].gapWords = 3;  // inline segments need not be packed
    write("ok-gap-between-segments", encode(FrameKind::kData, multi, gaps));
  }
  {
    auto segs = small.getSegmentsForOutput();
    kj::ArrayPtr<const capnp::word> withEmpty[] = {segs[0], {}};
    write("ok-empty-later-segment", encode(FrameKind::kPing, withEmpty));
  }
  {
    // A valid frame whose payload is garbage: pointers out of bounds, a bad far pointer,
    // an oversized list. parseFrame accepts it; the Cap'n Proto reader must refuse it.
    const uint64_t junk[] = {0x0000000100000000ull | (uint64_t{0x7fff} << 2),  // struct, far offset
                             0xfffffffffffffffaull, 0x0000000a00000002ull | (uint64_t{5} << 32),
                             0x7ffffffd00000001ull, 0x0123456789abcdefull, 0};
    kj::ArrayPtr<const capnp::word> seg[] = {
        kj::ArrayPtr<const capnp::word>(reinterpret_cast<const capnp::word*>(junk), 6)};
    write("ok-garbage-payload", encode(FrameKind::kError, seg));
  }
  {
    std::vector<Placement> arena(multiSegments);
    for (size_t i = 1; i < multiSegments; ++i) arena[i] = {true, i == 2 ? 5u : 0u};
    write("arena-multi-segment", encode(FrameKind::kRequest, multi, arena));
  }
  {
    std::vector<Placement> all(multiSegments, Placement{true, 0});
    write("arena-all-segments", encode(FrameKind::kResponse, multi, all));
  }

  {
    // Extension areas (the capability records of the RPC layer; docs/wire-format.md).
    namespace ext = zcrpc::extension;
    const uint64_t sender = 1ull << 32, receiver = 2ull << 32;  // {u32 id; u8 kind; ...}
    write("ok-extended-target", extended(okSmall, {record(ext::kTarget, {7})}));
    write("ok-extended-traced-captable-releases",
          extended(okSmall,
                   {record(ext::kCapTable, {3, 5 | sender, 0, 9 | receiver}),
                    record(ext::kReleases, {1, uint64_t{4} << 32 | 5})},
                   /*traced=*/true));
    write("ok-extended-unknown-type", extended(okSmall, {record(0x7777, {1, 2, 3})}));
    capnp::MallocMessageBuilder null;
    null.getRoot<capnp::AnyPointer>();
    write("ok-release-frame",
          extended(encode(FrameKind::kRelease, null),
                   {record(ext::kReleases, {2, uint64_t{1} << 32 | 3, uint64_t{2} << 32 | 8})}));
    write("ok-stream-request", encode(FrameKind::kStreamRequest, small));
    std::vector<Bytes> eight(zcrpc::kMaxExtensionRecords, record(ext::kMetadata, {}));
    write("ok-extended-most-records", extended(okSmall, eight));

    write("bad-extension-area-empty", extended(okSmall, {}));
    std::vector<Bytes> nine(zcrpc::kMaxExtensionRecords + 1, record(ext::kMetadata, {}));
    write("bad-extension-too-many-records", extended(okSmall, nine));
    write("bad-extension-area-too-large",
          extended(okSmall, {record(ext::kCapTable,
                                    std::vector<uint64_t>(zcrpc::kMaxExtensionBytes / 8))}));
    write("bad-extension-record-shorter-than-header", extended(okSmall, {record(ext::kTarget, {7}, 4)}));
    write("bad-extension-record-not-words",
          extended(okSmall, {record(ext::kTarget, {7}, 12)}));
    write("bad-extension-record-beyond-area",
          extended(okSmall, {record(ext::kTarget, {7}, 24)}));
    write("bad-extension-second-record-garbage",
          extended(okSmall, {record(ext::kTarget, {7}, 8), Bytes{1, 2, 3, 4, 5, 6, 7, 8}}));
    {
      Bytes r = record(ext::kTarget, {7});
      r[2] = 1;  // reserved
      write("bad-extension-record-reserved", extended(okSmall, {r}));
    }
    // The table must still lie before the area: a table that runs past the frame's end.
    Bytes b = extended(okSmall, {record(ext::kTarget, {7})});
    write("bad-extended-table-past-end",
          patched<uint32_t>(b, offsetof(FrameHeader, tableOffset),
                            static_cast<uint32_t>(b.size() - 8)));
  }

  // ---- refused: each breaks one rule ----
  write("bad-shorter-than-header", Bytes(okSmall.begin(), okSmall.begin() + 24));
  write("bad-length-exceeds-input",
        patched<uint32_t>(okSmall, offsetof(FrameHeader, frameBytes),
                          static_cast<uint32_t>(okSmall.size() + 8)));
  {
    Bytes b = okSmall;
    b.insert(b.end(), 8, 0);
    write("bad-length-not-multiple-of-8",
          patched<uint32_t>(b, offsetof(FrameHeader, frameBytes),
                            static_cast<uint32_t>(okSmall.size() + 4)));
  }
  write("bad-kind-zero", patched<uint8_t>(okSmall, offsetof(FrameHeader, kind), 0));
  write("bad-kind-unknown",
        patched<uint8_t>(okSmall, offsetof(FrameHeader, kind), zcrpc::kMaxFrameKind + 1));
  write("bad-flags", patched<uint8_t>(okSmall, offsetof(FrameHeader, flags), 1));
  write("bad-flags-unknown-bit", patched<uint8_t>(okSmall, offsetof(FrameHeader, flags), 4));
  write("bad-reserved", patched<uint16_t>(okSmall, offsetof(FrameHeader, reserved), 0x100));
  write("bad-segment-count-zero",
        patched<uint16_t>(okSmall, offsetof(FrameHeader, segmentCount), 0));
  {
    // 33 one-word segments: the table is consistent, the count is too high.
    std::vector<capnp::word> words(zcrpc::kMaxSegments + 1);
    std::vector<kj::ArrayPtr<const capnp::word>> segs;
    for (auto& w : words) segs.push_back(kj::ArrayPtr<const capnp::word>(&w, 1));
    write("bad-too-many-segments",
          encode(FrameKind::kData, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>(
                                       segs.data(), segs.size())));
  }
  write("bad-table-offset-inside-header",
        patched<uint32_t>(okSmall, offsetof(FrameHeader, tableOffset), 16));
  write("bad-table-offset-unaligned",
        patched<uint32_t>(okSmall, offsetof(FrameHeader, tableOffset),
                          static_cast<uint32_t>(okSmall.size() - sizeof(SegmentEntry) - 4)));
  {
    Bytes b = okSmall;  // frame grows by a word, the table does not move
    b.insert(b.end(), 8, 0);
    write("bad-table-does-not-end-frame",
          patched<uint32_t>(b, offsetof(FrameHeader, frameBytes),
                            static_cast<uint32_t>(okSmall.size() + 8)));
  }
  write("bad-first-segment-empty", patched<uint32_t>(okSmall, tableEntry(okSmall, 0, false), 0));
  write("bad-segment-overlaps-header",
        patched<uint32_t>(okSmall, tableEntry(okSmall, 0, true), 2));
  {
    const Bytes multiFrame = encode(FrameKind::kResponse, multi);
    FrameHeader h;
    std::memcpy(&h, multiFrame.data(), sizeof h);
    write("bad-segments-overlap",
          patched<uint32_t>(multiFrame, tableEntry(multiFrame, 1, true), 4 + 1));
    // The last segment, grown to two words, starts one word before the table.
    const size_t last = multiSegments - 1;
    write("bad-segment-runs-into-table",
          patched<uint32_t>(
              patched<uint32_t>(multiFrame, tableEntry(multiFrame, last, true),
                                h.tableOffset / 8 - 1),
              tableEntry(multiFrame, last, false), 2));
  }
  {
    std::vector<Placement> arena(multiSegments);
    arena[1].inArena = true;
    Bytes b = encode(FrameKind::kRequest, multi, arena);
    write("bad-arena-segment-beyond-arena",
          patched<uint32_t>(b, tableEntry(b, 1, true), kArenaBit | 4096));
    FrameHeader h;
    std::memcpy(&h, b.data(), sizeof h);
    b.resize(h.frameBytes);  // the frame without the arena that should follow it
    write("bad-arena-segment-without-arena", b);
  }
  write("bad-message-too-large",  // 64 MiB + 8 bytes in one (arena) segment
        patched<uint32_t>(
            patched<uint32_t>(okSmall, tableEntry(okSmall, 0, false),
                              static_cast<uint32_t>(zcrpc::kDefaultMaxMessageBytes / 8 + 1)),
            tableEntry(okSmall, 0, true), kArenaBit));

  std::printf("wrote %d seeds to %s\n", written, dir.c_str());
  return 0;
}
