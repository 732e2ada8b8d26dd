// zcrpc — microbenchmarks: a bench::Payload message sent on one connection and read back
// on another (or, echoed, on the same one).
#pragma once

#include <benchmark/benchmark.h>

#include <string>

#include "bench.capnp.h"
#include "zcrpc/message.h"
#include "zcrpc/transport.h"

namespace zcrpc::micro {

/// First-segment words for a bench::Payload (or an Echo params / results struct) whose
/// data is `bytes` long.
inline uint32_t payloadWords(size_t bytes) { return static_cast<uint32_t>(4 + (bytes + 7) / 8); }

/// Sends Payload{seq, data} on `from`, receives the next message on `to` and checks that it
/// carries `seq` and as many bytes. On any failure the benchmark stops with the reason
/// (SkipWithError) and this returns false.
inline bool sendAndReadBack(benchmark::State& state, Connection& from, Connection& to,
                            kj::ArrayPtr<const kj::byte> data, uint64_t seq, Deadline deadline) {
  auto fail = [&](const std::string& why) {
    state.SkipWithError(why.c_str());
    return false;
  };
  {
    OutgoingMessage out;
    if (from.startMessage(out, payloadWords(data.size()), deadline) != Status::kOk)
      return fail("startMessage: " + from.lastError());
    auto root = out.initRoot<bench::Payload>();
    root.setSeq(seq);
    root.setData(data);
    if (from.send(out) != Status::kOk) return fail("send: " + from.lastError());
  }
  IncomingMessage in;
  if (to.receive(in, deadline) != Status::kOk) return fail("receive: " + to.lastError());
  auto root = in.getRoot<bench::Payload>();
  if (root.getSeq() != seq || root.getData().size() != data.size())
    return fail("the message read back differs from the one sent");
  return true;
}

}  // namespace zcrpc::micro
