// The cold half of zcrpc/wire.h: errors, far pointers, list checks beyond the common case,
// and everything builders do besides allocating in place (copies, upgrades, zeroing), each
// following what libcapnp's layout.c++ does for the same input (see tests/wire/).
#include "zcrpc/wire.h"

#include <algorithm>
#include <string>

#include "zcrpc/error.h"

namespace zcrpc::wire {

CapTable& BuildArena::Source::capTable() {
  throw InvalidArgument("this message cannot carry capabilities (it is not an RPC message)");
}

namespace _ {

void fail(const char* what) {
  throw InvalidArgument(std::string("malformed Cap'n Proto message: ") + what);
}

void failIndex(uint32_t index, uint32_t size) {
  throw InvalidArgument("list index " + std::to_string(index) + " is out of range (the list has " +
                        std::to_string(size) + " elements)");
}

void failTooLarge(const char* what, uint64_t size) {
  throw InvalidArgument("Cap'n Proto cannot hold " + std::to_string(size) + " " + what +
                        " in one object (at most 2^29 - 1)");
}

Target followFar(ReadContext* ctx, uint64_t w) {
  // Default values are single-segment messages that zcrpc generated: they have no far
  // pointers. (libcapnp takes a far pointer in an unchecked message for another kind.)
  if (ctx == nullptr) fail("a default value holds a far pointer");
  const kj::ArrayPtr<const Word> padSeg = ctx->segment(static_cast<uint32_t>(w >> 32));
  if (padSeg.size() == 0) fail("a far pointer points to a segment the message does not have");
  const bool isDouble = ((w >> 2) & 1) != 0;
  const Word* pad = clampTarget(padSeg.begin(), static_cast<uint32_t>(w) >> 3, padSeg.begin(),
                                padSeg.end());
  const uint32_t padWords = isDouble ? 2 : 1;
  if (padWords > static_cast<uint64_t>(padSeg.end() - pad))
    fail("a far pointer's landing pad lies outside its segment");
  ctx->charge(padWords);
  const uint64_t first = load(pad);
  if (!isDouble)
    return {first, clampTarget(pad + 1, offsetOf(first), padSeg.begin(), padSeg.end()),
            padSeg.begin(), padSeg.end()};
  // A double-far landing pad: a far pointer to the object, then the tag that describes it.
  const kj::ArrayPtr<const Word> objectSeg = ctx->segment(static_cast<uint32_t>(first >> 32));
  if (objectSeg.size() == 0)
    fail("a double-far pointer points to a segment the message does not have");
  if (kindOf(first) != kFar) fail("the landing pad of a double-far pointer is not a far pointer");
  return {load(pad + 1),
          clampTarget(objectSeg.begin(), static_cast<uint32_t>(first) >> 3, objectSeg.begin(),
                      objectSeg.end()),
          objectSeg.begin(), objectSeg.end()};
}

ListReader readListTarget(ReadContext* ctx, const Target& t, ElementSize expected, int nesting) {
  const uint32_t size = listElementSize(t.tag);
  const uint64_t available = static_cast<uint64_t>(t.segEnd - t.at);
  if (size == static_cast<uint32_t>(ElementSize::kInlineComposite)) {
    const uint64_t wordCount = listCount(t.tag);
    if (wordCount + 1 > available) fail("a list pointer points outside its segment");
    if (ctx) ctx->charge(wordCount + 1);
    const uint64_t tag = load(t.at);
    if (kindOf(tag) != kStruct) fail("an inline-composite list's elements are not structs");
    const uint32_t count = tagCount(tag);
    const uint32_t dataWords = structDataWords(tag), pointers = structPointers(tag);
    const uint64_t perElement = dataWords + pointers;
    if (uint64_t{count} * perElement > wordCount)
      fail("an inline-composite list's elements overrun its word count");
    // Elements of no size cost nothing to send: count them, as libcapnp does.
    if (perElement == 0 && ctx) ctx->charge(count);
    switch (expected) {
      case ElementSize::kVoid:
      case ElementSize::kInlineComposite:
        break;
      case ElementSize::kBit:
        fail("a struct list was found where a list of Bool was expected");
      case ElementSize::kByte:
      case ElementSize::kTwoBytes:
      case ElementSize::kFourBytes:
      case ElementSize::kEightBytes:
        if (dataWords == 0)
          fail("a list of primitives was expected and a list of structs without data found");
        break;
      case ElementSize::kPointer:
        if (pointers == 0)
          fail("a list of pointers was expected and a list of structs without pointers found");
        break;
    }
    return ListReader(ctx, t.segBegin, t.segEnd, t.at + 1, count,
                      static_cast<uint32_t>(perElement * 64), dataWords * 64, pointers,
                      ElementSize::kInlineComposite, nesting - 1);
  }
  const uint32_t dataBits = kDataBits[size], pointers = kPointersPer[size];
  const uint32_t count = listCount(t.tag);
  const uint32_t step = dataBits + pointers * 64;
  const uint64_t words = (uint64_t{count} * step + 63) / 64;
  if (words > available) fail("a list pointer points outside its segment");
  if (ctx) {
    ctx->charge(words);
    if (size == static_cast<uint32_t>(ElementSize::kVoid)) ctx->charge(count);
  }
  if (size == static_cast<uint32_t>(ElementSize::kBit) && expected != ElementSize::kBit)
    fail("a list of Bool was found where another list was expected");
  const uint32_t e = static_cast<uint32_t>(expected);
  if (kDataBits[e] > dataBits || kPointersPer[e] > pointers)
    fail("the list's elements are of an incompatible type");
  return ListReader(ctx, t.segBegin, t.segEnd, t.at, count, step, dataBits, pointers,
                    static_cast<ElementSize>(size), nesting - 1);
}

bool PointerRef::isSetSlow(uint64_t w) const {
  // libcapnp's PointerReader::getPointerType(): a far pointer is followed, and then the
  // kind must be one it knows.
  const uint64_t tag = kindOf(w) == kFar ? follow(w).tag : w;
  if (kindOf(tag) == kFar) fail("a far pointer's landing pad is a far pointer");
  if (kindOf(tag) == kOther && !isCapability(tag)) fail("the message holds a pointer of unknown kind");
  return true;
}

std::optional<uint32_t> PointerRef::readCapability() const {
  if (isNull()) return std::nullopt;
  const uint64_t w = load(ref);
  if (!isCapability(w)) fail("a capability pointer was expected and another kind found");
  return static_cast<uint32_t>(w >> 32);
}

// ------------------------------------------------------------------------------------
// Building

namespace {

uint64_t farPointer(bool isDouble, uint64_t padOffset, uint32_t segment) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(padOffset) << 3) | (isDouble ? 4u : 0u) |
          kFar) |
         (static_cast<uint64_t>(segment) << 32);
}

uint32_t upperOf(uint64_t w) { return static_cast<uint32_t>(w >> 32); }

/// A pointer of our own message resolved through its far pointers.
struct Resolved {
  uint64_t tag;
  Word* at;
  uint32_t seg;
};

Resolved resolve(BuildArena& arena, uint32_t seg, Word* ref) {
  const uint64_t w = load(ref);
  if (kindOf(w) != kFar) return {w, ref + 1 + offsetOf(w), seg};
  const uint32_t padSeg = static_cast<uint32_t>(w >> 32);
  Word* pad = arena.segBegin(padSeg) + (static_cast<uint32_t>(w) >> 3);
  const uint64_t first = load(pad);
  if (((w >> 2) & 1) == 0) return {first, pad + 1 + offsetOf(first), padSeg};
  const uint32_t objectSeg = static_cast<uint32_t>(first >> 32);
  return {load(pad + 1), arena.segBegin(objectSeg) + (static_cast<uint32_t>(first) >> 3),
          objectSeg};
}

void zeroWords(Word* at, uint64_t words) {
  if (words != 0) std::memset(static_cast<void*>(at), 0, words * sizeof(Word));
}

/// Zeroes the object `tag` describes at `at` (in segment `seg`), and what it points to.
void zeroTarget(BuildArena& arena, uint32_t seg, uint64_t tag, Word* at) {
  switch (kindOf(tag)) {
    case kStruct: {
      const uint32_t dataWords = structDataWords(tag), pointers = structPointers(tag);
      for (uint32_t i = 0; i < pointers; ++i)
        if (load(at + dataWords + i) != 0) zeroObject(arena, seg, at + dataWords + i);
      zeroWords(at, dataWords + pointers);
      break;
    }
    case kList: {
      const uint32_t size = listElementSize(tag), count = listCount(tag);
      if (size == static_cast<uint32_t>(ElementSize::kPointer)) {
        for (uint32_t i = 0; i < count; ++i)
          if (load(at + i) != 0) zeroObject(arena, seg, at + i);
        zeroWords(at, count);
      } else if (size == static_cast<uint32_t>(ElementSize::kInlineComposite)) {
        const uint64_t elementTag = load(at);
        const uint32_t dataWords = structDataWords(elementTag), pointers = structPointers(elementTag);
        const uint32_t elements = tagCount(elementTag);
        Word* element = at + 1;
        for (uint32_t i = 0; i < elements; ++i, element += dataWords + pointers)
          for (uint32_t j = 0; j < pointers; ++j)
            if (load(element + dataWords + j) != 0)
              zeroObject(arena, seg, element + dataWords + j);
        zeroWords(at, 1 + uint64_t{elements} * (dataWords + pointers));
      } else {
        zeroWords(at, (uint64_t{count} * kDataBits[size] + 63) / 64);
      }
      break;
    }
    default:
      fail("an object in the message being built is described by neither a struct nor a list "
           "pointer");
  }
}

/// Zeroes the pointer at `ref` and its landing pads, not the object (the object moves).
void zeroPointerAndFars(BuildArena& arena, Word* ref) {
  const uint64_t w = load(ref);
  if (kindOf(w) == kFar) {
    Word* pad = arena.segBegin(static_cast<uint32_t>(w >> 32)) + (static_cast<uint32_t>(w) >> 3);
    zeroWords(pad, ((w >> 2) & 1) ? 2 : 1);
  }
  store(ref, 0);
}

/// Points `dst` (in `dstSeg`, null) at the object `tag` describes at `target` in `srcSeg`.
void transferTo(BuildArena& arena, uint32_t dstSeg, Word* dst, uint32_t srcSeg, uint64_t tag,
                Word* target) {
  const uint32_t kind = kindOf(tag);
  if (dstSeg == srcSeg) {
    if (kind == kStruct && structDataWords(tag) + structPointers(tag) == 0)
      store(dst, nearPointer(-1, kStruct, upperOf(tag)));
    else
      store(dst, nearPointer(target - dst - 1, kind, upperOf(tag)));
    return;
  }
  // Another segment: a landing pad in the object's segment if it has room, else a
  // double-far landing pad anywhere.
  if (Word* pad = arena.tryAllocate(srcSeg, 1)) {
    store(pad, nearPointer(target - pad - 1, kind, upperOf(tag)));
    store(dst, farPointer(false, pad - arena.segBegin(srcSeg), srcSeg));
    return;
  }
  uint32_t padSeg;
  Word* pad = arena.allocateAnywhere(2, padSeg);
  store(pad, farPointer(false, target - arena.segBegin(srcSeg), srcSeg));
  store(pad + 1, nearPointer(0, kind, upperOf(tag)));
  store(dst, farPointer(true, pad - arena.segBegin(padSeg), padSeg));
}

/// Moves the pointer at `src` (in `srcSeg`) to `dst` (in `dstSeg`, null); the caller zeroes
/// `src` afterwards.
void transferPointer(BuildArena& arena, uint32_t dstSeg, Word* dst, uint32_t srcSeg, Word* src) {
  const uint64_t w = load(src);
  if (w == 0) {
    store(dst, 0);
  } else if (kindOf(w) == kFar || kindOf(w) == kOther) {
    store(dst, w);  // position-independent
  } else {
    transferTo(arena, dstSeg, dst, srcSeg, w, src + 1 + offsetOf(w));
  }
}

PointerRef defaultRef(const DefaultValue* def) {
  return {nullptr, def->begin(), def->begin(), def->end(), INT32_MAX};
}

/// Deep copy of what `src` points to into `dst`, checking `src` as a reader would
/// (libcapnp's copyPointer).
void copyPointer(PointerSlot dst, const PointerRef& src) {
  if (src.isNull()) {
    dst.clear();
    return;
  }
  const Target t = src.follow(load(src.ref));
  const uint64_t available = static_cast<uint64_t>(t.segEnd - t.at);
  switch (kindOf(t.tag)) {
    case kStruct: {
      if (src.nesting <= 0) fail("the message is nested too deeply (ReaderLimits::nestingLimit)");
      const uint32_t dataWords = structDataWords(t.tag), pointers = structPointers(t.tag);
      if (dataWords + pointers > available) fail("a struct pointer points outside its segment");
      if (src.ctx) src.ctx->charge(dataWords + pointers);
      dst.setStruct(StructReader(src.ctx, t.segBegin, t.segEnd, t.at, t.at + dataWords,
                                 dataWords * 64, pointers, src.nesting - 1));
      return;
    }
    case kList: {
      if (src.nesting <= 0) fail("the message is nested too deeply (ReaderLimits::nestingLimit)");
      // Any valid list: read it expecting Void, which every list passes but Bool lists, and
      // those are taken as they are.
      const uint32_t size = listElementSize(t.tag);
      const ElementSize expect = size == static_cast<uint32_t>(ElementSize::kBit)
                                     ? ElementSize::kBit
                                     : ElementSize::kVoid;
      dst.setList(readListTarget(src.ctx, t, expect, src.nesting));
      return;
    }
    case kFar:
      fail("a far pointer's landing pad is a far pointer");
    default: {
      if (!isCapability(t.tag)) fail("the message holds a pointer of unknown kind");
      // Within one message a capability is an index into that message's table: copy it as
      // it is. Between messages the index would mean another capability: the capability it
      // names in the source's table goes into the destination's.
      const auto index = static_cast<uint32_t>(t.tag >> 32);
      if (src.ctx != nullptr && src.ctx == &dst.arena->readContext()) {
        dst.setCapability(index);
        return;
      }
      const CapTable* caps = src.ctx ? src.ctx->capTable() : nullptr;
      if (caps == nullptr)
        throw InvalidArgument(
            "zcrpc's accessors cannot copy a capability from a message that has no capability "
            "table (a default value, or another message being built)");
      if (index >= caps->size())
        throw InvalidArgument("malformed Cap'n Proto message: a capability pointer indexes entry " +
                              std::to_string(index) + " of a capability table of " +
                              std::to_string(caps->size()) + " entries");
      writeCapability(dst, (*caps)[index]);
      return;
    }
  }
}

}  // namespace

void zeroObject(BuildArena& arena, uint32_t seg, Word* ref) {
  const uint64_t w = load(ref);
  switch (kindOf(w)) {
    case kStruct:
    case kList:
      zeroTarget(arena, seg, w, ref + 1 + offsetOf(w));
      break;
    case kFar: {
      const uint32_t padSeg = static_cast<uint32_t>(w >> 32);
      Word* pad = arena.segBegin(padSeg) + (static_cast<uint32_t>(w) >> 3);
      if (((w >> 2) & 1) != 0) {
        const uint64_t first = load(pad);
        const uint32_t objectSeg = static_cast<uint32_t>(first >> 32);
        zeroTarget(arena, objectSeg, load(pad + 1),
                   arena.segBegin(objectSeg) + (static_cast<uint32_t>(first) >> 3));
        zeroWords(pad, 2);
      } else {
        zeroObject(arena, padSeg, pad);
        zeroWords(pad, 1);
      }
      break;
    }
    default:
      // A capability: the index stays in the message's table (its owner drops unused ones).
      if (!isCapability(w)) fail("the message being built holds a pointer of unknown kind");
      break;
  }
}

Word* allocateFar(BuildArena& arena, Word* ref, uint32_t words, uint32_t kind, uint32_t upper,
                  uint32_t& objectSeg) {
  if (words == UINT32_MAX) failTooLarge("words", words);
  uint32_t seg;
  Word* pad = arena.allocateAnywhere(words + 1, seg);
  store(ref, farPointer(false, pad - arena.segBegin(seg), seg));
  store(pad, nearPointer(0, kind, upper));
  objectSeg = seg;
  return pad + 1;
}

StructBuilder PointerSlot::getStructSlow(uint32_t dataWords, uint32_t pointers,
                                         const DefaultValue* def) {
  if (isNull()) {
    if (def == nullptr || load(def->begin()) == 0) return initStruct(dataWords, pointers);
    copyPointer(*this, defaultRef(def));
  }
  const Resolved old = resolve(*arena, seg, ref);
  if (kindOf(old.tag) != kStruct)
    fail("a struct field of the message being built holds another kind of pointer");
  const uint32_t oldData = structDataWords(old.tag), oldPointers = structPointers(old.tag);
  Word* oldPointerSection = old.at + oldData;
  if (oldData >= dataWords && oldPointers >= pointers)
    return StructBuilder(arena, old.seg, old.at, oldPointerSection, oldData * 64, oldPointers);

  // Smaller than this schema's struct (written with an older schema, or copied from such a
  // message): move it into one large enough, as libcapnp does.
  const uint32_t newData = std::max(oldData, dataWords);
  const uint32_t newPointers = std::max(oldPointers, pointers);
  zeroPointerAndFars(*arena, ref);
  uint32_t newSeg;
  Word* at = allocate(newData + newPointers, kStruct, structUpper(newData, newPointers), newSeg);
  std::memcpy(static_cast<void*>(at), old.at, oldData * sizeof(Word));
  for (uint32_t i = 0; i < oldPointers; ++i)
    transferPointer(*arena, newSeg, at + newData + i, old.seg, oldPointerSection + i);
  zeroWords(old.at, oldData + oldPointers);
  return StructBuilder(arena, newSeg, at, at + newData, newData * 64, newPointers);
}

void PointerSlot::setStruct(const StructReader& value) {
  const uint32_t dataBytes = (value.dataBits() + 7) / 8;
  const uint32_t dataWords = (dataBytes + 7) / 8;
  const uint32_t pointers = value.pointerCount();
  uint32_t objectSeg;
  Word* at = allocate(dataWords + pointers, kStruct, structUpper(dataWords, pointers), objectSeg);
  if (dataBytes != 0) std::memcpy(static_cast<void*>(at), value.dataSection(), dataBytes);
  for (uint32_t i = 0; i < pointers; ++i)
    copyPointer(PointerSlot{arena, objectSeg, at + dataWords + i}, value.pointer(i));
}

ListBuilder PointerSlot::getListSlow(ElementSize expected, const DefaultValue* def) {
  if (isNull()) {
    if (def == nullptr || load(def->begin()) == 0)
      return ListBuilder(nullptr, 0, nullptr, 0, 0, 0, 0, expected);
    copyPointer(*this, defaultRef(def));
  }
  const Resolved r = resolve(*arena, seg, ref);
  if (kindOf(r.tag) != kList)
    fail("a list field of the message being built holds another kind of pointer");
  const uint32_t oldSize = listElementSize(r.tag);
  if (oldSize == static_cast<uint32_t>(ElementSize::kInlineComposite)) {
    // Written with a newer schema, whose elements are structs: use their first field.
    const uint64_t tag = load(r.at);
    if (kindOf(tag) != kStruct) fail("an inline-composite list's elements are not structs");
    const uint32_t dataWords = structDataWords(tag), pointers = structPointers(tag);
    switch (expected) {
      case ElementSize::kVoid:
        break;
      case ElementSize::kBit:
        fail("a struct list was found where a list of Bool was expected");
      case ElementSize::kPointer:
        if (pointers == 0) fail("the existing list is of an incompatible type");
        break;
      default:
        if (dataWords == 0) fail("the existing list is of an incompatible type");
        break;
    }
    return ListBuilder(arena, r.seg, r.at + 1, tagCount(tag), (dataWords + pointers) * 64,
                       dataWords * 64, pointers, ElementSize::kInlineComposite);
  }
  const uint32_t dataBits = kDataBits[oldSize], pointers = kPointersPer[oldSize];
  const uint32_t e = static_cast<uint32_t>(expected);
  if (expected == ElementSize::kBit) {
    if (oldSize != static_cast<uint32_t>(ElementSize::kBit))
      fail("a list of Bool was expected and another list found");
  } else {
    if (oldSize == static_cast<uint32_t>(ElementSize::kBit))
      fail("a list of Bool was found where another list was expected");
    if (dataBits < kDataBits[e] || pointers < kPointersPer[e])
      fail("the existing list is of an incompatible type");
  }
  return ListBuilder(arena, r.seg, r.at, listCount(r.tag), dataBits + pointers * 64, dataBits,
                     pointers, static_cast<ElementSize>(oldSize));
}

ListBuilder PointerSlot::getStructListSlow(uint32_t dataWords, uint32_t pointers,
                                           const DefaultValue* def) {
  if (isNull()) {
    if (def == nullptr || load(def->begin()) == 0)
      return ListBuilder(nullptr, 0, nullptr, 0, 0, 0, 0, ElementSize::kInlineComposite);
    copyPointer(*this, defaultRef(def));
  }
  const Resolved old = resolve(*arena, seg, ref);
  if (kindOf(old.tag) != kList)
    fail("a list field of the message being built holds another kind of pointer");
  const uint32_t oldSize = listElementSize(old.tag);

  if (oldSize == static_cast<uint32_t>(ElementSize::kInlineComposite)) {
    const uint64_t oldTag = load(old.at);
    if (kindOf(oldTag) != kStruct) fail("an inline-composite list's elements are not structs");
    const uint32_t oldData = structDataWords(oldTag), oldPointers = structPointers(oldTag);
    const uint32_t count = tagCount(oldTag);
    const uint32_t oldStep = oldData + oldPointers;
    if (oldData >= dataWords && oldPointers >= pointers)
      return ListBuilder(arena, old.seg, old.at + 1, count, oldStep * 64, oldData * 64,
                         oldPointers, ElementSize::kInlineComposite);
    // Smaller structs than this schema's: copy the list into larger ones.
    const uint32_t newData = std::max(oldData, dataWords);
    const uint32_t newPointers = std::max(oldPointers, pointers);
    const uint64_t newStep = newData + newPointers;
    if (newStep * count >= kMaxListCount) failTooLarge("struct list words", newStep * count);
    const uint32_t total = static_cast<uint32_t>(newStep * count);
    zeroPointerAndFars(*arena, ref);
    uint32_t newSeg;
    Word* at = allocate(total + 1, kList, listUpper(ElementSize::kInlineComposite, total), newSeg);
    store(at, nearPointer(count, kStruct, structUpper(newData, newPointers)));
    Word* src = old.at + 1;
    Word* dst = at + 1;
    for (uint32_t i = 0; i < count; ++i, src += oldStep, dst += newStep) {
      std::memcpy(static_cast<void*>(dst), src, oldData * sizeof(Word));
      for (uint32_t j = 0; j < oldPointers; ++j)
        transferPointer(*arena, newSeg, dst + newData + j, old.seg, src + oldData + j);
    }
    zeroWords(old.at, 1 + uint64_t{oldStep} * count);
    return ListBuilder(arena, newSeg, at + 1, count, static_cast<uint32_t>(newStep * 64),
                       newData * 64, newPointers, ElementSize::kInlineComposite);
  }

  // A list of primitives or pointers becomes a list of structs whose first field each is.
  const uint32_t count = listCount(old.tag);
  if (oldSize == static_cast<uint32_t>(ElementSize::kVoid))
    return initStructList(count, dataWords, pointers);
  if (oldSize == static_cast<uint32_t>(ElementSize::kBit))
    fail("a list of Bool was found where a struct list was expected");
  uint32_t newData = dataWords, newPointers = pointers;
  if (oldSize == static_cast<uint32_t>(ElementSize::kPointer))
    newPointers = std::max(newPointers, 1u);
  else
    newData = std::max(newData, 1u);
  const uint64_t newStep = newData + newPointers;
  if (newStep * count >= kMaxListCount) failTooLarge("struct list words", newStep * count);
  const uint32_t total = static_cast<uint32_t>(newStep * count);
  zeroPointerAndFars(*arena, ref);
  uint32_t newSeg;
  Word* at = allocate(total + 1, kList, listUpper(ElementSize::kInlineComposite, total), newSeg);
  store(at, nearPointer(count, kStruct, structUpper(newData, newPointers)));
  const uint32_t oldBits = kDataBits[oldSize] + kPointersPer[oldSize] * 64;
  if (oldSize == static_cast<uint32_t>(ElementSize::kPointer)) {
    for (uint32_t i = 0; i < count; ++i)
      transferPointer(*arena, newSeg, at + 1 + i * newStep + newData, old.seg, old.at + i);
  } else {
    const uint32_t oldBytes = kDataBits[oldSize] / 8;
    auto* src = reinterpret_cast<const kj::byte*>(old.at);
    for (uint32_t i = 0; i < count; ++i)
      std::memcpy(static_cast<void*>(at + 1 + i * newStep), src + uint64_t{i} * oldBytes, oldBytes);
  }
  zeroWords(old.at, (uint64_t{oldBits} * count + 63) / 64);
  return ListBuilder(arena, newSeg, at + 1, count, static_cast<uint32_t>(newStep * 64),
                     newData * 64, newPointers, ElementSize::kInlineComposite);
}

void PointerSlot::setList(const ListReader& value) {
  const uint64_t bits = uint64_t{value.size()} * value.step();
  const uint64_t words = (bits + 63) / 64;
  if (words >= kMaxListCount) failTooLarge("list words", words);
  uint32_t objectSeg;
  if (value.elementSize() != ElementSize::kInlineComposite) {
    Word* at = allocate(static_cast<uint32_t>(words), kList,
                        listUpper(value.elementSize(), value.size()), objectSeg);
    if (value.elementSize() == ElementSize::kPointer) {
      for (uint32_t i = 0; i < value.size(); ++i)
        copyPointer(PointerSlot{arena, objectSeg, at + i}, value.pointerElement(i));
    } else if (bits != 0) {
      const uint64_t wholeBytes = bits / 8;
      std::memcpy(static_cast<void*>(at), value.begin(), wholeBytes);
      if (const uint32_t leftover = bits % 8) {
        auto* last = reinterpret_cast<kj::byte*>(at) + wholeBytes;
        *last = static_cast<kj::byte>(value.begin()[wholeBytes] & ((1u << leftover) - 1));
      }
    }
    return;
  }
  const uint32_t dataWords = value.structDataBits() / 64, pointers = value.structPointers();
  Word* at = allocate(static_cast<uint32_t>(words) + 1, kList,
                      listUpper(ElementSize::kInlineComposite, static_cast<uint32_t>(words)),
                      objectSeg);
  store(at, nearPointer(value.size(), kStruct, structUpper(dataWords, pointers)));
  Word* dst = at + 1;
  for (uint32_t i = 0; i < value.size(); ++i, dst += dataWords + pointers) {
    const StructReader element = value.elementForCopy(i);
    if (dataWords != 0)
      std::memcpy(static_cast<void*>(dst), element.dataSection(), dataWords * sizeof(Word));
    for (uint32_t j = 0; j < pointers; ++j)
      copyPointer(PointerSlot{arena, objectSeg, dst + dataWords + j}, element.pointer(j));
  }
}

capnp::Text::Builder PointerSlot::getText(const char* def, uint32_t defSize) {
  if (isNull()) {
    if (defSize == 0) return capnp::Text::Builder();
    auto text = initText(defSize);
    std::memcpy(text.begin(), def, defSize);
    return text;
  }
  const Resolved r = resolve(*arena, seg, ref);
  if (kindOf(r.tag) != kList || listElementSize(r.tag) != static_cast<uint32_t>(ElementSize::kByte))
    fail("a Text field of the message being built holds something else");
  const uint32_t size = listCount(r.tag);
  auto* chars = reinterpret_cast<char*>(r.at);
  if (size == 0 || chars[size - 1] != '\0') fail("text is not NUL-terminated");
  return capnp::Text::Builder(chars, size - 1);
}

capnp::Data::Builder PointerSlot::getData(const kj::byte* def, uint32_t defSize) {
  if (isNull()) {
    if (defSize == 0) return capnp::Data::Builder();
    auto data = initData(defSize);
    std::memcpy(data.begin(), def, defSize);
    return data;
  }
  const Resolved r = resolve(*arena, seg, ref);
  if (kindOf(r.tag) != kList || listElementSize(r.tag) != static_cast<uint32_t>(ElementSize::kByte))
    fail("a Data field of the message being built holds something else");
  return capnp::Data::Builder(reinterpret_cast<kj::byte*>(r.at), listCount(r.tag));
}

void PointerSlot::setCapability(uint32_t index) {
  if (!isNull()) zeroObject(*arena, seg, ref);
  store(ref, kOther | (uint64_t{index} << 32));
}

std::shared_ptr<CapabilityHook> readCapability(const PointerRef& ref) {
  const std::optional<uint32_t> index = ref.readCapability();
  if (!index) return nullptr;
  const CapTable* caps = ref.ctx ? ref.ctx->capTable() : nullptr;
  if (caps == nullptr || *index >= caps->size())
    throw InvalidArgument("malformed Cap'n Proto message: a capability pointer indexes entry " +
                          std::to_string(*index) + " of a capability table of " +
                          std::to_string(caps ? caps->size() : 0) + " entries");
  return (*caps)[*index];
}

void writeCapability(PointerSlot slot, std::shared_ptr<CapabilityHook> cap) {
  if (!cap) {
    slot.clear();
    return;
  }
  CapTable& caps = slot.arena->capTable();
  caps.push_back(std::move(cap));
  slot.setCapability(static_cast<uint32_t>(caps.size() - 1));
}

std::shared_ptr<CapabilityHook> readBuiltCapability(const PointerSlot& slot) {
  const uint64_t w = load(slot.ref);
  if (w == 0) return nullptr;
  if (!isCapability(w)) fail("an interface field of the message being built holds something else");
  const CapTable& caps = slot.arena->capTable();
  const uint32_t index = static_cast<uint32_t>(w >> 32);
  if (index >= caps.size()) fail("an interface field of the message being built indexes no capability");
  return caps[index];
}

void PointerSlot::clear() {
  if (isNull()) return;
  zeroObject(*arena, seg, ref);
  store(ref, 0);
}

}  // namespace _

namespace {

/// The pointer word `w`, lying at word `from` of a segment, re-aimed to lie at word `to` of
/// it and point at the same object (far pointers and capabilities need nothing).
uint64_t reaim(uint64_t w, uint64_t from, uint64_t to) {
  using namespace _;
  if (w == 0 || (kindOf(w) != kStruct && kindOf(w) != kList)) return w;
  const int64_t target = static_cast<int64_t>(from) + 1 + offsetOf(w);
  return nearPointer(target - static_cast<int64_t>(to) - 1, kindOf(w), static_cast<uint32_t>(w >> 32));
}

}  // namespace

kj::ArrayPtr<Word> BuildArena::handOver(uint32_t minWords) {
  if (count_ == 0) start();
  if (count_ > 1)
    throw InvalidArgument(
        "zcrpc's builder spread this message over " + std::to_string(count_) +
        " segments, and Cap'n Proto's builder cannot continue such a message: take Cap'n "
        "Proto's builder (getRoot, initRoot, ...Capnp()) before zcrpc's, or only one of them");
  const uint32_t used = static_cast<uint32_t>(used_.at[0].size());
  const uint32_t free = capacity_[0] - used;
  if (free < std::max(minWords, 1u))
    throw InvalidArgument(
        "zcrpc's builder filled this message's first segment, and Cap'n Proto's builder cannot "
        "continue it: take Cap'n Proto's builder (getRoot, initRoot, ...Capnp()) before zcrpc's, "
        "or give the message a larger first segment");
  Word* first = segBegin(0);
  _::store(first + used, reaim(_::load(first), 0, used));
  handedAt_ = used;
  capacity_[0] = used;
  frozen_ = true;
  return kj::ArrayPtr<Word>(first + used, free);
}

kj::ArrayPtr<const kj::ArrayPtr<const Word>> BuildArena::segmentsAfterHandOver(
    kj::ArrayPtr<const kj::ArrayPtr<const Word>> theirs) {
  if (theirs.size() > kMaxSegments)
    throw InvalidArgument("the message needs more than " + std::to_string(kMaxSegments) +
                          " segments, the most a zcrpc frame carries");
  Word* first = segBegin(0);
  _::store(first, reaim(_::load(first + handedAt_), handedAt_, 0));
  used_.at[0] = kj::ArrayPtr<const Word>(first, handedAt_ + theirs[0].size());
  for (size_t i = 1; i < theirs.size(); ++i) {
    used_.at[i] = theirs[i];
    capacity_[i] = static_cast<uint32_t>(theirs[i].size());
  }
  count_ = static_cast<uint32_t>(theirs.size());
  return kj::arrayPtr(used_.at, count_);
}

Word* BuildArena::allocateAnywhere(uint32_t words, uint32_t& seg) {
  if (frozen_)
    throw InvalidArgument(
        "this message was handed over to Cap'n Proto's builder; zcrpc's builder cannot allocate "
        "in it any more");
  if (Word* at = tryAllocate(withSpace_, words)) {
    seg = withSpace_;
    return at;
  }
  if (count_ == kMaxSegments)
    throw InvalidArgument("the message needs more than " + std::to_string(kMaxSegments) +
                          " segments, the most a zcrpc frame carries");
  kj::ArrayPtr<Word> more = source_->newSegment(words);
  if (more.size() < words)
    throw InvalidArgument("the transport gave a segment smaller than the message asked for");
  seg = count_++;
  used_.at[seg] = kj::ArrayPtr<const Word>(more.begin(), words);
  capacity_[seg] = static_cast<uint32_t>(std::min<size_t>(more.size(), UINT32_MAX));
  withSpace_ = seg;
  return more.begin();
}

}  // namespace zcrpc::wire
