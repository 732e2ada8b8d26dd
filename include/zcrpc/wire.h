// zcrpc — the Cap'n Proto wire format read and written in place: the runtime of the
// accessors capnpc-zcrpc generates (docs/codegen.md, "Generated accessors").
//
// Readers work on the segments of a received message as they lie in transport memory and
// check every read: each pointer followed is bounds-checked against its segment, its kind and
// element size are checked against the schema's (with Cap'n Proto's list upgrade rules), far
// and double-far pointers are followed through the message's segment table, and every object
// reached is charged to the message's traversal budget and nesting limit (ReaderLimits).
// Malformed data throws zcrpc::InvalidArgument where libcapnp throws kj::Exception, and reads
// the same values everywhere else: tests/wire/ checks that against libcapnp
// (differential tests and a fuzzer).
//
// Builders write a message straight into the memory a transport reserved for it, with no
// per-message arena object: the first segment is the one OutgoingMessage was opened with, and
// further ones come from the transport as libcapnp would ask for them, joined by far pointers.
//
// The encoding: https://capnproto.org/encoding.html. Nothing here is copied from libcapnp;
// its public behaviour is the reference.
#pragma once

#include <capnp/blob.h>
#include <capnp/common.h>
#include <kj/common.h>

#include <compare>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

namespace zcrpc::wire {

using Word = capnp::word;

/// Most segments one message may have: the frame's segment table (frame.h kMaxSegments).
inline constexpr uint32_t kMaxSegments = 32;

/// Which type a pointer field holds: generated code chooses the element size it expects.
enum class ElementSize : uint8_t {
  kVoid = 0,
  kBit = 1,
  kByte = 2,
  kTwoBytes = 3,
  kFourBytes = 4,
  kEightBytes = 5,
  kPointer = 6,
  kInlineComposite = 7,
};

/// A default value of a pointer field: a single-segment message whose first word is the
/// root pointer to the value (generated code keeps one per field that has a default).
struct DefaultValue {
  const uint64_t* words;
  uint32_t size;  ///< in words

  const Word* begin() const noexcept { return reinterpret_cast<const Word*>(words); }
  const Word* end() const noexcept { return begin() + size; }
};

class ReadContext;
class BuildArena;

/// What one capability pointer of a message stands for. The RPC layer derives its own
/// (zcrpc/capability.h wraps them as zcrpc::Capability); opaque at this level except for
/// the tag that tells the RPC layer's kinds apart without RTTI on the call path.
class CapabilityHook {
 public:
  enum class Kind : uint8_t {
    kOther,   ///< none of the RPC layer's own
    kLocal,   ///< an object this process serves
    kImport,  ///< an object the peer of a connection serves
  };
  virtual ~CapabilityHook() = default;
  Kind hookKind() const noexcept { return kind_; }

 protected:
  explicit CapabilityHook(Kind kind = Kind::kOther) noexcept : kind_(kind) {}

 private:
  Kind kind_;
};
/// The capabilities a message's capability pointers index, in order (a null entry: a null
/// capability). Received messages hold theirs (IncomingMessage::capTable()); messages being
/// built collect theirs as capabilities are set (OutgoingMessage::capTable()).
using CapTable = std::vector<std::shared_ptr<CapabilityHook>>;
class StructReader;
class ListReader;
class StructBuilder;
class ListBuilder;

// ------------------------------------------------------------------------------------
// Inline implementation details start here.
namespace _ {  // private

[[noreturn]] void fail(const char* what);
[[noreturn]] void failIndex(uint32_t index, uint32_t size);
[[noreturn]] void failTooLarge(const char* what, uint64_t size);

inline uint64_t load(const void* p) noexcept {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(void* p, uint64_t v) noexcept { std::memcpy(p, &v, sizeof v); }

// Pointer words (encoding.html, "Pointers"): bits 0-1 kind, 2-31 offset (signed, words
// after the pointer), 32-63 the kind's own fields.
inline constexpr uint32_t kStruct = 0, kList = 1, kFar = 2, kOther = 3;
inline uint32_t kindOf(uint64_t w) noexcept { return static_cast<uint32_t>(w) & 3; }
inline int64_t offsetOf(uint64_t w) noexcept {
  return static_cast<int32_t>(static_cast<uint32_t>(w)) >> 2;
}
inline uint32_t structDataWords(uint64_t w) noexcept { return static_cast<uint16_t>(w >> 32); }
inline uint32_t structPointers(uint64_t w) noexcept { return static_cast<uint16_t>(w >> 48); }
inline uint32_t listElementSize(uint64_t w) noexcept { return static_cast<uint32_t>(w >> 32) & 7; }
inline uint32_t listCount(uint64_t w) noexcept { return static_cast<uint32_t>(w >> 35); }
/// The element count an inline-composite list's tag word holds in its offset field: 29
/// bits, as libcapnp reads it (the offset field's top bit is ignored).
inline uint32_t tagCount(uint64_t w) noexcept {
  return (static_cast<uint32_t>(w) >> 2) & ((uint32_t{1} << 29) - 1);
}
inline bool isCapability(uint64_t w) noexcept { return static_cast<uint32_t>(w) == kOther; }

inline constexpr uint32_t kDataBits[8] = {0, 1, 8, 16, 32, 64, 0, 0};
inline constexpr uint32_t kPointersPer[8] = {0, 0, 0, 0, 0, 0, 1, 0};
inline constexpr uint32_t kMaxListCount = (uint32_t{1} << 29) - 1;

/// A pointer word pointing `offset` words past itself.
inline uint64_t nearPointer(int64_t offset, uint32_t kind, uint32_t upper) noexcept {
  return (static_cast<uint64_t>(static_cast<uint32_t>(offset) << 2) | kind) |
         (static_cast<uint64_t>(upper) << 32);
}
inline uint32_t structUpper(uint32_t dataWords, uint32_t pointers) noexcept {
  return dataWords | (pointers << 16);
}
inline uint32_t listUpper(ElementSize size, uint32_t count) noexcept {
  return static_cast<uint32_t>(size) | (count << 3);
}

/// Where `offset` words after `from` lands, or the segment's end when that lies outside
/// [begin, end]: libcapnp does the same (SegmentReader::checkOffset), so an empty object at
/// a wild offset reads as empty and a non-empty one fails the bounds check.
inline const Word* clampTarget(const Word* from, int64_t offset, const Word* begin,
                               const Word* end) noexcept {
  const int64_t min = begin - from, max = end - from;
  return offset >= min && offset <= max ? from + offset : end;
}

/// What a pointer resolves to after any far pointers: the word describing the object (the
/// pointer itself, or the landing pad's), where the object starts, and its segment.
struct Target {
  uint64_t tag;
  const Word* at;
  const Word* segBegin;
  const Word* segEnd;
};

/// Follows a far or double-far pointer `w` through `ctx`'s segments (charging the landing
/// pad to the budget); throws when it leads outside the message.
Target followFar(ReadContext* ctx, uint64_t w);

/// A pointer slot being read: its word (null when the struct has no such pointer), its
/// segment, and the nesting the object it points to may still use.
struct PointerRef {
  ReadContext* ctx;  ///< null for default values (trusted: no budget, no far pointers)
  const Word* ref;
  const Word* segBegin;
  const Word* segEnd;
  int nesting;

  bool isNull() const noexcept { return ref == nullptr || load(ref) == 0; }
  /// libcapnp's hasX(): a non-null pointer, with any far pointer followed (and checked).
  bool isSet() const {
    const uint64_t w = ref == nullptr ? 0 : load(ref);
    if (w == 0) return false;
    if (kindOf(w) == kStruct || kindOf(w) == kList) [[likely]] return true;
    return isSetSlow(w);
  }
  bool isSetSlow(uint64_t w) const;
  inline Target follow(uint64_t w) const;
  inline StructReader readStruct(const DefaultValue* def) const;
  inline ListReader readList(ElementSize expected, const DefaultValue* def) const;
  inline capnp::Text::Reader readText(const char* def, uint32_t defSize) const;
  inline capnp::Data::Reader readData(const kj::byte* def, uint32_t defSize) const;
  /// The capability table index a capability pointer holds; nullopt for a null pointer.
  std::optional<uint32_t> readCapability() const;
};

/// A pointer slot being written (in our own message: trusted, never bounds-checked).
struct PointerSlot {
  BuildArena* arena;
  uint32_t seg;  ///< segment the slot lies in
  Word* ref;

  inline Word* allocate(uint32_t words, uint32_t kind, uint32_t upper, uint32_t& objectSeg);
  inline StructBuilder initStruct(uint32_t dataWords, uint32_t pointers);
  inline StructBuilder getStruct(uint32_t dataWords, uint32_t pointers, const DefaultValue* def);
  StructBuilder getStructSlow(uint32_t dataWords, uint32_t pointers, const DefaultValue* def);
  void setStruct(const StructReader& value);
  inline ListBuilder initList(ElementSize size, uint32_t count);
  inline ListBuilder initStructList(uint32_t count, uint32_t dataWords, uint32_t pointers);
  inline ListBuilder getList(ElementSize expected, const DefaultValue* def);
  ListBuilder getListSlow(ElementSize expected, const DefaultValue* def);
  inline ListBuilder getStructList(uint32_t dataWords, uint32_t pointers, const DefaultValue* def);
  ListBuilder getStructListSlow(uint32_t dataWords, uint32_t pointers, const DefaultValue* def);
  void setList(const ListReader& value);
  inline capnp::Text::Builder initText(size_t size);
  inline void setText(capnp::Text::Reader value);
  capnp::Text::Builder getText(const char* def, uint32_t defSize);
  inline capnp::Data::Builder initData(size_t size);
  inline void setData(capnp::Data::Reader value);
  capnp::Data::Builder getData(const kj::byte* def, uint32_t defSize);
  void setCapability(uint32_t index);
  /// Zeroes what the slot points to (as libcapnp does before it points the slot elsewhere)
  /// and the slot itself.
  void clear();
  bool isNull() const noexcept { return load(ref) == 0; }
};

/// An interface field, read: the capability its pointer indexes in the message's table
/// (null for a null pointer). Throws when the pointer is not a capability or its index is
/// outside the table (a message that carries none has an empty one).
std::shared_ptr<CapabilityHook> readCapability(const PointerRef& ref);
/// An interface field, written: adds `cap` to the message's table (a null `cap` clears the
/// pointer instead).
void writeCapability(PointerSlot slot, std::shared_ptr<CapabilityHook> cap);
/// An interface field of a message being built, read back.
std::shared_ptr<CapabilityHook> readBuiltCapability(const PointerSlot& slot);

/// Zeroes the object `ref` points to, recursively (libcapnp's zeroObject).
void zeroObject(BuildArena& arena, uint32_t seg, Word* ref);
/// Allocation that did not fit in the slot's own segment: a landing pad and the object in
/// another segment, reached by a far pointer.
Word* allocateFar(BuildArena& arena, Word* ref, uint32_t words, uint32_t kind, uint32_t upper,
                  uint32_t& objectSeg);

template <typename T>
struct MaskOf {
  using Type = T;
};
template <>
struct MaskOf<float> {
  using Type = uint32_t;
};
template <>
struct MaskOf<double> {
  using Type = uint64_t;
};

}  // namespace _

// ------------------------------------------------------------------------------------
// Reading

/// The state every reader of one message shares: its segments, what is left of its traversal
/// budget (words, libcapnp's traversalLimitInWords) and its nesting limit. Lives as long as
/// the message is read (IncomingMessage holds one); readers point to it.
/// Threads: one at a time, like the readers that share it.
class ReadContext final {
 public:
  /// Meaningless until reset(): an IncomingMessage holds one per message, set up only when read.
  ReadContext() noexcept {}
  ReadContext(const ReadContext&) = delete;
  ReadContext& operator=(const ReadContext&) = delete;

  /// Reads the message in `segments` (borrowed: they must outlive every reader), with a
  /// fresh budget.
  void reset(const kj::ArrayPtr<const Word>* segments, uint32_t count, uint64_t traversalLimitWords,
             int nestingLimit) noexcept {
    segments_ = segments;
    segmentCount_ = count;
    budget_ = traversalLimitWords;
    nestingLimit_ = nestingLimit;
    arena_ = nullptr;
    caps_ = nullptr;
  }
  /// The message's capability table (borrowed; null: the message carries none).
  void setCapTable(const CapTable* caps) noexcept { caps_ = caps; }
  const CapTable* capTable() const noexcept { return caps_; }
  /// Reads the message being built in `arena` (Builder::asReader()): no budget.
  void resetForArena(const BuildArena& arena) noexcept {
    segments_ = nullptr;
    segmentCount_ = 0;
    budget_ = UINT64_MAX;
    nestingLimit_ = INT32_MAX;
    arena_ = &arena;
    caps_ = nullptr;
  }

  uint64_t budgetLeft() const noexcept { return budget_; }
  int nestingLimit() const noexcept { return nestingLimit_; }

  /// Counts `words` against the traversal budget; throws once it is spent.
  void charge(uint64_t words) {
    if (words > budget_) [[unlikely]]
      _::fail("the message exceeds its traversal limit (ReaderLimits::traversalLimitWords)");
    budget_ -= words;
  }
  /// Segment `id`, or an empty one when the message has none such.
  inline kj::ArrayPtr<const Word> segment(uint32_t id) const noexcept;

  /// The root struct (libcapnp's MessageReader::getRoot<T>()).
  StructReader root();

 private:
  const kj::ArrayPtr<const Word>* segments_;
  uint32_t segmentCount_;
  int nestingLimit_;
  uint64_t budget_;
  const BuildArena* arena_;
  const CapTable* caps_;
};

/// Untyped view of one struct being read; generated Readers wrap one. Default-constructed,
/// it is an empty struct whose every field reads as its default.
class StructReader {
 public:
  constexpr StructReader() = default;
  StructReader(ReadContext* ctx, const Word* segBegin, const Word* segEnd, const void* data,
               const Word* pointers, uint32_t dataBits, uint32_t pointerCount, int nesting) noexcept
      : ctx_(ctx),
        segBegin_(segBegin),
        segEnd_(segEnd),
        data_(static_cast<const kj::byte*>(data)),
        pointers_(pointers),
        dataBits_(dataBits),
        pointerCount_(pointerCount),
        nesting_(nesting) {}

  /// Field at `offset` (in units of T) of the data section, XOR `mask` (the field's default).
  template <typename T>
  T data(uint32_t offset, typename _::MaskOf<T>::Type mask = 0) const noexcept {
    using M = typename _::MaskOf<T>::Type;
    M bits = 0;
    if ((uint64_t{offset} + 1) * sizeof(T) * 8 <= dataBits_) [[likely]]
      std::memcpy(&bits, data_ + uint64_t{offset} * sizeof(T), sizeof(T));
    bits ^= mask;
    T value;
    std::memcpy(&value, &bits, sizeof(T));
    return value;
  }
  bool bit(uint32_t offset, bool mask = false) const noexcept {
    if (offset < dataBits_) [[likely]]
      return (((data_[offset / 8] >> (offset % 8)) & 1) != 0) != mask;
    return mask;
  }
  _::PointerRef pointer(uint32_t index) const noexcept {
    // A pointer the struct does not have reads as null, with no nesting used up (as libcapnp's
    // default PointerReader): its default value, if any, is read in full.
    if (index >= pointerCount_) [[unlikely]]
      return {ctx_, nullptr, segBegin_, segEnd_, INT32_MAX};
    return {ctx_, pointers_ + index, segBegin_, segEnd_, nesting_};
  }
  /// libcapnp's hasX(): false for a null pointer; a far pointer is followed (and checked).
  bool hasPointer(uint32_t index) const { return pointer(index).isSet(); }

  uint32_t dataBits() const noexcept { return dataBits_; }
  uint32_t pointerCount() const noexcept { return pointerCount_; }
  const kj::byte* dataSection() const noexcept { return data_; }
  const Word* pointerSection() const noexcept { return pointers_; }
  ReadContext* context() const noexcept { return ctx_; }
  const Word* segmentBegin() const noexcept { return segBegin_; }
  const Word* segmentEnd() const noexcept { return segEnd_; }
  int nesting() const noexcept { return nesting_; }

 private:
  ReadContext* ctx_ = nullptr;
  const Word* segBegin_ = nullptr;
  const Word* segEnd_ = nullptr;
  const kj::byte* data_ = nullptr;
  const Word* pointers_ = nullptr;
  uint32_t dataBits_ = 0;
  uint32_t pointerCount_ = 0;
  int nesting_ = INT32_MAX;
};

/// Untyped view of one list being read: `count` elements `step` bits apart, each with a data
/// section of `structDataBits` and `structPointers` pointers (what libcapnp's ListReader
/// holds, so any list can be read as a struct list and the reverse where the rules allow).
class ListReader {
 public:
  constexpr ListReader() = default;
  ListReader(ReadContext* ctx, const Word* segBegin, const Word* segEnd, const void* ptr,
             uint32_t count, uint32_t step, uint32_t structDataBits, uint32_t structPointers,
             ElementSize elementSize, int nesting) noexcept
      : ctx_(ctx),
        segBegin_(segBegin),
        segEnd_(segEnd),
        ptr_(static_cast<const kj::byte*>(ptr)),
        count_(count),
        step_(step),
        structDataBits_(structDataBits),
        structPointers_(structPointers),
        elementSize_(elementSize),
        nesting_(nesting) {}

  uint32_t size() const noexcept { return count_; }
  void checkIndex(uint32_t i) const {
    if (i >= count_) [[unlikely]] _::failIndex(i, count_);
  }
  template <typename T>
  T dataElement(uint32_t i) const noexcept {
    T value;
    std::memcpy(&value, ptr_ + uint64_t{i} * step_ / 8, sizeof(T));
    return value;
  }
  /// Bit lists ignore the step: libcapnp reads bit `i` of the list's bytes whatever the
  /// element size (a byte list passes as a bit list).
  bool bitElement(uint32_t i) const noexcept { return ((ptr_[i / 8] >> (i % 8)) & 1) != 0; }
  StructReader structElement(uint32_t i) const {
    if (nesting_ <= 0) [[unlikely]]
      _::fail("the message is nested too deeply (ReaderLimits::nestingLimit)");
    const kj::byte* data = ptr_ + uint64_t{i} * step_ / 8;
    return StructReader(ctx_, segBegin_, segEnd_, data,
                        reinterpret_cast<const Word*>(data + structDataBits_ / 8), structDataBits_,
                        structPointers_, nesting_ - 1);
  }
  _::PointerRef pointerElement(uint32_t i) const noexcept {
    return {ctx_,
            reinterpret_cast<const Word*>(ptr_ + uint64_t{i} * step_ / 8 + structDataBits_ / 8),
            segBegin_, segEnd_, nesting_};
  }
  /// Element `i` of an inline-composite list as a struct whose pointers keep the list's
  /// nesting, as libcapnp's list copy reads them.
  StructReader elementForCopy(uint32_t i) const noexcept {
    const kj::byte* data = ptr_ + uint64_t{i} * step_ / 8;
    return StructReader(ctx_, segBegin_, segEnd_, data,
                        reinterpret_cast<const Word*>(data + structDataBits_ / 8), structDataBits_,
                        structPointers_, nesting_);
  }

  ElementSize elementSize() const noexcept { return elementSize_; }
  uint32_t step() const noexcept { return step_; }
  uint32_t structDataBits() const noexcept { return structDataBits_; }
  uint32_t structPointers() const noexcept { return structPointers_; }
  const kj::byte* begin() const noexcept { return ptr_; }
  ReadContext* context() const noexcept { return ctx_; }
  const Word* segmentBegin() const noexcept { return segBegin_; }
  const Word* segmentEnd() const noexcept { return segEnd_; }
  int nesting() const noexcept { return nesting_; }

 private:
  ReadContext* ctx_ = nullptr;
  const Word* segBegin_ = nullptr;
  const Word* segEnd_ = nullptr;
  const kj::byte* ptr_ = nullptr;
  uint32_t count_ = 0;
  uint32_t step_ = 0;
  uint32_t structDataBits_ = 0;
  uint32_t structPointers_ = 0;
  ElementSize elementSize_ = ElementSize::kVoid;
  int nesting_ = INT32_MAX;
};

namespace _ {

inline Target PointerRef::follow(uint64_t w) const {
  if (kindOf(w) == kFar) [[unlikely]]
    return followFar(ctx, w);
  return {w, clampTarget(ref + 1, offsetOf(w), segBegin, segEnd), segBegin, segEnd};
}

inline StructReader PointerRef::readStruct(const DefaultValue* def) const {
  PointerRef p = *this;
  uint64_t w = p.isNull() ? 0 : load(p.ref);
  if (w == 0) {
    if (def == nullptr) return StructReader();
    p = {nullptr, def->begin(), def->begin(), def->end(), nesting};
    w = load(def->begin());
  }
  if (p.nesting <= 0) [[unlikely]]
    fail("the message is nested too deeply (ReaderLimits::nestingLimit)");
  const Target t = p.follow(w);
  if (kindOf(t.tag) != kStruct) [[unlikely]]
    fail("a struct pointer was expected and another kind found");
  const uint32_t dataWords = structDataWords(t.tag), pointers = structPointers(t.tag);
  if (dataWords + pointers > static_cast<uint64_t>(t.segEnd - t.at)) [[unlikely]]
    fail("a struct pointer points outside its segment");
  if (p.ctx) p.ctx->charge(dataWords + pointers);
  return StructReader(p.ctx, t.segBegin, t.segEnd, t.at, t.at + dataWords, dataWords * 64,
                      pointers, p.nesting - 1);
}

/// readList() after the pointer was found to be a list: the element checks.
ListReader readListTarget(ReadContext* ctx, const Target& t, ElementSize expected, int nesting);

inline ListReader PointerRef::readList(ElementSize expected, const DefaultValue* def) const {
  PointerRef p = *this;
  uint64_t w = p.isNull() ? 0 : load(p.ref);
  if (w == 0) {
    if (def == nullptr) return ListReader();
    p = {nullptr, def->begin(), def->begin(), def->end(), nesting};
    w = load(def->begin());
  }
  if (p.nesting <= 0) [[unlikely]]
    fail("the message is nested too deeply (ReaderLimits::nestingLimit)");
  const Target t = p.follow(w);
  if (kindOf(t.tag) != kList) [[unlikely]]
    fail("a list pointer was expected and another kind found");
  const uint32_t size = listElementSize(t.tag);
  // The common case inline: the element size the schema expects, not a struct list.
  if (size == static_cast<uint32_t>(expected) && size != 7 && size != 0) [[likely]] {
    const uint32_t count = listCount(t.tag);
    const uint32_t step = kDataBits[size] + kPointersPer[size] * 64;
    const uint64_t words = (uint64_t{count} * step + 63) / 64;
    if (words > static_cast<uint64_t>(t.segEnd - t.at)) [[unlikely]]
      fail("a list pointer points outside its segment");
    if (p.ctx) p.ctx->charge(words);
    return ListReader(p.ctx, t.segBegin, t.segEnd, t.at, count, step, kDataBits[size],
                      kPointersPer[size], static_cast<ElementSize>(size), p.nesting - 1);
  }
  return readListTarget(p.ctx, t, expected, p.nesting);
}

inline capnp::Text::Reader PointerRef::readText(const char* def, uint32_t defSize) const {
  const uint64_t w = isNull() ? 0 : load(ref);
  if (w == 0) return capnp::Text::Reader(def ? def : "", defSize);
  const Target t = follow(w);
  const uint32_t size = listCount(t.tag);
  if (kindOf(t.tag) != kList) [[unlikely]]
    fail("a text pointer was expected and another kind found");
  if (listElementSize(t.tag) != static_cast<uint32_t>(ElementSize::kByte)) [[unlikely]]
    fail("text was expected and a list of other than bytes found");
  const uint64_t words = (uint64_t{size} + 7) / 8;
  if (words > static_cast<uint64_t>(t.segEnd - t.at)) [[unlikely]]
    fail("a text pointer points outside its segment");
  if (ctx) ctx->charge(words);
  const char* chars = reinterpret_cast<const char*>(t.at);
  if (size == 0 || chars[size - 1] != '\0') [[unlikely]]
    fail("text is not NUL-terminated");
  return capnp::Text::Reader(chars, size - 1);
}

inline capnp::Data::Reader PointerRef::readData(const kj::byte* def, uint32_t defSize) const {
  const uint64_t w = isNull() ? 0 : load(ref);
  if (w == 0) return capnp::Data::Reader(def, defSize);
  const Target t = follow(w);
  const uint32_t size = listCount(t.tag);
  if (kindOf(t.tag) != kList) [[unlikely]]
    fail("a data pointer was expected and another kind found");
  if (listElementSize(t.tag) != static_cast<uint32_t>(ElementSize::kByte)) [[unlikely]]
    fail("data was expected and a list of other than bytes found");
  const uint64_t words = (uint64_t{size} + 7) / 8;
  if (words > static_cast<uint64_t>(t.segEnd - t.at)) [[unlikely]]
    fail("a data pointer points outside its segment");
  if (ctx) ctx->charge(words);
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(t.at), size);
}

}  // namespace _

inline StructReader ReadContext::root() {
  const kj::ArrayPtr<const Word> first = segment(0);
  if (first.size() == 0) [[unlikely]]
    _::fail("the message has no root pointer");
  // libcapnp counts the root pointer's word twice (MessageReader::getRootInternal and
  // PointerReader::getRoot): so do we, so that both run out of budget at the same read.
  charge(2);
  return _::PointerRef{this, first.begin(), first.begin(), first.end(), nestingLimit_}.readStruct(
      nullptr);
}

// ------------------------------------------------------------------------------------
// Building

/// The segments of one message being built, in transport memory: the first is given by the
/// owner (OutgoingMessage::open), further ones come from `Source` as libcapnp's BuilderArena
/// would ask for them (an object that does not fit in its pointer's segment goes to the
/// segment that last had room, else to a new one, reached by a far pointer).
/// Threads: the one building the message.
class BuildArena final {
 public:
  /// Zeroed memory for further segments (a transport's SegmentSource, or the heap).
  class Source {
   public:
    /// At least `minWords` zeroed words; throws when there is no room.
    virtual kj::ArrayPtr<Word> newSegment(uint32_t minWords) = 0;
    /// The table the message's capability pointers index, made on first use; throws
    /// InvalidArgument when the message cannot carry capabilities (the default).
    virtual CapTable& capTable();

   protected:
    ~Source() = default;
  };

  /// Meaningless until reset() (an OutgoingMessage is made per call: nothing is initialised
  /// twice).
  BuildArena() noexcept {}
  BuildArena(const BuildArena&) = delete;
  BuildArena& operator=(const BuildArena&) = delete;

  /// Starts a message in `first` (zeroed; may be empty), with `source` for more.
  void reset(Source& source, kj::ArrayPtr<Word> first) noexcept {
    source_ = &source;
    first_ = first;
    count_ = 0;
    withSpace_ = 0;
    frozen_ = false;
  }
  /// True once the root pointer was allocated (the message has at least one segment).
  bool started() const noexcept { return count_ != 0; }
  uint32_t segmentCount() const noexcept { return count_; }

  /// The root pointer's slot (allocating it on first use).
  _::PointerSlot rootSlot() {
    if (count_ == 0) [[unlikely]]
      start();
    return {this, 0, segBegin(0)};
  }
  /// Starts the message: the first segment and the root pointer in it.
  void start() {
    kj::ArrayPtr<Word> first = first_;
    if (first.size() == 0) [[unlikely]]
      first = source_->newSegment(1);
    used_.at[0] = kj::ArrayPtr<const Word>(first.begin(), 1);  // the root pointer
    capacity_[0] = static_cast<uint32_t>(first.size());
    count_ = 1;
    withSpace_ = 0;
    readView_.resetForArena(*this);
  }
  /// The segments as they are filled so far, for sending.
  kj::ArrayPtr<const kj::ArrayPtr<const Word>> segmentsForOutput() const noexcept {
    return kj::arrayPtr(used_.at, count_);
  }
  /// Hands the message over to another builder (libcapnp's, through OutgoingMessage), which
  /// continues it in the first segment's free space: returns that space, whose first word is
  /// the root pointer re-aimed from there, and freezes this arena (allocating in it throws
  /// from then on). Throws InvalidArgument when the message has more than one segment or
  /// fewer than `minWords` words are left in it.
  kj::ArrayPtr<Word> handOver(uint32_t minWords);
  /// After handOver(): the other builder's segments, its first extended back to the start of
  /// ours, with our root pointer re-aimed at what the other builder's root points to.
  kj::ArrayPtr<const kj::ArrayPtr<const Word>> segmentsAfterHandOver(
      kj::ArrayPtr<const kj::ArrayPtr<const Word>> theirs);

  /// `words` zeroed words in segment `seg`, or nullptr when it has no such room left.
  Word* tryAllocate(uint32_t seg, uint32_t words) noexcept {
    const size_t used = used_.at[seg].size();
    if (used + words > capacity_[seg]) return nullptr;
    Word* at = const_cast<Word*>(used_.at[seg].begin()) + used;
    used_.at[seg] = kj::ArrayPtr<const Word>(used_.at[seg].begin(), used + words);
    return at;
  }
  /// `words` zeroed words anywhere: in the segment that last had room, else in a new one.
  /// Returns them and sets `seg` to their segment.
  Word* allocateAnywhere(uint32_t words, uint32_t& seg);

  Word* segBegin(uint32_t seg) const noexcept { return const_cast<Word*>(used_.at[seg].begin()); }
  /// A segment's whole capacity (readers of the message being built bound-check to it).
  kj::ArrayPtr<const Word> capacityOf(uint32_t seg) const noexcept {
    return kj::ArrayPtr<const Word>(used_.at[seg].begin(), capacity_[seg]);
  }
  /// The context readers of this message (Builder::asReader()) share: no budget.
  ReadContext& readContext() noexcept { return readView_; }
  /// The message's capability table (see Source::capTable()).
  CapTable& capTable() { return source_->capTable(); }

 private:
  /// The segments' used parts, left uninitialised until used (no constructor runs on them).
  union Segments {
    Segments() noexcept {}
    kj::ArrayPtr<const Word> at[kMaxSegments];
  };

  Source* source_;
  kj::ArrayPtr<Word> first_;
  uint32_t count_;
  uint32_t withSpace_;
  uint32_t handedAt_;  // after handOver(): where the other builder's first segment starts
  bool frozen_;        // handed over
  // Not initialised until used: an OutgoingMessage is built per call.
  Segments used_;
  uint32_t capacity_[kMaxSegments];
  ReadContext readView_;
};

inline kj::ArrayPtr<const Word> ReadContext::segment(uint32_t id) const noexcept {
  if (arena_ != nullptr) [[unlikely]]
    return id < arena_->segmentCount() ? arena_->capacityOf(id) : kj::ArrayPtr<const Word>();
  return id < segmentCount_ ? segments_[id] : kj::ArrayPtr<const Word>();
}

/// Untyped view of one struct being built; generated Builders wrap one. Its sections are at
/// least as large as the schema's (builders upgrade smaller structs, as libcapnp does).
class StructBuilder {
 public:
  StructBuilder() = default;
  StructBuilder(BuildArena* arena, uint32_t seg, void* data, Word* pointers, uint32_t dataBits,
                uint32_t pointerCount) noexcept
      : arena_(arena),
        seg_(seg),
        data_(static_cast<kj::byte*>(data)),
        pointers_(pointers),
        dataBits_(dataBits),
        pointerCount_(pointerCount) {}

  template <typename T>
  T data(uint32_t offset, typename _::MaskOf<T>::Type mask = 0) const noexcept {
    return asReader().data<T>(offset, mask);
  }
  template <typename T>
  void setData(uint32_t offset, T value, typename _::MaskOf<T>::Type mask = 0) noexcept {
    using M = typename _::MaskOf<T>::Type;
    M bits;
    std::memcpy(&bits, &value, sizeof(T));
    bits ^= mask;
    std::memcpy(data_ + uint64_t{offset} * sizeof(T), &bits, sizeof(T));
  }
  bool bit(uint32_t offset, bool mask = false) const noexcept {
    return (((data_[offset / 8] >> (offset % 8)) & 1) != 0) != mask;
  }
  void setBit(uint32_t offset, bool value, bool mask = false) noexcept {
    const kj::byte bitMask = static_cast<kj::byte>(1u << (offset % 8));
    kj::byte& b = data_[offset / 8];
    b = static_cast<kj::byte>((b & ~bitMask) | ((value != mask) ? bitMask : 0));
  }
  _::PointerSlot pointer(uint32_t index) noexcept { return {arena_, seg_, pointers_ + index}; }
  bool hasPointer(uint32_t index) const noexcept { return _::load(pointers_ + index) != 0; }

  /// The same struct, read (bounds-checked against the segment's capacity; no budget).
  StructReader asReader() const noexcept {
    if (arena_ == nullptr) return StructReader();
    const kj::ArrayPtr<const Word> seg = arena_->capacityOf(seg_);
    return StructReader(&arena_->readContext(), seg.begin(), seg.end(), data_, pointers_,
                        dataBits_, pointerCount_, INT32_MAX);
  }

  BuildArena* arena() const noexcept { return arena_; }
  uint32_t segment() const noexcept { return seg_; }
  kj::byte* dataSection() const noexcept { return data_; }
  Word* pointerSection() const noexcept { return pointers_; }
  uint32_t dataBits() const noexcept { return dataBits_; }
  uint32_t pointerCount() const noexcept { return pointerCount_; }

 private:
  BuildArena* arena_ = nullptr;
  uint32_t seg_ = 0;
  kj::byte* data_ = nullptr;
  Word* pointers_ = nullptr;
  uint32_t dataBits_ = 0;
  uint32_t pointerCount_ = 0;
};

/// Untyped view of one list being built (libcapnp's ListBuilder). `pointers_` of an element
/// is `structDataBits / 8` bytes into it.
class ListBuilder {
 public:
  ListBuilder() = default;
  ListBuilder(BuildArena* arena, uint32_t seg, void* ptr, uint32_t count, uint32_t step,
              uint32_t structDataBits, uint32_t structPointers, ElementSize elementSize) noexcept
      : arena_(arena),
        seg_(seg),
        ptr_(static_cast<kj::byte*>(ptr)),
        count_(count),
        step_(step),
        structDataBits_(structDataBits),
        structPointers_(structPointers),
        elementSize_(elementSize) {}

  uint32_t size() const noexcept { return count_; }
  void checkIndex(uint32_t i) const {
    if (i >= count_) [[unlikely]] _::failIndex(i, count_);
  }
  template <typename T>
  T dataElement(uint32_t i) const noexcept {
    T value;
    std::memcpy(&value, ptr_ + uint64_t{i} * step_ / 8, sizeof(T));
    return value;
  }
  template <typename T>
  void setDataElement(uint32_t i, T value) noexcept {
    std::memcpy(ptr_ + uint64_t{i} * step_ / 8, &value, sizeof(T));
  }
  bool bitElement(uint32_t i) const noexcept { return ((ptr_[i / 8] >> (i % 8)) & 1) != 0; }
  void setBitElement(uint32_t i, bool value) noexcept {
    const kj::byte bitMask = static_cast<kj::byte>(1u << (i % 8));
    ptr_[i / 8] = static_cast<kj::byte>((ptr_[i / 8] & ~bitMask) | (value ? bitMask : 0));
  }
  StructBuilder structElement(uint32_t i) const noexcept {
    kj::byte* data = ptr_ + uint64_t{i} * step_ / 8;
    return StructBuilder(arena_, seg_, data, reinterpret_cast<Word*>(data + structDataBits_ / 8),
                         structDataBits_, structPointers_);
  }
  _::PointerSlot pointerElement(uint32_t i) const noexcept {
    return {arena_, seg_,
            reinterpret_cast<Word*>(ptr_ + uint64_t{i} * step_ / 8 + structDataBits_ / 8)};
  }
  ListReader asReader() const noexcept {
    if (arena_ == nullptr) return ListReader();
    const kj::ArrayPtr<const Word> seg = arena_->capacityOf(seg_);
    return ListReader(&arena_->readContext(), seg.begin(), seg.end(), ptr_, count_, step_,
                      structDataBits_, structPointers_, elementSize_, INT32_MAX);
  }

  ElementSize elementSize() const noexcept { return elementSize_; }

 private:
  BuildArena* arena_ = nullptr;
  uint32_t seg_ = 0;
  kj::byte* ptr_ = nullptr;
  uint32_t count_ = 0;
  uint32_t step_ = 0;
  uint32_t structDataBits_ = 0;
  uint32_t structPointers_ = 0;
  ElementSize elementSize_ = ElementSize::kVoid;
};

namespace _ {

inline Word* PointerSlot::allocate(uint32_t words, uint32_t kind, uint32_t upper,
                                   uint32_t& objectSeg) {
  if (load(ref) != 0) [[unlikely]]
    zeroObject(*arena, seg, ref);
  if (words == 0 && kind == kStruct) {
    // libcapnp points an empty struct at its own pointer (offset -1).
    store(ref, nearPointer(-1, kStruct, upper));
    objectSeg = seg;
    return ref;
  }
  if (Word* at = arena->tryAllocate(seg, words)) [[likely]] {
    store(ref, nearPointer(at - ref - 1, kind, upper));
    objectSeg = seg;
    return at;
  }
  return allocateFar(*arena, ref, words, kind, upper, objectSeg);
}

inline StructBuilder PointerSlot::initStruct(uint32_t dataWords, uint32_t pointers) {
  uint32_t objectSeg;
  Word* at = allocate(dataWords + pointers, kStruct, structUpper(dataWords, pointers), objectSeg);
  return StructBuilder(arena, objectSeg, at, at + dataWords, dataWords * 64, pointers);
}

inline StructBuilder PointerSlot::getStruct(uint32_t dataWords, uint32_t pointers,
                                            const DefaultValue* def) {
  const uint64_t w = load(ref);
  if (w == 0 && def == nullptr) return initStruct(dataWords, pointers);
  if (w != 0 && kindOf(w) == kStruct && structDataWords(w) >= dataWords &&
      structPointers(w) >= pointers) [[likely]] {
    Word* at = ref + 1 + offsetOf(w);
    const uint32_t dw = structDataWords(w);
    return StructBuilder(arena, seg, at, at + dw, dw * 64, structPointers(w));
  }
  return getStructSlow(dataWords, pointers, def);
}

inline ListBuilder PointerSlot::initList(ElementSize size, uint32_t count) {
  if (count > kMaxListCount) [[unlikely]]
    failTooLarge("list elements", count);
  const uint32_t s = static_cast<uint32_t>(size);
  const uint32_t step = kDataBits[s] + kPointersPer[s] * 64;
  const uint32_t words = static_cast<uint32_t>((uint64_t{count} * step + 63) / 64);
  uint32_t objectSeg;
  Word* at = allocate(words, kList, listUpper(size, count), objectSeg);
  return ListBuilder(arena, objectSeg, at, count, step, kDataBits[s], kPointersPer[s], size);
}

inline ListBuilder PointerSlot::initStructList(uint32_t count, uint32_t dataWords,
                                               uint32_t pointers) {
  const uint64_t perElement = dataWords + pointers;
  if (count > kMaxListCount || uint64_t{count} * perElement >= kMaxListCount) [[unlikely]]
    failTooLarge("struct list elements", count);
  const uint32_t words = static_cast<uint32_t>(count * perElement);
  uint32_t objectSeg;
  Word* at = allocate(words + 1, kList, listUpper(ElementSize::kInlineComposite, words), objectSeg);
  store(at, nearPointer(count, kStruct, structUpper(dataWords, pointers)));  // the tag
  return ListBuilder(arena, objectSeg, at + 1, count, static_cast<uint32_t>(perElement * 64),
                     dataWords * 64, pointers, ElementSize::kInlineComposite);
}

inline ListBuilder PointerSlot::getList(ElementSize expected, const DefaultValue* def) {
  const uint64_t w = load(ref);
  const uint32_t s = static_cast<uint32_t>(expected);
  if (w != 0 && kindOf(w) == kList && listElementSize(w) == s) [[likely]] {
    const uint32_t step = kDataBits[s] + kPointersPer[s] * 64;
    return ListBuilder(arena, seg, ref + 1 + offsetOf(w), listCount(w), step, kDataBits[s],
                       kPointersPer[s], expected);
  }
  return getListSlow(expected, def);
}

inline ListBuilder PointerSlot::getStructList(uint32_t dataWords, uint32_t pointers,
                                              const DefaultValue* def) {
  const uint64_t w = load(ref);
  if (w != 0 && kindOf(w) == kList &&
      listElementSize(w) == static_cast<uint32_t>(ElementSize::kInlineComposite)) [[likely]] {
    Word* at = ref + 1 + offsetOf(w);
    const uint64_t tag = load(at);
    const uint32_t dw = structDataWords(tag), pc = structPointers(tag);
    if (dw >= dataWords && pc >= pointers)
      return ListBuilder(arena, seg, at + 1, tagCount(tag), (dw + pc) * 64, dw * 64, pc,
                         ElementSize::kInlineComposite);
  }
  return getStructListSlow(dataWords, pointers, def);
}

inline capnp::Text::Builder PointerSlot::initText(size_t size) {
  if (size >= kMaxListCount) [[unlikely]]
    failTooLarge("text bytes", size);
  const uint32_t bytes = static_cast<uint32_t>(size) + 1;  // the NUL
  uint32_t objectSeg;
  Word* at = allocate((bytes + 7) / 8, kList, listUpper(ElementSize::kByte, bytes), objectSeg);
  return capnp::Text::Builder(reinterpret_cast<char*>(at), size);
}

inline void PointerSlot::setText(capnp::Text::Reader value) {
  auto text = initText(value.size());
  if (value.size() != 0) std::memcpy(text.begin(), value.begin(), value.size());
}

inline capnp::Data::Builder PointerSlot::initData(size_t size) {
  if (size > kMaxListCount) [[unlikely]]
    failTooLarge("data bytes", size);
  const uint32_t bytes = static_cast<uint32_t>(size);
  uint32_t objectSeg;
  Word* at = allocate((bytes + 7) / 8, kList, listUpper(ElementSize::kByte, bytes), objectSeg);
  return capnp::Data::Builder(reinterpret_cast<kj::byte*>(at), size);
}

inline void PointerSlot::setData(capnp::Data::Reader value) {
  auto data = initData(value.size());
  if (value.size() != 0) std::memcpy(data.begin(), value.begin(), value.size());
}

}  // namespace _

// ------------------------------------------------------------------------------------
// Typed lists: List<T>::Reader / List<T>::Builder, as capnpc-c++'s capnp::List<T>.

template <typename T>
struct List;

/// What a list element of type T is on the wire and how it is read and written. T is a
/// primitive (bool, integers, float, double), capnp::Void, an enum capnpc-c++ generated,
/// capnp::Text, capnp::Data, a generated struct type (zcrpc_wire::Foo), List<U>, or an
/// interface capnpc-c++ generated (zcrpc/capability.h: elements are zcrpc::Capability).
template <typename T, typename = void>
struct Element;

template <>
struct Element<capnp::Void> {
  static constexpr ElementSize kSize = ElementSize::kVoid;
  using Reader = capnp::Void;
  using Builder = capnp::Void;
  static Reader get(const ListReader&, uint32_t) noexcept { return capnp::VOID; }
  static Builder get(const ListBuilder&, uint32_t) noexcept { return capnp::VOID; }
  static void set(ListBuilder&, uint32_t, capnp::Void) noexcept {}
};

template <>
struct Element<bool> {
  static constexpr ElementSize kSize = ElementSize::kBit;
  using Reader = bool;
  using Builder = bool;
  static bool get(const ListReader& l, uint32_t i) noexcept { return l.bitElement(i); }
  static bool get(const ListBuilder& l, uint32_t i) noexcept { return l.bitElement(i); }
  static void set(ListBuilder& l, uint32_t i, bool v) noexcept { l.setBitElement(i, v); }
};

template <typename T>
struct Element<T, std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool>>> {
  static_assert(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8);
  static constexpr ElementSize kSize = sizeof(T) == 1   ? ElementSize::kByte
                                       : sizeof(T) == 2 ? ElementSize::kTwoBytes
                                       : sizeof(T) == 4 ? ElementSize::kFourBytes
                                                        : ElementSize::kEightBytes;
  using Reader = T;
  using Builder = T;
  static T get(const ListReader& l, uint32_t i) noexcept { return l.dataElement<T>(i); }
  static T get(const ListBuilder& l, uint32_t i) noexcept { return l.dataElement<T>(i); }
  static void set(ListBuilder& l, uint32_t i, T v) noexcept { l.setDataElement<T>(i, v); }
};

template <typename T>
struct Element<T, std::enable_if_t<std::is_enum_v<T>>> {
  static constexpr ElementSize kSize = ElementSize::kTwoBytes;
  using Reader = T;
  using Builder = T;
  static T get(const ListReader& l, uint32_t i) noexcept {
    return static_cast<T>(l.dataElement<uint16_t>(i));
  }
  static T get(const ListBuilder& l, uint32_t i) noexcept {
    return static_cast<T>(l.dataElement<uint16_t>(i));
  }
  static void set(ListBuilder& l, uint32_t i, T v) noexcept {
    l.setDataElement<uint16_t>(i, static_cast<uint16_t>(v));
  }
};

template <>
struct Element<capnp::Text> {
  static constexpr ElementSize kSize = ElementSize::kPointer;
  using Reader = capnp::Text::Reader;
  using Builder = capnp::Text::Builder;
  static Reader get(const ListReader& l, uint32_t i) {
    return l.pointerElement(i).readText(nullptr, 0);
  }
  static Builder get(const ListBuilder& l, uint32_t i) {
    return l.pointerElement(i).getText(nullptr, 0);
  }
  static void set(ListBuilder& l, uint32_t i, Reader v) { l.pointerElement(i).setText(v); }
  static Builder init(ListBuilder& l, uint32_t i, uint32_t size) {
    return l.pointerElement(i).initText(size);
  }
};

template <>
struct Element<capnp::Data> {
  static constexpr ElementSize kSize = ElementSize::kPointer;
  using Reader = capnp::Data::Reader;
  using Builder = capnp::Data::Builder;
  static Reader get(const ListReader& l, uint32_t i) {
    return l.pointerElement(i).readData(nullptr, 0);
  }
  static Builder get(const ListBuilder& l, uint32_t i) {
    return l.pointerElement(i).getData(nullptr, 0);
  }
  static void set(ListBuilder& l, uint32_t i, Reader v) { l.pointerElement(i).setData(v); }
  static Builder init(ListBuilder& l, uint32_t i, uint32_t size) {
    return l.pointerElement(i).initData(size);
  }
};

/// Generated struct types (they have kDataWords / kPointers).
template <typename T>
struct Element<T, std::void_t<decltype(T::kDataWords)>> {
  static constexpr ElementSize kSize = ElementSize::kInlineComposite;
  using Reader = typename T::Reader;
  using Builder = typename T::Builder;
  static Reader get(const ListReader& l, uint32_t i) { return Reader(l.structElement(i)); }
  static Builder get(const ListBuilder& l, uint32_t i) { return Builder(l.structElement(i)); }
};

template <typename U>
struct Element<List<U>> {
  static constexpr ElementSize kSize = ElementSize::kPointer;
  using Reader = typename List<U>::Reader;
  using Builder = typename List<U>::Builder;
  static Reader get(const ListReader& l, uint32_t i) {
    return Reader(l.pointerElement(i).readList(Element<U>::kSize, nullptr));
  }
  static Builder get(const ListBuilder& l, uint32_t i) {
    return List<U>::getFrom(l.pointerElement(i), nullptr);
  }
  static void set(ListBuilder& l, uint32_t i, Reader v) { l.pointerElement(i).setList(v._wire()); }
  static Builder init(ListBuilder& l, uint32_t i, uint32_t size) {
    return List<U>::initIn(l.pointerElement(i), size);
  }
};

/// Random-access iterator over a list reader or builder (by value, as capnp's).
template <typename Container, typename Value>
class IndexIterator {
 public:
  using iterator_category = std::random_access_iterator_tag;
  using value_type = Value;
  using difference_type = std::ptrdiff_t;
  using pointer = void;
  using reference = Value;

  IndexIterator() = default;
  IndexIterator(const Container* c, uint32_t i) noexcept : c_(c), i_(i) {}
  Value operator*() const { return (*c_)[i_]; }
  Value operator[](difference_type n) const { return (*c_)[static_cast<uint32_t>(i_ + n)]; }
  IndexIterator& operator++() noexcept { ++i_; return *this; }
  IndexIterator operator++(int) noexcept { auto t = *this; ++i_; return t; }
  IndexIterator& operator--() noexcept { --i_; return *this; }
  IndexIterator operator--(int) noexcept { auto t = *this; --i_; return t; }
  IndexIterator& operator+=(difference_type n) noexcept { i_ = static_cast<uint32_t>(i_ + n); return *this; }
  IndexIterator& operator-=(difference_type n) noexcept { i_ = static_cast<uint32_t>(i_ - n); return *this; }
  IndexIterator operator+(difference_type n) const noexcept { auto t = *this; return t += n; }
  IndexIterator operator-(difference_type n) const noexcept { auto t = *this; return t -= n; }
  difference_type operator-(const IndexIterator& o) const noexcept {
    return static_cast<difference_type>(i_) - static_cast<difference_type>(o.i_);
  }
  bool operator==(const IndexIterator& o) const noexcept { return i_ == o.i_; }
  auto operator<=>(const IndexIterator& o) const noexcept { return i_ <=> o.i_; }

 private:
  const Container* c_ = nullptr;
  uint32_t i_ = 0;
};

template <typename T>
struct List {
  using E = Element<T>;

  /// A list read in place. Indexing past size() throws InvalidArgument (libcapnp's release
  /// builds do not check).
  class Reader {
   public:
    Reader() = default;
    explicit Reader(const ListReader& r) noexcept : r_(r) {}
    uint32_t size() const noexcept { return r_.size(); }
    typename E::Reader operator[](uint32_t i) const {
      r_.checkIndex(i);
      return E::get(r_, i);
    }
    using Iterator = IndexIterator<Reader, typename E::Reader>;
    Iterator begin() const noexcept { return Iterator(this, 0); }
    Iterator end() const noexcept { return Iterator(this, size()); }
    /// The untyped view (for zcrpc's runtime).
    const ListReader& _wire() const noexcept { return r_; }

   private:
    ListReader r_;
  };

  /// A list being built in place.
  class Builder {
   public:
    Builder() = default;
    explicit Builder(const ListBuilder& b) noexcept : b_(b) {}
    uint32_t size() const noexcept { return b_.size(); }
    typename E::Builder operator[](uint32_t i) const {
      b_.checkIndex(i);
      return E::get(b_, i);
    }
    /// Sets element `i` (primitives, enums, Text, Data, lists and capabilities).
    template <typename V>
    void set(uint32_t i, V&& value) {
      b_.checkIndex(i);
      E::set(b_, i, std::forward<V>(value));
    }
    /// Element `i` as a new Text, Data or list of `size`.
    typename E::Builder init(uint32_t i, uint32_t size) {
      b_.checkIndex(i);
      return E::init(b_, i, size);
    }
    Reader asReader() const noexcept { return Reader(b_.asReader()); }
    operator Reader() const noexcept { return asReader(); }
    using Iterator = IndexIterator<Builder, typename E::Builder>;
    Iterator begin() const noexcept { return Iterator(this, 0); }
    Iterator end() const noexcept { return Iterator(this, size()); }
    const ListBuilder& _wire() const noexcept { return b_; }

   private:
    ListBuilder b_;
  };

  /// For generated code: the list a slot holds (or a new one), and a new list in a slot.
  static Builder getFrom(_::PointerSlot slot, const DefaultValue* def) {
    if constexpr (E::kSize == ElementSize::kInlineComposite)
      return Builder(slot.getStructList(T::kDataWords, T::kPointers, def));
    else
      return Builder(slot.getList(E::kSize, def));
  }
  static Builder initIn(_::PointerSlot slot, uint32_t size) {
    if constexpr (E::kSize == ElementSize::kInlineComposite)
      return Builder(slot.initStructList(size, T::kDataWords, T::kPointers));
    else
      return Builder(slot.initList(E::kSize, size));
  }
  /// Sets a slot to a copy of `values` (primitives, enums, Text, Data).
  template <typename V>
  static void setIn(_::PointerSlot slot, kj::ArrayPtr<const V> values) {
    if (values.size() > _::kMaxListCount) [[unlikely]]
      _::failTooLarge("list elements", values.size());
    Builder b = initIn(slot, static_cast<uint32_t>(values.size()));
    ListBuilder raw = b._wire();
    for (uint32_t i = 0; i < values.size(); ++i) E::set(raw, i, values[i]);
  }
};

// ------------------------------------------------------------------------------------
// Which accessors a Cap'n Proto type has.

/// Specialised by generated headers for every struct they cover: `Reader` and `Builder` are
/// then zcrpc's accessors. For any other struct they are capnpc-c++'s own (the fallback).
template <typename T>
struct Accessors {
  static constexpr bool kGenerated = false;
  using Reader = typename T::Reader;
  using Builder = typename T::Builder;
};

/// The reader / builder zcrpc uses for struct T (zcrpc's generated ones where they exist).
template <typename T>
using Reader = typename Accessors<T>::Reader;
template <typename T>
using Builder = typename Accessors<T>::Builder;

}  // namespace zcrpc::wire
