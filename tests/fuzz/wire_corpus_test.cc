// Replays every seed of tests/fuzz/wire_corpus through the wire fuzzer's entry point with the
// project's compiler, so the seeds keep checking zcrpc's accessors against libcapnp where
// clang's libFuzzer is missing. Names (make_wire_corpus.cc): msg-* read in full by both
// readers, bad-* refused somewhere by both, build-* builder programs.
#include <gtest/gtest.h>

#include <string>

#include "seed_files.h"
#include "wire_fuzz_entry.h"

namespace zcrpc::fuzz {
namespace {

std::vector<std::filesystem::path> seeds() { return seedFiles(ZCRPC_WIRE_CORPUS_DIR); }

TEST(WireCorpus, HasSeedsOfEveryKind) {
  size_t msg = 0, bad = 0, build = 0;
  for (const auto& p : seeds()) {
    msg += nameStartsWith(p, "msg-");
    bad += nameStartsWith(p, "bad-");
    build += nameStartsWith(p, "build-");
  }
  EXPECT_GE(msg, 8u);
  EXPECT_GE(bad, 8u);
  EXPECT_GE(build, 4u);
}

TEST(WireCorpus, BothReadersAgreeOnEverySeed) {
  for (const auto& p : seeds()) {
    SCOPED_TRACE(p.filename().string());
    const std::vector<uint8_t> bytes = readSeed(p);
    const WireFuzzOutcome o = runWireInput(bytes.data(), bytes.size(), /*abortOnMismatch=*/false);
    EXPECT_EQ(o.mismatch, "");
    EXPECT_GT(o.reads, 0u);
    if (nameStartsWith(p, "bad-")) {
      EXPECT_GT(o.bothThrew, 0u) << "both refuse something";
    }
    if (nameStartsWith(p, "build-")) {
      EXPECT_TRUE(o.builderMode);
    }
  }
}

}  // namespace
}  // namespace zcrpc::fuzz
