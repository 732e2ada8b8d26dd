// Session, capabilities: the objects this end exports on the connection, the peer's objects
// it imports, and the extension records that carry them (docs/capabilities.md,
// docs/wire-format.md "Extension area").
#include <algorithm>
#include <cstring>
#include <utility>

#include <kj/exception.h>

#include "rpc/extension_records.h"
#include "rpc/frames.h"
#include "rpc/session.h"
#include "zcrpc/log.h"

namespace zcrpc {

// ------------------------------------------------------------------------------------
// Capability and its hooks

Capability Capability::local(std::shared_ptr<Service> object, Requests requests) {
  if (!object) throw InvalidArgument("Capability::local() needs an object");
  return Capability(std::make_shared<LocalHook>(std::move(object), requests == Requests::kInPlace));
}

void Session::refuseWaitInPlace(const char* where) const {
  throw InvalidArgument(
      std::string(where) + " on " + connection_->endpoint() +
      " inside a handler of an object exported with Capability::Requests::kInPlace: its "
      "request is read in place, and waiting on the connection it came on would hold back "
      "everything that arrives after it. Use callAsync() (answering through defer() when "
      "the answer needs the result), or export the object with Requests::kCopied");
}

std::shared_ptr<Service> Capability::localObject() const noexcept {
  const auto* local = hookAs<LocalHook>(hook_.get());
  return local ? local->object : nullptr;
}

bool Capability::isImport() const noexcept {
  return hookAs<ImportHook>(hook_.get()) != nullptr;
}

ImportHook::~ImportHook() {
  if (refs) link->postRelease(id, refs);
}

namespace {

using records::CapDescriptor;
using records::CountWord;
using records::entriesOf;
using records::readAt;

/// Appends a record of `type` whose payload is `payloadBytes` long (a multiple of 8) to
/// `out`; returns where the payload starts.
std::byte* appendRecord(std::vector<uint64_t>& out, uint16_t type, size_t payloadBytes) {
  const size_t at = out.size();
  out.resize(at + 1 + payloadBytes / sizeof(capnp::word));
  auto* bytes = reinterpret_cast<std::byte*>(out.data() + at);
  const ExtensionHeader h{type, 0, static_cast<uint32_t>(8 + payloadBytes)};
  std::memcpy(bytes, &h, sizeof h);
  return bytes + sizeof h;
}

}  // namespace

// ------------------------------------------------------------------------------------
// Received: target, capability table, releases

uint32_t Session::readExtensions(IncomingMessage& msg) {
  uint32_t target = 0;
  std::span<const std::byte> capTable;
  for (const ExtensionRecord& r : msg.extensions()) {
    // The record's bytes lie in transport memory, which the peer may still write: each is
    // read once, into a private copy, before it is checked and used.
    switch (r.type) {
      case extension::kTarget: {
        if (r.bytes != 16) throw InvalidArgument("a target record must be 16 bytes, not " + std::to_string(r.bytes));
        target = readAt<uint32_t>(msg.extensionBytes(r), 8);
        if (target == 0) throw InvalidArgument("a target record names export 0 (the bootstrap is called without one)");
        break;
      }
      case extension::kCapTable:
        capTable = msg.extensionBytes(r);
        break;
      case extension::kReleases:
        readReleases(msg.extensionBytes(r));
        break;
      case extension::kMetadata:
        msg.setMetadata(std::make_unique<Metadata>(records::readMetadata(msg.extensionBytes(r))));
        break;
      default:
        break;  // a type this end does not know (reserved for later): ignored
    }
  }
  if (!capTable.empty()) msg.setCapTable(readCapTable(capTable));
  return target;
}

std::unique_ptr<wire::CapTable> Session::readCapTable(std::span<const std::byte> record) {
  CountWord head{};
  const std::vector<std::byte> copy = entriesOf(record, "capTable", head.count);
  std::span<const std::byte> bytes(copy);
  // Everything is checked before anything is imported: a refused table imports nothing,
  // and the references it granted go back to the peer at once.
  std::vector<uint32_t> fresh;  // ids not imported yet (an id may come several times)
  std::string fault;
  for (uint32_t i = 0; i < head.count && fault.empty(); ++i) {
    const auto d = readAt<CapDescriptor>(bytes, 16 + size_t{i} * 8);
    switch (static_cast<CapKind>(d.kind)) {
      case CapKind::kNone:
        break;
      case CapKind::kSenderHosted:
        if (d.id == 0) fault = "entry " + std::to_string(i) + " names the peer's export 0";
        else if (!imports_.count(d.id)) fresh.push_back(d.id);
        break;
      case CapKind::kReceiverHosted:
        if (!exported(d.id))
          fault = "entry " + std::to_string(i) + " names export " + std::to_string(d.id) + " of " +
                  connection_->endpoint() + ", which does not exist (never exported, or released)";
        break;
      default:
        fault = "entry " + std::to_string(i) + " has the unknown kind " + std::to_string(d.kind);
    }
  }
  std::sort(fresh.begin(), fresh.end());
  const size_t newImports =
      static_cast<size_t>(std::unique(fresh.begin(), fresh.end()) - fresh.begin());
  if (fault.empty() && imports_.size() + newImports > options_.maxImports)
    fault = "it would open " + std::to_string(imports_.size() + newImports) +
            " imports on the connection, more than its limit of " +
            std::to_string(options_.maxImports) + " (max_imports)";
  if (!fault.empty()) {
    for (uint32_t i = 0; i < head.count; ++i) {
      const auto d = readAt<CapDescriptor>(bytes, 16 + size_t{i} * 8);
      if (static_cast<CapKind>(d.kind) == CapKind::kSenderHosted && d.id != 0)
        releasesOut_.push_back({d.id, 1});
    }
    sendReleases();
    throw InvalidArgument("the message's capability table was refused: " + fault);
  }
  auto table = std::make_unique<wire::CapTable>();
  table->reserve(head.count);
  for (uint32_t i = 0; i < head.count; ++i) {
    const auto d = readAt<CapDescriptor>(bytes, 16 + size_t{i} * 8);
    switch (static_cast<CapKind>(d.kind)) {
      case CapKind::kSenderHosted:
        table->push_back(importCapability(d.id).hook());
        break;
      case CapKind::kReceiverHosted:
        // Our own object, handed back: the object itself, not a proxy of a proxy.
        table->push_back(
            std::make_shared<LocalHook>(exports_[d.id - 1].object, exports_[d.id - 1].inPlace));
        break;
      default:
        table->push_back(nullptr);
    }
  }
  return table;
}

void Session::readReleases(std::span<const std::byte> record) {
  std::vector<std::byte> copy;
  uint32_t count = 0;
  try {
    copy = entriesOf(record, "releases", count);
  } catch (const Error& e) {
    return dropPeer(e.what());
  }
  std::span<const std::byte> bytes(copy);
  for (uint32_t i = 0; i < count; ++i) {
    const auto r = readAt<ReleaseNote>(bytes, 16 + size_t{i} * 8);
    Service* object = exported(r.id);
    if (!object)
      return dropPeer("the peer released export " + std::to_string(r.id) +
                      ", which it does not hold (never exported, or released already)");
    Export& e = exports_[r.id - 1];
    if (r.refs == 0 || r.refs > e.refs)
      return dropPeer("the peer released export " + std::to_string(r.id) + " " +
                      std::to_string(r.refs) + " times; it was given it " + std::to_string(e.refs) +
                      " times");
    dropExportRef(r.id, r.refs);
  }
}

void Session::dropExportRef(uint32_t id, uint32_t refs) {
  Export& e = exports_[id - 1];
  e.refs -= refs;
  if (e.refs != 0) return;
  exportIds_.erase(e.object.get());
  std::shared_ptr<Service> last = std::move(e.object);  // the object may go: after the books
  freeExports_.push_back(id);
  --liveExports_;
}

void Session::dropPeer(const std::string& why) {
  if (disconnected_) return;
  logMessage(LogLevel::kWarning, connection_->endpoint() + ": closing: " + why);
  connection_->close();
  failAll(ErrorKind::kDisconnected, "protocol error: " + why);
}

// ------------------------------------------------------------------------------------
// Sent: target and capability table

uint32_t Session::exportObject(const std::shared_ptr<Service>& object, bool inPlace) {
  auto [it, fresh] = exportIds_.try_emplace(object.get(), 0);
  if (fresh) {
    if (liveExports_ >= options_.maxExports) {
      exportIds_.erase(it);
      throw Overloaded("connection " + connection_->endpoint() + " already exports " +
                       std::to_string(liveExports_) + " objects, its limit (max_exports)");
    }
    uint32_t id;
    if (!freeExports_.empty()) {
      id = freeExports_.back();
      freeExports_.pop_back();
    } else {
      exports_.emplace_back();
      id = static_cast<uint32_t>(exports_.size());
    }
    exports_[id - 1].object = object;
    exports_[id - 1].inPlace = inPlace;
    it->second = id;
    ++liveExports_;
  }
  Export& e = exports_[it->second - 1];
  e.inPlace = e.inPlace && inPlace;
  if (e.refs == UINT32_MAX)
    throw Overloaded("export " + std::to_string(it->second) + " was sent 2^32-1 times unreleased");
  ++e.refs;
  return it->second;
}

Capability Session::importCapability(uint32_t id) {
  std::weak_ptr<ImportHook>& weak = imports_[id];
  std::shared_ptr<ImportHook> hook = weak.lock();
  if (!hook) {
    // A new handle (or the old one's last copy went and its release is on its way: its
    // references are its own, these are the new handle's).
    hook = std::make_shared<ImportHook>(link_, id);
    weak = hook;
  }
  ++hook->refs;
  return Capability(std::move(hook));
}

void Session::writeExtensions(OutgoingMessage& msg, uint32_t target) {
  extensionWords_.clear();
  if (target != 0) {
    std::byte* p = appendRecord(extensionWords_, extension::kTarget, 8);
    std::memcpy(p, &target, sizeof target);
  }
  if (const wire::CapTable* caps = msg.outgoingCapTable(); caps && !caps->empty()) {
    const size_t count = caps->size();
    if (16 + count * 8 + extensionWords_.size() * 8 > connection_->maxExtensionBytes())
      throw InvalidArgument("a message may carry at most " +
                            std::to_string((connection_->maxExtensionBytes() - 32) / 8) +
                            " capabilities on " + connection_->endpoint() + "; this one has " +
                            std::to_string(count));
    // Descriptors first (exporting as it goes), then the record: a refusal midway leaves
    // no half-written record behind. Exports counted here are released by the peer.
    std::vector<CapDescriptor> out(count);
    size_t exportedSoFar = 0;  // out[0..i) of kind sender-hosted, counted by exportObject
    KJ_ON_SCOPE_FAILURE({
      // Refused midway: the references counted for this message are not sent, so nobody
      // will release them: take them back.
      for (size_t i = 0; i < exportedSoFar; ++i)
        if (out[i].kind == static_cast<uint8_t>(CapKind::kSenderHosted)) dropExportRef(out[i].id);
    });
    for (size_t i = 0; i < count; ++i, exportedSoFar = i) {
      wire::CapabilityHook* h = (*caps)[i].get();
      CapDescriptor& d = out[i];
      d = {};
      if (h == nullptr) continue;
      if (auto* local = hookAs<LocalHook>(h)) {
        d.kind = static_cast<uint8_t>(CapKind::kSenderHosted);
        d.id = exportObject(local->object, local->inPlace);
      } else if (auto* import = hookAs<ImportHook>(h)) {
        if (import->link != link_)
          throw InvalidArgument(
              "capability " + std::to_string(i) +
              " of the message was received on another connection; zcrpc passes a peer's "
              "capability back to that peer only (no forwarding between connections)");
        d.kind = static_cast<uint8_t>(CapKind::kReceiverHosted);
        d.id = import->id;
      } else {
        throw InvalidArgument("capability " + std::to_string(i) + " of the message is of no kind zcrpc knows");
      }
    }
    std::byte* p = appendRecord(extensionWords_, extension::kCapTable, 8 + count * 8);
    const CountWord head{static_cast<uint32_t>(count), 0};
    std::memcpy(p, &head, sizeof head);
    std::memcpy(p + 8, out.data(), count * 8);
  }
  if (const Metadata* m = msg.outgoingMetadata(); m && !m->empty()) {
    const std::vector<std::byte> payload = records::metadataPayload(*m);
    if (8 + payload.size() + extensionWords_.size() * 8 > connection_->maxExtensionBytes())
      throw InvalidArgument("the call's metadata takes " + std::to_string(8 + payload.size()) +
                            " bytes of the frame, more than " + connection_->endpoint() +
                            " carries beside its other records (" +
                            std::to_string(connection_->maxExtensionBytes()) + " in all)");
    std::memcpy(appendRecord(extensionWords_, extension::kMetadata, payload.size()), payload.data(),
                payload.size());
  }
  msg.setExtensions(extensionArea());
}

void Session::sendReleases() {
  if (releasesOut_.empty() || disconnected_ || messageOpenHere()) return;
  // Imports whose last handle went: forget them (their releases are below), so that the
  // table holds only live ones.
  for (const ReleaseNote& r : releasesOut_) {
    auto it = imports_.find(r.id);
    if (it != imports_.end() && it->second.expired()) imports_.erase(it);
  }
  const size_t perFrame = (connection_->maxExtensionBytes() - 16) / 8;
  size_t done = 0;
  while (done < releasesOut_.size()) {
    const size_t n = std::min(perFrame, releasesOut_.size() - done);
    OutgoingMessage m;
    const Status s = connection_->tryStartMessage(m, 1);
    if (s != Status::kOk) break;  // no room now: the rest goes on a later round
    extensionWords_.clear();
    std::byte* p = appendRecord(extensionWords_, extension::kReleases, 8 + n * 8);
    const CountWord head{static_cast<uint32_t>(n), 0};
    std::memcpy(p, &head, sizeof head);
    std::memcpy(p + 8, releasesOut_.data() + done, n * 8);
    m.setExtensions(extensionArea());
    m.header().kind = static_cast<uint8_t>(FrameKind::kRelease);
    if (connection_->send(m, false) != Status::kOk) break;
    unflushed_ = true;
    done += n;
  }
  releasesOut_.erase(releasesOut_.begin(), releasesOut_.begin() + static_cast<std::ptrdiff_t>(done));
}


}  // namespace zcrpc
