#include "zcrpc/context.h"

#include <algorithm>

#include "config/nearest.h"

namespace zcrpc {

namespace {

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : ",") + i;
  return out;
}

}  // namespace

const EndpointVerdict* TransportChoice::chosen() const noexcept {
  for (const auto& v : verdicts)
    if (v.chosen) return &v;
  return nullptr;
}

std::string TransportChoice::describe() const {
  std::string out;
  for (const auto& v : verdicts)
    out += v.endpoint + ": " + (v.chosen ? "chosen" : "skipped: " + v.reason) + "\n";
  return out;
}

Context::Context(Config config) : Context(std::move(config), builtinTransports()) {}

Context::Context(Config config, TransportList transports)
    : config_(std::move(config)), transports_(std::move(transports)) {
  std::erase(transports_, nullptr);
}

const Transport* Context::transport(std::string_view scheme) const noexcept {
  for (const auto& t : transports_)
    if (t->scheme() == scheme) return t.get();
  return nullptr;
}

Config Context::configFor(const EndpointUri& uri, std::string_view text) const {
  Config c = config_;
  if (!uri.query.empty()) c.applyQuery(uri.query, text);
  return c;
}

std::string Context::unknownScheme(std::string_view scheme) const {
  if (transport(scheme)) return {};
  std::vector<std::string_view> schemes;
  std::string known;
  for (const auto& t : transports_) {
    schemes.push_back(t->scheme());
    known += (known.empty() ? "" : ", ") + std::string(t->scheme()) + "://";
  }
  return "unknown scheme '" + std::string(scheme) + "' (known: " + known + ")" +
         didYouMean(scheme, schemes);
}

std::string Context::unusableReason(const EndpointUri& uri, const Config& config) const {
  const Transport* t = transport(uri.scheme);
  if (!t) return unknownScheme(uri.scheme);
  std::string why = t->unavailable(config);
  if (!why.empty()) return why;
  return t->unreachable(uri.address, config);
}

TransportChoice Context::choose(std::span<const std::string> endpoints) const {
  TransportChoice choice;
  auto prefs = config_.transports();
  std::vector<std::pair<size_t, std::string>> ordered;
  for (const auto& e : endpoints) {
    EndpointUri uri = parseEndpoint(e);
    if (std::string why = unknownScheme(uri.scheme); !why.empty()) {
      choice.verdicts.push_back({e, uri.scheme, false, why});
      continue;
    }
    auto it = std::find(prefs.begin(), prefs.end(), uri.scheme);
    if (it == prefs.end()) {
      choice.verdicts.push_back({e, uri.scheme, false,
                                 "transport '" + uri.scheme + "' is not in the preference list (transports = " +
                                     joined(prefs) + ")"});
      continue;
    }
    ordered.push_back({static_cast<size_t>(it - prefs.begin()), e});
  }
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](auto& a, auto& b) { return a.first < b.first; });
  bool found = false;
  for (auto& [rank, e] : ordered) {
    EndpointUri uri = parseEndpoint(e);
    if (found) {
      choice.verdicts.push_back({e, uri.scheme, false, "an earlier preference was chosen"});
      continue;
    }
    std::string why = unusableReason(uri, config_);
    choice.verdicts.push_back({e, uri.scheme, why.empty(), why});
    found = why.empty();
  }
  return choice;
}

std::unique_ptr<Connection> Context::connect(std::string_view endpoint) const {
  std::string e(endpoint);
  return connect(std::span<const std::string>(&e, 1));
}

std::unique_ptr<Connection> Context::connect(std::span<const std::string> endpoints,
                                             TransportChoice* out) const {
  TransportChoice planned = choose(endpoints);
  TransportChoice result;
  std::unique_ptr<Connection> conn;
  for (auto& v : planned.verdicts) {
    EndpointVerdict verdict = v;
    verdict.chosen = false;
    if (!conn && (v.chosen || v.reason == "an earlier preference was chosen")) {
      EndpointUri uri = parseEndpoint(v.endpoint);
      std::string why = v.chosen ? std::string() : unusableReason(uri, config_);
      if (why.empty()) {
        try {
          const Config c = configFor(uri, v.endpoint);
          conn = transport(uri.scheme)->connect(uri.address, c.connectionOptions(), c);
        } catch (const std::exception& e) {
          why = std::string("connect failed: ") + e.what();
        }
      }
      verdict.chosen = conn != nullptr;
      verdict.reason = why;
    }
    result.verdicts.push_back(std::move(verdict));
  }
  if (out) *out = result;
  if (!conn) throw Failed("no endpoint could be reached:\n" + result.describe());
  return conn;
}

std::unique_ptr<Listener> Context::listen(std::string_view endpoint) const {
  EndpointUri uri = parseEndpoint(endpoint);
  const Transport* t = transport(uri.scheme);
  if (!t || !t->traits().compiledIn)
    throw InvalidArgument("cannot listen on '" + std::string(endpoint) + "': " +
                          (t ? "transport '" + uri.scheme + "' is not compiled in"
                             : unknownScheme(uri.scheme)));
  const Config c = configFor(uri, endpoint);
  return t->listen(uri.address, c.connectionOptions(), c);
}

}  // namespace zcrpc
