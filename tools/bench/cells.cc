#include "cells.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include <capnp/message.h>

#include <vector>

#include "bench.capnp.h"
#include "echo.capnp.h"
#include "zcrpc/message.h"

namespace zcrpc::bench {

namespace {

void check(Status s, const char* what, const Connection& conn) {
  if (s == Status::kOk) return;
  std::string why = conn.lastError();
  throw BenchError(fmt::format("{} on {}: {}{}{}", what, conn.endpoint(), statusName(s),
                               why.empty() ? "" : ": ", why));
}

uint64_t nearestRank(std::span<uint64_t> sorted, double q) {
  size_t n = sorted.size();
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(n)));
  return sorted[std::clamp<size_t>(rank, 1, n) - 1];
}

}  // namespace

Latency summarizeLatency(std::span<uint64_t> samples) {
  Latency l;
  l.samples = samples.size();
  if (samples.empty()) return l;
  std::sort(samples.begin(), samples.end());
  l.minNs = samples.front();
  l.p50Ns = nearestRank(samples, 0.50);
  l.p99Ns = nearestRank(samples, 0.99);
  l.p999Ns = nearestRank(samples, 0.999);
  l.maxNs = samples.back();
  return l;
}

Budget Budget::forPayload(size_t payloadBytes, double seconds) {
  Budget b;
  auto ns = std::chrono::nanoseconds(static_cast<int64_t>(seconds * 1e9));
  // ~1.9 M round trips for 64 B, ~650 k for 4 KiB, ~60 k for 64 KiB, ~3.8 k for 1 MiB: more
  // than fit in the time at the expected speeds, so time is the usual bound.
  b.maxIterations = std::clamp<uint64_t>(static_cast<uint64_t>(4e9 / (payloadBytes + 2000.0)),
                                         5000, 2'000'000);
  b.measure = ns;
  b.warmup = ns / 4;
  b.warmupIterations = b.maxIterations / 4;
  return b;
}

Latency floorPingPong(RawEnd& end, std::span<const std::byte> payload, const Budget& budget,
                      std::span<uint64_t> samples, int watchFd) {
  Deadline deadline = cellDeadline(budget.total());
  RawMessage reply;
  auto roundTrip = [&] {
    end.send(payload);
    if (!end.receive(reply, deadline, watchFd))
      throw BenchError("floor: no echo (the peer stopped or the deadline passed)");
    if (reply.stop || reply.payload.size() != payload.size())
      throw BenchError(fmt::format("floor: echo of {} bytes, sent {}", reply.payload.size(),
                                   payload.size()));
  };
  Latency l = measureLatency(roundTrip, budget, samples);
  end.sendStop();
  if (!end.receive(reply, deadline, watchFd) || !reply.stop)
    throw BenchError("floor: the echo side did not acknowledge the end of the cell");
  return l;
}

Latency zcrpcPingPong(Connection& conn, std::span<const std::byte> payload, const Budget& budget,
                      std::span<uint64_t> samples) {
  Deadline deadline = cellDeadline(budget.total());
  const uint32_t words = payloadWords(payload.size());
  const auto data = kj::arrayPtr(reinterpret_cast<const kj::byte*>(payload.data()), payload.size());
  uint64_t seq = 0;
  auto roundTrip = [&] {
    {
      OutgoingMessage out;
      check(conn.startMessage(out, words, deadline), "start request", conn);
      auto req = out.initRoot<Payload>();
      req.setSeq(seq);
      req.setData(data);
      check(conn.send(out), "send request", conn);
    }
    IncomingMessage in;
    check(conn.receive(in, deadline), "receive echo", conn);
    auto resp = in.getRoot<Payload>();
    if (resp.getSeq() != seq || resp.getData().size() != payload.size())
      throw BenchError(fmt::format("zcrpc: echo seq {} with {} bytes, sent seq {} with {}",
                                   resp.getSeq(), resp.getData().size(), seq, payload.size()));
    in.release();
    ++seq;
  };
  Latency l = measureLatency(roundTrip, budget, samples);
  {
    OutgoingMessage out;
    check(conn.startMessage(out, payloadWords(0), deadline), "start stop message", conn);
    out.initRoot<Payload>().setSeq(kStopSeq);
    check(conn.send(out), "send stop message", conn);
  }
  IncomingMessage in;
  check(conn.receive(in, deadline), "receive stop echo", conn);
  if (in.getRoot<Payload>().getSeq() != kStopSeq)
    throw BenchError("zcrpc: the echo side did not acknowledge the end of the cell");
  return l;
}

template <typename Request, typename Answer>
Latency capnpWorkPingPong(const Budget& budget, std::span<uint64_t> samples) {
  const uint32_t words = payloadWords(0);  // what zcrpc reserves: everything in one segment
  std::vector<capnp::word> requestSpace(words), answerSpace(words);
  const kj::ArrayPtr<const kj::byte> data;  // empty: the floor moves the payload's bytes
  capnp::ReaderOptions options;
  options.traversalLimitInWords = uint64_t{1} << 40;  // as the connection's limit: no cap here
  uint64_t seq = 0;
  auto zero = [&] {
    std::memset(requestSpace.data(), 0, words * sizeof(capnp::word));
    std::memset(answerSpace.data(), 0, words * sizeof(capnp::word));
  };
  auto roundTrip = [&] {
    capnp::MallocMessageBuilder request(kj::arrayPtr(requestSpace.data(), words));
    {
      auto r = request.initRoot<Request>();
      if constexpr (requires { r.setSeq(seq); }) r.setSeq(seq);
      r.setData(data);
    }
    capnp::SegmentArrayMessageReader requestIn(request.getSegmentsForOutput(), options);
    auto q = requestIn.getRoot<Request>();
    capnp::MallocMessageBuilder answer(kj::arrayPtr(answerSpace.data(), words));
    {
      auto a = answer.initRoot<Answer>();
      if constexpr (requires { a.setSeq(q.getSeq()); }) a.setSeq(q.getSeq());
      a.setData(q.getData());
    }
    capnp::SegmentArrayMessageReader answerIn(answer.getSegmentsForOutput(), options);
    auto got = answerIn.getRoot<Answer>();
    bool same = got.hasData() && got.getData().size() == 0;
    if constexpr (requires { got.getSeq(); }) same = same && got.getSeq() == seq;
    if (!same) throw BenchError("capnp work: the answer read back differs from the request");
    ++seq;
  };
  return measureLatency(roundTrip, budget, samples, zero);
}

template Latency capnpWorkPingPong<Payload, Payload>(const Budget&, std::span<uint64_t>);
template Latency capnpWorkPingPong<echo::Echo::EchoParams, echo::Echo::EchoResults>(
    const Budget&, std::span<uint64_t>);

Throughput zcrpcStream(Connection& conn, size_t payloadBytes, std::span<const std::byte> source,
                       uint32_t batch, std::chrono::nanoseconds duration, uint64_t maxMessages) {
  if (source.size() < payloadBytes) throw BenchError("stream source smaller than a payload");
  Deadline deadline = cellDeadline(duration);
  const uint32_t words = payloadWords(payloadBytes);
  const size_t step = (payloadBytes + 63) / 64 * 64;
  const auto* base = reinterpret_cast<const kj::byte*>(source.data());
  size_t offset = 0;
  uint64_t sent = 0;
  uint32_t inBatch = 0;
  auto start = Clock::now();
  auto end = start + duration;
  while (sent < maxMessages) {
    OutgoingMessage out;
    check(conn.startMessage(out, words, deadline), "start message", conn);
    auto p = out.initRoot<Payload>();
    p.setSeq(sent);
    p.setData(kj::arrayPtr(base + offset, payloadBytes));
    check(conn.send(out, /*flush=*/false), "send", conn);
    ++sent;
    offset += step;
    if (offset + payloadBytes > source.size()) offset = 0;
    if (++inBatch == batch) {
      inBatch = 0;
      check(conn.flush(), "flush", conn);
    }
    if ((sent & 15) == 0 && Clock::now() >= end) break;
  }
  check(conn.flush(), "flush", conn);
  {
    OutgoingMessage out;
    check(conn.startMessage(out, payloadWords(0), deadline), "start stop message", conn);
    out.initRoot<Payload>().setSeq(kStopSeq);
    check(conn.send(out, /*flush=*/true), "send stop message", conn);
  }
  IncomingMessage in;
  check(conn.receive(in, deadline), "receive the sink's acknowledgement", conn);
  auto stop = Clock::now();
  auto ack = in.getRoot<Payload>();
  if (ack.getSeq() != kStopSeq || ack.getChecksum() != sent)
    throw BenchError(fmt::format("zcrpc stream: the sink counted {} messages, {} were sent",
                                 ack.getChecksum(), sent));
  Throughput t;
  t.messages = sent;
  t.seconds = std::chrono::duration<double>(stop - start).count();
  t.messagesPerSecond = static_cast<double>(sent) / t.seconds;
  t.bytesPerSecond = t.messagesPerSecond * static_cast<double>(payloadBytes);
  return t;
}

double memcpyBandwidth(std::span<const std::byte> source, std::span<std::byte> target,
                       size_t chunkBytes, std::chrono::nanoseconds duration) {
  size_t span = std::min(source.size(), target.size()) / chunkBytes * chunkBytes;
  if (span == 0) throw BenchError("memcpy buffers smaller than a chunk");
  size_t offset = 0;
  auto copy = [&] {
    std::memcpy(target.data() + offset, source.data() + offset, chunkBytes);
    // Keep the compiler from dropping or merging copies nobody reads.
    asm volatile("" : : "r"(target.data() + offset) : "memory");
    offset += chunkBytes;
    if (offset == span) offset = 0;
  };
  for (size_t i = 0; i < span / chunkBytes; ++i) copy();  // one pass: warm TLB and pages
  uint64_t copies = 0;
  auto start = Clock::now();
  auto end = start + duration;
  auto now = start;
  const uint64_t maxCopies = (uint64_t{1} << 40) / chunkBytes;  // 1 TiB: the count bound
  while (now < end && copies < maxCopies) {
    copy();
    ++copies;
    now = Clock::now();
  }
  double seconds = std::chrono::duration<double>(now - start).count();
  return static_cast<double>(copies * chunkBytes) / seconds;
}

uint64_t floorEcho(RawEnd& end, Deadline deadline) {
  uint64_t count = 0;
  RawMessage req;
  for (;;) {
    if (!end.receive(req, deadline))
      throw BenchError("floor echo: the measuring side went silent");
    if (req.stop) {
      end.sendStop();
      return count;
    }
    end.send(req.payload);  // reads the request in place: the one copy an echo makes
    ++count;
  }
}

uint64_t zcrpcEcho(Connection& conn, Deadline deadline) {
  uint64_t count = 0;
  for (;;) {
    IncomingMessage in;
    check(conn.receive(in, deadline), "echo: receive", conn);
    auto req = in.getRoot<Payload>();
    uint64_t seq = req.getSeq();
    auto data = req.getData();
    OutgoingMessage out;
    check(conn.startMessage(out, payloadWords(data.size()), deadline), "echo: start reply", conn);
    auto resp = out.initRoot<Payload>();
    resp.setSeq(seq);
    resp.setData(data);
    in.release();
    check(conn.send(out), "echo: send reply", conn);
    if (seq == kStopSeq) return count;
    ++count;
  }
}

uint64_t zcrpcSink(Connection& conn, size_t payloadBytes, Deadline deadline) {
  uint64_t count = 0;
  for (;;) {
    IncomingMessage in;
    check(conn.receive(in, deadline), "sink: receive", conn);
    auto p = in.getRoot<Payload>();
    uint64_t seq = p.getSeq();
    if (seq == kStopSeq) break;
    size_t got = p.getData().size();
    if (seq != count || got != payloadBytes)
      throw BenchError(fmt::format("sink: message seq {} with {} bytes, expected seq {} with {}",
                                   seq, got, count, payloadBytes));
    ++count;
  }
  OutgoingMessage out;
  check(conn.startMessage(out, payloadWords(0), deadline), "sink: start acknowledgement", conn);
  auto ack = out.initRoot<Payload>();
  ack.setSeq(kStopSeq);
  ack.setChecksum(count);
  check(conn.send(out), "sink: send acknowledgement", conn);
  return count;
}

}  // namespace zcrpc::bench
