// zcrpc — Cap'n Proto messages built and read in place in transport memory.
#pragma once

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/schema.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <utility>

#include "zcrpc/frame.h"
#include "zcrpc/metadata.h"
#include "zcrpc/wire.h"

namespace zcrpc {

/// Implemented by each transport: space for the message being built. Not for users.
class SegmentSource {
 public:
  /// At least `minWords` zeroed words of transport memory for the open message. Throws
  /// InvalidArgument when the message would exceed the maximum size, Overloaded when the
  /// transport has no room left for it.
  virtual kj::ArrayPtr<capnp::word> allocateMore(uint32_t minWords) = 0;
  /// The open message is dropped unsent; its space goes back to the transport.
  virtual void abandon() noexcept = 0;
  /// Data of at least this many bytes given to OutgoingMessage::referenceData stays in the
  /// caller's memory until send(), which gathers it into the frame; smaller data, and all
  /// data for a transport that does not gather (the default), is copied in at once.
  virtual uint64_t gathersFromBytes() const noexcept { return UINT64_MAX; }

 protected:
  ~SegmentSource() = default;
};

/// A Cap'n Proto message whose segments lie in transport memory: the first one reserved
/// by `Connection::tryStartMessage` (size hint), further ones from the ring when they fit
/// and otherwise from the connection's arena. Built on the stack, filled, then sent with
/// `Connection::send`; destroying it unsent gives the space back.
///
/// Two builders can write it. `build<T>()` gives zcrpc's generated accessors
/// (zcrpc/wire.h), which write straight into the transport memory with no per-message arena;
/// Cap'n Proto's own (`getRoot<T>()`, `initRoot<T>()`, the `...Capnp()` accessors of the
/// stubs) work as on any capnp::MessageBuilder. Mixing them on one message: zcrpc's builder
/// first and then Cap'n Proto's hands the message over (Cap'n Proto continues it where zcrpc's
/// stopped, and zcrpc's builder may not be used again on it; a message that zcrpc's builder
/// spread over more than its first segment cannot be handed over and throws
/// InvalidArgument); Cap'n Proto's first and then zcrpc's throws InvalidArgument.
///
/// Threads: the thread that started it, which must be the connection's sending thread.
/// Not movable (Cap'n Proto builders are not).
class OutgoingMessage final : public capnp::MessageBuilder, private wire::BuildArena::Source {
 public:
  // User-provided, so that value-initialisation (std::optional::emplace(), `T()`) runs
  // only the member initialisers below and does not first zero all 1.3 KB of the object
  // (the arena's segment table is left uninitialised on purpose).
  OutgoingMessage() {}
  ~OutgoingMessage() noexcept(false) override;

  bool isOpen() const noexcept { return source_ != nullptr; }

  /// The root struct, built with zcrpc's accessors (zcrpc::wire::Builder<T>: the generated
  /// ones where capnpc-zcrpc made them, else Cap'n Proto's own): the root already there, or a
  /// new one, as getRoot<T>() does. Throws InvalidArgument when the message is not open or
  /// Cap'n Proto's builder already wrote it (see the class comment).
  template <typename T>
  wire::Builder<T> build() {
    if constexpr (wire::Accessors<T>::kGenerated) {
      using W = typename wire::Accessors<T>::Wire;
      return wire::Builder<T>(wireRoot().getStruct(W::kDataWords, W::kPointers, nullptr));
    } else {
      return getRoot<T>();
    }
  }

  /// The frame header in transport memory. Set kind, callId, interfaceId and methodId
  /// before sending; the transport fills the length, segment count and table offset.
  FrameHeader& header() noexcept { return *header_; }

  kj::ArrayPtr<capnp::word> allocateSegment(capnp::uint minimumSize) override;

  /// Trace context the transport appends to the frame (kFlagTraced); none by default.
  void setTrace(TraceContext trace) noexcept { trace_ = trace; }
  const TraceContext& trace() const noexcept { return trace_; }

  /// The frame's extension area (kFlagExtended), which send() appends after the segment
  /// table and trace context: whole records (ExtensionHeader, payload), at most
  /// kMaxExtensionRecords of them and Connection::maxExtensionBytes() in all (send()
  /// throws InvalidArgument otherwise: extensionAreaFits()). Borrowed until send()
  /// returns. None by default; for
  /// the RPC layer, which gives its records their meaning.
  void setExtensions(kj::ArrayPtr<const capnp::word> records) noexcept { extensions_ = records; }
  /// The capabilities set in the message's interface fields so far, in the order their
  /// pointers index (null: none). The RPC layer turns them into the frame's capTable record
  /// when it sends the message.
  wire::CapTable* outgoingCapTable() noexcept { return capsOut_; }
  kj::ArrayPtr<const capnp::word> extensions() const noexcept { return extensions_; }
  /// Per-call metadata (zcrpc/metadata.h), made on first use: the RPC layer sends it in
  /// the frame's metadata record. Null from outgoingMetadata() when never used.
  Metadata& metadata();
  const Metadata* outgoingMetadata() const noexcept { return metadataOut_; }

  /// Bounds on waiting for room while this message is built and sent (a segment or
  /// referenced data that needs more of the peer's unreleased memory): until the build
  /// deadline, and each wait at most the build wait; past either the allocation throws
  /// Overloaded. Neither makes a wait longer than the connection's connectTimeout.
  /// Connection::startMessage() sets the deadline to its own; both are unbounded (so
  /// connectTimeout alone applies) after tryStartMessage().
  void setBuildDeadline(std::chrono::steady_clock::time_point d) noexcept { buildDeadline_ = d; }
  /// As setBuildDeadline, with the deadline `timeout` after buildDeadline() is first
  /// asked for: building a message that never waits reads no clock.
  void setBuildTimeout(std::chrono::nanoseconds timeout) noexcept {
    buildDeadline_ = kLazyDeadline;
    buildTimeout_ = timeout;
  }
  std::chrono::steady_clock::time_point buildDeadline() const noexcept {
    if (buildDeadline_ == kLazyDeadline) [[unlikely]]
      buildDeadline_ = std::chrono::steady_clock::now() + buildTimeout_;
    return buildDeadline_;
  }
  void setBuildWait(std::chrono::nanoseconds w) noexcept { buildWait_ = w; }
  std::chrono::nanoseconds buildWait() const noexcept { return buildWait_; }

  /// Told while the transport waits for room for this message (a segment or referenced
  /// data needs memory the peer has not released), before each slice of the wait (20 us,
  /// growing to 1 ms). The owner may meanwhile free what the peer waits on: a Channel
  /// takes the answers that arrived, since a server that cannot send them holds the
  /// requests whose memory this message waits for. It must not start or send a message
  /// on the same connection. None by default; transports without such waits never call it.
  class RoomWaitHook {
   public:
    virtual void whileWaitingForRoom() = 0;

   protected:
    ~RoomWaitHook() = default;
  };
  void setRoomWaitHook(RoomWaitHook* hook) noexcept { roomWaitHook_ = hook; }
  RoomWaitHook* roomWaitHook() const noexcept { return roomWaitHook_; }

  /// Sets the Data field named `field` of `target`, a struct (or group) of this message,
  /// to `bytes` without copying them into the message yet, where the transport can: tcp
  /// takes data from 16 KiB on from the caller's memory at send(), appended to the segment
  /// that holds the field, and the shm and loopback rings copy data from 1 KiB on there at
  /// send(). The receiver then reads an ordinary message of one segment (unlike
  /// capnp::Orphanage::referenceExternalData, whose data becomes a segment of its own and
  /// costs Cap'n Proto's multi-segment bookkeeping on both ends). rdma, and smaller data,
  /// get a copy now, as setData() would make. A member of a union becomes the union's
  /// active member (pass the union's group, e.g. `root.getChoice()`).
  ///
  /// The bytes must stay unchanged until send() returns, and no longer: what the kernel has
  /// not taken by then is copied. Data left to send() reads as empty until then. Setting or
  /// clearing the field again replaces the reference, as it would replace a copy. Throws
  /// InvalidArgument when the struct has no Data field of that name or is not part of this
  /// message, or when the message is not open.
  /// `target` may be Cap'n Proto's builder or zcrpc's (OutgoingMessage::build()).
  template <typename StructBuilder>
  void referenceData(StructBuilder target, kj::StringPtr field,
                     kj::ArrayPtr<const kj::byte> bytes) {
    if constexpr (requires { target._wire(); })
      referenceData(target._wire(), capnp::Schema::from<typename StructBuilder::Builds>(), field,
                    bytes);
    else
      referenceData(capnp::toAny(target),
                    capnp::Schema::from<capnp::FromBuilder<StructBuilder>>(), field, bytes);
  }
  /// As above, for a struct known by its schema (`schema` must be `target`'s type).
  void referenceData(capnp::AnyStruct::Builder target, capnp::StructSchema schema,
                     kj::StringPtr field, kj::ArrayPtr<const kj::byte> bytes);
  void referenceData(const wire::StructBuilder& target, capnp::StructSchema schema,
                     kj::StringPtr field, kj::ArrayPtr<const kj::byte> bytes);

  /// Data that referenceData() left in the caller's memory, for the transport to gather:
  /// the field's pointer, its value until send() points it at the data (an empty Data; the
  /// field was set again when it differs), and the bytes.
  struct Reference {
    capnp::word* pointer;
    uint64_t placeholder;
    kj::ArrayPtr<const kj::byte> bytes;
  };
  /// At most this many per message stay in the caller's memory; further ones are copied.
  static constexpr size_t kMaxReferences = 8;
  kj::ArrayPtr<const Reference> references() const noexcept {
    return kj::arrayPtr(references_.at, referenceCount_);
  }
  /// For transports: the index in `segments` of the segment that holds reference `r`'s
  /// field, or -1 when the field was set again since (its placeholder is gone).
  static int gatherSegment(const Reference& r,
                           kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) noexcept {
    for (size_t s = 0; s < segments.size(); ++s) {
      if (r.pointer < segments[s].begin() || r.pointer >= segments[s].end()) continue;
      uint64_t word;
      std::memcpy(&word, static_cast<const void*>(r.pointer), sizeof word);
      return word == r.placeholder ? static_cast<int>(s) : -1;
    }
    return -1;
  }
  /// For transports: points reference `r`'s field at its data, placed `dataWord` words into
  /// the segment that starts at `segment` (the field's own segment): a near list pointer.
  static void pointAtGathered(const Reference& r, const capnp::word* segment,
                              uint64_t dataWord) noexcept {
    const uint64_t offset = dataWord - static_cast<uint64_t>(r.pointer - segment) - 1;
    const uint64_t word = (offset << 2) | 1 | ((uint64_t{r.bytes.size()} << 3 | 2) << 32);
    std::memcpy(static_cast<void*>(r.pointer), &word, sizeof word);
  }

  /// Bytes the transport added to the segments at send() (gathered data and its padding):
  /// with the segments' words, the payload the peer receives. For the transport.
  void setGatheredBytes(uint64_t bytes) noexcept { gatheredBytes_ = bytes; }
  uint64_t gatheredBytes() const noexcept { return gatheredBytes_; }

  /// The segments to send; a message nobody wrote to becomes one with a null root.
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segmentsForSend() {
    if (builder_ == Builder::kWire) [[likely]] return arena_.segmentsForOutput();
    return segmentsForSendSlow();
  }

  // For transports.
  void open(SegmentSource& source, FrameHeader& header, kj::ArrayPtr<capnp::word> first) noexcept {
    source_ = &source;
    header_ = &header;
    first_ = first;
    firstTaken_ = false;
    trace_ = TraceContext{};
    buildDeadline_ = std::chrono::steady_clock::time_point::max();
    buildWait_ = std::chrono::nanoseconds::max();
    roomWaitHook_ = nullptr;
    referenceCount_ = 0;
    gatheredBytes_ = 0;
    builder_ = Builder::kNone;
    arena_.reset(*this, first);
    extensions_ = nullptr;
    if (capsOut_) [[unlikely]] dropCapTable();
    if (metadataOut_) [[unlikely]] dropMetadata();
  }
  void markSent() noexcept { source_ = nullptr; }
  void dropCapTable() noexcept;
  void dropMetadata() noexcept;

 private:
  /// Which builder writes the message (see the class comment).
  enum class Builder : uint8_t { kNone, kWire, kCapnp, kHandedOver };

  kj::ArrayPtr<capnp::word> newSegment(uint32_t minWords) override;  // for arena_
  wire::CapTable& capTable() override {  // for arena_: interface fields being set
    if (!capsOut_) capsOut_ = new wire::CapTable();
    return *capsOut_;
  }
  wire::_::PointerSlot wireRoot() {
    if (builder_ == Builder::kWire) [[likely]] return arena_.rootSlot();
    return startWire();
  }
  wire::_::PointerSlot startWire();
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segmentsForSendSlow();
  /// The segments written so far, whichever builder wrote them.
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> builtSegments();
  /// What both referenceData() overloads share: `pointer` is the Data field's pointer slot
  /// in `target`'s section, `init(index, size)` sets that field to `size` zeroed bytes.
  struct StructSections {
    kj::byte* data;
    size_t dataBytes;
    capnp::word* pointers;
    size_t pointerCount;
  };
  template <typename InitData>
  void referenceDataIn(const StructSections& target, capnp::StructSchema schema,
                       kj::StringPtr name, kj::ArrayPtr<const kj::byte> bytes, InitData init);

  static constexpr auto kLazyDeadline = std::chrono::steady_clock::time_point::min();
  SegmentSource* source_ = nullptr;
  FrameHeader* header_ = nullptr;
  mutable std::chrono::steady_clock::time_point buildDeadline_ = std::chrono::steady_clock::time_point::max();
  std::chrono::nanoseconds buildTimeout_{0};  // with buildDeadline_ kLazyDeadline
  std::chrono::nanoseconds buildWait_ = std::chrono::nanoseconds::max();
  RoomWaitHook* roomWaitHook_ = nullptr;
  kj::ArrayPtr<capnp::word> first_;
  bool firstTaken_ = false;
  TraceContext trace_;
  kj::ArrayPtr<const capnp::word> extensions_;
  size_t referenceCount_ = 0;
  uint64_t gatheredBytes_ = 0;
  Builder builder_ = Builder::kNone;
  // Left uninitialised until used (referenceCount_ says how many are): no constructor
  // runs on them when a message is made, once per call.
  union References {
    References() noexcept {}
    Reference at[kMaxReferences];
  } references_;
  // Interface fields set (capTable()); null: none. Owned (a plain pointer: the destructor
  // and open() of every message pay only a test for it).
  wire::CapTable* capsOut_ = nullptr;
  Metadata* metadataOut_ = nullptr;  // metadata(); owned, as capsOut_
  wire::BuildArena arena_;  // zcrpc's builder's segments (builder_ kWire / kHandedOver)
};

/// Limits applied to every Cap'n Proto reader over received bytes.
struct ReaderLimits {
  uint64_t traversalLimitWords = 8 * 1024 * 1024;
  int nestingLimit = 64;
};

/// Implemented by each transport: owner of the memory a lease points at. Not for users.
class LeaseOwner {
 public:
  /// The frame (validated private copy of header and segment table) behind `slot`.
  virtual const ParsedFrame& leasedFrame(uint32_t slot) const noexcept = 0;
  virtual const ReaderLimits& readerLimits() const noexcept = 0;
  /// Gives the space back. Any thread may call this, at most once per lease.
  virtual void releaseLease(uint32_t slot) noexcept = 0;
  /// True for a heap copy (IncomingMessage::moveToHeap), which holds no transport memory.
  virtual bool heapCopy() const noexcept { return false; }

 protected:
  ~LeaseOwner() = default;
};

/// A received message, read in place where it lies in transport memory: a move-only lease.
/// The bytes stay valid, and the space stays taken, until the lease is released (by
/// `release()`, destruction, or move-assignment over it). Hold leases briefly: the ring
/// reclaims space in arrival order, so one old lease holds back everything after it.
///
/// Threads: any one thread at a time; may be handed to another thread and released there.
/// The connection must outlive every lease it handed out.
class IncomingMessage final {
 public:
  IncomingMessage() = default;
  IncomingMessage(LeaseOwner& owner, uint32_t slot) noexcept
      : owner_(&owner), frame_(&owner.leasedFrame(slot)), slot_(slot) {}
  // Moves hand over the lease, not the reader (it is rebuilt on demand): a response moves
  // several times on its way to the caller, so these are inline and cheap.
  IncomingMessage(IncomingMessage&& other) noexcept
      : owner_(std::exchange(other.owner_, nullptr)), frame_(other.frame_), slot_(other.slot_),
        caps_(std::exchange(other.caps_, nullptr)),
        metadata_(std::exchange(other.metadata_, nullptr)) {
    if (other.reader_) [[unlikely]] other.reader_.reset();
    other.wireReady_ = false;
  }
  IncomingMessage& operator=(IncomingMessage&& other) noexcept {
    if (this != &other) {
      release();
      owner_ = std::exchange(other.owner_, nullptr);
      frame_ = other.frame_;
      slot_ = other.slot_;
      caps_ = std::exchange(other.caps_, nullptr);
      metadata_ = std::exchange(other.metadata_, nullptr);
      if (other.reader_) [[unlikely]] other.reader_.reset();
      other.wireReady_ = false;
    }
    return *this;
  }
  ~IncomingMessage() { release(); }

  bool valid() const noexcept { return owner_ != nullptr; }
  explicit operator bool() const noexcept { return valid(); }

  /// Private, validated copy of the frame header.
  const FrameHeader& header() const noexcept { return frame().header; }
  size_t payloadBytes() const noexcept { return frame().payloadBytes; }
  size_t segmentCount() const noexcept { return frame().segmentCount; }
  /// The sender's trace context (traceId 0 when the frame carried none).
  const TraceContext& trace() const noexcept { return frame().trace; }
  /// The records of the frame's extension area (validated copies of their headers).
  std::span<const ExtensionRecord> extensions() const noexcept {
    const ParsedFrame& f = frame();
    return {f.extensions.data(), f.extensionCount};
  }
  /// The bytes of record `r` (one of extensions()), header included, where they lie in
  /// transport memory: the peer may still be writing them, so copy them out once and use
  /// only the copy.
  std::span<const std::byte> extensionBytes(const ExtensionRecord& r) const noexcept {
    return {frame().extensionArea + r.offset, r.bytes};
  }

  /// The Cap'n Proto reader over the segments in place. Readers obtained from it are valid
  /// until the lease is released or moved from.
  capnp::MessageReader& reader() {
    if (reader_) [[likely]] return *reader_;
    return makeReader();
  }

  template <typename T>
  typename T::Reader getRoot() {
    return reader().getRoot<T>();
  }

  /// The root struct read with zcrpc's accessors (zcrpc::wire::Reader<T>: the generated ones
  /// where capnpc-zcrpc made them, else Cap'n Proto's own), with the connection's
  /// ReaderLimits. Readers are valid until the lease is released or moved from; they share
  /// one traversal budget (separate from reader()'s).
  template <typename T>
  wire::Reader<T> read() {
    if constexpr (wire::Accessors<T>::kGenerated)
      return wire::Reader<T>(wireContext().root());
    else
      return getRoot<T>();
  }
  /// The state zcrpc's readers of this message share (its segments, the traversal budget).
  wire::ReadContext& wireContext() {
    if (!wireReady_) [[unlikely]]
      initWireContext();
    return wire_;
  }

  /// Gives the lease back, and drops the message's capabilities (see capTable()) and
  /// metadata.
  void release() noexcept {
    if (owner_) releaseHeld();
    if (caps_) [[unlikely]] dropCapTable();
    if (metadata_) [[unlikely]] dropMetadata();
  }

  /// The capabilities the message carried (its frame's capTable record, decoded by the RPC
  /// layer when the message arrived): what zcrpc's accessors of interface fields return.
  /// Null when it carried none. They live as long as the message holds its lease (moved
  /// with it, kept by moveToHeap(), dropped by release()).
  const wire::CapTable* capTable() const noexcept { return caps_; }
  /// For the RPC layer: the decoded table of this message.
  void setCapTable(std::unique_ptr<wire::CapTable> caps) noexcept {
    if (caps_) dropCapTable();
    caps_ = caps.release();
    wireReady_ = false;  // the reader context picks the table up when next set up
  }

  /// The metadata the message carried (its frame's metadata record, decoded by the RPC
  /// layer), null when none; kept and dropped as capTable() is.
  const Metadata* metadata() const noexcept { return metadata_; }
  /// For the RPC layer: the decoded metadata of this message.
  void setMetadata(std::unique_ptr<Metadata> metadata) noexcept {
    if (metadata_) dropMetadata();
    metadata_ = metadata.release();
  }

  /// Moves the message out of transport memory into a heap copy of its own and gives the
  /// transport's space back: for a message that must be held long (the ring reclaims space
  /// in arrival order). Readers obtained before are invalid afterwards. Nothing happens
  /// when there is no message or it is a heap copy already.
  void moveToHeap();
  /// True when the message is a heap copy (see moveToHeap()).
  bool onHeap() const noexcept { return owner_ && owner_->heapCopy(); }

  /// For transports: makes this hold the lease on `slot` (releasing what it held), as
  /// assigning `IncomingMessage(owner, slot)` would, without building a temporary.
  void attach(LeaseOwner& owner, uint32_t slot) noexcept {
    release();
    owner_ = &owner;
    frame_ = &owner.leasedFrame(slot);
    slot_ = slot;
  }

 private:
  /// Reads a validated frame's segments in place: SegmentArrayMessageReader without its
  /// own copy of the segment list (the lease slot's validated copy outlives the reader).
  class FrameReader final : public capnp::MessageReader {
   public:
    FrameReader(const ParsedFrame& frame, const capnp::ReaderOptions& options)
        : MessageReader(options), frame_(frame) {}
    kj::ArrayPtr<const capnp::word> getSegment(capnp::uint id) override {
      if (id >= frame_.segmentCount) return nullptr;
      return frame_.segments[id];
    }

   private:
    const ParsedFrame& frame_;
  };

  const ParsedFrame& frame() const noexcept { return *frame_; }
  void releaseHeld() noexcept;
  void dropCapTable() noexcept;
  void dropMetadata() noexcept;
  capnp::MessageReader& makeReader();
  void initWireContext();

  LeaseOwner* owner_ = nullptr;
  // owner_->leasedFrame(slot_), asked once per lease: it stays where it is while the lease
  // is held (a lease owner's entries do not move), and header() is read many times a call.
  const ParsedFrame* frame_ = nullptr;
  uint32_t slot_ = 0;
  // Decoded by the RPC layer; null: none. Owned (a plain pointer: a response moves several
  // times on its way to the caller, and only messages with capabilities pay more).
  wire::CapTable* caps_ = nullptr;
  Metadata* metadata_ = nullptr;  // as caps_
  bool wireReady_ = false;  // wire_ reads the held message
  std::optional<FrameReader> reader_;
  wire::ReadContext wire_;
};

}  // namespace zcrpc
