// zcrpc — from received bytes to a reader's root: zcrpc's frame check against Cap'n
// Proto's own flat-array framing, over the same segments.
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstring>
#include <vector>

#include "bench.capnp.h"
#include "micro.h"
#include "zcrpc/frame.h"

namespace zcrpc::micro {
namespace {

/// One message in both framings: segment 0 holds a bench::Payload root (64 data bytes),
/// the others eight filler words each, as a grown message would have.
struct TwoFramings {
  explicit TwoFramings(size_t segments) {
    capnp::MallocMessageBuilder b(64);
    auto root = b.initRoot<bench::Payload>();
    root.setSeq(7);
    std::vector<kj::byte> data(64, kj::byte{0x5a});
    root.setData(kj::arrayPtr(data.data(), data.size()));
    auto first = b.getSegmentsForOutput()[0];
    seg0.assign(first.begin(), first.end());
    filler.assign(8, capnp::word{});
    std::vector<kj::ArrayPtr<const capnp::word>> segs{kj::arrayPtr(seg0.data(), seg0.size())};
    for (size_t i = 1; i < segments; ++i) segs.push_back(kj::arrayPtr(filler.data(), filler.size()));
    flat = capnp::messageToFlatArray(kj::arrayPtr(segs.data(), segs.size()));

    // zcrpc's layout (docs/wire-format.md): header, the segments back to back, the table.
    size_t words = kFrameHeaderBytes / 8;
    std::vector<SegmentEntry> table;
    for (const auto& s : segs) {
      table.push_back({static_cast<uint32_t>(s.size()), static_cast<uint32_t>(words)});
      words += s.size();
    }
    frame.assign(words + table.size(), capnp::word{});
    auto* bytes = reinterpret_cast<std::byte*>(frame.data());
    for (size_t i = 0; i < segs.size(); ++i)
      std::memcpy(bytes + size_t{table[i].location} * 8, segs[i].begin(), segs[i].size() * 8);
    FrameHeader h{};
    h.kind = static_cast<uint8_t>(FrameKind::kRequest);
    h.segmentCount = static_cast<uint16_t>(segs.size());
    h.callId = 1;
    h.tableOffset = static_cast<uint32_t>(words * 8);
    h.frameBytes = static_cast<uint32_t>(frameBytesWithTable(words * 8, table.size()));
    std::memcpy(bytes + h.tableOffset, table.data(), table.size() * sizeof(SegmentEntry));
    std::memcpy(bytes, &h, sizeof h);
  }

  std::vector<capnp::word> seg0, filler, frame;
  kj::Array<capnp::word> flat;
};

void zcrpcCheckAndRead(benchmark::State& state) {
  TwoFramings m(static_cast<size_t>(state.range(0)));
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(m.frame.data()),
                                   m.frame.size() * 8);
  FrameLimits limits;
  ParsedFrame parsed;
  for (auto _ : state) {
    if (!checkFrame(bytes, limits, parsed)) {
      state.SkipWithError(frameRefusalReason(parsed).c_str());
      break;
    }
    capnp::SegmentArrayMessageReader reader(kj::arrayPtr(parsed.segments.data(), parsed.segmentCount));
    benchmark::DoNotOptimize(reader.getRoot<bench::Payload>().getData().size());
  }
}

void capnpFlatArrayRead(benchmark::State& state) {
  TwoFramings m(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    capnp::FlatArrayMessageReader reader(m.flat);
    benchmark::DoNotOptimize(reader.getRoot<bench::Payload>().getData().size());
  }
}

BENCHMARK(zcrpcCheckAndRead)->Name("Frame/zcrpcCheckAndRead")->Arg(1)->Arg(4)->Arg(16);
BENCHMARK(capnpFlatArrayRead)->Name("Frame/capnpFlatArrayRead")->Arg(1)->Arg(4)->Arg(16);
ZCRPC_RATIO("Frame/zcrpcCheckAndRead", "Frame/capnpFlatArrayRead",
            "bytes to root: validated frame vs Cap'n Proto's framing (arg: segments)");

}  // namespace
}  // namespace zcrpc::micro
