// zcrpc — a message built in place in a ring and read in place by the other end (one
// thread, in-process loopback), against Cap'n Proto's usual way of handing a message
// over: build in heap segments, copy them into a flat array, read that.
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <chrono>
#include <string>
#include <vector>

#include "bench.capnp.h"
#include "micro.h"
#include "micro_payload.h"
#include "zcrpc/loopback.h"
#include "zcrpc/message.h"
#include "zcrpc/transport.h"

namespace zcrpc::micro {
namespace {

void zcrpcLoopbackInPlace(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<kj::byte> data(n, kj::byte{0x5a});
  ConnectionOptions o;
  o.waitMode = WaitMode::kBusyPoll;
  auto [a, b] = makeLoopbackPair(o);
  uint64_t seq = 0;
  for (auto _ : state)
    if (!sendAndReadBack(state, *a, *b, kj::arrayPtr(data.data(), n), seq++,
                         deadlineAfter(std::chrono::seconds(5))))
      break;
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n));
}

void capnpCopyThroughFlatArray(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<kj::byte> data(n, kj::byte{0x5a});
  uint64_t seq = 0;
  for (auto _ : state) {
    kj::Array<capnp::word> flat;
    {
      capnp::MallocMessageBuilder out(payloadWords(n));
      auto root = out.initRoot<bench::Payload>();
      root.setSeq(seq);
      root.setData(kj::arrayPtr(data.data(), n));
      flat = capnp::messageToFlatArray(out);
    }
    capnp::ReaderOptions unlimited;
    unlimited.traversalLimitInWords = uint64_t{1} << 40;
    capnp::FlatArrayMessageReader in(flat, unlimited);
    auto root = in.getRoot<bench::Payload>();
    if (root.getSeq() != seq++ || root.getData().size() != n) {
      state.SkipWithError("the message read back differs from the one built");
      break;
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n));
}

BENCHMARK(zcrpcLoopbackInPlace)->Name("Message/zcrpcLoopbackInPlace")->Arg(64)->Arg(4 << 10)->Arg(64 << 10)->Arg(1 << 20);
BENCHMARK(capnpCopyThroughFlatArray)->Name("Message/capnpCopyThroughFlatArray")->Arg(64)->Arg(4 << 10)->Arg(64 << 10)->Arg(1 << 20);
ZCRPC_RATIO("Message/zcrpcLoopbackInPlace", "Message/capnpCopyThroughFlatArray",
            "build, hand over, read (arg: payload bytes)");

}  // namespace
}  // namespace zcrpc::micro
