// Differential checks of zcrpc's generated wire accessors against libcapnp, shared by the
// unit tests (wire_test.cc) and the fuzzer (tests/fuzz/wire_fuzz.cc):
//
//   * compareAll(): reads one message through every struct of wire_test.capnp with libcapnp's
//     readers and zcrpc's, getter by getter in the same order, and records every getter where
//     the two disagree: one threw and the other did not, or both returned values that differ.
//     Both readers get the same traversal and nesting limits, so they run out at the same read.
//   * HeapMessage: zcrpc's builder over heap segments (what a transport does with its memory).
//   * applyOps(): one program of builder operations, run on libcapnp's builder and on zcrpc's
//     alike (the same method names), so the two messages can be compared.
//   * structPtr() ... allTypesWith(): words of hand-made (mostly malformed) messages, for the
//     unit tests and the fuzzer's seeds (tests/fuzz/make_wire_corpus.cc).
#pragma once

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cmath>
#include <limits>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "wire_test.capnp.zcrpc.h"
#include "zcrpc/error.h"
#include "zcrpc/wire.h"

namespace zcrpc::wiretest {

/// Where a getter is, rendered only when it is reported: "AllTypes.StructList[2].TextField".
struct Path {
  const Path* parent = nullptr;
  const char* name = nullptr;  ///< null: an element, at `index`
  uint64_t index = 0;
  std::string str() const {
    std::string head = parent ? parent->str() : std::string();
    if (name) return head.empty() ? name : head + "." + name;
    return head + "[" + std::to_string(index) + "]";
  }
};

/// What a comparison found.
struct Comparison {
  std::vector<std::string> mismatches;
  uint64_t reads = 0;       ///< getters compared
  uint64_t bothThrew = 0;   ///< of those, where both refused the data
  int depth = 0;            ///< structs and lists entered
  int emptyDepth = 0;       ///< of those, structs empty on both sides (null pointers)
  void fail(const Path& path, const std::string& what) {
    if (mismatches.size() < 20) mismatches.push_back(path.str() + ": " + what);
  }
  bool ok() const { return mismatches.empty(); }
  std::string report() const {
    std::string out;
    for (const std::string& m : mismatches) out += m + "\n";
    return out;
  }
};

// ------------------------------------------------------------------------------------
// Values

template <typename A, typename B>
void compareValue(Comparison& c, const Path& path, const A& a, const B& b);

template <typename T>
std::string show(const T& v) {
  if constexpr (std::is_enum_v<T>)
    return std::to_string(static_cast<uint16_t>(v));
  else if constexpr (std::is_arithmetic_v<T>)
    return std::to_string(v);
  else
    return "?";
}

/// Runs libcapnp's getter `fa` and zcrpc's `fb` and checks that they agree.
template <typename FA, typename FB>
void step(Comparison& c, const Path& path, FA fa, FB fb) {
  ++c.reads;
  std::optional<decltype(fa())> va;
  std::optional<decltype(fb())> vb;
  std::string whyA, whyB;
  try {
    va.emplace(fa());
  } catch (const kj::Exception& e) {
    whyA = e.getDescription().cStr();
  }
  try {
    vb.emplace(fb());
  } catch (const zcrpc::Error& e) {
    whyB = e.what();
  }
  if (va.has_value() != vb.has_value()) {
    c.fail(path, va ? "only zcrpc refused it (" + whyB + ")" : "only libcapnp refused it (" + whyA + ")");
    return;
  }
  if (!va) {
    ++c.bothThrew;
    return;
  }
  // A null struct reads as an empty one whose struct fields are empty again: a few levels
  // of those compare every default; deeper ones would only repeat them forever.
  int empty = 0;
  if constexpr (requires { vb->_wire().pointerCount(); }) {
    const capnp::AnyStruct::Reader any(*va);
    if (any.getDataSection().size() == 0 && any.getPointerSection().size() == 0 &&
        vb->_wire().dataBits() == 0 && vb->_wire().pointerCount() == 0)
      empty = 1;
  }
  if (c.emptyDepth + empty > 3 || c.depth > 400 || c.reads > 200'000) return;
  c.emptyDepth += empty;
  ++c.depth;
  compareValue(c, path, *va, *vb);
  --c.depth;
  c.emptyDepth -= empty;
}

inline void compareValue(Comparison&, const Path&, capnp::Void, capnp::Void) {}

inline void compareValue(Comparison& c, const Path& path, capnp::Text::Reader a,
                         capnp::Text::Reader b) {
  if (a.size() != b.size() || std::memcmp(a.begin(), b.begin(), a.size()) != 0)
    c.fail(path, "text differs");
}

inline void compareValue(Comparison& c, const Path& path, capnp::Data::Reader a,
                         capnp::Data::Reader b) {
  if (a.size() != b.size() || (a.size() && std::memcmp(a.begin(), b.begin(), a.size()) != 0))
    c.fail(path, "data differs (" + std::to_string(a.size()) + " vs " + std::to_string(b.size()) +
                     " bytes)");
}

template <typename A, typename B>
void compareList(Comparison& c, const Path& path, const A& a, const B& b) {
  if (a.size() != b.size()) {
    c.fail(path, "list sizes differ: " + std::to_string(a.size()) + " vs " + std::to_string(b.size()));
    return;
  }
  // Lists of void or empty structs can claim millions of elements for no bytes; a few suffice.
  const uint32_t n = std::min<uint32_t>(a.size(), 512);
  for (uint32_t i = 0; i < n; ++i)
    step(c, Path{&path, nullptr, i}, [&] { return a[i]; }, [&] { return b[i]; });
}

// Struct comparisons, declared here, defined per type below.
#define ZCRPC_WIRETEST_STRUCT(T)                                                              \
  void compareValue(Comparison& c, const Path& path, const T::Reader& a,               \
                    const ::zcrpc::wire::Reader<T>& b);
ZCRPC_WIRETEST_STRUCT(Inner)
ZCRPC_WIRETEST_STRUCT(AllTypes)
ZCRPC_WIRETEST_STRUCT(AllTypes::Choice)
ZCRPC_WIRETEST_STRUCT(AllTypes::Choice::Pair)
ZCRPC_WIRETEST_STRUCT(AllTypes::Point)
ZCRPC_WIRETEST_STRUCT(AllTypes::Point::Kind)
ZCRPC_WIRETEST_STRUCT(Defaults)
ZCRPC_WIRETEST_STRUCT(Defaults::Choice)
ZCRPC_WIRETEST_STRUCT(ListsA)
ZCRPC_WIRETEST_STRUCT(ListsB)
ZCRPC_WIRETEST_STRUCT(ListsC)
ZCRPC_WIRETEST_STRUCT(Small)
ZCRPC_WIRETEST_STRUCT(Large)
ZCRPC_WIRETEST_STRUCT(Nest)
#undef ZCRPC_WIRETEST_STRUCT

template <typename A, typename B>
void compareValue(Comparison& c, const Path& path, const A& a, const B& b) {
  if constexpr (std::is_floating_point_v<A>) {
    if (std::memcmp(&a, &b, sizeof a) != 0 && !(std::isnan(a) && std::isnan(b)))
      c.fail(path, show(a) + " vs " + show(b));
  } else if constexpr (std::is_arithmetic_v<A> || std::is_enum_v<A>) {
    if (a != b) c.fail(path, show(a) + " vs " + show(b));
  } else {
    compareList(c, path, a, b);
  }
}

#define FIELD(name) \
  step(c, Path{&path, #name}, [&] { return a.get##name(); }, [&] { return b.get##name(); })
#define HAS(name) \
  step(c, Path{&path, "has" #name}, [&] { return a.has##name(); }, [&] { return b.has##name(); })
#define WHICH() \
  step(c, Path{&path, "which"}, [&] { return a.which(); }, [&] { return b.which(); })

inline void compareValue(Comparison& c, const Path& path, const Inner::Reader& a,
                         const wire::Reader<Inner>& b) {
  FIELD(A); HAS(B); FIELD(B); HAS(C); FIELD(C); HAS(Self); FIELD(Self);
}

inline void compareValue(Comparison& c, const Path& path, const AllTypes::Choice::Pair::Reader& a,
                         const wire::Reader<AllTypes::Choice::Pair>& b) {
  FIELD(Left); HAS(Right); FIELD(Right);
}

inline void compareValue(Comparison& c, const Path& path, const AllTypes::Choice::Reader& a,
                         const wire::Reader<AllTypes::Choice>& b) {
  WHICH();
  // Every member, whichever is set: libcapnp's release builds read them all.
  FIELD(None); FIELD(Number); HAS(Word); FIELD(Word); HAS(Nested); FIELD(Nested); FIELD(Flag);
  HAS(Numbers); FIELD(Numbers); FIELD(Pair);
  step(c, Path{&path, "isPair"}, [&] { return a.isPair(); }, [&] { return b.isPair(); });
}

inline void compareValue(Comparison& c, const Path& path, const AllTypes::Point::Kind::Reader& a,
                         const wire::Reader<AllTypes::Point::Kind>& b) {
  WHICH(); FIELD(Plain); FIELD(Colored); HAS(Tagged); FIELD(Tagged);
}

inline void compareValue(Comparison& c, const Path& path, const AllTypes::Point::Reader& a,
                         const wire::Reader<AllTypes::Point>& b) {
  FIELD(X); FIELD(Y); HAS(Label); FIELD(Label); FIELD(Kind);
}

inline void compareValue(Comparison& c, const Path& path, const AllTypes::Reader& a,
                         const wire::Reader<AllTypes>& b) {
  FIELD(VoidField); FIELD(BoolField); FIELD(Int8Field); FIELD(Int16Field); FIELD(Int32Field);
  FIELD(Int64Field); FIELD(Uint8Field); FIELD(Uint16Field); FIELD(Uint32Field);
  FIELD(Uint64Field); FIELD(Float32Field); FIELD(Float64Field);
  HAS(TextField); FIELD(TextField); HAS(DataField); FIELD(DataField);
  HAS(StructField); FIELD(StructField); FIELD(EnumField); HAS(InnerField); FIELD(InnerField);
  FIELD(VoidList); FIELD(BoolList); FIELD(Int8List); FIELD(Int16List); FIELD(Int32List);
  FIELD(Int64List); FIELD(Uint8List); FIELD(Uint16List); FIELD(Uint32List); FIELD(Uint64List);
  FIELD(Float32List); FIELD(Float64List); FIELD(TextList); FIELD(DataList); FIELD(StructList);
  FIELD(EnumList); FIELD(InnerList); FIELD(ListList); FIELD(TextListList); FIELD(StructListList);
  FIELD(Choice); FIELD(Point); FIELD(Delete); FIELD(Which); HAS(Reader); FIELD(Reader);
}

inline void compareValue(Comparison& c, const Path& path, const Defaults::Choice::Reader& a,
                         const wire::Reader<Defaults::Choice>& b) {
  WHICH(); FIELD(First); FIELD(Second);
}

inline void compareValue(Comparison& c, const Path& path, const Defaults::Reader& a,
                         const wire::Reader<Defaults>& b) {
  FIELD(BoolField); FIELD(Int8Field); FIELD(Int16Field); FIELD(Int32Field); FIELD(Int64Field);
  FIELD(Uint8Field); FIELD(Uint16Field); FIELD(Uint32Field); FIELD(Uint64Field);
  FIELD(Float32Field); FIELD(Float64Field); FIELD(TextField); FIELD(DataField);
  FIELD(StructField); FIELD(EnumField); FIELD(BoolList); FIELD(Int32List); FIELD(Float64List);
  FIELD(TextList); FIELD(DataList); FIELD(StructList); FIELD(EnumList); FIELD(ListList);
  FIELD(NanField); FIELD(InfField); FIELD(ZeroBool); FIELD(Choice); FIELD(EmptyText);
  FIELD(EmptyStruct);
}

#define ZCRPC_LISTS_FIELDS FIELD(L0); FIELD(L1); FIELD(L2); FIELD(L3); FIELD(L4); FIELD(L5); FIELD(L6); FIELD(L7)
inline void compareValue(Comparison& c, const Path& path, const ListsA::Reader& a,
                         const wire::Reader<ListsA>& b) {
  ZCRPC_LISTS_FIELDS;
}
inline void compareValue(Comparison& c, const Path& path, const ListsB::Reader& a,
                         const wire::Reader<ListsB>& b) {
  ZCRPC_LISTS_FIELDS;
}
inline void compareValue(Comparison& c, const Path& path, const ListsC::Reader& a,
                         const wire::Reader<ListsC>& b) {
  ZCRPC_LISTS_FIELDS;
}
#undef ZCRPC_LISTS_FIELDS

inline void compareValue(Comparison& c, const Path& path, const Small::Reader& a,
                         const wire::Reader<Small>& b) {
  FIELD(A);
}

inline void compareValue(Comparison& c, const Path& path, const Large::Reader& a,
                         const wire::Reader<Large>& b) {
  FIELD(A); FIELD(B); FIELD(C); HAS(D); FIELD(D); FIELD(E);
}

inline void compareValue(Comparison& c, const Path& path, const Nest::Reader& a,
                         const wire::Reader<Nest>& b) {
  HAS(Child); FIELD(Child); FIELD(Children); FIELD(Value);
}

#undef FIELD
#undef HAS
#undef WHICH

/// Limits both readers get.
struct Limits {
  uint64_t traversalWords = 8 * 1024 * 1024;
  int nestingLimit = 64;
};

/// Reads `segments` as the root struct T with both readers (each fresh) and compares.
template <typename T>
void compareRoot(Comparison& c, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                 const Limits& limits, const char* name) {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = limits.traversalWords;
  options.nestingLimit = limits.nestingLimit;
  capnp::SegmentArrayMessageReader capnpReader(segments, options);
  wire::ReadContext ctx;
  ctx.reset(segments.begin(), static_cast<uint32_t>(segments.size()), limits.traversalWords,
            limits.nestingLimit);
  step(c, Path{nullptr, name}, [&] { return capnpReader.getRoot<T>(); },
       [&] { return wire::Reader<T>(ctx.root()); });
}

/// The message read as every struct of wire_test.capnp, each with fresh readers.
inline Comparison compareAll(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                             const Limits& limits = {}) {
  Comparison c;
  compareRoot<AllTypes>(c, segments, limits, "AllTypes");
  compareRoot<Defaults>(c, segments, limits, "Defaults");
  compareRoot<ListsA>(c, segments, limits, "ListsA");
  compareRoot<ListsB>(c, segments, limits, "ListsB");
  compareRoot<ListsC>(c, segments, limits, "ListsC");
  compareRoot<Small>(c, segments, limits, "Small");
  compareRoot<Large>(c, segments, limits, "Large");
  compareRoot<Nest>(c, segments, limits, "Nest");
  compareRoot<Inner>(c, segments, limits, "Inner");
  return c;
}

// ------------------------------------------------------------------------------------
// Building

/// zcrpc's builder over heap segments: the first `firstWords` words, then each further
/// segment as large as asked, at least `nextWords` and half of all before it (so that small
/// segments give many far pointers and 32 segments still hold any message).
class HeapMessage final : private wire::BuildArena::Source {
 public:
  explicit HeapMessage(uint32_t firstWords = 1024, uint32_t nextWords = 0) : next_(nextWords) {
    arena_.reset(*this, take(firstWords));
  }
  HeapMessage(const HeapMessage&) = delete;
  HeapMessage& operator=(const HeapMessage&) = delete;

  template <typename T>
  wire::Builder<T> getRoot() {
    using W = typename wire::Accessors<T>::Wire;
    return wire::Builder<T>(arena_.rootSlot().getStruct(W::kDataWords, W::kPointers, nullptr));
  }
  template <typename T>
  wire::Builder<T> initRoot() {
    using W = typename wire::Accessors<T>::Wire;
    return wire::Builder<T>(arena_.rootSlot().initStruct(W::kDataWords, W::kPointers));
  }
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments() {
    arena_.rootSlot();
    return arena_.segmentsForOutput();
  }

 private:
  kj::ArrayPtr<capnp::word> newSegment(uint32_t minWords) override {
    return take(std::max({minWords, next_, static_cast<uint32_t>(total_ / 2)}));
  }
  kj::ArrayPtr<capnp::word> take(uint32_t words) {
    total_ += words;
    chunks_.push_back(std::vector<uint64_t>(words));  // zeroed
    return kj::ArrayPtr<capnp::word>(reinterpret_cast<capnp::word*>(chunks_.back().data()), words);
  }

  uint32_t next_;
  uint64_t total_ = 0;
  std::vector<std::vector<uint64_t>> chunks_;
  wire::BuildArena arena_;
};

inline capnp::Data::Reader bytesOf(const char* s) {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(s), std::strlen(s));
}

/// Sets every field of AllTypes (and of what it reaches) through `b`, libcapnp's builder or
/// zcrpc's: the same calls compile against both.
template <typename B>
inline void fillAll(B b, int depth = 0) {
  b.setVoidField();
  b.setBoolField(true);
  b.setInt8Field(-8);
  b.setInt16Field(-1600);
  b.setInt32Field(-320000);
  b.setInt64Field(-64000000000ll);
  b.setUint8Field(200);
  b.setUint16Field(60000);
  b.setUint32Field(4000000000u);
  b.setUint64Field(18000000000000000000ull);
  b.setFloat32Field(3.25f);
  b.setFloat64Field(-2.5e300);
  b.setTextField("text field");
  b.setDataField(bytesOf("\x01\x02\x03 data"));
  if (depth < 2) fillAll(b.initStructField(), depth + 1);
  b.setEnumField(Color::BLUE);
  auto inner = b.initInnerField();
  inner.setA(77);
  inner.setB("inner");
  inner.setC({-1, 2, -3});
  inner.initSelf().setA(78);
  b.initVoidList(5);
  auto bools = b.initBoolList(11);
  for (uint32_t i = 0; i < bools.size(); i += 2) bools.set(i, true);
  b.setInt8List({-1, 2, -3});
  b.setInt16List({-300, 400});
  b.setInt32List({1, -2, 3, -4, 5});
  b.setInt64List({int64_t{1} << 40, -7});
  b.setUint8List({1, 255});
  b.setUint16List({65535, 0, 1});
  b.setUint32List({7});
  b.setUint64List({~0ull, 1});
  b.setFloat32List({1.5f, -0.0f, std::numeric_limits<float>::infinity()});
  b.setFloat64List({std::nan(""), 2.0});
  b.setTextList({"one", "", "three"});
  b.setDataList({bytesOf("ab"), bytesOf(""), bytesOf("cde")});
  if (depth < 1) {
    auto structs = b.initStructList(2);
    fillAll(structs[0], depth + 2);
    structs[1].setInt32Field(99);
  }
  b.setEnumList({Color::RED, Color::DELETE, Color::GREEN});
  auto inners = b.initInnerList(3);
  for (uint32_t i = 0; i < inners.size(); ++i) {
    inners[i].setA(i);
    inners[i].setB("element");
  }
  auto lists = b.initListList(3);
  auto first = lists.init(0, 3);
  for (uint32_t i = 0; i < 3; ++i) first.set(i, static_cast<int32_t>(i + 1));
  lists.init(2, 1).set(0, 42);
  auto textLists = b.initTextListList(2);
  textLists.init(0, 2).set(1, "nested text");
  auto structLists = b.initStructListList(1);
  structLists.init(0, 2)[1].setA(5);
  auto pair = b.getChoice().initPair();
  pair.setLeft(-12);
  pair.setRight("right");
  auto point = b.getPoint();
  point.setX(1.0);
  point.setY(-1.0);
  point.setLabel("label");
  point.getKind().setColored(Color::GREEN);
  b.setDelete(1234);
  b.setWhich(4321);
  b.setReader("named reader");
}

/// Reads a builder program from fuzz input (or a test's bytes).
class OpReader {
 public:
  explicit OpReader(kj::ArrayPtr<const kj::byte> bytes) : bytes_(bytes) {}
  bool done() const { return at_ >= bytes_.size(); }
  uint8_t u8() { return at_ < bytes_.size() ? bytes_[at_++] : 0; }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t{u8()} << (8 * i);
    return v;
  }
  uint32_t small(uint32_t max) { return u8() % (max + 1); }
  std::string text() {
    const uint32_t n = small(24);
    std::string s;
    for (uint32_t i = 0; i < n; ++i) s += static_cast<char>('a' + u8() % 26);
    return s;
  }

 private:
  kj::ArrayPtr<const kj::byte> bytes_;
  size_t at_ = 0;
};

template <typename T>
T bitsAs(uint64_t v) {
  T out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

/// Runs one builder program on `b` (an AllTypes builder, libcapnp's or zcrpc's): each op
/// sets, initialises or reads one field, possibly of a nested struct or list element. Both
/// builders given the same bytes must build messages libcapnp reads as equal.
template <typename B>
void applyOps(B root, OpReader& ops, int depth = 0) {
  for (int n = 0; n < 48 && !ops.done(); ++n) {
    B b = root;
    const uint8_t op = ops.u8();
    const uint64_t v = ops.u64();
    switch (op % 40) {
      case 0: b.setBoolField(v & 1); break;
      case 1: b.setInt8Field(static_cast<int8_t>(v)); break;
      case 2: b.setInt16Field(static_cast<int16_t>(v)); break;
      case 3: b.setInt32Field(static_cast<int32_t>(v)); break;
      case 4: b.setInt64Field(static_cast<int64_t>(v)); break;
      case 5: b.setUint8Field(static_cast<uint8_t>(v)); break;
      case 6: b.setUint16Field(static_cast<uint16_t>(v)); break;
      case 7: b.setUint32Field(static_cast<uint32_t>(v)); break;
      case 8: b.setUint64Field(v); break;
      case 9: b.setFloat32Field(bitsAs<float>(v)); break;
      case 10: b.setFloat64Field(bitsAs<double>(v)); break;
      case 11: b.setTextField(ops.text()); break;
      case 12: {
        const std::string s = ops.text();
        b.setDataField(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(s.data()), s.size()));
        break;
      }
      case 13: b.setEnumField(static_cast<Color>(v % 5)); break;
      case 14: {
        auto l = b.initInt32List(static_cast<unsigned>(v % 9));
        for (uint32_t i = 0; i < l.size(); ++i) l.set(i, static_cast<int32_t>(ops.u8() * 1000003));
        break;
      }
      case 15: {
        auto l = b.initBoolList(static_cast<unsigned>(v % 70));
        for (uint32_t i = 0; i < l.size(); i += 3) l.set(i, true);
        break;
      }
      case 16: {
        auto l = b.initTextList(static_cast<unsigned>(v % 5));
        for (uint32_t i = 0; i < l.size(); ++i) l.set(i, ops.text());
        break;
      }
      case 17: {
        auto l = b.initDataList(static_cast<unsigned>(v % 4));
        for (uint32_t i = 0; i < l.size(); ++i) {
          auto data = l.init(i, ops.small(17));
          if (data.size() != 0) data[0] = ops.u8();
        }
        break;
      }
      case 18:
        if (depth < 3) {
          auto inner = b.initStructField();
          applyOps(inner, ops, depth + 1);
        }
        break;
      case 19:
        if (depth < 3) {
          auto inner = b.getStructField();  // existing, or new
          applyOps(inner, ops, depth + 1);
        }
        break;
      case 20: {
        auto l = b.initInnerList(static_cast<unsigned>(v % 5));
        for (uint32_t i = 0; i < l.size(); ++i) {
          l[i].setA(ops.u8());
          if (ops.u8() & 1) l[i].setB(ops.text());
          if (ops.u8() & 1) l[i].initSelf().setA(7);
        }
        break;
      }
      case 21:
        if (depth < 3) {
          auto l = b.initStructList(static_cast<unsigned>(v % 3));
          for (uint32_t i = 0; i < l.size(); ++i) applyOps(l[i], ops, depth + 1);
        }
        break;
      case 22: {
        auto l = b.initListList(static_cast<unsigned>(v % 4));
        for (uint32_t i = 0; i < l.size(); ++i) {
          auto inner = l.init(i, ops.small(5));
          for (uint32_t j = 0; j < inner.size(); ++j) inner.set(j, ops.u8() - 100);
        }
        break;
      }
      case 23: b.getChoice().setNumber(static_cast<int64_t>(v)); break;
      case 24: b.getChoice().setWord(ops.text()); break;
      case 25: b.getChoice().initNested().setA(static_cast<uint32_t>(v)); break;
      case 26: {
        auto pair = b.getChoice().initPair();
        pair.setLeft(static_cast<int32_t>(v));
        pair.setRight(ops.text());
        break;
      }
      case 27: b.getChoice().setNumbers({static_cast<uint16_t>(v), 2, 3}); break;
      case 28: {
        auto p = b.initPoint();
        p.setX(bitsAs<double>(v));
        p.setLabel(ops.text());
        if (ops.u8() & 1) p.getKind().setColored(Color::GREEN);
        else p.getKind().setTagged(capnp::Data::Reader(reinterpret_cast<const kj::byte*>("tag"), 3));
        break;
      }
      case 29: b.getPoint().setY(bitsAs<double>(v)); break;
      case 30: b.setInt32List({static_cast<int32_t>(v), -1, 0}); break;
      case 31: b.setTextField(b.getTextField()); break;  // copy onto itself (re-allocates)
      case 32: {
        auto inner = b.getInnerField();  // init on get
        inner.setA(static_cast<uint32_t>(v));
        inner.setC({1, static_cast<int16_t>(v), 3});
        break;
      }
      case 33:
        // Copy a struct of this message into another field (a deep copy, both builders).
        if (b.hasInnerField()) b.getChoice().setNested(b.getInnerField().asReader());
        break;
      case 34:
        if (b.hasInt32List()) b.setUint32List({1, 2});
        break;
      case 35: b.setDelete(static_cast<uint32_t>(v)); break;
      case 36: b.setWhich(static_cast<uint16_t>(v)); break;
      case 37: b.setReader(ops.text()); break;
      case 38: {
        auto l = b.initVoidList(static_cast<unsigned>(v % 1000));
        (void)l;
        break;
      }
      case 39:
        if (b.hasStructList() && b.getStructList().size() > 0)
          b.setStructField(b.getStructList()[0].asReader());
        break;
    }
  }
}

// ------------------------------------------------------------------------------------
// Crafted messages

/// Pointer words as encoding.html lays them out (offsets in words after the pointer).
inline uint64_t structPtr(int32_t offset, uint16_t dataWords, uint16_t pointers) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(offset) << 2)) |
         (uint64_t{dataWords} << 32) | (uint64_t{pointers} << 48);
}
inline uint64_t listPtr(int32_t offset, uint8_t elementSize, uint32_t count) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(offset) << 2) | 1) |
         (uint64_t{elementSize} << 32) | (uint64_t{count} << 35);
}
inline uint64_t farPtr(bool isDouble, uint32_t padOffset, uint32_t segment) {
  return (uint64_t{padOffset} << 3) | (isDouble ? 4 : 0) | 2 | (uint64_t{segment} << 32);
}

/// The pointer slot of AllTypes' pointer field `field`, from the schema (so that a crafted
/// pointer lands in the field its test names, whatever the schema's order).
inline uint32_t slotOf(const char* field) {
  return capnp::Schema::from<AllTypes>().getFieldByName(field).getProto().getSlot().getOffset();
}
/// The offset a near pointer in `field` needs to reach the first word after the AllTypes
/// root struct of allTypesWith() (where its `pointee` starts).
inline int32_t toEnd(const char* field) {
  return static_cast<int32_t>(wire::Accessors<AllTypes>::Wire::kPointers - 1 - slotOf(field));
}
/// One segment: a root pointer to an AllTypes struct right after it, whose pointer field
/// `field` holds `pointer`, then `pointee`.
inline std::vector<uint64_t> allTypesWith(const char* field, uint64_t pointer,
                                          const std::vector<uint64_t>& pointee = {}) {
  using W = wire::Accessors<AllTypes>::Wire;
  std::vector<uint64_t> words(1 + W::kDataWords + W::kPointers, 0);
  words[0] = structPtr(0, W::kDataWords, W::kPointers);
  words[1 + W::kDataWords + slotOf(field)] = pointer;
  words.insert(words.end(), pointee.begin(), pointee.end());
  return words;
}
/// A struct pointer that, in `field` of allTypesWith()'s root, points back at that root: a
/// cycle only the nesting limit ends.
inline uint64_t pointerToRoot(const char* field) {
  using W = wire::Accessors<AllTypes>::Wire;
  return structPtr(-static_cast<int32_t>(W::kDataWords + slotOf(field) + 1), W::kDataWords,
                   W::kPointers);
}

}  // namespace zcrpc::wiretest
