// kv_server ENDPOINT — serves zcrpc::kv::KeyValue (schemas/kv.capnp) from an in-memory
// ordered map until SIGINT or SIGTERM. ENDPOINT is shm://NAME (or just NAME),
// tcp://HOST:PORT or rdma://HOST:PORT.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <map>
#include <string>
#include <string_view>

#include "example_util.h"
#include "kv.capnp.zcrpc.h"
#include "zcrpc/context.h"

namespace zcrpc::examples {
namespace {

std::string_view asView(capnp::Data::Reader data) {
  return {reinterpret_cast<const char*>(data.begin()), data.size()};
}
capnp::Data::Reader asData(std::string_view bytes) {
  return {reinterpret_cast<const capnp::byte*>(bytes.data()), bytes.size()};
}

/// The map behind the service. The server runs it with one worker thread, so every
/// handler runs to completion on that thread, one at a time, and the map needs no lock.
/// Threads: the server's single worker.
class KeyValueImpl final : public kv::KeyValueService {
 public:
  /// Most entries one scan returns, whatever `limit` asks for.
  static constexpr uint32_t kMaxScan = 1000;

  void get(GetCall& call) override {
    auto it = map_.find(asView(call.params().getKey()));
    auto results =
        call.results(it == map_.end() ? 0 : static_cast<uint32_t>(it->second.size() / 8 + 4));
    results.setFound(it != map_.end());
    if (it != map_.end()) results.setValue(asData(it->second));
  }

  void put(PutCall& call) override {
    auto params = call.params();
    auto [it, inserted] = map_.insert_or_assign(std::string(asView(params.getKey())),
                                                std::string(asView(params.getValue())));
    call.results().setReplaced(!inserted);
  }

  // `delete` is a C++ keyword: capnpc-zcrpc names its handler delete_.
  void delete_(DeleteCall& call) override {
    auto it = map_.find(asView(call.params().getKey()));
    bool found = it != map_.end();
    if (found) map_.erase(it);
    call.results().setDeleted(found);
  }

  void scan(ScanCall& call) override {
    auto params = call.params();
    uint32_t limit = std::min(params.getLimit(), kMaxScan);
    auto first = map_.lower_bound(asView(params.getStart()));
    uint32_t n = 0;
    size_t bytes = 0;
    for (auto it = first; it != map_.end() && n < limit; ++it, ++n)
      bytes += it->first.size() + it->second.size();
    auto results = call.results(static_cast<uint32_t>(bytes / 8 + n * 6 + 8));
    auto entries = results.initEntries(n);
    auto it = first;
    for (uint32_t i = 0; i < n; ++i, ++it) {
      entries[i].setKey(asData(it->first));
      entries[i].setValue(asData(it->second));
    }
    results.setMore(it != map_.end());
  }

 private:
  std::map<std::string, std::string, std::less<>> map_;
};

int run(int argc, char** argv) {
  // One worker thread: KeyValueImpl relies on it (see its comment).
  return serveExample("kv_server", argc, argv, [] { return std::make_unique<KeyValueImpl>(); }, 1);
}

}  // namespace
}  // namespace zcrpc::examples

int main(int argc, char** argv) {
  return zcrpc::examples::exampleMain("kv_server", argc, argv, zcrpc::examples::run);
}
