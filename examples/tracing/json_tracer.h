// A zcrpc::Tracer that speaks W3C trace context and writes every finished call as one JSON
// object per line (a "span"), the shape most tracing back ends import or can be fed by a
// small shipper. An example: copy it and change what it writes, or hand the calls to
// OpenTelemetry instead.
//
//   {"span":"client","name":"Echo.echo","trace_id":"4bf92f35...0e4736","span_id":"a1b2...",
//    "parent_span_id":null,"call_id":7,"one_way":false,"start_unix_ns":1765...,
//    "duration_ns":5120,"status":"ok"}
//
// The context travels as the request's metadata entry `traceparent`
// ("00-<trace id>-<span id>-01"), as HTTP and gRPC carry it (zcrpc/metadata.h):
// * client: a call whose caller put a traceparent in its metadata (a handler passing on
//   the one it received) becomes a child of that span; any other call starts a new trace.
//   The tracer replaces the entry with its own span, so the server's span is its child.
// * server: the span is a child of the traceparent the request carried (or a new trace).
// The End callbacks carry no metadata, so the tracer keeps what it began in a map: keyed by
// the client span's low 64 bits, which it also puts in zcrpc's own TraceContext (that one
// comes back with the End callbacks on both sides).
//
// Threads: one tracer may serve several Channels and the server's workers at once; each
// callback takes a mutex for a moment. Callbacks must not throw: errors are swallowed.
#pragma once

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <utility>

#include "zcrpc/metadata.h"
#include "zcrpc/rpc.h"

namespace zcrpc::examples {

class JsonLinesTracer final : public Tracer {
 public:
  /// Writes to `out` (borrowed; flushed after every line).
  explicit JsonLinesTracer(std::FILE* out) : out_(out), random_(std::random_device{}()) {}

  void onClientCallBegin(TracedCall& call) noexcept override {
    try {
      if (!call.metadata) return;
      std::lock_guard lock(mutex_);
      const auto parent = TraceParent::from(*call.metadata);
      Span span;
      span.trace = parent ? parent->traceId : newTraceId();
      span.parent = parent ? hex(parent->parentId) : "";
      TraceParent mine;
      mine.traceId = span.trace;
      mine.parentId = newSpanId();
      mine.flags = 1;  // sampled: every span is written
      span.id = hex(mine.parentId);
      call.metadata->set(TraceParent::kKey, mine.format());
      // zcrpc's own context: the key that finds this span again in onClientCallEnd.
      call.trace = TraceContext{low64(mine.traceId), low64(mine.parentId)};
      client_[call.trace.spanId] = std::move(span);
    } catch (...) {
    }
  }

  void onClientCallEnd(const TracedCall& call, const TracedCallEnd& end) noexcept override {
    try {
      std::lock_guard lock(mutex_);
      auto it = client_.find(call.trace.spanId);
      if (it == client_.end()) return;
      write("client", call, it->second, end);
      client_.erase(it);
    } catch (...) {
    }
  }

  void onServerCallBegin(const TracedCall& call) noexcept override {
    try {
      std::lock_guard lock(mutex_);
      const auto parent = call.metadata ? TraceParent::from(*call.metadata) : std::nullopt;
      Span span;
      span.trace = parent ? parent->traceId : newTraceId();
      span.parent = parent ? hex(parent->parentId) : "";
      span.id = hex(newSpanId());
      server_[{call.callId, call.trace.spanId}] = std::move(span);
    } catch (...) {
    }
  }

  void onServerCallEnd(const TracedCall& call, const TracedCallEnd& end) noexcept override {
    try {
      std::lock_guard lock(mutex_);
      auto it = server_.find({call.callId, call.trace.spanId});
      if (it == server_.end()) return;
      write("server", call, it->second, end);
      server_.erase(it);
    } catch (...) {
    }
  }

 private:
  struct Span {
    std::array<uint8_t, 16> trace{};
    std::string id, parent;  // hex; parent empty: a root span
  };

  template <size_t N>
  static std::string hex(const std::array<uint8_t, N>& bytes) {
    std::string out;
    char two[3];
    for (uint8_t b : bytes) {
      std::snprintf(two, sizeof two, "%02x", b);
      out += two;
    }
    return out;
  }
  template <size_t N>
  static uint64_t low64(const std::array<uint8_t, N>& bytes) {
    uint64_t v;
    std::memcpy(&v, bytes.data() + N - 8, 8);
    return v;
  }
  std::array<uint8_t, 16> newTraceId() {
    std::array<uint8_t, 16> id;
    do {
      const uint64_t a = random_(), b = random_();
      std::memcpy(id.data(), &a, 8);
      std::memcpy(id.data() + 8, &b, 8);
    } while (low64(id) == 0);  // never all zero (and zcrpc's own id not 0: "none")
    return id;
  }
  std::array<uint8_t, 8> newSpanId() {
    std::array<uint8_t, 8> id;
    uint64_t v;
    do v = random_();
    while (v == 0);
    std::memcpy(id.data(), &v, 8);
    return id;
  }

  void write(const char* side, const TracedCall& call, const Span& span, const TracedCallEnd& end) {
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    const auto start = std::chrono::duration_cast<std::chrono::nanoseconds>(now - end.duration);
    std::string name(call.methodName);
    if (name.empty()) {
      char ids[48];
      std::snprintf(ids, sizeof ids, "%#" PRIx64 ".%u", call.interfaceId, unsigned{call.methodId});
      name = ids;
    }
    const std::string parent = span.parent.empty() ? "null" : "\"" + span.parent + "\"";
    std::fprintf(out_,
                 "{\"span\":\"%s\",\"name\":\"%s\",\"trace_id\":\"%s\",\"span_id\":\"%s\","
                 "\"parent_span_id\":%s,\"call_id\":%" PRIu64
                 ",\"one_way\":%s,\"start_unix_ns\":%lld,\"duration_ns\":%lld,\"status\":\"%s\"}\n",
                 side, name.c_str(), hex(span.trace).c_str(), span.id.c_str(), parent.c_str(),
                 call.callId, call.oneWay ? "true" : "false", static_cast<long long>(start.count()),
                 static_cast<long long>(end.duration.count()),
                 end.ok ? "ok" : std::string(errorKindName(end.error)).c_str());
    std::fflush(out_);
  }

  std::FILE* out_;
  std::mutex mutex_;
  std::mt19937_64 random_;                                         // under mutex_
  std::map<uint64_t, Span> client_;                                // by our span's low 64 bits
  std::map<std::pair<uint64_t, uint64_t>, Span> server_;           // by call id, client span
};

}  // namespace zcrpc::examples
