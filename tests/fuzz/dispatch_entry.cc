// Fuzz target: a Server's handling of whatever frames a client sends: every frame kind,
// known and unknown interfaces and methods, duplicate and unknown call ids, and Cap'n
// Proto content written raw into the request (pointers and all) for the generated
// services to read in place. See fuzz_entries.h.
//
// Input: a sequence of frames, each [kind][call id][interface][method][words] and then
// `words` x 8 payload bytes: kind is taken modulo 16 (so invalid kinds come up too), the
// call id is small (duplicates), interface 0 Echo, 1 KeyValue, 2 a raw 64-bit id from the
// input, 3 zero; the payload becomes the message's first segment, root pointer included.
// When the interface byte's top bit is set, an extension area follows the payload: one or
// two records, each [type][words] and `words` x 8 bytes, type 0..4 (the RPC layer's target,
// capability table and releases, and types it ignores) and, for the counted kinds, a
// count that fits the record, so that the entries themselves (ids, kinds, references:
// never given, released twice, the peer's own) are what varies.
#include <capnp/any.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "echo.capnp.zcrpc.h"
#include "fuzz_entries.h"
#include "fuzz_util.h"
#include "kv.capnp.zcrpc.h"
#include "zcrpc/loopback.h"
#include "zcrpc/rpc.h"

namespace zcrpc::fuzz {
namespace {

using namespace std::chrono_literals;

class Echo final : public echo::EchoService {
  void echo(EchoCall& call) override { call.results().setData(call.params().getData()); }
  void ping(PingCall&) override {}
  void sink(SinkCall& call) override { (void)call.params().getData().size(); }
  void delay(DelayCall& call) override {
    // Answered at once from another thread: the deferred path, without the wait.
    DeferredReply reply = call.defer();
    bool cancelled = reply.isCancelled();
    reply.complete([cancelled](OutgoingMessage& m) {
      m.getRoot<echo::Echo::DelayResults>().setCancelled(cancelled);
    });
  }
  void fail(FailCall& call) override {
    auto p = call.params();
    throw ApplicationError(p.getCode(), p.getMessage().cStr());
  }
};

class KeyValue final : public kv::KeyValueService {
  static std::string text(capnp::Data::Reader d) { return {reinterpret_cast<const char*>(d.begin()), d.size()}; }
  void get(GetCall& call) override {
    auto it = map_.find(text(call.params().getKey()));
    auto r = call.results();
    r.setFound(it != map_.end());
    if (it != map_.end())
      r.setValue(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(it->second.data()), it->second.size()));
  }
  void put(PutCall& call) override {
    auto p = call.params();
    if (map_.size() >= 64) map_.clear();  // bounded
    auto [it, inserted] = map_.insert_or_assign(text(p.getKey()), text(p.getValue()));
    call.results().setReplaced(!inserted);
  }
  void delete_(DeleteCall& call) override { call.results().setDeleted(map_.erase(text(call.params().getKey())) > 0); }
  void scan(ScanCall& call) override {
    auto p = call.params();
    uint32_t limit = std::min<uint32_t>(p.getLimit(), 16);
    auto it = map_.lower_bound(text(p.getStart()));
    uint32_t n = 0;
    for (auto j = it; j != map_.end() && n < limit; ++j) ++n;
    auto entries = call.results().initEntries(n);
    for (uint32_t i = 0; i < n; ++i, ++it) {
      entries[i].setKey(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(it->first.data()), it->first.size()));
      entries[i].setValue(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(it->second.data()), it->second.size()));
    }
  }
  std::map<std::string, std::string, std::less<>> map_;  // the one worker only
};

ConnectionOptions options() {
  ConnectionOptions o;
  o.ringBytes = 64 << 10;
  o.arenaBytes = 256 << 10;
  o.maxMessageBytes = 128 << 10;
  o.maxLeases = 16;
  o.readerLimits.traversalLimitWords = 64 << 10;
  o.readerLimits.nestingLimit = 16;
  return o;
}

struct Fixture {
  Echo echo;
  KeyValue kv;
  std::unique_ptr<Server> server;
  Fixture() {
    ServerOptions so;
    so.workerThreads = 1;
    so.idleMode = WaitMode::kBlocking;
    server = std::make_unique<Server>(so);
    server->addService(echo);
    server->addService(kv);
    server->start();
  }
};

}  // namespace

void runDispatchInput(const uint8_t* data, size_t size) {
  static Fixture fixture;
  InputReader in(data, std::min<size_t>(size, 64 << 10));
  auto [client, serverEnd] = makeLoopbackPair(options());
  fixture.server->addConnection(std::move(serverEnd));
  for (int frames = 0; frames < 64 && !in.done(); ++frames) {
    const uint8_t kind = in.byte() % 16;
    const uint64_t callId = in.byte() % 8;
    const uint8_t iface = in.byte();
    const uint16_t method = in.byte() % 8;
    const uint32_t words = in.byte() % 64;
    uint64_t interfaceId = 0;
    switch (iface % 4) {
      case 0: interfaceId = echo::EchoClient::kInterfaceId; break;
      case 1: interfaceId = kv::KeyValueClient::kInterfaceId; break;
      case 2: interfaceId = in.u64(); break;
      default: break;
    }
    OutgoingMessage out;
    if (client->startMessage(out, words + 1, deadlineAfter(100ms)) != Status::kOk) break;
    if (words) out.initRoot<capnp::AnyPointer>().initAs<capnp::List<uint64_t>>(words);
    auto segments = out.segmentsForSend();
    // Transport memory the message was built in: overwrite it, root pointer included.
    auto* first = const_cast<capnp::word*>(segments[0].begin());
    in.bytes(first, segments[0].size() * sizeof(capnp::word));
    std::vector<uint64_t> extensions;  // capnp::word cannot be copied into new storage
    if (iface & 0x80) {
      for (int records = 1 + in.byte() % 2; records > 0; --records) {
        const auto type = static_cast<uint16_t>(in.byte() % 5);
        const uint32_t payloadWords = 1 + in.byte() % 4;
        const size_t at = extensions.size();
        extensions.resize(at + 1 + payloadWords);
        const ExtensionHeader h{type, 0, 8 * (1 + payloadWords)};
        std::memcpy(static_cast<void*>(&extensions[at]), &h, sizeof h);
        in.bytes(&extensions[at + 1], payloadWords * sizeof(uint64_t));
        if (type == extension::kCapTable || type == extension::kReleases) {
          extensions[at + 1] = payloadWords - 1;  // `u32 count, u32 0`, then 8-byte entries
        }
      }
      out.setExtensions(kj::arrayPtr(reinterpret_cast<const capnp::word*>(extensions.data()),
                                     extensions.size()));
    }
    out.header().kind = kind;
    out.header().callId = callId;
    out.header().interfaceId = interfaceId;
    out.header().methodId = method;
    if (client->send(out) != Status::kOk) break;
    drainMessages(*client, 0ms, 8);  // keep answers flowing back while sending
  }
  drainMessages(*client, 20ms);
  client->close();
}

}  // namespace zcrpc::fuzz
