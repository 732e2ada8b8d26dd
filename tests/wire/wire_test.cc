// zcrpc's generated wire accessors against libcapnp: messages libcapnp builds read the same
// through both readers; messages zcrpc builds are what libcapnp builds from the same calls;
// defaults, list upgrades, schema evolution and malformed input behave as libcapnp's; and
// the accessors in OutgoingMessage / IncomingMessage and the generated stubs.
#include <gtest/gtest.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "wire_compare.h"
#include "zcrpc/loopback.h"
#include "zcrpc/rpc.h"

namespace zcrpc::wiretest {
namespace {

using namespace std::chrono_literals;
using Segments = kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>;

capnp::ReaderOptions bigLimits() {
  capnp::ReaderOptions o;
  o.traversalLimitInWords = uint64_t{1} << 40;
  return o;
}

bool sameCanonical(Segments a, Segments b) {
  capnp::SegmentArrayMessageReader ra(a, bigLimits()), rb(b, bigLimits());
  auto ca = ra.getRoot<capnp::AnyStruct>().canonicalize();
  auto cb = rb.getRoot<capnp::AnyStruct>().canonicalize();
  return ca.size() == cb.size() && std::memcmp(ca.begin(), cb.begin(), ca.size() * 8) == 0;
}

// ------------------------------------------------------------------------------------
// Reading what libcapnp built

TEST(WireRead, EveryFieldOfAMessageLibcapnpBuiltReadsTheSame) {
  for (uint32_t firstWords : {1024u, 1u, 8u}) {
    SCOPED_TRACE(firstWords);
    // Small first segments spread the message over many segments and far pointers.
    capnp::MallocMessageBuilder m(firstWords, capnp::AllocationStrategy::FIXED_SIZE);
    fillAll(m.initRoot<AllTypes>());
    if (firstWords == 1) {
      EXPECT_GT(m.getSegmentsForOutput().size(), 20u);
    }
    Comparison c = compareAll(m.getSegmentsForOutput());
    EXPECT_TRUE(c.ok()) << c.report();
    EXPECT_GT(c.reads, 500u);

    // And the values are the ones written (so agreement is not agreement on nothing).
    wire::ReadContext ctx;
    auto segs = m.getSegmentsForOutput();
    ctx.reset(segs.begin(), static_cast<uint32_t>(segs.size()), 1 << 20, 64);
    wire::Reader<AllTypes> r(ctx.root());
    EXPECT_EQ(r.getInt32Field(), -320000);
    EXPECT_EQ(r.getUint64Field(), 18000000000000000000ull);
    EXPECT_EQ(std::string(r.getTextField().cStr()), "text field");
    EXPECT_EQ(r.getStructField().getStructField().getInt8Field(), -8);
    EXPECT_EQ(r.getInnerField().getSelf().getA(), 78u);
    EXPECT_EQ(r.getInt32List()[3], -4);
    EXPECT_TRUE(r.getBoolList()[10]);
    EXPECT_FALSE(r.getBoolList()[9]);
    EXPECT_EQ(std::string(r.getTextList()[2].cStr()), "three");
    EXPECT_EQ(r.getStructList()[1].getInt32Field(), 99);
    EXPECT_EQ(r.getListList()[2][0], 42);
    EXPECT_EQ(r.getStructListList()[0][1].getA(), 5u);
    EXPECT_EQ(r.getEnumList()[1], Color::DELETE);
    EXPECT_EQ(r.getChoice().which(), AllTypes::Choice::PAIR);
    EXPECT_TRUE(r.getChoice().isPair());
    EXPECT_EQ(std::string(r.getChoice().getPair().getRight().cStr()), "right");
    EXPECT_EQ(r.getPoint().getKind().getColored(), Color::GREEN);
    EXPECT_EQ(r.getWhich(), 4321);
    int sum = 0;
    for (int32_t v : r.getInt32List()) sum += v;
    EXPECT_EQ(sum, 3);
  }
}

TEST(WireRead, UnsetFieldsReadAsTheirDefaults) {
  capnp::MallocMessageBuilder m;
  m.initRoot<Defaults>();
  Comparison c = compareAll(m.getSegmentsForOutput());
  EXPECT_TRUE(c.ok()) << c.report();

  wire::ReadContext ctx;
  auto segs = m.getSegmentsForOutput();
  ctx.reset(segs.begin(), 1, 1 << 20, 64);
  wire::Reader<Defaults> d(ctx.root());
  EXPECT_TRUE(d.getBoolField());
  EXPECT_EQ(d.getInt8Field(), -123);
  EXPECT_EQ(d.getInt64Field(), -123456789012345);
  EXPECT_EQ(d.getUint64Field(), 12345678901234567890ull);
  EXPECT_EQ(d.getFloat32Field(), 1234.5f);
  EXPECT_EQ(d.getFloat64Field(), -123e45);
  EXPECT_TRUE(std::isnan(d.getNanField()));
  EXPECT_EQ(d.getInfField(), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(std::string(d.getTextField().cStr()), "foo");
  EXPECT_EQ(d.getDataField().size(), 3u);
  EXPECT_EQ(d.getStructField().getA(), 7u);
  EXPECT_EQ(std::string(d.getStructField().getB().cStr()), "seven");
  EXPECT_EQ(d.getStructField().getC()[1], -2);
  EXPECT_EQ(d.getStructField().getSelf().getA(), 8u);
  EXPECT_EQ(d.getEnumField(), Color::BLUE);
  EXPECT_TRUE(d.getBoolList()[3]);
  EXPECT_EQ(std::string(d.getTextList()[1].cStr()), "xyzzy");
  EXPECT_EQ(d.getStructList()[1].getC()[0], 5);
  EXPECT_EQ(d.getEnumList()[1], Color::DELETE);
  EXPECT_EQ(d.getListList()[2][0], 3);
  EXPECT_EQ(d.getChoice().getFirst(), 99u);
  EXPECT_EQ(d.getEmptyText().size(), 0u);
  EXPECT_FALSE(d.getStructField().getSelf().hasSelf());
  // An empty message (no root) reads as defaults too.
  wire::Reader<Defaults> empty;
  EXPECT_EQ(empty.getInt16Field(), -12345);
  EXPECT_EQ(std::string(empty.getTextList()[0].cStr()), "plugh");
}

TEST(WireRead, FieldsSetToTheirDefaultsOrToZeroReadBackExactly) {
  // XOR-encoded defaults: writing 0 stores the default's bits; writing the default stores 0.
  HeapMessage ours;
  auto d = ours.initRoot<Defaults>();
  d.setInt8Field(0);
  d.setUint32Field(3456789012u);
  d.setFloat64Field(0.0);
  d.setBoolField(false);
  d.setEnumField(Color::RED);
  capnp::SegmentArrayMessageReader r(ours.segments());
  auto t = r.getRoot<Defaults>();
  EXPECT_EQ(t.getInt8Field(), 0);
  EXPECT_EQ(t.getUint32Field(), 3456789012u);
  EXPECT_EQ(t.getFloat64Field(), 0.0);
  EXPECT_FALSE(t.getBoolField());
  EXPECT_EQ(t.getEnumField(), Color::RED);
  EXPECT_EQ(d.getInt8Field(), 0);
  EXPECT_EQ(d.getUint32Field(), 3456789012u);
  EXPECT_FALSE(d.getBoolField());
}

TEST(WireRead, ListsReadAsOtherListTypesFollowLibcapnpsUpgradeRules) {
  capnp::MallocMessageBuilder m;
  auto a = m.initRoot<ListsA>();
  a.initL0(4);
  a.setL1({true, false, true});
  a.setL2({1, 2, 3});
  a.setL3({1000, 2000});
  a.setL4({5, 200000, 300000});
  a.setL5({1ull << 50});
  a.setL6({"x", "yy"});
  auto l7 = a.initL7(2);
  l7[0].setA(11);
  l7[1].setA(22);
  l7[1].setB("b");
  Comparison c = compareAll(m.getSegmentsForOutput());
  EXPECT_TRUE(c.ok()) << c.report();
  EXPECT_GT(c.bothThrew, 5u) << "some pairings are refused by both";

  wire::ReadContext ctx;
  auto segs = m.getSegmentsForOutput();
  ctx.reset(segs.begin(), 1, 1 << 20, 64);
  // Struct list read as a list of UInt32: the first field of each element.
  wire::Reader<ListsB> b(ctx.root());
  EXPECT_EQ(b.getL7()[1], 22u);
  // Text list read as a struct list: each element's first pointer.
  EXPECT_EQ(std::string(b.getL6()[1].getB().cStr()), "yy");
  EXPECT_EQ(b.getL6()[1].getA(), 0u);
  // A list of UInt32 passes as a list of Bool (libcapnp reads its bits, whatever the step).
  ASSERT_EQ(b.getL4().size(), 3u);
  EXPECT_TRUE(b.getL4()[0]);  // 5 = 0b101
  EXPECT_FALSE(b.getL4()[1]);
  EXPECT_TRUE(b.getL4()[2]);
  EXPECT_THROW(b.getL2(), InvalidArgument) << "a byte list is not a list of Text";
  wire::Reader<ListsC> cc(ctx.root());
  EXPECT_THROW(cc.getL3(), InvalidArgument) << "a UInt16 list is not a UInt64 list";
  EXPECT_EQ(cc.getL5()[0], 0) << "a UInt64 list read as Int16: each element's low bits";
}

TEST(WireRead, OldAndNewVersionsOfAStructReadEachOther) {
  capnp::MallocMessageBuilder small;
  small.initRoot<Small>().setA(5);
  capnp::MallocMessageBuilder large;
  auto l = large.initRoot<Large>();
  l.setA(6);
  l.setB(8);
  l.setC("new");
  l.initD().setA(9);
  for (auto* m : {&small, &large}) {
    Comparison c = compareAll(m->getSegmentsForOutput());
    EXPECT_TRUE(c.ok()) << c.report();
  }
  wire::ReadContext ctx;
  auto segs = small.getSegmentsForOutput();
  ctx.reset(segs.begin(), 1, 1 << 20, 64);
  wire::Reader<Large> asLarge(ctx.root());
  EXPECT_EQ(asLarge.getA(), 5);
  EXPECT_EQ(asLarge.getB(), 77u);
  EXPECT_EQ(std::string(asLarge.getC().cStr()), "large");
  EXPECT_TRUE(asLarge.getE());
}

// ------------------------------------------------------------------------------------
// Malformed input

/// A message of the given segments (each a list of words).
struct Crafted {
  std::vector<std::vector<uint64_t>> segments;
  std::vector<kj::ArrayPtr<const capnp::word>> views = {};
  Segments get() {
    views.clear();
    for (auto& s : segments)
      views.emplace_back(reinterpret_cast<const capnp::word*>(s.data()), s.size());
    return kj::arrayPtr(views.data(), views.size());
  }
};

struct MalformedCase {
  const char* name;
  Crafted message;
  Limits limits;
};

TEST(WireRead, MalformedMessagesAreRefusedWhereLibcapnpRefusesThem) {
  // Each message but the first three is an AllTypes root with one pointer field set
  // (allTypesWith), read as every struct of the schema.
  std::vector<MalformedCase> cases = {
      {"root struct beyond the segment", {{{structPtr(0, 100, 0)}}}, {}},
      {"root pointer at a negative offset", {{{structPtr(-5, 1, 0), 0}}}, {}},
      {"empty first segment", {{{}}}, {}},
      {"text without NUL",
       {{allTypesWith("textField", listPtr(toEnd("textField"), 2, 8), {0x6161616161616161ull})}},
       {}},
      {"text of no bytes", {{allTypesWith("textField", listPtr(toEnd("textField"), 2, 0))}}, {}},
      {"text as a list of words",
       {{allTypesWith("textField", listPtr(toEnd("textField"), 5, 1), {0})}},
       {}},
      {"data beyond the segment",
       {{allTypesWith("dataField", listPtr(toEnd("dataField"), 2, 64), {0})}},
       {}},
      {"struct field holding a list",
       {{allTypesWith("structField", listPtr(toEnd("structField"), 2, 8), {0})}},
       {}},
      {"far pointer to a missing segment",
       {{allTypesWith("structField", farPtr(false, 0, 7))}},
       {}},
      {"far pointer's pad beyond its segment",
       {{allTypesWith("structField", farPtr(false, 9, 1)), {0}}},
       {}},
      {"double-far pad that is no far pointer",
       {{allTypesWith("structField", farPtr(true, 0, 1)),
         {structPtr(0, 1, 0), structPtr(0, 1, 0)}}},
       {}},
      {"double-far to a missing segment",
       {{allTypesWith("structField", farPtr(true, 0, 1)),
         {farPtr(false, 0, 9), structPtr(0, 1, 0)}}},
       {}},
      {"inline-composite list of non-structs",
       {{allTypesWith("innerList", listPtr(toEnd("innerList"), 7, 2), {listPtr(2, 2, 1), 0, 0})}},
       {}},
      {"inline-composite elements overrunning",
       {{allTypesWith("innerList", listPtr(toEnd("innerList"), 7, 2), {structPtr(3, 1, 1), 0, 0})}},
       {}},
      {"a million empty structs",
       {{allTypesWith("innerList", listPtr(toEnd("innerList"), 7, 0), {structPtr(1 << 20, 0, 0)})}},
       {4096, 64}},
      {"a million voids",
       {{allTypesWith("voidList", listPtr(toEnd("voidList"), 0, 1 << 20))}},
       {4096, 64}},
      {"a capability where a struct belongs",
       {{allTypesWith("structField", 3 | (uint64_t{5} << 32))}},
       {}},
      {"an unknown kind of other pointer", {{allTypesWith("structField", 7)}}, {}},
      {"a struct pointing at itself (too deep)",
       {{allTypesWith("structField", pointerToRoot("structField"))}},
       {}},
      {"more words than the traversal limit",
       {{allTypesWith("dataField", listPtr(toEnd("dataField"), 2, 320), std::vector<uint64_t>(40))}},
       {64, 64}},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(c.name);
    Comparison result = compareAll(c.message.get(), c.limits);
    EXPECT_TRUE(result.ok()) << result.report();
    EXPECT_GT(result.bothThrew, 0u) << "both readers refuse something in it";
  }
}

TEST(WireRead, ADoubleFarPointerLeadsToItsObject) {
  // structField -> a double-far landing pad in segment 1 -> a one-word struct in segment 2.
  Crafted m{{allTypesWith("structField", farPtr(true, 0, 1)),
             {farPtr(false, 0, 2), structPtr(0, 1, 0)},
             {uint64_t{0x12345678} << 32}}};
  Comparison c = compareAll(m.get());
  EXPECT_TRUE(c.ok()) << c.report();
  wire::ReadContext ctx;
  auto segs = m.get();
  ctx.reset(segs.begin(), static_cast<uint32_t>(segs.size()), 1 << 20, 64);
  wire::Reader<AllTypes> r(ctx.root());
  EXPECT_TRUE(r.hasStructField());
  EXPECT_EQ(r.getStructField().getInt32Field(), 0x12345678);
}

TEST(WireRead, ListIndexPastTheEndThrows) {
  capnp::MallocMessageBuilder m;
  m.initRoot<AllTypes>().setInt32List({1, 2});
  wire::ReadContext ctx;
  auto segs = m.getSegmentsForOutput();
  ctx.reset(segs.begin(), 1, 1 << 20, 64);
  wire::Reader<AllTypes> r(ctx.root());
  EXPECT_EQ(r.getInt32List()[1], 2);
  EXPECT_THROW(r.getInt32List()[2], InvalidArgument);
}

// ------------------------------------------------------------------------------------
// Building

TEST(WireBuild, WhatZcrpcBuildsIsWhatLibcapnpBuildsFromTheSameCalls) {
  capnp::MallocMessageBuilder theirs;
  fillAll(theirs.initRoot<AllTypes>());
  for (auto [first, next] : {std::pair{4096u, 0u}, {1u, 1u}, {6u, 3u}, {40u, 0u}, {2u, 600u}}) {
    SCOPED_TRACE(first);
    HeapMessage ours(first, next);
    fillAll(ours.initRoot<AllTypes>());
    auto segs = ours.segments();
    if (first == 1) {
      EXPECT_GE(segs.size(), 8u) << "far pointers everywhere";
    }
    EXPECT_TRUE(sameCanonical(theirs.getSegmentsForOutput(), segs));
    Comparison c = compareAll(segs);
    EXPECT_TRUE(c.ok()) << c.report();
  }
}

TEST(WireBuild, ASingleSegmentMessageIsByteForByteLibcapnps) {
  // Same calls, same order, one segment: libcapnp's allocator and zcrpc's place every object
  // at the same word.
  capnp::MallocMessageBuilder theirs(4096);
  fillAll(theirs.initRoot<AllTypes>());
  HeapMessage ours(4096);
  fillAll(ours.initRoot<AllTypes>());
  auto a = theirs.getSegmentsForOutput(), b = ours.segments();
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  ASSERT_EQ(a[0].size(), b[0].size());
  EXPECT_EQ(std::memcmp(a[0].begin(), b[0].begin(), a[0].size() * 8), 0);
}

TEST(WireBuild, BuilderGettersReturnWhatWasSetAndCopyDefaults) {
  capnp::MallocMessageBuilder theirs;
  HeapMessage ours;
  auto run = [](auto d) {
    EXPECT_EQ(d.getStructField().getA(), 7u);  // copies the default in
    d.getStructField().setA(70);
    EXPECT_EQ(std::string(d.getTextField().cStr()), "foo");
    EXPECT_EQ(d.getInt32List()[1], -2);
    d.getInt32List().set(1, 20);
    EXPECT_EQ(std::string(d.getTextList()[2].cStr()), "thud");
    EXPECT_EQ(std::string(d.getStructList()[0].getB().cStr()), "one");
    EXPECT_EQ(d.getListList()[0][1], 2);
    EXPECT_EQ(d.getInt16Field(), -12345);
    d.setInt16Field(5);
    EXPECT_EQ(d.getInt16Field(), 5);
    EXPECT_EQ(d.getEmptyStruct().getA(), 0u);
  };
  run(theirs.initRoot<Defaults>());
  run(ours.initRoot<Defaults>());
  EXPECT_TRUE(sameCanonical(theirs.getSegmentsForOutput(), ours.segments()));
}

TEST(WireBuild, SettingAFieldAgainZeroesWhatItHeld) {
  capnp::MallocMessageBuilder theirs(4096);
  HeapMessage ours(4096);
  auto run = [](auto b) {
    b.setTextField("first value, which gets zeroed");
    b.setTextField("second");
    auto inner = b.initInnerField();
    inner.setB("gone");
    inner.initSelf().setB("gone too");
    b.initInnerField().setA(1);
    b.initInnerList(3)[2].setB("x");
    b.initInnerList(1);
  };
  run(theirs.initRoot<AllTypes>());
  run(ours.initRoot<AllTypes>());
  auto a = theirs.getSegmentsForOutput(), s = ours.segments();
  ASSERT_EQ(a[0].size(), s[0].size());
  EXPECT_EQ(std::memcmp(a[0].begin(), s[0].begin(), a[0].size() * 8), 0)
      << "the same bytes: old objects zeroed in place";
}

TEST(WireBuild, CopiesFromReadersKeepTheirLayoutAndUpgradeWhenWrittenAgain) {
  // Source messages of an older layout: a Small read as AllTypes, and a text list read as a
  // list of Inner (pointer elements), a void list and a struct list read as a UInt32 list.
  capnp::MallocMessageBuilder small;
  small.initRoot<Small>().setA(33);
  capnp::MallocMessageBuilder lists;
  auto la = lists.initRoot<ListsA>();
  la.setL6({"p", "q"});
  la.initL0(3);
  auto l7 = la.initL7(2);
  l7[0].setA(5);
  l7[1].setA(6);

  auto run = [&](auto root, wire::Reader<AllTypes> smallAsAll, wire::Reader<ListsB> listsAsB,
                 auto structField, auto innerList, auto voidAsInner, auto uint32s) {
    structField(root, smallAsAll);
    root.getStructField().setTextField("upgraded");  // the 1-word struct must grow
    EXPECT_TRUE(root.getStructField().getBoolField());  // Small.a = 33: bit 0 set
    EXPECT_EQ(root.getStructField().getInt16Field(), 0);
    innerList(root, listsAsB);
    auto inners = root.getInnerList();  // pointer list -> struct list
    EXPECT_EQ(std::string(inners[1].getB().cStr()), "q");
    inners[1].setA(9);
    voidAsInner(root, listsAsB);
    uint32s(root, listsAsB);
    EXPECT_EQ(root.getUint32List()[1], 6u);  // a struct list's first field
    root.getUint32List().set(1, 60);
  };
  auto readerOf = [](capnp::MessageBuilder& m, wire::ReadContext& ctx) {
    auto segs = m.getSegmentsForOutput();
    ctx.reset(segs.begin(), static_cast<uint32_t>(segs.size()), 1 << 20, 64);
    return ctx.root();
  };
  wire::ReadContext c1, c2;
  wire::Reader<AllTypes> smallAsAll(readerOf(small, c1));
  wire::Reader<ListsB> listsAsB(readerOf(lists, c2));
  capnp::ReaderOptions o;
  capnp::SegmentArrayMessageReader smallCapnp(small.getSegmentsForOutput(), o);
  capnp::SegmentArrayMessageReader listsCapnp(lists.getSegmentsForOutput(), o);

  capnp::MallocMessageBuilder theirs;
  run(
      theirs.initRoot<AllTypes>(), smallAsAll, listsAsB,
      [&](auto r, auto) { r.setStructField(smallCapnp.getRoot<AllTypes>()); },
      [&](auto r, auto) { r.setInnerList(listsCapnp.getRoot<ListsB>().getL6()); },
      [&](auto r, auto) {
        r.setInnerList(listsCapnp.getRoot<ListsB>().getL0());  // a void list
        r.getInnerList()[2].setA(4);
      },
      [&](auto r, auto) { r.setUint32List(listsCapnp.getRoot<ListsB>().getL7()); });
  HeapMessage ours(32, 4);
  run(
      ours.initRoot<AllTypes>(), smallAsAll, listsAsB,
      [&](auto r, auto s) { r.setStructField(s); },
      [&](auto r, auto l) { r.setInnerList(l.getL6()); },
      [&](auto r, auto l) {
        r.setInnerList(l.getL0());
        r.getInnerList()[2].setA(4);
      },
      [&](auto r, auto l) { r.setUint32List(l.getL7()); });
  EXPECT_TRUE(sameCanonical(theirs.getSegmentsForOutput(), ours.segments()));
  Comparison c = compareAll(ours.segments());
  EXPECT_TRUE(c.ok()) << c.report();
}

TEST(WireBuild, RandomProgramsBuildTheSameMessageWithBothBuilders) {
  // The fuzzer's builder mode, on a fixed set of programs (the fuzzer runs many more).
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  for (int program = 0; program < 200; ++program) {
    std::vector<kj::byte> bytes(600);
    for (auto& b : bytes) {
      seed ^= seed << 13;
      seed ^= seed >> 7;
      seed ^= seed << 17;
      b = static_cast<kj::byte>(seed);
    }
    capnp::MallocMessageBuilder theirs;
    OpReader opsA(kj::arrayPtr(bytes.data(), bytes.size()));
    applyOps(theirs.initRoot<AllTypes>(), opsA);
    HeapMessage ours(1 + program % 50, program % 7);
    OpReader opsB(kj::arrayPtr(bytes.data(), bytes.size()));
    applyOps(ours.initRoot<AllTypes>(), opsB);
    ASSERT_TRUE(sameCanonical(theirs.getSegmentsForOutput(), ours.segments())) << program;
    Comparison c = compareAll(ours.segments());
    ASSERT_TRUE(c.ok()) << program << "\n" << c.report();
  }
}

TEST(WireBuild, AsReaderReadsTheMessageBeingBuilt) {
  HeapMessage ours(2, 2);  // far pointers
  auto b = ours.initRoot<AllTypes>();
  fillAll(b);
  auto r = b.asReader();
  EXPECT_EQ(std::string(r.getStructField().getTextField().cStr()), "text field");
  EXPECT_EQ(r.getInnerList()[2].getA(), 2u);
  wire::Reader<AllTypes> converted = b;
  EXPECT_EQ(converted.getInt8Field(), -8);
}

// ------------------------------------------------------------------------------------
// Coverage: what falls back to capnpc-c++'s accessors

static_assert(wire::Accessors<AllTypes>::kGenerated);
static_assert(wire::Accessors<AllTypes::Choice::Pair>::kGenerated);
static_assert(wire::Accessors<Wire::RoundTripParams>::kGenerated);
static_assert(!wire::Accessors<WithAny>::kGenerated, "AnyPointer is not covered");
static_assert(!wire::Accessors<ReachesAny>::kGenerated, "nor what reaches one");
static_assert(!wire::Accessors<Wire::AnyParams>::kGenerated);
static_assert(std::is_same_v<wire::Reader<WithAny>, WithAny::Reader>);
static_assert(std::is_same_v<wire::Builder<Wire::AnyParams>, Wire::AnyParams::Builder>);
static_assert(wire::Accessors<Wire::AnyResults>::kGenerated);

// ------------------------------------------------------------------------------------
// OutgoingMessage and IncomingMessage

/// Heap memory for an OutgoingMessage without a transport.
class HeapSource final : public SegmentSource {
 public:
  void open(OutgoingMessage& msg, uint32_t firstWords) {
    msg.open(*this, header_, take(firstWords));
  }
  kj::ArrayPtr<capnp::word> allocateMore(uint32_t minWords) override {
    return take(std::max(minWords, 256u));
  }
  void abandon() noexcept override {}

 private:
  kj::ArrayPtr<capnp::word> take(uint32_t words) {
    chunks_.push_back(std::vector<uint64_t>(words));
    return kj::ArrayPtr<capnp::word>(reinterpret_cast<capnp::word*>(chunks_.back().data()), words);
  }
  FrameHeader header_{};
  std::vector<std::vector<uint64_t>> chunks_;
};

TEST(WireMessage, ZcrpcsBuilderHandsTheMessageOverToLibcapnps) {
  HeapSource source;
  OutgoingMessage msg;
  source.open(msg, 256);
  auto fast = msg.build<AllTypes>();
  fast.setInt32Field(5);
  fast.initInnerField().setB("from zcrpc");
  auto slow = msg.getRoot<AllTypes>();  // Cap'n Proto's builder takes over
  EXPECT_EQ(slow.getInt32Field(), 5);
  slow.setTextField("from capnp");
  slow.getInnerField().setA(3);
  EXPECT_THROW(msg.build<AllTypes>(), InvalidArgument);
  capnp::SegmentArrayMessageReader r(msg.segmentsForSend());
  auto root = r.getRoot<AllTypes>();
  EXPECT_EQ(root.getInt32Field(), 5);
  EXPECT_EQ(std::string(root.getTextField().cStr()), "from capnp");
  EXPECT_EQ(std::string(root.getInnerField().getB().cStr()), "from zcrpc");
  EXPECT_EQ(root.getInnerField().getA(), 3u);
  msg.markSent();
}

TEST(WireMessage, ARootReplacedByLibcapnpsBuilderIsTheOneSent) {
  HeapSource source;
  OutgoingMessage msg;
  source.open(msg, 256);
  msg.build<Inner>().setA(1);
  msg.initRoot<Inner>().setA(2);
  capnp::SegmentArrayMessageReader r(msg.segmentsForSend());
  EXPECT_EQ(r.getRoot<Inner>().getA(), 2u);
  msg.markSent();
}

TEST(WireMessage, HandOverIsRefusedWhenZcrpcsBuilderUsedSeveralSegments) {
  HeapSource source;
  OutgoingMessage msg;
  source.open(msg, 4);
  fillAll(msg.build<AllTypes>());
  EXPECT_THROW(msg.getRoot<AllTypes>(), InvalidArgument);
  capnp::SegmentArrayMessageReader r(msg.segmentsForSend(), bigLimits());
  EXPECT_EQ(r.getRoot<AllTypes>().getInt16Field(), -1600) << "zcrpc's message is intact";
  msg.markSent();
}

TEST(WireMessage, LibcapnpsBuilderFirstRefusesZcrpcsBuilder) {
  HeapSource source;
  OutgoingMessage msg;
  source.open(msg, 64);
  msg.initRoot<Inner>().setA(4);
  EXPECT_THROW(msg.build<Inner>(), InvalidArgument);
  capnp::SegmentArrayMessageReader r(msg.segmentsForSend());
  EXPECT_EQ(r.getRoot<Inner>().getA(), 4u);
  msg.markSent();
}

TEST(WireMessage, AnUntouchedMessageIsSentWithANullRoot) {
  HeapSource source;
  OutgoingMessage msg;
  source.open(msg, 8);
  auto segs = msg.segmentsForSend();
  ASSERT_EQ(segs.size(), 1u);
  ASSERT_EQ(segs[0].size(), 1u);
  EXPECT_EQ(wire::_::load(segs[0].begin()), 0u);
  msg.markSent();
}

TEST(WireMessage, ReadAndBuildThroughALoopbackConnection) {
  auto [a, b] = makeLoopbackPair();
  const std::string big(3000, 'z');
  {
    OutgoingMessage out;
    ASSERT_EQ(a->startMessage(out, 16, kNoDeadline), Status::kOk);
    auto root = out.build<AllTypes>();
    fillAll(root);
    // referenceData with zcrpc's builder: the data is gathered into the ring at send().
    out.referenceData(root, "dataField",
                      capnp::Data::Reader(reinterpret_cast<const kj::byte*>(big.data()), big.size()));
    EXPECT_THROW(out.referenceData(root, "textField", bytesOf("x")), InvalidArgument)
        << "not a Data field";
    ASSERT_EQ(a->send(out), Status::kOk);
  }
  IncomingMessage in;
  ASSERT_EQ(b->receive(in, deadlineAfter(5s)), Status::kOk);
  auto r = in.read<AllTypes>();
  EXPECT_EQ(r.getDataField().size(), big.size());
  EXPECT_EQ(r.getDataField()[2999], 'z');
  EXPECT_EQ(r.getInt64Field(), -64000000000ll);
  auto capnpView = in.getRoot<AllTypes>();
  EXPECT_EQ(capnpView.getDataField().size(), big.size());
  IncomingMessage moved = std::move(in);
  EXPECT_EQ(moved.read<AllTypes>().getUint16List()[0], 65535);
  EXPECT_THROW(in.read<AllTypes>(), InvalidArgument) << "moved from";
}

// ------------------------------------------------------------------------------------
// The generated stubs use the accessors

class WireImpl final : public WireService {
 public:
  void roundTrip(RoundTripCall& call) override {
    static_assert(std::is_same_v<decltype(call.params()), wire::Reader<Wire::RoundTripParams>>);
    static_assert(std::is_same_v<decltype(call.results()), wire::Builder<Wire::RoundTripResults>>);
    auto p = call.params();
    auto r = call.results();
    r.setAll(p.getAll());  // a deep copy out of the request, into the response
    r.setDefaults(p.getDefaults());
    r.getAll().setInt8Field(static_cast<int8_t>(p.getAll().getInt8Field() + 1));
  }
  void lists(ListsCall& call) override {
    auto texts = call.params().getA().getL6();
    auto out = call.results().initC().initL0(texts.size());
    for (uint32_t i = 0; i < texts.size(); ++i) out.set(i, texts[i]);
  }
  void nest(NestCall& call) override {
    int depth = 0;
    for (auto n = call.params(); n.hasChild(); n = n.getChild()) ++depth;
    call.results().setValue(static_cast<uint8_t>(depth));
  }
  void empty(EmptyCall&) override {}
  void any(AnyCall& call) override {
    // Params reach an AnyPointer: capnpc-c++'s reader; results are zcrpc's builder.
    static_assert(std::is_same_v<decltype(call.params()), Wire::AnyParams::Reader>);
    call.results().setN(static_cast<uint8_t>(call.params().getR().getN() * 2));
  }
};

TEST(WireStubs, CallsReadAndBuildWithTheGeneratedAccessors) {
  WireImpl impl;
  Server server;
  server.addService(impl);
  auto [client, serverEnd] = makeLoopbackPair();
  server.addConnection(std::move(serverEnd));
  server.start();
  {
    Channel channel(std::move(client));
    WireClient stub(channel);
    auto req = stub.roundTripRequest();
    static_assert(std::is_same_v<decltype(req.params()), wire::Builder<Wire::RoundTripParams>>);
    fillAll(req.params().initAll());
    req.params().initDefaults().setInt8Field(1);
    auto resp = req.call();
    auto all = resp.results().getAll();
    EXPECT_EQ(all.getInt8Field(), -7);
    EXPECT_EQ(std::string(all.getStructList()[0].getTextField().cStr()), "text field");
    EXPECT_EQ(resp.results().getDefaults().getInt8Field(), 1);
    EXPECT_EQ(resp.results().getDefaults().getInt16Field(), -12345);
    // Cap'n Proto's reader of the same response.
    EXPECT_EQ(resp.resultsCapnp().getAll().getInt16Field(), -1600);

    auto lreq = stub.listsRequest();
    lreq.paramsCapnp().initA().setL6({"abc"});  // Cap'n Proto's builder for the params
    auto lresp = lreq.call();
    EXPECT_EQ(std::string(lresp.results().getC().getL0()[0].cStr()), "abc");

    auto nreq = stub.nestRequest();
    auto n = nreq.params();
    for (int i = 0; i < 10; ++i) n = n.initChild();
    EXPECT_EQ(nreq.call().results().getValue(), 10);

    auto areq = stub.anyRequest();
    areq.params().initR().setN(21);
    EXPECT_EQ(areq.call().results().getN(), 42);

    auto ereq = stub.emptyRequest();
    ereq.call();
  }
  server.shutdown();
}

}  // namespace
}  // namespace zcrpc::wiretest
