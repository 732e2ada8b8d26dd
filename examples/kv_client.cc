// kv_client ENDPOINT — exercises a kv_server: put, get, delete and paged scans with a
// limit, on keys under a prefix of its own ("kv_client/<pid>/") so runs against a shared
// server do not disturb each other; it removes its keys at the end. Exits 1 if any answer
// is wrong.
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "example_util.h"
#include "kv.capnp.zcrpc.h"
#include "zcrpc/context.h"

namespace zcrpc::examples {
namespace {

using kv::KeyValueClient;

std::string_view asView(capnp::Data::Reader data) {
  return {reinterpret_cast<const char*>(data.begin()), data.size()};
}
capnp::Data::Reader asData(std::string_view bytes) {
  return {reinterpret_cast<const capnp::byte*>(bytes.data()), bytes.size()};
}

/// The service's operations, typed, plus what the client expects the map to hold.
class KvCheck final {
 public:
  KvCheck(KeyValueClient& client, Checker& check, std::string prefix)
      : client_(client), check_(check), prefix_(std::move(prefix)) {}

  void put(const std::string& key, const std::string& value) {
    auto req = client_.putRequest();
    req.params().setKey(asData(key));
    req.params().setValue(asData(value));
    bool replaced = req.call().results().getReplaced();
    check_.expect(replaced == (expected_.count(key) > 0),
                  "put(" + key + ") replaced=" + std::to_string(replaced));
    expected_[key] = value;
  }

  void get(const std::string& key) {
    auto req = client_.getRequest();
    req.params().setKey(asData(key));
    auto resp = req.call();
    auto results = resp.results();
    auto it = expected_.find(key);
    if (it == expected_.end()) {
      check_.expect(!results.getFound(), "get(" + key + ") found a deleted or absent key");
    } else {
      check_.expect(results.getFound() && asView(results.getValue()) == it->second,
                    "get(" + key + ") gave found=" + std::to_string(results.getFound()) +
                        " value '" + std::string(asView(results.getValue())) + "'");
    }
  }

  void remove(const std::string& key) {
    auto req = client_.deleteRequest();
    req.params().setKey(asData(key));
    bool deleted = req.call().results().getDeleted();
    check_.expect(deleted == (expected_.erase(key) > 0),
                  "delete(" + key + ") deleted=" + std::to_string(deleted));
  }

  /// One scan from `start` with `limit`; checks it against the expected map, as far as
  /// this client's keys go (other keys may sort after the prefix). Returns the keys seen
  /// under the prefix and sets `more`.
  std::vector<std::string> scan(const std::string& start, uint32_t limit, bool& more) {
    auto req = client_.scanRequest();
    req.params().setStart(asData(start));
    req.params().setLimit(limit);
    auto resp = req.call();
    auto results = resp.results();
    more = results.getMore();
    std::vector<std::string> keys;
    auto want = expected_.lower_bound(start);
    std::string what = "scan(" + start + ", " + std::to_string(limit) + ")";
    check_.expect(results.getEntries().size() <= limit, what + " returned more than the limit");
    for (auto entry : results.getEntries()) {
      std::string key(asView(entry.getKey()));
      if (!key.starts_with(prefix_)) break;  // past this client's keys
      if (!check_.expect(want != expected_.end() && key == want->first &&
                             asView(entry.getValue()) == want->second,
                         what + " gave '" + key + "' where '" +
                             (want == expected_.end() ? "<end>" : want->first) + "' was due"))
        break;
      keys.push_back(key);
      ++want;
    }
    size_t left = static_cast<size_t>(std::distance(expected_.lower_bound(start), expected_.end()));
    if (keys.size() < left) check_.expect(more, what + ": more=false with keys left");
    return keys;
  }

  /// Reads every key under the prefix in pages of `limit` and compares with the map.
  void scanAll(uint32_t limit) {
    std::vector<std::string> all;
    std::string start = prefix_;
    for (int pages = 0; pages < 10000; ++pages) {
      bool more = false;
      auto keys = scan(start, limit, more);
      all.insert(all.end(), keys.begin(), keys.end());
      if (!more || keys.empty()) break;            // a server may return short pages
      start = keys.back() + std::string(1, '\0');  // just past the last key
    }
    check_.expect(all.size() == expected_.size(), "paged scan (limit " + std::to_string(limit) +
                                                      ") saw " + std::to_string(all.size()) +
                                                      " keys, expected " +
                                                      std::to_string(expected_.size()));
  }

  const std::map<std::string, std::string>& expected() const { return expected_; }

 private:
  KeyValueClient& client_;
  Checker& check_;
  std::string prefix_;
  std::map<std::string, std::string> expected_;
};

int run(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s ENDPOINT\n", argv[0]);
    return 2;
  }
  Context context;
  Channel channel(context.connect(endpointUri(argv[1])), context.config().channelOptions());
  KeyValueClient client(channel);
  Checker check;
  const std::string prefix = "kv_client/" + std::to_string(::getpid()) + "/";
  KvCheck kv(client, check, prefix);
  auto key = [&](int i) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "key-%03d", i);
    return prefix + buf;
  };

  bool more = false;
  check.expect(kv.scan(prefix, 10, more).empty(), "keys under " + prefix + " before the run");

  for (int i = 0; i < 50; ++i) kv.put(key(i), "value-" + std::to_string(i));
  kv.put(key(7), "seven");                         // replaces
  kv.put(key(8), std::string(100000, 'x'));        // a large value
  kv.put(key(9), std::string("\0binary\xff", 8));  // keys and values are bytes
  for (int i = 0; i < 52; ++i) kv.get(key(i));     // 50 and 51 are absent

  kv.remove(key(10));
  kv.remove(key(10));  // already gone
  kv.get(key(10));

  auto page = kv.scan(key(20), 5, more);
  check.expect(page.size() == 5 && page.front() == key(20) && page.back() == key(24) && more,
               "scan(key-020, 5) did not give key-020..key-024 with more");
  page = kv.scan(key(45), 10, more);
  check.expect(page.size() == 5 && page.back() == key(49),
               "scan(key-045, 10) did not end at key-049");
  check.expect(kv.scan(key(9) + "~", 0, more).empty(), "scan with limit 0 returned entries");
  kv.scanAll(7);
  kv.scanAll(1000);

  std::vector<std::string> keys;
  for (const auto& [k, v] : kv.expected()) keys.push_back(k);
  for (const std::string& k : keys) kv.remove(k);
  check.expect(kv.scan(prefix, 10, more).empty(), "keys left under " + prefix + " after the run");

  if (check.failures()) {
    std::fprintf(stderr, "kv_client: %d check(s) failed\n", check.failures());
    return 1;
  }
  std::printf("kv_client: all checks passed against %s\n", channel.connection().endpoint().c_str());
  return 0;
}

}  // namespace
}  // namespace zcrpc::examples

int main(int argc, char** argv) {
  return zcrpc::examples::exampleMain("kv_client", argc, argv, zcrpc::examples::run);
}
