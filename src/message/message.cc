#include "zcrpc/message.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <new>
#include <string>
#include <utility>

#include "zcrpc/error.h"

namespace zcrpc {

OutgoingMessage::~OutgoingMessage() noexcept(false) {
  if (source_) source_->abandon();
  if (capsOut_) [[unlikely]] dropCapTable();
  if (metadataOut_) [[unlikely]] dropMetadata();
}

void OutgoingMessage::dropCapTable() noexcept {
  delete capsOut_;
  capsOut_ = nullptr;
}

Metadata& OutgoingMessage::metadata() {
  if (!metadataOut_) metadataOut_ = new Metadata();
  return *metadataOut_;
}

void OutgoingMessage::dropMetadata() noexcept { delete std::exchange(metadataOut_, nullptr); }

kj::ArrayPtr<capnp::word> OutgoingMessage::allocateSegment(capnp::uint minimumSize) {
  if (!source_) throw InvalidArgument("OutgoingMessage used before Connection::tryStartMessage or after send");
  if (!firstTaken_) {
    firstTaken_ = true;
    if (builder_ == Builder::kWire) {
      // zcrpc's builder wrote the message so far: Cap'n Proto's continues it in the free
      // space of the first segment, starting with a copy of the root pointer.
      auto rest = arena_.handOver(minimumSize);
      builder_ = Builder::kHandedOver;
      return rest;
    }
    builder_ = Builder::kCapnp;
    if (first_.size() >= minimumSize) return first_;
    // capnp asked for more than the reserved first segment: leave it empty and grow.
    auto more = source_->allocateMore(minimumSize);
    return more;
  }
  return source_->allocateMore(minimumSize);
}

kj::ArrayPtr<capnp::word> OutgoingMessage::newSegment(uint32_t minWords) {
  return source_->allocateMore(minWords);
}

wire::_::PointerSlot OutgoingMessage::startWire() {
  if (!source_) throw InvalidArgument("OutgoingMessage used before Connection::tryStartMessage or after send");
  if (builder_ == Builder::kCapnp)
    throw InvalidArgument(
        "this message is being built with Cap'n Proto's own builder (getRoot, initRoot or a "
        "...Capnp() accessor); zcrpc's accessors cannot continue it: keep using Cap'n Proto's");
  if (builder_ == Builder::kHandedOver)
    throw InvalidArgument(
        "this message was handed over to Cap'n Proto's own builder (a ...Capnp() accessor, "
        "getRoot or initRoot after zcrpc's accessors); keep using Cap'n Proto's");
  builder_ = Builder::kWire;
  return arena_.rootSlot();
}

kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> OutgoingMessage::segmentsForSendSlow() {
  if (builder_ == Builder::kNone) {
    // Nobody wrote the message: a null root in the first segment, without Cap'n Proto's
    // arena.
    startWire();
    return arena_.segmentsForOutput();
  }
  return builtSegments();
}

kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> OutgoingMessage::builtSegments() {
  switch (builder_) {
    case Builder::kNone:
      return nullptr;
    case Builder::kWire:
      return arena_.segmentsForOutput();
    case Builder::kCapnp:
      return getSegmentsForOutput();
    case Builder::kHandedOver:
      return arena_.segmentsAfterHandOver(getSegmentsForOutput());
  }
  return nullptr;
}

namespace {

/// Where referenceData() finds a Data field: its pointer, and its union's discriminant.
struct DataField {
  capnp::Schema schema;
  std::string name;
  uint32_t pointerIndex = 0;
  uint16_t discriminant = capnp::schema::Field::NO_DISCRIMINANT;
  uint32_t discriminantAt = 0;  // bytes into the data section
};

/// The schema lookup costs more than a whole small call (hundreds of instructions through
/// the schema's own Cap'n Proto encoding), so each thread keeps the fields it used last.
template <typename What>
const DataField& findDataField(capnp::StructSchema schema, kj::StringPtr name, const What& what) {
  static thread_local std::array<DataField, 8> cache;
  static thread_local size_t next = 0;
  for (const DataField& f : cache)
    if (f.schema == schema && f.name == name.cStr()) return f;
  auto found = schema.findFieldByName(name);
  if (found == nullptr) throw InvalidArgument(what() + ": the struct has no field of that name");
  const capnp::StructSchema::Field field = KJ_ASSERT_NONNULL(found);
  const auto proto = field.getProto();
  if (!proto.isSlot() || field.getType().which() != capnp::schema::Type::DATA)
    throw InvalidArgument(what() + ": the field is not of type Data");
  DataField& f = cache[next++ % cache.size()];
  f.schema = schema;
  f.name = name.cStr();
  f.pointerIndex = proto.getSlot().getOffset();
  f.discriminant = proto.getDiscriminantValue();
  f.discriminantAt = schema.getProto().getStruct().getDiscriminantOffset() * 2;
  return f;
}

}  // namespace

void OutgoingMessage::referenceData(capnp::AnyStruct::Builder target, capnp::StructSchema schema,
                                    kj::StringPtr name, kj::ArrayPtr<const kj::byte> bytes) {
  auto pointers = target.getPointerSection();
  auto data = target.getDataSection();
  // A struct's pointer section follows its data section, whole words of it.
  const StructSections sections{data.begin(), data.size(),
                                reinterpret_cast<capnp::word*>(data.end()), pointers.size()};
  referenceDataIn(sections, schema, name, bytes, [&](uint32_t index, capnp::uint size) {
    return pointers[index].initAs<capnp::Data>(size);
  });
}

void OutgoingMessage::referenceData(const wire::StructBuilder& target, capnp::StructSchema schema,
                                    kj::StringPtr name, kj::ArrayPtr<const kj::byte> bytes) {
  const StructSections sections{target.dataSection(), target.dataBits() / 8,
                                target.pointerSection(), target.pointerCount()};
  wire::StructBuilder builder = target;
  referenceDataIn(sections, schema, name, bytes, [&](uint32_t index, capnp::uint size) {
    return builder.pointer(index).initData(size);
  });
}

template <typename InitData>
void OutgoingMessage::referenceDataIn(const StructSections& target, capnp::StructSchema schema,
                                      kj::StringPtr name, kj::ArrayPtr<const kj::byte> bytes,
                                      InitData init) {
  // Built only for an error.
  const auto what = [&] {
    return "referenceData(" + std::string(name.cStr()) + ") on " +
           std::string(schema.getShortDisplayName().cStr());
  };
  if (!source_) throw InvalidArgument(what() + ": the message is not open (not started, or sent)");
  const DataField& field = findDataField(schema, name, what);
  if (bytes.size() >= (uint64_t{1} << 29))
    throw InvalidArgument(what() + ": " + std::to_string(bytes.size()) +
                          " bytes exceed Cap'n Proto's limit for a Data field (2^29 - 1)");
  const uint32_t index = field.pointerIndex;
  const uint16_t discriminant = field.discriminant;
  const uint64_t discriminantAt = field.discriminantAt;
  if (index >= target.pointerCount ||
      (discriminant != capnp::schema::Field::NO_DISCRIMINANT &&
       discriminantAt + 2 > target.dataBytes))
    throw InvalidArgument(what() + ": the struct given is not of that type");
  capnp::word* pointer = target.pointers + index;
  bool inMessage = false;
  for (auto segment : builtSegments())
    inMessage = inMessage || (pointer >= segment.begin() && pointer < segment.end());
  if (!inMessage) throw InvalidArgument(what() + ": the struct is not part of this message");

  if (discriminant != capnp::schema::Field::NO_DISCRIMINANT)
    std::memcpy(target.data + discriminantAt, &discriminant,
                sizeof discriminant);  // little-endian
  // An earlier reference for this field is replaced.
  size_t slot = 0;
  while (slot < referenceCount_ && references_.at[slot].pointer != pointer) ++slot;
  if (slot < referenceCount_) references_.at[slot] = references_.at[--referenceCount_];
  const auto size = static_cast<capnp::uint>(bytes.size());
  if (bytes.size() < source_->gathersFromBytes() || referenceCount_ == kMaxReferences) {
    auto copy = init(index, size);
    if (size) std::memcpy(copy.begin(), bytes.begin(), size);
    return;
  }
  // An empty Data until send(), whose pointer tells the transport that the field was not
  // set again meanwhile (a later value wins, as it would over a copy).
  init(index, 0);
  uint64_t placeholder;
  std::memcpy(&placeholder, static_cast<const void*>(pointer), sizeof placeholder);
  references_.at[referenceCount_++] = {pointer, placeholder, bytes};
}

void IncomingMessage::initWireContext() {
  if (!owner_) throw InvalidArgument("IncomingMessage has no message (released or moved from)");
  const ParsedFrame& f = frame();
  const ReaderLimits& l = owner_->readerLimits();
  wire_.reset(f.segments.data(), static_cast<uint32_t>(f.segmentCount), l.traversalLimitWords,
              l.nestingLimit);
  wire_.setCapTable(caps_);
  wireReady_ = true;
}

capnp::MessageReader& IncomingMessage::makeReader() {
  if (!owner_) throw InvalidArgument("IncomingMessage has no message (released or moved from)");
  const ReaderLimits& l = owner_->readerLimits();
  capnp::ReaderOptions opts;
  opts.traversalLimitInWords = l.traversalLimitWords;
  opts.nestingLimit = l.nestingLimit;
  return reader_.emplace(frame(), opts);
}

namespace {

/// Each thread keeps the last heap copy's block it freed, for its next copy: a handler's
/// request on a connection that carries capabilities is copied every time (see
/// Session::dispatch), so a thread that serves such calls one after another allocates
/// once. Blocks larger than kMostBytes go back to the allocator. Trivially destructible,
/// so its storage stays usable until the thread ends; SpareBlockFreer frees the block at
/// thread exit and closes the cache for releases that come after it.
struct SpareBlock {
  static constexpr size_t kMostBytes = 256 << 10;
  void* block = nullptr;
  size_t bytes = 0;
  bool closed = false;
};
thread_local SpareBlock spare;
struct SpareBlockFreer {
  ~SpareBlockFreer() {
    ::operator delete(std::exchange(spare.block, nullptr));
    spare.closed = true;
  }
};
thread_local SpareBlockFreer spareFreer;  // constructed where a block is first kept

/// A received message copied out of transport memory into one heap block: this object,
/// then the segments, then the extension area (whose records' offsets stay valid: the area
/// is copied whole). Freed with its lease, on any thread.
class HeapLease final : public LeaseOwner {
 public:
  static HeapLease* copy(const ParsedFrame& frame, const ReaderLimits& limits) {
    const size_t need = sizeof(HeapLease) + frame.payloadBytes + frame.extensionBytes;
    void* block;
    size_t bytes;
    if (spare.block && spare.bytes >= need) {
      block = std::exchange(spare.block, nullptr);
      bytes = spare.bytes;
    } else {
      bytes = need;
      block = ::operator new(bytes);
    }
    return new (block) HeapLease(frame, limits, bytes);
  }
  const ParsedFrame& leasedFrame(uint32_t) const noexcept override { return frame_; }
  const ReaderLimits& readerLimits() const noexcept override { return limits_; }
  void releaseLease(uint32_t) noexcept override {
    const size_t bytes = bytes_;
    this->~HeapLease();
    void* block = this;
    if (!spare.closed && bytes <= SpareBlock::kMostBytes && (!spare.block || spare.bytes < bytes)) {
      (void)&spareFreer;  // this thread frees what it keeps when it ends
      std::swap(block, spare.block);
      spare.bytes = bytes;
    }
    ::operator delete(block);
  }
  bool heapCopy() const noexcept override { return true; }

 private:
  HeapLease(const ParsedFrame& frame, const ReaderLimits& limits, size_t bytes) noexcept
      : limits_(limits), bytes_(bytes) {
    // Only the fields a reader uses: the frame's arrays are mostly unused.
    frame_.header = frame.header;
    frame_.segmentCount = frame.segmentCount;
    frame_.payloadBytes = frame.payloadBytes;
    frame_.trace = frame.trace;
    auto* at = reinterpret_cast<capnp::word*>(this + 1);
    for (size_t i = 0; i < frame.segmentCount; ++i) {
      const auto& seg = frame.segments[i];
      if (seg.size()) std::memcpy(at, seg.begin(), seg.size() * sizeof(capnp::word));
      frame_.segments[i] = kj::ArrayPtr<const capnp::word>(at, seg.size());
      at += seg.size();
    }
    if (frame.extensionBytes) {
      std::memcpy(at, frame.extensionArea, frame.extensionBytes);
      frame_.extensionArea = reinterpret_cast<const std::byte*>(at);
      frame_.extensionBytes = frame.extensionBytes;
      frame_.extensionCount = frame.extensionCount;
      std::copy_n(frame.extensions.begin(), frame.extensionCount, frame_.extensions.begin());
    }
  }
  ~HeapLease() = default;
  ParsedFrame frame_;
  ReaderLimits limits_;
  size_t bytes_;  // of the block, this object included
};
static_assert(sizeof(HeapLease) % alignof(capnp::word) == 0);

}  // namespace

void IncomingMessage::moveToHeap() {
  if (!owner_ || owner_->heapCopy()) return;
  auto* copy = HeapLease::copy(frame(), owner_->readerLimits());
  releaseHeld();  // the capabilities stay with the message
  owner_ = copy;
  frame_ = &copy->leasedFrame(0);
  slot_ = 0;
}

void IncomingMessage::dropCapTable() noexcept {
  delete std::exchange(caps_, nullptr);
}

void IncomingMessage::dropMetadata() noexcept { delete std::exchange(metadata_, nullptr); }

void IncomingMessage::releaseHeld() noexcept {
  reader_.reset();
  wireReady_ = false;
  std::exchange(owner_, nullptr)->releaseLease(slot_);
}

}  // namespace zcrpc
