// CapnpConnection: calls and capabilities between the session's frames and Cap'n Proto's
// RPC system, both directions (see connection.h). Everything here runs in the connection's
// event loop, under its scope lock (the thread of the call that entered it).
// GCC 12 with -fsanitize=address at -O3 reports kj::Maybe<Capability::Client> and
// kj::Maybe<MessageSize> moves inside Cap'n Proto's own headers (typelessRequest) as
// maybe-uninitialized: a false positive of the sanitizer build only, which -Werror would
// turn into a failed build.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstring>

#include "compat/connection.h"
#include "rpc/extension_records.h"
#include "rpc/frames.h"
#include "zcrpc/log.h"

namespace zcrpc::compat {

namespace {

using records::CapDescriptor;
using records::entriesOf;
using records::readAt;
using records::ReleaseEntry;

kj::ArrayPtr<const kj::byte> bytesOf(const void* p, size_t n) {
  return kj::arrayPtr(static_cast<const kj::byte*>(p), n);
}

}  // namespace

// ------------------------------------------------------------------------------------
// SessionObject

class CapnpConnection::SessionObject final : public capnp::Capability::Server {
 public:
  SessionObject(CapnpConnection& c, uint32_t exportId) : c_(c), exportId_(exportId) {}
  ~SessionObject() noexcept { c_.sessionObjectGone(exportId_, refs); }  // kj::heap's disposer knows the type

  DispatchCallResult dispatchCall(uint64_t interfaceId, uint16_t methodId, AnyContext context) override {
    return c_.dispatchToSession(exportId_, interfaceId, methodId, context);
  }
  /// Another reference to this object (the one the RPC system and the messages share).
  capnp::Capability::Client self() { return thisCap(); }

  uint32_t refs = 0;  // granted by the session for this object, given back at its end
  const capnp::ClientHook* hook = nullptr;

 private:
  CapnpConnection& c_;
  const uint32_t exportId_;
};

capnp::Capability::Client CapnpConnection::sessionObject(uint32_t exportId) {
  auto it = sessionObjects_.find(exportId);
  if (it != sessionObjects_.end()) {
    ++it->second->refs;
    return it->second->self();
  }
  auto server = kj::heap<SessionObject>(*this, exportId);
  SessionObject& object = *server;
  capnp::Capability::Client client(kj::mv(server));
  object.refs = 1;
  object.hook = capnp::ClientHook::from(object.self()).get();  // the LocalClient, alive with `client`
  sessionObjects_.emplace(exportId, &object);
  sessionObjectIds_.emplace(object.hook, exportId);
  return client;
}

void CapnpConnection::sessionObjectGone(uint32_t exportId, uint32_t refs) noexcept {
  auto it = sessionObjects_.find(exportId);
  if (it != sessionObjects_.end()) {
    sessionObjectIds_.erase(it->second->hook);
    sessionObjects_.erase(it);
  }
  if (dropping_ || refs == 0) return;  // closing: the session drops every export itself
  try {
    deliver(HeapFrame::release(exportId, refs, options_.connection.readerLimits));
  } catch (const std::exception& e) {
    // Without memory for the note the export stays until the connection closes.
    logMessage(LogLevel::kWarning, endpoint_ + ": export " + std::to_string(exportId) +
                                       " kept until the connection closes: " + e.what());
  }
}

// ------------------------------------------------------------------------------------
// Capabilities from Cap'n Proto to the session

void CapnpConnection::writeCapTable(kj::ArrayPtr<kj::Maybe<kj::Own<capnp::ClientHook>>> found,
                                    RecordWords& records) {
  if (32 + found.size() * 8 > kMaxExtensionBytes)  // room for a target record too
    throw InvalidArgument("a message with " + std::to_string(found.size()) +
                          " capabilities (zcrpc frames carry at most " +
                          std::to_string((kMaxExtensionBytes - 32) / 8) + ")");
  std::vector<uint32_t> payload(2 + 2 * found.size(), 0);
  payload[0] = static_cast<uint32_t>(found.size());
  for (size_t i = 0; i < found.size(); ++i) {
    CapDescriptor d{};
    KJ_IF_MAYBE(own, found[i]) {
      capnp::ClientHook* hook = own->get();
      // What it is now (a promise the RPC system resolved: to one of our SessionObjects
      // when the peer handed back an object of the session's).
      capnp::ClientHook* settled = hook;
      for (;;) {
        KJ_IF_MAYBE(r, settled->getResolved()) settled = r;
        else break;
      }
      if (settled->isNull()) {
        // none
      } else if (auto mine = sessionObjectIds_.find(settled); mine != sessionObjectIds_.end()) {
        d.kind = static_cast<uint8_t>(CapKind::kReceiverHosted);
        d.id = mine->second;
      } else {
        auto [at, fresh] = peerCapIds_.try_emplace(hook, 0);
        if (fresh) {
          while (nextPeerCap_ == 0 || peerCaps_.count(nextPeerCap_)) ++nextPeerCap_;
          at->second = nextPeerCap_++;
          peerCaps_.emplace(at->second, PeerCap{capnp::Capability::Client(hook->addRef()), 0, hook});
        }
        ++peerCaps_.at(at->second).refs;
        d.kind = static_cast<uint8_t>(CapKind::kSenderHosted);
        d.id = at->second;
      }
    }
    std::memcpy(&payload[2 + 2 * i], &d, sizeof d);  // entry i: two of the payload's words
  }
  HeapFrame::appendRecord(records, extension::kCapTable, bytesOf(payload.data(), payload.size() * 4));
}

void CapnpConnection::unwriteCapTable(IncomingMessage& frame) noexcept {
  for (const ExtensionRecord& r : frame.extensions()) {
    if (r.type != extension::kCapTable) continue;
    const std::span<const std::byte> record = frame.extensionBytes(r);
    const uint32_t count = readAt<uint32_t>(record, 8);
    for (uint32_t i = 0; i < count; ++i) {
      const auto d = readAt<CapDescriptor>(record, 16 + size_t{i} * 8);
      if (d.kind == static_cast<uint8_t>(CapKind::kSenderHosted)) dropPeerCap(d.id, 1);
    }
  }
}

bool CapnpConnection::dropPeerCap(uint32_t id, uint32_t refs) noexcept {
  auto it = peerCaps_.find(id);
  if (it == peerCaps_.end() || refs == 0 || refs > it->second.refs) return false;
  it->second.refs -= refs;
  if (it->second.refs == 0) {
    peerCapIds_.erase(it->second.hook);
    peerCaps_.erase(it);  // the RPC system tells the peer (Release) once nothing else holds it
  }
  return true;
}

// ------------------------------------------------------------------------------------
// Capabilities from the session to Cap'n Proto

kj::Array<kj::Maybe<kj::Own<capnp::ClientHook>>> CapnpConnection::readCapTable(std::span<const std::byte> bytes) {
  uint32_t count = 0;
  const std::vector<std::byte> copy = entriesOf(bytes, "capTable", count);
  const std::span<const std::byte> record(copy);
  auto out = kj::heapArrayBuilder<kj::Maybe<kj::Own<capnp::ClientHook>>>(count);
  for (uint32_t i = 0; i < count; ++i) {
    const auto d = readAt<CapDescriptor>(record, 16 + size_t{i} * 8);
    switch (static_cast<CapKind>(d.kind)) {
      case CapKind::kNone:
        out.add(capnp::ClientHook::from(capnp::Capability::Client(nullptr)));
        break;
      case CapKind::kSenderHosted:
        out.add(capnp::ClientHook::from(sessionObject(d.id)));
        break;
      case CapKind::kReceiverHosted: {
        // One of the peer's, handed back: the same Client, which the RPC system sends as
        // the peer's own object (no proxy of a proxy).
        auto it = peerCaps_.find(d.id);
        if (it == peerCaps_.end())
          throw InvalidArgument("capability " + std::to_string(d.id) + " of " + endpoint_ +
                                " handed back does not exist (never received, or released)");
        out.add(capnp::ClientHook::from(it->second.client));
        break;
      }
      default:
        throw InvalidArgument("capTable entry " + std::to_string(i) + " has the unknown kind " +
                              std::to_string(d.kind));
    }
  }
  return out.finish();
}

void CapnpConnection::readReleases(std::span<const std::byte> bytes) {
  uint32_t count = 0;
  const std::vector<std::byte> copy = entriesOf(bytes, "releases", count);
  const std::span<const std::byte> record(copy);
  for (uint32_t i = 0; i < count; ++i) {
    const auto r = readAt<ReleaseEntry>(record, 16 + size_t{i} * 8);
    if (!dropPeerCap(r.exportId, r.refs))
      logMessage(LogLevel::kError, endpoint_ + ": the session released capability " + std::to_string(r.exportId) +
                                       " " + std::to_string(r.refs) + " times, more than it was given");
  }
}

// ------------------------------------------------------------------------------------
// The session's frames on the wire

Status CapnpConnection::sendFrame(OutgoingMessage& msg) {
  const FrameHeader h = msg.header();
  const auto kind = static_cast<FrameKind>(h.kind);
  uint32_t target = 0;
  std::span<const std::byte> capTable, releases;
  {
    const kj::ArrayPtr<const capnp::word> area = msg.extensions();
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(area.begin()), area.size() * 8);
    for (size_t at = 0; at < bytes.size();) {
      const auto r = readAt<ExtensionHeader>(bytes, at);
      if (at + 8 > bytes.size() || r.bytes < 8 || r.bytes % 8 || r.bytes > bytes.size() - at)
        throw InvalidArgument("extension record at byte " + std::to_string(at) + " of a frame for " + endpoint_ +
                              " claims " + std::to_string(r.bytes) + " bytes");
      const auto record = bytes.subspan(at, r.bytes);
      switch (r.type) {
        case extension::kTarget:
          if (r.bytes != 16) throw InvalidArgument("a target record must be 16 bytes");
          target = readAt<uint32_t>(record, 8);
          if (target == 0) throw InvalidArgument("a target record names capability 0 of " + endpoint_);
          break;
        case extension::kCapTable:
          capTable = record;
          break;
        case extension::kReleases:
          releases = record;
          break;
        default:
          break;  // nothing a standard peer has a place for
      }
      at += r.bytes;
    }
  }
  // Every capability the frame grants is taken (and counted) before anything else, so
  // that a frame that goes nowhere still gives its references back.
  capnp::ReaderCapabilityTable caps(capTable.empty() ? nullptr : readCapTable(capTable));
  // Releases after the table: a frame that hands a peer capability back and gives up the
  // session's last reference to it still hands back the same Client.
  if (!releases.empty()) readReleases(releases);
  OwnFrameReader frame(msg);
  const capnp::AnyPointer::Reader root = caps.imbue(frame.root());
  switch (kind) {
    case FrameKind::kRequest:
    case FrameKind::kStreamRequest:
    case FrameKind::kOneWay:
      sendCall(h, target, root, frame.size());
      return Status::kOk;
    case FrameKind::kResponse:
    case FrameKind::kError:
      sendAnswer(h, root, frame);
      return Status::kOk;
    case FrameKind::kCancel:
      // Dropping the call's promise makes the RPC system send Finish.
      asking_.erase(h.callId);
      chunks_.erase(std::remove(chunks_.begin(), chunks_.end(), h.callId), chunks_.end());
      pings_.erase(std::remove_if(pings_.begin(), pings_.end(), [&](const Ping& p) { return p.id == h.callId; }),
                   pings_.end());
      answerPings();
      return Status::kOk;
    case FrameKind::kPing:
      sendPing(h.callId);
      return Status::kOk;
    case FrameKind::kPong:     // never asked: this end sends no pings to the session
    case FrameKind::kRelease:  // its releases are read above
      return Status::kOk;
    default:
      throw InvalidArgument("connection " + endpoint_ + " (a standard Cap'n Proto peer) carries no frame of kind " +
                            std::to_string(h.kind));
  }
}

capnp::Capability::Client CapnpConnection::peerBootstrap() {
  if (!peerMain_) peerMain_.emplace(bootstrapRequest());
  return *peerMain_;
}

capnp::Capability::Client CapnpConnection::bootstrapRequest() {
  capnp::word scratch[8];
  std::memset(scratch, 0, sizeof scratch);
  capnp::MallocMessageBuilder message(scratch);
  auto vat = message.getRoot<capnp::rpc::twoparty::VatId>();
  vat.setSide(side_ == capnp::rpc::twoparty::Side::CLIENT ? capnp::rpc::twoparty::Side::SERVER
                                                          : capnp::rpc::twoparty::Side::CLIENT);
  return rpc_->bootstrap(vat);
}

void CapnpConnection::sendCall(const FrameHeader& h, uint32_t target, capnp::AnyPointer::Reader params,
                               capnp::MessageSize size) {
  const auto kind = static_cast<FrameKind>(h.kind);
  capnp::Capability::Client callee = nullptr;
  if (target == 0) {
    callee = peerBootstrap();
  } else if (auto it = peerCaps_.find(target); it != peerCaps_.end()) {
    callee = it->second.client;
  } else {
    if (kind != FrameKind::kOneWay)
      deliver(HeapFrame::error(h.callId, ErrorKind::kInvalidArgument, 0,
                               "capability " + std::to_string(target) + " of " + endpoint_ +
                                   " does not exist (never received, or released)",
                               options_.connection.readerLimits));
    return;
  }
  auto request = callee.typelessRequest(h.interfaceId, h.methodId, size);
  request.set(params);
  auto promise = request.send();
  if (kind == FrameKind::kOneWay) {
    oneWays_->add(promise.ignoreResult());  // its answer is dropped when it comes
    return;
  }
  const uint64_t id = h.callId;
  if (kind == FrameKind::kStreamRequest) {
    // A chunk: answered only when it fails (docs/wire-format.md, "Streams"). Cap'n Proto's
    // server handles a capability's streaming calls one at a time, in order, so a later
    // call's answer (a mark) or a ping confirms it to the session, as over zcrpc's wire.
    chunks_.push_back(id);
    asking_.emplace(id, promise
                            .then([this, id](capnp::Response<capnp::AnyPointer>&&) { chunkDone(id, nullptr); },
                                  [this, id](kj::Exception&& e) { chunkDone(id, &e); })
                            .eagerlyEvaluate(nullptr));
    return;
  }
  asking_.emplace(id, promise
                          .then([this, h](capnp::Response<capnp::AnyPointer>&& results) { answered(h, results); },
                                [this, id](kj::Exception&& e) { failed(id, e); })
                          .eagerlyEvaluate(nullptr));
}

void CapnpConnection::chunkDone(uint64_t id, const kj::Exception* e) {
  chunks_.erase(std::remove(chunks_.begin(), chunks_.end(), id), chunks_.end());
  if (e) {
    failed(id, *e);
  } else {
    done_.push_back(id);
  }
  answerPings();
}

void CapnpConnection::sendPing(uint64_t id) {
  // A Bootstrap round trip, which every peer answers without an application handler (a
  // peer with no bootstrap answers it with an exception: an answer all the same).
  pings_.push_back(Ping{id, false, false, {}});
  auto settled = [this, id](const kj::Exception* e) {
    for (Ping& p : pings_) {
      if (p.id != id) continue;
      p.answered = true;
      if (e) {
        p.failed = true;
        p.error = fromCapnp(*e);
      }
    }
    done_.push_back(id);
    answerPings();
  };
  asking_.emplace(id, bootstrapRequest()
                          .whenResolved()
                          .then([settled] { settled(nullptr); },
                                [settled](kj::Exception&& e) {
                                  if (e.getType() == kj::Exception::Type::DISCONNECTED) return settled(&e);
                                  settled(nullptr);
                                })
                          .eagerlyEvaluate(nullptr));
}

void CapnpConnection::answerPings() {
  while (!pings_.empty() && pings_.front().answered) {
    const Ping p = pings_.front();
    // A pong says that every chunk sent before the ping was handled.
    if (std::any_of(chunks_.begin(), chunks_.end(), [&](uint64_t c) { return c < p.id; })) return;
    pings_.pop_front();
    if (p.failed) {
      if (streamEnded()) {
        fault(endReason());
        continue;
      }
      deliver(HeapFrame::error(p.id, p.error.kind, p.error.code, p.error.message, options_.connection.readerLimits));
      continue;
    }
    FrameHeader pong{};
    pong.kind = static_cast<uint8_t>(FrameKind::kPong);
    pong.callId = p.id;
    finish(p.id, [&] {
      return HeapFrame::copyOf(pong, capnp::AnyPointer::Reader(), 1 << 10, options_.connection.readerLimits);
    });
  }
}

void CapnpConnection::answered(const FrameHeader& h, capnp::AnyPointer::Reader results) {
  FrameHeader answer = h;
  answer.kind = static_cast<uint8_t>(FrameKind::kResponse);
  answer.flags = 0;
  finish(h.callId, [&] {
    return HeapFrame::copyOf(answer, results, options_.connection.maxMessageBytes, options_.connection.readerLimits,
                             this);
  });
}

template <typename Make>
void CapnpConnection::finish(uint64_t id, Make&& make) {
  try {
    deliver(make());
  } catch (const Error& e) {
    deliver(HeapFrame::error(id, e.kind() == ErrorKind::kApplication ? ErrorKind::kFailed : e.kind(), 0,
                             std::string("answer could not be read: ") + e.what(),
                             options_.connection.readerLimits));
  } catch (const kj::Exception& e) {
    deliver(HeapFrame::error(id, ErrorKind::kInvalidArgument, 0,
                             std::string("answer could not be read: ") + e.getDescription().cStr(),
                             options_.connection.readerLimits));
  }
  done_.push_back(id);
}

void CapnpConnection::failed(uint64_t id, const kj::Exception& e) {
  done_.push_back(id);
  if (e.getType() == kj::Exception::Type::DISCONNECTED && streamEnded()) {
    // The connection itself ended (the RPC system fails every call so): the session learns
    // it from the connection, as over zcrpc's own transports, and fails its calls.
    fault(endReason());
    return;
  }
  ZcrpcError z = fromCapnp(e);
  deliver(HeapFrame::error(id, z.kind, z.code, z.message, options_.connection.readerLimits));
}

void CapnpConnection::afterPoll() {
  for (uint64_t id : done_) asking_.erase(id);
  done_.clear();
}

// ------------------------------------------------------------------------------------
// Cap'n Proto's calls into the session

kj::Promise<void> CapnpConnection::takeCall(uint32_t target, uint64_t interfaceId, uint16_t methodId,
                                            AnyContext& context) {
  const uint64_t id = nextCallId_++;
  FrameHeader h{};
  h.kind = static_cast<uint8_t>(FrameKind::kRequest);
  h.callId = id;
  h.interfaceId = interfaceId;
  h.methodId = methodId;
  RecordWords records;
  if (target != 0) {
    const uint32_t payload[2] = {target, 0};
    HeapFrame::appendRecord(records, extension::kTarget, bytesOf(payload, sizeof payload));
  }
  IncomingMessage request;
  try {
    request = HeapFrame::copyOf(h, context.getParams(), options_.connection.maxMessageBytes,
                                options_.connection.readerLimits, this, std::move(records));
  } catch (const Error& e) {  // InvalidArgument: over a limit
    return toCapnp(e.kind(), 0, std::string("server could not take the request: ") + e.what());
  } catch (kj::Exception& e) {  // the params broke a reader limit (or were malformed)
    // (A context added with wrapContext() would not travel: rpc.capnp carries the reason.)
    const auto& limits = options_.connection.readerLimits;
    return kj::Exception(e.getType(), "(zcrpc)", 0,
                         kj::str("server could not read the request (traversal_limit_words ",
                                 limits.traversalLimitWords, ", nesting_limit ", limits.nestingLimit,
                                 "): ", e.getDescription()));
  }
  context.releaseParams();  // copied: the Call message may go
  // zcrpc's cancellation is a flag the handler may look at (isCancelled()), never an
  // interruption, so a peer's Finish may drop this promise at any time: callGone() then
  // tells the session.
  context.allowCancellation();
  auto paf = kj::newPromiseAndFulfiller<void>();
  answering_.emplace(id, Answering(context, kj::mv(paf.fulfiller)));
  deliver(std::move(request));
  return paf.promise.attach(kj::defer([this, id] { callGone(id); }));
}

capnp::Capability::Server::DispatchCallResult CapnpConnection::dispatchToSession(uint32_t target,
                                                                                 uint64_t interfaceId,
                                                                                 uint16_t methodId,
                                                                                 AnyContext& context) {
  const bool streaming = !dropping_ && targets_ && targets_->streams(target, interfaceId, methodId);
  return {takeCall(target, interfaceId, methodId, context), streaming};
}

void CapnpConnection::callGone(uint64_t id) noexcept {
  if (dropping_) return;
  auto it = answering_.find(id);
  if (it == answering_.end()) return;
  answering_.erase(it);
  if (withdraw(id)) return;
  FrameHeader h{};
  h.kind = static_cast<uint8_t>(FrameKind::kCancel);
  h.callId = id;
  try {
    deliver(HeapFrame::copyOf(h, capnp::AnyPointer::Reader(), 1 << 10, options_.connection.readerLimits));
  } catch (...) {
    // No memory for a cancellation notice: the handler finishes unaware, as if late.
  }
}

bool CapnpConnection::withdraw(uint64_t callId) {
  for (auto it = incoming_.begin(); it != incoming_.end(); ++it) {
    if (it->header().callId == callId && it->header().kind == static_cast<uint8_t>(FrameKind::kRequest)) {
      unwriteCapTable(*it);  // the session never saw the capabilities it grants
      incoming_.erase(it);
      return true;
    }
  }
  return false;
}

void CapnpConnection::sendAnswer(const FrameHeader& h, capnp::AnyPointer::Reader results, OwnFrameReader& frame) {
  auto it = answering_.find(h.callId);
  if (it == answering_.end()) return;  // cancelled by the peer meanwhile
  Answering call = kj::mv(it->second);
  answering_.erase(it);
  if (static_cast<FrameKind>(h.kind) == FrameKind::kError) {
    CallResult e = readError(frame.reader());
    call.fulfiller->reject(toCapnp(e.errorKind(), e.errorCode(), e.errorMessage()));
    return;
  }
  try {
    call.context.getResults(frame.size()).set(results);
    call.fulfiller->fulfill();
  } catch (kj::Exception& e) {
    call.fulfiller->reject(kj::mv(e));
  }
}

void CapnpConnection::dropCalls() noexcept {
  dropping_ = true;
  answering_.clear();
  asking_.clear();
  done_.clear();
  chunks_.clear();
  pings_.clear();
  oneWays_ = nullptr;
  peerCaps_.clear();
  peerCapIds_.clear();
  peerMain_.reset();
}

}  // namespace zcrpc::compat
