#include "zcrpc/config.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <sstream>

#include <toml++/toml.h>

#include "config/nearest.h"
#include "zcrpc/log.h"

extern char** environ;

#include "transport/options.h"
#include "zcrpc/context.h"

namespace zcrpc {

namespace {

constexpr SettingInfo kSettings[] = {
    {"transports", SettingType::kList, "shm,rdma,tcp,capnp+unix,capnp", "ZCRPC_TRANSPORTS",
     "Ordered transport preference when a client is given several endpoints", ""},
    {"ring_bytes", SettingType::kSize, "1MiB", "ZCRPC_RING_BYTES",
     "Ring (shm) or buffer (tcp) size per direction; a power of two", ""},
    {"arena_bytes", SettingType::kSize, "136MiB", "ZCRPC_ARENA_BYTES",
     "Shared arena per direction for messages too large for the ring (shm)", ""},
    {"max_message_bytes", SettingType::kSize, "64MiB", "ZCRPC_MAX_MESSAGE_BYTES",
     "Largest message accepted or sent", ""},
    {"wait_mode", SettingType::kEnum, "spin-then-sleep", "ZCRPC_WAIT_MODE",
     "How a connection waits for its peer", "busy-poll|spin-then-sleep|blocking"},
    {"spin_time", SettingType::kDuration, "50us", "ZCRPC_SPIN_TIME",
     "Longest spin before sleeping (spin-then-sleep)", ""},
    {"spin_policy", SettingType::kEnum, "adaptive", "ZCRPC_SPIN_POLICY",
     "Spin-then-sleep spins as long as recent gaps between messages suggest (at most "
     "spin_time), or spin_time every time", "adaptive|fixed"},
    {"max_leases", SettingType::kInt, "256", "ZCRPC_MAX_LEASES",
     "Received messages a connection may hold at once; a power of two", ""},
    {"traversal_limit_words", SettingType::kInt, "8388608", "ZCRPC_TRAVERSAL_LIMIT_WORDS",
     "Cap'n Proto reader traversal limit per message", ""},
    {"nesting_limit", SettingType::kInt, "64", "ZCRPC_NESTING_LIMIT",
     "Cap'n Proto reader nesting limit", ""},
    {"connect_timeout", SettingType::kDuration, "5s", "ZCRPC_CONNECT_TIMEOUT",
     "Connection set-up (and handshake) time limit", ""},
    {"call_timeout", SettingType::kDuration, "10s", "ZCRPC_CALL_TIMEOUT",
     "Timeout of a call that sets no deadline, counted from when its request is sent", ""},
    {"window", SettingType::kInt, "64", "ZCRPC_WINDOW",
     "Calls outstanding at once per channel; a power of two", ""},
    {"max_exports", SettingType::kInt, "65536", "ZCRPC_MAX_EXPORTS",
     "Objects one end exports on a connection at once (capabilities it passed and the peer holds); "
     "more makes the call that would pass one fail with Overloaded", ""},
    {"max_imports", SettingType::kInt, "65536", "ZCRPC_MAX_IMPORTS",
     "The peer's objects one end holds on a connection at once; a message that would pass more "
     "is refused (InvalidArgument) and its capabilities released", ""},
    {"stream_window_calls", SettingType::kInt, "512", "ZCRPC_STREAM_WINDOW_CALLS",
     "Chunks of a stream (-> stream methods) one client may have in flight; the next send waits",
     ""},
    {"stream_window_bytes", SettingType::kSize, "1MiB", "ZCRPC_STREAM_WINDOW_BYTES",
     "Bytes of a stream's chunks one client may have in flight; the next send waits", ""},
    {"server_threads", SettingType::kInt, "1", "ZCRPC_SERVER_THREADS",
     "Worker threads polling server connections", ""},
    {"server_batch", SettingType::kInt, "32", "ZCRPC_SERVER_BATCH",
     "Messages a worker handles per connection before moving on", ""},
    {"server_idle_mode", SettingType::kEnum, "spin-then-sleep", "ZCRPC_SERVER_IDLE_MODE",
     "How an idle server worker waits", "busy-poll|spin-then-sleep|blocking"},
    {"allow_same_uid", SettingType::kBool, "true", "ZCRPC_ALLOW_SAME_UID",
     "shm: admit clients running as the server's own uid", ""},
    {"allow_uids", SettingType::kList, "", "ZCRPC_ALLOW_UIDS", "shm: further uids admitted", ""},
    {"allow_gids", SettingType::kList, "", "ZCRPC_ALLOW_GIDS",
     "shm: primary gids admitted", ""},
    {"token", SettingType::kString, "", "ZCRPC_TOKEN",
     "tcp, rdma: shared access token (empty: none); tcp sends it only inside TLS unless allow_plaintext_token, rdma a proof of it in the connection request", ""},
    {"allow_plaintext_token", SettingType::kBool, "false", "ZCRPC_ALLOW_PLAINTEXT_TOKEN",
     "tcp: let the token travel over plain tcp, in clear text (zcrpc-info warns)", ""},
    {"tls", SettingType::kBool, "false", "ZCRPC_TLS",
     "tcp: TLS 1.3 around the handshake, the token and every frame (tcp://host:port?tls=on)", ""},
    {"tls_cert_file", SettingType::kString, "", "ZCRPC_TLS_CERT_FILE",
     "tcp TLS: PEM certificate chain (server: required; client: for mutual TLS)", ""},
    {"tls_key_file", SettingType::kString, "", "ZCRPC_TLS_KEY_FILE",
     "tcp TLS: PEM private key of tls_cert_file", ""},
    {"tls_ca_file", SettingType::kString, "", "ZCRPC_TLS_CA_FILE",
     "tcp TLS: PEM CAs the peer's certificate must chain to (client: empty = the system's; server: for client certificates)", ""},
    {"tls_server_name", SettingType::kString, "", "ZCRPC_TLS_SERVER_NAME",
     "tcp TLS client: the name the server's certificate must carry (empty: the endpoint's host)", ""},
    {"tls_client_auth", SettingType::kEnum, "none", "ZCRPC_TLS_CLIENT_AUTH",
     "tcp TLS server: ask clients for a certificate (mutual TLS)", "none|optional|required"},
    {"tls_ktls", SettingType::kBool, "true", "ZCRPC_TLS_KTLS",
     "tcp TLS: let the kernel encrypt what is sent (kTLS) where it can, so sends stay zero-copy", ""},
    {"tls_ciphersuites", SettingType::kString,
     "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256", "ZCRPC_TLS_CIPHERSUITES",
     "tcp TLS: TLS 1.3 cipher suites in order of preference", ""},
    {"tls_reload_interval", SettingType::kDuration, "10s", "ZCRPC_TLS_RELOAD_INTERVAL",
     "tcp TLS server: check the certificate, key and CA files this often and reload changes; 0s: never", ""},
    {"max_connections", SettingType::kInt, "0", "ZCRPC_MAX_CONNECTIONS",
     "listeners: connections each lets live at once, more are refused (0: a quarter of RLIMIT_NOFILE)", ""},
    {"dead_peer_timeout", SettingType::kDuration, "30s", "ZCRPC_DEAD_PEER_TIMEOUT",
     "tcp: drop a peer silent this long (keepalive probes, TCP_USER_TIMEOUT); 0s: off", ""},
    {"rdma_device", SettingType::kString, "", "ZCRPC_RDMA_DEVICE",
     "rdma: device name (empty: the one the address resolves to)", ""},
    {"rdma_port", SettingType::kInt, "1", "ZCRPC_RDMA_PORT", "rdma: device port", ""},
    {"rdma_gid_index", SettingType::kInt, "-1", "ZCRPC_RDMA_GID_INDEX",
     "rdma: GID index (-1: chosen by rdma_cm)", ""},
};

const SettingInfo* find(std::string_view name) {
  for (const auto& s : kSettings)
    if (s.name == name) return &s;
  return nullptr;
}

/// Every setting's name (TOML key, URI query key).
std::vector<std::string_view> settingNames() {
  std::vector<std::string_view> out;
  for (const auto& s : kSettings) out.push_back(s.name);
  return out;
}

/// The environment variables zcrpc reads: every setting's and ZCRPC_CONFIG.
constexpr std::string_view kConfigVariable = "ZCRPC_CONFIG";
std::vector<std::string_view> variableNames() {
  std::vector<std::string_view> out{kConfigVariable};
  for (const auto& s : kSettings) out.push_back(s.env);
  return out;
}

/// ZCRPC_TEST_*: the knobs of zcrpc's own tests, benchmarks and scripts (run_vm.sh's
/// ZCRPC_TEST_RDMA_BENCH_CALLS, meson's ZCRPC_TEST_SERVER, ...). No setting is named so,
/// so loadEnvironment() passes over them without a warning: set around a test run, they
/// reach every program the run starts.
constexpr std::string_view kTestVariablePrefix = "ZCRPC_TEST_";
static_assert(std::ranges::none_of(kSettings, [](const SettingInfo& s) {
  return s.env.starts_with(kTestVariablePrefix);
}));

bool startsWithNoCase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (std::toupper(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
  return true;
}

std::string_view typeName(SettingType t) {
  switch (t) {
    case SettingType::kBool: return "bool";
    case SettingType::kInt: return "integer";
    case SettingType::kSize: return "size";
    case SettingType::kDuration: return "duration";
    case SettingType::kString: return "string";
    case SettingType::kEnum: return "choice";
    case SettingType::kList: return "list";
  }
  return "?";
}

std::string trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

bool parseInt(std::string_view s, int64_t& out) {
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty();
}

bool parseSize(std::string_view s, uint64_t& out) {
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0 || i > 19) return false;
  uint64_t n = 0;
  std::from_chars(s.data(), s.data() + i, n);
  std::string unit = trim(s.substr(i));
  for (auto& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  uint64_t mult = 1;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "k" || unit == "kib" || unit == "kb") mult = uint64_t{1} << 10;
  else if (unit == "m" || unit == "mib" || unit == "mb") mult = uint64_t{1} << 20;
  else if (unit == "g" || unit == "gib" || unit == "gb") mult = uint64_t{1} << 30;
  else return false;
  if (n > UINT64_MAX / mult) return false;
  out = n * mult;
  return true;
}

bool parseDuration(std::string_view s, std::chrono::nanoseconds& out) {
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0 || i > 15) return false;
  int64_t n = 0;
  std::from_chars(s.data(), s.data() + i, n);
  std::string unit = trim(s.substr(i));
  if (unit == "ns") out = std::chrono::nanoseconds(n);
  else if (unit == "us") out = std::chrono::microseconds(n);
  else if (unit == "ms") out = std::chrono::milliseconds(n);
  else if (unit == "s") out = std::chrono::seconds(n);
  else if (unit == "min") out = std::chrono::minutes(n);
  else return false;
  return true;
}

std::vector<std::string> splitList(std::string_view s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ',') {
      if (auto t = trim(cur); !t.empty()) out.push_back(t);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (auto t = trim(cur); !t.empty()) out.push_back(t);
  return out;
}

std::string expected(const SettingInfo& s) {
  switch (s.type) {
    case SettingType::kBool: return "true or false";
    case SettingType::kInt: return "an integer";
    case SettingType::kSize: return "a size such as 4096, 64KiB or 1MiB";
    case SettingType::kDuration: return "a duration such as 50us, 10ms or 5s";
    case SettingType::kString: return "a string";
    case SettingType::kEnum: return "one of " + std::string(s.choices);
    case SettingType::kList: return "a comma-separated list";
  }
  return "?";
}

/// Checks `value` for `s`; returns the canonical text or an empty optional reason.
std::string check(const SettingInfo& s, std::string_view raw, std::string& canonical) {
  std::string v = trim(raw);
  switch (s.type) {
    case SettingType::kBool:
      if (v == "true" || v == "1" || v == "yes" || v == "on") canonical = "true";
      else if (v == "false" || v == "0" || v == "no" || v == "off") canonical = "false";
      else return "expected " + expected(s);
      return {};
    case SettingType::kInt: {
      int64_t n;
      if (!parseInt(v, n)) return "expected " + expected(s);
      if ((s.name == "max_leases" || s.name == "window") && (n <= 0 || !isPowerOfTwo(static_cast<uint64_t>(n))))
        return "expected a power of two";
      if (s.name == "max_connections" && (n < 0 || n > (1 << 24)))
        return "expected 0 (a quarter of the descriptor limit) or a positive number of connections";
      if ((s.name == "server_threads" || s.name == "server_batch" || s.name == "nesting_limit" ||
           s.name == "traversal_limit_words") && n <= 0)
        return "expected a positive integer";
      canonical = v;
      return {};
    }
    case SettingType::kSize: {
      uint64_t n;
      if (!parseSize(v, n)) return "expected " + expected(s);
      if (s.name == "ring_bytes" && !validRingBytes(n))
        return "expected a power of two between 4KiB and 1GiB";
      if (s.name == "arena_bytes" && n % 4096) return "expected a multiple of 4096";
      if (s.name == "max_message_bytes" && !validMaxMessageBytes(n))
        return "expected between 64 bytes and 4 GiB";
      canonical = std::to_string(n);
      return {};
    }
    case SettingType::kDuration: {
      std::chrono::nanoseconds d;
      if (!parseDuration(v, d)) return "expected " + expected(s);
      if (s.name == "dead_peer_timeout" && d.count() != 0 &&
          (d < std::chrono::seconds(1) || d > std::chrono::hours(24)))
        return "expected 0s (off) or between 1s and 24h";
      canonical = v;
      return {};
    }
    case SettingType::kString:
      canonical = v;
      return {};
    case SettingType::kEnum: {
      std::string_view choices = s.choices;
      size_t start = 0;
      while (start <= choices.size()) {
        size_t bar = choices.find('|', start);
        if (bar == std::string_view::npos) bar = choices.size();
        if (choices.substr(start, bar - start) == v) {
          canonical = v;
          return {};
        }
        start = bar + 1;
      }
      return "expected " + expected(s);
    }
    case SettingType::kList: {
      auto items = splitList(v);
      if (s.name == "transports") {
        std::string known;
        const TransportList builtin = builtinTransports();
        for (const auto& t : builtin) known += (known.empty() ? "" : ", ") + std::string(t->scheme());
        for (auto& t : items)
          if (std::none_of(builtin.begin(), builtin.end(), [&](const auto& b) { return b->scheme() == t; }))
            return "unknown transport '" + t + "' (known: " + known + ")";
        if (items.empty()) return "expected at least one transport";
      }
      if (s.name == "allow_uids" || s.name == "allow_gids")
        for (auto& t : items) {
          int64_t n;
          if (!parseInt(t, n) || n < 0) return "expected numeric ids, got '" + t + "'";
        }
      canonical.clear();
      for (size_t i = 0; i < items.size(); ++i) canonical += (i ? "," : "") + items[i];
      return {};
    }
  }
  return "unknown type";
}

std::string tomlValueText(const toml::node& node, const SettingInfo& s, const std::string& where) {
  if (auto b = node.as_boolean()) return b->get() ? "true" : "false";
  if (auto i = node.as_integer()) {
    if (s.type == SettingType::kDuration)
      throw InvalidArgument(where + ": expected a duration string such as \"50us\" (with a unit)");
    return std::to_string(i->get());
  }
  if (auto str = node.as_string()) return str->get();
  if (auto arr = node.as_array()) {
    std::string out;
    for (auto& el : *arr) {
      std::string item;
      if (auto es = el.as_string()) item = es->get();
      else if (auto ei = el.as_integer()) item = std::to_string(ei->get());
      else throw InvalidArgument(where + ": list items must be strings or integers");
      out += (out.empty() ? "" : ",") + item;
    }
    return out;
  }
  throw InvalidArgument(where + ": expected " + expected(s));
}

}  // namespace

std::span<const SettingInfo> settingsTable() noexcept { return kSettings; }

std::string_view settingSourceName(SettingSource source) noexcept {
  switch (source) {
    case SettingSource::kDefault: return "default";
    case SettingSource::kFile: return "file";
    case SettingSource::kEnvironment: return "environment";
    case SettingSource::kUri: return "uri";
    case SettingSource::kCode: return "code";
  }
  return "?";
}

Config::Config() {
  for (const auto& s : kSettings) {
    std::string canonical;
    check(s, s.defaultValue, canonical);  // the table's own defaults are valid
    values_[std::string(s.name)] = Value{canonical, SettingSource::kDefault, "default"};
  }
}

Config Config::load() {
  Config c;
  if (const char* path = std::getenv("ZCRPC_CONFIG"); path && *path) c.loadFile(path);
  c.loadEnvironment();
  return c;
}

void Config::set(std::string_view name, std::string_view raw, SettingSource source,
                 std::string origin) {
  const SettingInfo* s = find(name);
  if (!s)
    throw InvalidArgument(origin + ": unknown setting '" + std::string(name) + "'" +
                          didYouMean(name, settingNames()));
  std::string canonical;
  std::string why = check(*s, raw, canonical);
  if (!why.empty())
    throw InvalidArgument(origin + ": " + why + ", got '" + std::string(raw) + "'");
  // Priority, not call order, decides: a file loaded after the environment does not
  // override it (the value was still checked above, so its errors are reported).
  auto it = values_.find(name);
  if (it != values_.end() && source < it->second.source) return;
  values_[std::string(name)] = Value{canonical, source, std::move(origin)};
}

void Config::loadTomlString(std::string_view text, const std::string& origin) {
  toml::table table;
  try {
    table = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    std::ostringstream msg;
    msg << origin << ":" << e.source().begin.line << ": " << e.description();
    throw InvalidArgument(msg.str());
  }
  // Settings live at the top level or under [zcrpc]. A file with a [zcrpc] table may hold
  // other programs' tables and keys too: those are ignored, each with a warning (a
  // misspelt setting outside [zcrpc] would otherwise vanish without a word).
  const toml::table* root = &table;
  if (auto z = table["zcrpc"].as_table()) root = z;
  std::vector<std::string_view> names = settingNames();
  for (auto&& [key, node] : table) {
    if (root == &table) break;  // no [zcrpc]: every top-level key is read below
    if (key.str() == "zcrpc") continue;
    std::string k(key.str());
    std::string where = origin + ":" + std::to_string(node.source().begin.line);
    if (node.is_table())
      warn(where + ": table [" + k + "] ignored: zcrpc reads only [zcrpc] in this file" +
           didYouMean(k, std::vector<std::string_view>{"zcrpc"}));
    else
      warn(where + ": key " + k + " ignored: outside [zcrpc], where zcrpc reads its settings" +
           (find(k) ? "; move it into [zcrpc]" : didYouMean(k, names)));
  }
  for (auto&& [key, node] : *root) {
    std::string k(key.str());
    if (root == &table && k == "zcrpc") continue;
    std::string where = origin + ":" + std::to_string(node.source().begin.line) + " key " + k;
    const SettingInfo* s = find(k);
    if (!s) {
      std::string hint = didYouMean(k, names);
      if (hint.empty() && node.is_table() && root == &table)
        hint = "; settings go at the top level or under [zcrpc]" +
               didYouMean(k, std::vector<std::string_view>{"zcrpc"});
      throw InvalidArgument(where + ": unknown setting" + hint);
    }
    set(k, tomlValueText(node, *s, where), SettingSource::kFile, where);
  }
}

void Config::loadFile(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw InvalidArgument("config file " + path + ": cannot be opened");
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  std::fclose(f);
  loadTomlString(text, path);
}

void Config::loadEnvironment() {
  for (const auto& s : kSettings) {
    std::string env(s.env);
    if (const char* v = std::getenv(env.c_str())) set(s.name, v, SettingSource::kEnvironment, env);
  }
  // A variable that looks like zcrpc's but is none of them is most likely misspelt.
  std::vector<std::string_view> known = variableNames();
  for (char** e = environ; e && *e; ++e) {
    std::string_view entry(*e);
    std::string_view name = entry.substr(0, entry.find('='));
    if (!startsWithNoCase(name, "ZCRPC_") || name.starts_with(kTestVariablePrefix)) continue;
    if (std::find(known.begin(), known.end(), name) != known.end()) continue;
    warn(std::string(name) + " is set but is not a zcrpc setting (ignored)" +
         didYouMean(name, known));
  }
}

void Config::warn(std::string text) {
  logMessage(LogLevel::kWarning, text);
  warnings_.push_back(std::move(text));
}

void Config::applyQuery(std::string_view query, std::string_view uri) {
  size_t start = 0;
  while (start < query.size()) {
    size_t amp = query.find('&', start);
    if (amp == std::string_view::npos) amp = query.size();
    std::string_view pair = query.substr(start, amp - start);
    start = amp + 1;
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    if (eq == std::string_view::npos)
      throw InvalidArgument(std::string(uri) + ": query parameter '" + std::string(pair) +
                            "' has no value");
    set(pair.substr(0, eq), pair.substr(eq + 1), SettingSource::kUri,
        std::string(uri) + " (" + std::string(pair.substr(0, eq)) + ")");
  }
}

const Config::Value& Config::value(std::string_view name, SettingType expectedType) const {
  auto it = values_.find(name);
  const SettingInfo* s = find(name);
  if (it == values_.end() || !s || s->type != expectedType)
    throw InvalidArgument("setting '" + std::string(name) + "' is not a " +
                          std::string(typeName(expectedType)) + " setting");
  return it->second;
}

bool Config::flag(std::string_view name) const { return value(name, SettingType::kBool).text == "true"; }
int64_t Config::integer(std::string_view name) const {
  int64_t n = 0;
  parseInt(value(name, SettingType::kInt).text, n);
  return n;
}
uint64_t Config::size(std::string_view name) const {
  uint64_t n = 0;
  parseSize(value(name, SettingType::kSize).text, n);
  return n;
}
std::chrono::nanoseconds Config::duration(std::string_view name) const {
  std::chrono::nanoseconds d{};
  parseDuration(value(name, SettingType::kDuration).text, d);
  return d;
}
const std::string& Config::text(std::string_view name) const {
  auto it = values_.find(name);
  const SettingInfo* s = find(name);
  if (it == values_.end() || !s || (s->type != SettingType::kString && s->type != SettingType::kEnum))
    throw InvalidArgument("setting '" + std::string(name) + "' is not a string setting");
  return it->second.text;
}
std::vector<std::string> Config::list(std::string_view name) const {
  return splitList(value(name, SettingType::kList).text);
}

std::vector<Config::Effective> Config::effective() const {
  std::vector<Effective> out;
  for (const auto& s : kSettings) {
    const Value& v = values_.at(std::string(s.name));
    out.push_back({std::string(s.name), v.text, v.source, v.origin});
  }
  return out;
}

std::string Config::reference() {
  // A Markdown table: '|' inside a cell is escaped, an empty default is shown as "".
  auto cell = [](std::string_view text) {
    std::string out;
    for (char c : text) {
      if (c == '|') out += '\\';
      out += c;
    }
    return out;
  };
  std::string out =
      "| setting | type | default | environment | meaning |\n|---|---|---|---|---|\n";
  for (const auto& s : kSettings) {
    std::string type(typeName(s.type));
    if (s.type == SettingType::kEnum) type += " (" + cell(s.choices) + ")";
    std::string def = s.defaultValue.empty() ? std::string("\"\"") : "`" + cell(s.defaultValue) + "`";
    out += "| `" + std::string(s.name) + "` | " + type + " | " + def + " | `" +
           std::string(s.env) + "` | " + cell(s.help) + " |\n";
  }
  return out;
}

ConnectionOptions Config::connectionOptions() const {
  ConnectionOptions o;
  o.ringBytes = static_cast<uint32_t>(size("ring_bytes"));
  o.arenaBytes = size("arena_bytes");
  o.maxMessageBytes = size("max_message_bytes");
  o.waitMode = parseWaitMode(text("wait_mode"));
  o.spinTime = duration("spin_time");
  o.spinPolicy = parseSpinPolicy(text("spin_policy"));
  o.maxLeases = static_cast<uint32_t>(integer("max_leases"));
  o.readerLimits.traversalLimitWords = static_cast<uint64_t>(integer("traversal_limit_words"));
  o.readerLimits.nestingLimit = static_cast<int>(integer("nesting_limit"));
  o.connectTimeout = std::chrono::duration_cast<std::chrono::milliseconds>(duration("connect_timeout"));
  return o;
}

ChannelOptions Config::channelOptions() const {
  ChannelOptions o;
  o.defaultTimeout = duration("call_timeout");
  o.window = static_cast<uint32_t>(integer("window"));
  o.maxExports = static_cast<uint32_t>(integer("max_exports"));
  o.maxImports = static_cast<uint32_t>(integer("max_imports"));
  o.streamWindowCalls = static_cast<uint32_t>(integer("stream_window_calls"));
  o.streamWindowBytes = size("stream_window_bytes");
  return o;
}

ServerOptions Config::serverOptions() const {
  ServerOptions o;
  o.workerThreads = static_cast<size_t>(integer("server_threads"));
  o.batch = static_cast<size_t>(integer("server_batch"));
  o.idleMode = parseWaitMode(text("server_idle_mode"));
  o.spinTime = duration("spin_time");
  o.spinPolicy = parseSpinPolicy(text("spin_policy"));
  o.maxExportsPerConnection = static_cast<uint32_t>(integer("max_exports"));
  o.maxImportsPerConnection = static_cast<uint32_t>(integer("max_imports"));
  o.streamWindowCalls = static_cast<uint32_t>(integer("stream_window_calls"));
  o.streamWindowBytes = size("stream_window_bytes");
  return o;
}

CredentialPolicy Config::credentialPolicy() const {
  CredentialPolicy p;
  p.sameUid = flag("allow_same_uid");
  for (auto& u : list("allow_uids")) p.uids.push_back(static_cast<uid_t>(std::stoul(u)));
  for (auto& g : list("allow_gids")) p.gids.push_back(static_cast<gid_t>(std::stoul(g)));
  return p;
}

ShmListenOptions Config::shmListenOptions() const {
  ShmListenOptions o;
  o.connection = connectionOptions();
  o.maxConnections = static_cast<uint32_t>(integer("max_connections"));
  o.policy = credentialPolicy();
  return o;
}

TcpOptions Config::tcpOptions() const {
  TcpOptions o;
  o.connection = connectionOptions();
  o.token = text("token");
  o.allowPlaintextToken = flag("allow_plaintext_token");
  o.maxConnections = static_cast<uint32_t>(integer("max_connections"));
  o.tls.enabled = flag("tls");
  o.tls.certFile = text("tls_cert_file");
  o.tls.keyFile = text("tls_key_file");
  o.tls.caFile = text("tls_ca_file");
  o.tls.serverName = text("tls_server_name");
  o.tls.clientAuth = parseClientAuth(text("tls_client_auth"));
  o.tls.kernelTls = flag("tls_ktls");
  o.tls.ciphersuites = text("tls_ciphersuites");
  o.tls.reloadInterval =
      std::chrono::duration_cast<std::chrono::milliseconds>(duration("tls_reload_interval"));
  o.deadPeerTimeout =
      std::chrono::duration_cast<std::chrono::milliseconds>(duration("dead_peer_timeout"));
  return o;
}

std::vector<std::string> Config::transports() const { return list("transports"); }

EndpointUri parseEndpoint(std::string_view uri) {
  EndpointUri e;
  auto sep = uri.find("://");
  if (sep == std::string_view::npos || sep == 0)
    throw InvalidArgument("endpoint '" + std::string(uri) +
                          "' is not scheme://address (shm://name, tcp://host:port, rdma://host:port)");
  e.scheme = std::string(uri.substr(0, sep));
  std::string_view rest = uri.substr(sep + 3);
  auto q = rest.find('?');
  e.address = std::string(rest.substr(0, q));
  if (q != std::string_view::npos) e.query = std::string(rest.substr(q + 1));
  if (e.address.empty()) throw InvalidArgument("endpoint '" + std::string(uri) + "' has no address");
  return e;
}

}  // namespace zcrpc
