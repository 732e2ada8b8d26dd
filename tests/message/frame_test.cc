// parseFrame: the one parser every transport runs over bytes a peer wrote. It must accept
// every well-formed frame and refuse each malformation with a reason that names it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "zcrpc/frame.h"

namespace zcrpc {
namespace {

using ::testing::HasSubstr;

/// One segment to lay out: inline (after the header, in order) or in the arena.
struct Seg {
  uint32_t words;
  bool arena = false;
  uint32_t arenaWord = 0;
};

/// A frame in 8-byte-aligned memory, built from `Seg`s the way a transport lays it out:
/// header, inline segments back to back, segment table last. Fields are read and written
/// with memcpy (the parser's own view of the bytes).
class TestFrame {
 public:
  TestFrame(std::vector<Seg> segs, size_t capacityWords)
      : storage_(capacityWords, 0), segs_(std::move(segs)) {
    FrameHeader h{};
    h.kind = static_cast<uint8_t>(FrameKind::kRequest);
    h.callId = 0x1122334455667788ull;
    h.interfaceId = 0xabcdef0123456789ull;
    h.methodId = 3;
    h.segmentCount = static_cast<uint16_t>(segs_.size());
    uint32_t offset = kFrameHeaderBytes;
    std::vector<SegmentEntry> table;
    for (size_t s = 0; s < segs_.size(); ++s) {
      if (segs_[s].arena) {
        table.push_back({segs_[s].words, kArenaBit | segs_[s].arenaWord});
      } else {
        table.push_back({segs_[s].words, offset / 8});
        for (uint32_t w = 0; w < segs_[s].words; ++w) storage_.at(offset / 8 + w) = pattern(s, w);
        offset += segs_[s].words * 8;
      }
    }
    h.tableOffset = offset;
    h.frameBytes = static_cast<uint32_t>(offset + table.size() * sizeof(SegmentEntry));
    std::memcpy(bytes() + offset, table.data(), table.size() * sizeof(SegmentEntry));
    setHeader(h);
  }

  static uint64_t pattern(size_t seg, uint32_t word) { return (uint64_t{seg + 1} << 32) | word; }

  std::byte* bytes() { return reinterpret_cast<std::byte*>(storage_.data()); }
  FrameHeader header() {
    FrameHeader h;
    std::memcpy(&h, bytes(), sizeof h);
    return h;
  }
  void setHeader(const FrameHeader& h) { std::memcpy(bytes(), &h, sizeof h); }
  template <typename F>
  void editHeader(F f) {
    FrameHeader h = header();
    f(h);
    setHeader(h);
  }
  SegmentEntry entry(size_t i) {
    SegmentEntry e;
    std::memcpy(&e, bytes() + header().tableOffset + i * sizeof e, sizeof e);
    return e;
  }
  void setEntry(size_t i, SegmentEntry e) {
    std::memcpy(bytes() + header().tableOffset + i * sizeof e, &e, sizeof e);
  }
  uint32_t frameBytes() { return header().frameBytes; }
  /// Appends an extension area of `records` (each: header fields, payload words) after the
  /// table (and a trace context when `traced`), flagging the frame extended. `claimed`
  /// overrides a record's `bytes` field when not 0.
  struct Rec {
    uint16_t type;
    std::vector<uint64_t> payload;
    uint32_t claimed = 0;
    uint16_t reserved = 0;
  };
  void extend(const std::vector<Rec>& records, bool traced = false) {
    FrameHeader h = header();
    uint32_t at = h.frameBytes;
    if (traced) {
      const TraceContext t{7, 8};
      std::memcpy(bytes() + at, &t, sizeof t);
      at += sizeof t;
      h.flags |= kFlagTraced;
    }
    for (const Rec& r : records) {
      ExtensionHeader eh{r.type, r.reserved,
                         r.claimed ? r.claimed : static_cast<uint32_t>(8 + 8 * r.payload.size())};
      std::memcpy(bytes() + at, &eh, sizeof eh);
      if (!r.payload.empty())  // an empty vector's data() may be null: no memcpy from it
        std::memcpy(bytes() + at + 8, r.payload.data(), r.payload.size() * 8);
      at += static_cast<uint32_t>(8 + 8 * r.payload.size());
    }
    h.flags |= kFlagExtended;
    h.frameBytes = at;
    setHeader(h);
  }
  /// The whole buffer (longer than the frame, as a stream buffer or ring padding is).
  std::span<const std::byte> all() { return {bytes(), storage_.size() * 8}; }
  /// Exactly the frame.
  std::span<const std::byte> exact() { return {bytes(), frameBytes()}; }

 private:
  std::vector<uint64_t> storage_;
  std::vector<Seg> segs_;
};

TestFrame makeFrame(std::vector<Seg> segs) { return TestFrame(std::move(segs), 1024); }

/// An 8-byte-aligned arena whose words carry a recognisable pattern.
struct TestArena {
  explicit TestArena(size_t words) : storage(words) {
    for (size_t i = 0; i < words; ++i) storage[i] = 0xA0000000'00000000ull | i;
  }
  std::span<const std::byte> span() const {
    return {reinterpret_cast<const std::byte*>(storage.data()), storage.size() * 8};
  }
  std::vector<uint64_t> storage;
};

std::string parse(std::span<const std::byte> bytes, ParsedFrame& out,
                  std::span<const std::byte> arena = {},
                  size_t maxMessageBytes = kDefaultMaxMessageBytes) {
  FrameLimits limits;
  limits.maxMessageBytes = maxMessageBytes;
  limits.arena = arena;
  return parseFrame(bytes, limits, out);
}

std::string parse(std::span<const std::byte> bytes, std::span<const std::byte> arena = {},
                  size_t maxMessageBytes = kDefaultMaxMessageBytes) {
  ParsedFrame out;
  return parse(bytes, out, arena, maxMessageBytes);
}

uint64_t wordAt(const kj::ArrayPtr<const capnp::word>& seg, size_t i) {
  uint64_t v;
  std::memcpy(&v, seg.begin() + i, 8);
  return v;
}

// ---------------------------------------------------------------------------------------
// Accepted frames

TEST(FrameAccept, SingleInlineSegment) {
  auto f = makeFrame({{5}});
  ParsedFrame out;
  ASSERT_EQ(parse(f.exact(), out), "");
  EXPECT_EQ(out.segmentCount, 1u);
  EXPECT_EQ(out.payloadBytes, 40u);
  EXPECT_EQ(out.header.kind, static_cast<uint8_t>(FrameKind::kRequest));
  EXPECT_EQ(out.header.callId, 0x1122334455667788ull);
  EXPECT_EQ(out.header.interfaceId, 0xabcdef0123456789ull);
  EXPECT_EQ(out.header.methodId, 3);
  // The segment is read in place, right after the header.
  EXPECT_EQ(reinterpret_cast<const std::byte*>(out.segments[0].begin()),
            f.bytes() + kFrameHeaderBytes);
  ASSERT_EQ(out.segments[0].size(), 5u);
  for (uint32_t w = 0; w < 5; ++w) EXPECT_EQ(wordAt(out.segments[0], w), TestFrame::pattern(0, w));
}

TEST(FrameAccept, SeveralInlineSegmentsInOrder) {
  auto f = makeFrame({{3}, {1}, {7}, {2}});
  ParsedFrame out;
  ASSERT_EQ(parse(f.all(), out), "");  // bytes longer than the frame are fine
  ASSERT_EQ(out.segmentCount, 4u);
  EXPECT_EQ(out.payloadBytes, (3u + 1 + 7 + 2) * 8);
  uint32_t sizes[] = {3, 1, 7, 2};
  for (size_t s = 0; s < 4; ++s) {
    ASSERT_EQ(out.segments[s].size(), sizes[s]);
    for (uint32_t w = 0; w < sizes[s]; ++w)
      EXPECT_EQ(wordAt(out.segments[s], w), TestFrame::pattern(s, w)) << "segment " << s;
  }
}

TEST(FrameAccept, ArenaSegments) {
  TestArena arena(4096);
  auto f = makeFrame({{2}, {100, true, 10}, {4096 - 200, true, 200}});  // last one ends the arena
  ParsedFrame out;
  ASSERT_EQ(parse(f.exact(), out, arena.span()), "");
  ASSERT_EQ(out.segmentCount, 3u);
  EXPECT_EQ(out.payloadBytes, (2u + 100 + 3896) * 8);
  EXPECT_EQ(out.segments[1].begin(),
            reinterpret_cast<const capnp::word*>(arena.storage.data() + 10));
  EXPECT_EQ(out.segments[1].size(), 100u);
  EXPECT_EQ(wordAt(out.segments[1], 0), 0xA0000000'00000000ull | 10);
  EXPECT_EQ(wordAt(out.segments[2], 3895), 0xA0000000'00000000ull | 4095);
}

TEST(FrameAccept, FirstSegmentInArena) {
  TestArena arena(64);
  auto f = makeFrame({{8, true, 0}, {1}});
  ParsedFrame out;
  ASSERT_EQ(parse(f.exact(), out, arena.span()), "");
  EXPECT_EQ(out.segmentCount, 2u);
  EXPECT_EQ(wordAt(out.segments[0], 7), 0xA0000000'00000000ull | 7);
  EXPECT_EQ(wordAt(out.segments[1], 0), TestFrame::pattern(1, 0));
}

TEST(FrameAccept, EmptyLaterSegment) {
  // Only the first segment holds the root pointer; later ones may be empty.
  auto f = makeFrame({{1}, {0}, {2}});
  ParsedFrame out;
  ASSERT_EQ(parse(f.exact(), out), "");
  EXPECT_EQ(out.segmentCount, 3u);
  // Cap'n Proto readers take a zero-length segment for a missing one: it reads as one
  // zero word that lies outside the frame.
  EXPECT_EQ(out.segments[1].size(), 1u);
  EXPECT_EQ(out.payloadBytes, 24u);
}

TEST(FrameAccept, MaximumSegmentCount) {
  std::vector<Seg> segs(kMaxSegments, Seg{1});
  auto f = makeFrame(segs);
  ParsedFrame out;
  ASSERT_EQ(parse(f.exact(), out), "");
  EXPECT_EQ(out.segmentCount, kMaxSegments);
  for (size_t s = 0; s < kMaxSegments; ++s) EXPECT_EQ(wordAt(out.segments[s], 0), TestFrame::pattern(s, 0));
}

TEST(FrameAccept, EveryKnownKind) {
  for (uint8_t k = 1; k <= kMaxFrameKind; ++k) {
    auto f = makeFrame({{1}});
    f.editHeader([&](FrameHeader& h) { h.kind = k; });
    ParsedFrame out;
    EXPECT_EQ(parse(f.exact(), out), "") << "kind " << int(k);
    EXPECT_EQ(out.header.kind, k);
  }
}

TEST(FrameAccept, MessageOfExactlyTheMaximumSize) {
  auto f = makeFrame({{4}, {4}});
  ParsedFrame out;
  EXPECT_EQ(parse(f.exact(), out, {}, 64), "");
}

TEST(FrameAccept, ParsedHeaderIsAPrivateCopy) {
  // Readers must never re-read the header from shared memory: the copy stays as parsed
  // even if the peer rewrites the bytes afterwards.
  auto f = makeFrame({{2}});
  ParsedFrame out;
  ASSERT_EQ(parse(f.exact(), out), "");
  f.editHeader([](FrameHeader& h) {
    h.callId = 99;
    h.segmentCount = 30;
  });
  EXPECT_EQ(out.header.callId, 0x1122334455667788ull);
  EXPECT_EQ(out.header.segmentCount, 1);
}

// ---------------------------------------------------------------------------------------
// Refused frames: each with a reason naming the malformation

TEST(FrameReject, ShortBuffer) {
  auto f = makeFrame({{1}});
  for (size_t n : {0, 8, 24, 31}) {
    std::string why = parse(f.all().first(n));
    EXPECT_THAT(why, HasSubstr("shorter than its header")) << n << " bytes";
  }
}

TEST(FrameReject, Misaligned) {
  auto f = makeFrame({{1}});
  for (size_t shift : {1, 4, 7}) {
    std::string why = parse(f.all().subspan(shift));
    EXPECT_THAT(why, HasSubstr("not 8-byte aligned")) << "shift " << shift;
  }
}

TEST(FrameReject, LengthBeyondAvailable) {
  auto f = makeFrame({{4}});
  std::string why = parse(f.all().first(f.frameBytes() - 8));
  EXPECT_THAT(why, HasSubstr("exceeds the"));
  EXPECT_THAT(why, HasSubstr("bytes available"));
  f.editHeader([](FrameHeader& h) { h.frameBytes = 0xFFFFFFF8u; });
  EXPECT_THAT(parse(f.all()), HasSubstr("bytes available"));
}

TEST(FrameReject, LengthNotMultipleOf8) {
  auto f = makeFrame({{4}});
  f.editHeader([](FrameHeader& h) { h.frameBytes += 4; });
  EXPECT_THAT(parse(f.all()), HasSubstr("not a multiple of 8"));
}

TEST(FrameReject, UnknownKind) {
  for (uint8_t k : {uint8_t{0}, uint8_t{kMaxFrameKind + 1}, uint8_t{0xFF}}) {
    auto f = makeFrame({{1}});
    f.editHeader([&](FrameHeader& h) { h.kind = k; });
    EXPECT_THAT(parse(f.exact()), HasSubstr("unknown frame kind")) << int(k);
  }
}

TEST(FrameReject, NonzeroFlags) {
  for (uint8_t flags : {uint8_t{0x80}, uint8_t{0x04}}) {
    auto f = makeFrame({{1}});
    f.editHeader([&](FrameHeader& h) { h.flags = flags; });
    EXPECT_THAT(parse(f.exact()), HasSubstr("unknown frame flags")) << int(flags);
  }
}

TEST(FrameReject, NonzeroReserved) {
  auto f = makeFrame({{1}});
  f.editHeader([](FrameHeader& h) { h.reserved = 1; });
  EXPECT_THAT(parse(f.exact()), HasSubstr("reserved"));
}

TEST(FrameReject, SegmentCountZero) {
  auto f = makeFrame({{1}});
  f.editHeader([](FrameHeader& h) {
    h.segmentCount = 0;
    h.frameBytes = h.tableOffset;  // consistent otherwise
  });
  EXPECT_THAT(parse(f.all()), HasSubstr("segment count 0"));
}

TEST(FrameReject, SegmentCountAboveMaximum) {
  std::vector<Seg> segs(kMaxSegments + 1, Seg{1});
  auto f = makeFrame(segs);
  EXPECT_THAT(parse(f.exact()), HasSubstr("segment count 33"));
  auto g = makeFrame({{1}});
  g.editHeader([](FrameHeader& h) { h.segmentCount = 0xFFFF; });
  EXPECT_THAT(parse(g.all()), HasSubstr("segment count 65535"));
}

TEST(FrameReject, TableOffsetInsideHeader) {
  auto f = makeFrame({{1}});
  f.editHeader([](FrameHeader& h) {
    h.tableOffset = 16;
    h.frameBytes = 24;  // table would "end" the frame, but starts inside the header
  });
  EXPECT_THAT(parse(f.all()), HasSubstr("misplaced"));
}

TEST(FrameReject, TableOffsetMisaligned) {
  auto f = makeFrame({{2}});
  f.editHeader([](FrameHeader& h) {
    h.tableOffset += 4;
    h.frameBytes += 8;
  });
  EXPECT_THAT(parse(f.all()), HasSubstr("misplaced"));
}

TEST(FrameReject, TableNotEndingTheFrame) {
  auto f = makeFrame({{2}});
  f.editHeader([](FrameHeader& h) { h.frameBytes += 8; });  // a word of slack after the table
  EXPECT_THAT(parse(f.all()), HasSubstr("does not end"));
  auto g = makeFrame({{2}, {2}});
  g.editHeader([](FrameHeader& h) { h.tableOffset -= 8; });  // table overruns the frame
  EXPECT_THAT(parse(g.all()), HasSubstr("does not end"));
  auto k = makeFrame({{1}});
  k.editHeader([](FrameHeader& h) { h.tableOffset = 0xFFFFFFF8u; });  // no wrap-around
  EXPECT_THAT(parse(k.all()), HasSubstr("does not end"));
}

TEST(FrameReject, InlineSegmentOverlappingHeader) {
  auto f = makeFrame({{2}});
  for (uint32_t loc : {0u, 1u, 3u}) {
    f.setEntry(0, {2, loc});
    EXPECT_THAT(parse(f.exact()), HasSubstr("overlaps")) << "word " << loc;
  }
}

TEST(FrameReject, InlineSegmentOverlappingTable) {
  auto f = makeFrame({{2}});
  f.setEntry(0, {3, 4});  // one word too many: runs into the table
  EXPECT_THAT(parse(f.exact()), HasSubstr("overlaps"));
  f.setEntry(0, {1, 6});  // starts inside the table
  EXPECT_THAT(parse(f.exact()), HasSubstr("overlaps"));
  f.setEntry(0, {1, 0x7FFFFFFFu});  // far beyond the frame
  EXPECT_THAT(parse(f.exact()), HasSubstr("overlaps"));
  f.setEntry(0, {0xFFFFFFFFu, 4});  // huge length must not wrap around
  EXPECT_THAT(parse(f.exact(), {}, ~size_t{0}),
              HasSubstr("overlaps"));
}

TEST(FrameReject, InlineSegmentOverlappingPreviousSegment) {
  auto f = makeFrame({{4}, {4}});
  f.setEntry(1, {4, 4 + 3});  // starts in the last word of segment 0
  EXPECT_THAT(parse(f.exact()), HasSubstr("overlaps"));
  f.setEntry(1, {4, 4});  // exactly the same words as segment 0
  EXPECT_THAT(parse(f.exact()), HasSubstr("overlaps"));
}

TEST(FrameReject, InlineSegmentsOutOfOrder) {
  auto f = makeFrame({{4}, {4}});
  f.setEntry(0, {4, 8});
  f.setEntry(1, {4, 4});
  EXPECT_THAT(parse(f.exact()), HasSubstr("overlaps"));
}

TEST(FrameReject, ArenaSegmentOutsideArena) {
  TestArena arena(1024);
  auto f = makeFrame({{1}, {8, true, 0}});
  f.setEntry(1, {8, kArenaBit | 1017});  // one word past the end
  EXPECT_THAT(parse(f.exact(), arena.span()),
              HasSubstr("outside the arena"));
  f.setEntry(1, {1, kArenaBit | 1024});  // starts at the end
  EXPECT_THAT(parse(f.exact(), arena.span()),
              HasSubstr("outside the arena"));
  f.setEntry(1, {1, kArenaBit | 0x7FFFFFFFu});  // largest offset
  EXPECT_THAT(parse(f.exact(), arena.span()),
              HasSubstr("outside the arena"));
  f.setEntry(1, {0xFFFFFFFFu, kArenaBit | 1});  // offset + words must not wrap around
  EXPECT_THAT(parse(f.exact(), arena.span(), ~size_t{0}),
              HasSubstr("outside the arena"));
}

TEST(FrameReject, ArenaSegmentWithoutArena) {
  auto f = makeFrame({{1}, {8, true, 0}});
  std::string why = parse(f.exact());
  EXPECT_THAT(why, HasSubstr("outside the arena"));
  EXPECT_THAT(why, HasSubstr("has none"));
}

TEST(FrameReject, TotalOverMaxMessageBytes) {
  auto f = makeFrame({{4}, {5}});
  std::string why = parse(f.exact(), {}, 64);
  EXPECT_THAT(why, HasSubstr("exceeds the maximum 64"));
  // Arena segments count too, and a huge sum must not wrap around.
  TestArena arena(16);
  std::vector<Seg> segs(kMaxSegments, Seg{0xFFFFFFFFu, true, 0});
  segs[0] = Seg{1};
  auto g = makeFrame(segs);
  EXPECT_THAT(parse(g.exact(), arena.span()),
              HasSubstr("exceeds the maximum"));
}

TEST(FrameReject, EmptyFirstSegment) {
  auto f = makeFrame({{0}, {2}});
  EXPECT_THAT(parse(f.exact()), HasSubstr("first segment is empty"));
  TestArena arena(16);
  auto g = makeFrame({{0, true, 0}});
  EXPECT_THAT(parse(g.exact(), arena.span()),
              HasSubstr("first segment is empty"));
}

TEST(FrameExtension, RecordsAreCopiedOutAndPointIntoTheArea) {
  auto f = makeFrame({{2}, {1}});
  const uint32_t tableEnd = f.frameBytes();
  f.extend({{extension::kTarget, {5}}, {extension::kCapTable, {2, 9, 10}}, {0x4242, {}}},
           /*traced=*/true);
  ParsedFrame out;
  ASSERT_EQ(parse(f.exact(), out), "");
  EXPECT_EQ(out.trace.traceId, 7u);
  EXPECT_EQ(out.trace.spanId, 8u);
  EXPECT_EQ(out.extensionArea, f.bytes() + tableEnd + sizeof(TraceContext));
  EXPECT_EQ(out.extensionBytes, 16u + 32u + 8u);
  ASSERT_EQ(out.extensionCount, 3u);
  EXPECT_EQ(out.extensions[0].type, extension::kTarget);
  EXPECT_EQ(out.extensions[0].offset, 0u);
  EXPECT_EQ(out.extensions[0].bytes, 16u);
  EXPECT_EQ(out.extensions[1].type, extension::kCapTable);
  EXPECT_EQ(out.extensions[1].offset, 16u);
  EXPECT_EQ(out.extensions[1].bytes, 32u);
  EXPECT_EQ(out.extensions[2].type, 0x4242);  // unknown types are the RPC layer's business
  EXPECT_EQ(out.extensions[2].bytes, 8u);
  uint64_t id;
  std::memcpy(&id, out.extensionArea + out.extensions[0].offset + 8, sizeof id);
  EXPECT_EQ(id, 5u);
  EXPECT_EQ(out.segmentCount, 2u);  // segments are unaffected
  EXPECT_EQ(out.payloadBytes, 24u);
}

TEST(FrameExtension, AFrameWithoutTheFlagHasNone) {
  auto f = makeFrame({{1}});
  ParsedFrame out;
  out.extensionCount = 5;  // a reused slot: the parser resets it
  ASSERT_EQ(parse(f.exact(), out), "");
  EXPECT_EQ(out.extensionCount, 0u);
  EXPECT_EQ(out.extensionBytes, 0u);
  EXPECT_EQ(out.extensionArea, nullptr);
}

TEST(FrameExtension, TheMostRecordsAndBytesAreAccepted) {
  std::vector<TestFrame::Rec> records(kMaxExtensionRecords, {extension::kMetadata, {}});
  records.back().payload.assign(kMaxExtensionBytes / 8 - kMaxExtensionRecords, 1);
  TestFrame f({{1}}, 4096);
  f.extend(records);
  ParsedFrame out;
  ASSERT_EQ(parse(f.exact(), out), "");
  EXPECT_EQ(out.extensionCount, kMaxExtensionRecords);
  EXPECT_EQ(out.extensionBytes, kMaxExtensionBytes);
}

TEST(FrameExtension, MalformedAreasAreRefusedWithTheirReason) {
  struct Case {
    const char* name;
    std::vector<TestFrame::Rec> records;
    const char* reason;
  };
  const std::vector<TestFrame::Rec> nine(kMaxExtensionRecords + 1, {extension::kMetadata, {}});
  const std::vector<Case> cases = {
      {"empty area", {}, "has no extension records"},
      {"too many records", nine, "more than 8 records"},
      {"too large", {{extension::kCapTable, std::vector<uint64_t>(kMaxExtensionBytes / 8)}},
       "exceeds the maximum 16384"},
      {"record shorter than its header", {{extension::kTarget, {1}, 4}}, "claims 4 bytes"},
      {"record of a partial word", {{extension::kTarget, {1}, 12}}, "claims 12 bytes"},
      {"record past the area", {{extension::kTarget, {1}, 24}}, "claims 24 bytes"},
      {"reserved field", {{extension::kTarget, {1}, 0, 3}}, "non-zero reserved"},
      {"second record past the area", {{extension::kTarget, {1}}, {extension::kCapTable, {}, 16}},
       "extension record 1 claims 16 bytes"},
  };
  for (const Case& c : cases) {
    TestFrame f({{1}}, 4096);
    f.extend(c.records);
    EXPECT_THAT(parse(f.exact()), HasSubstr(c.reason)) << c.name;
  }
}

TEST(FrameExtension, TheTableMustLieBeforeTheArea) {
  auto f = makeFrame({{1}});
  f.extend({{extension::kTarget, {1}}});
  f.editHeader([&](FrameHeader& h) { h.tableOffset = h.frameBytes; });
  EXPECT_THAT(parse(f.exact()), HasSubstr("passes the end of the"));
}

TEST(FrameExtension, EveryTruncationIsRefused) {
  auto f = makeFrame({{2}});
  f.extend({{extension::kTarget, {1}}, {extension::kReleases, {1, 0x500000004}}}, true);
  ASSERT_EQ(parse(f.exact()), "");
  for (size_t n = 0; n < f.frameBytes(); n += 8) EXPECT_NE(parse(f.all().first(n)), "") << n;
  // Shrinking the frame's own length by whole records leaves a frame whose area no
  // longer ends where its records say: refused too, unless what is cut is a whole record.
  f.editHeader([&](FrameHeader& h) { h.frameBytes -= 8; });
  EXPECT_THAT(parse(f.exact()), HasSubstr("claims"));
}

TEST(FrameReject, EveryTruncationOfAValidFrameIsRefused) {
  // A frame cut anywhere (a torn read, a short packet) is never accepted.
  TestArena arena(64);
  auto f = makeFrame({{3}, {2, true, 5}, {4}});
  ASSERT_EQ(parse(f.exact(), arena.span()), "");
  for (size_t n = 0; n < f.frameBytes(); n += 8)
    EXPECT_NE(parse(f.all().first(n), arena.span()), "")
        << n << " bytes";
}

}  // namespace
}  // namespace zcrpc
