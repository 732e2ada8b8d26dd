// Replays every seed of tests/fuzz/wire_corpus through the wire fuzzer's entry point with the
// project's compiler, so the seeds keep checking zcrpc's accessors against libcapnp where
// clang's libFuzzer is missing. Names (make_wire_corpus.cc): msg-* read in full by both
// readers, bad-* refused somewhere by both, build-* builder programs.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "wire_fuzz_entry.h"

namespace zcrpc::fuzz {
namespace {

namespace fs = std::filesystem;

std::vector<fs::path> seeds() {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(ZCRPC_WIRE_CORPUS_DIR))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<uint8_t> readFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool startsWith(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

TEST(WireCorpus, HasSeedsOfEveryKind) {
  size_t msg = 0, bad = 0, build = 0;
  for (const auto& p : seeds()) {
    const std::string name = p.filename().string();
    msg += startsWith(name, "msg-");
    bad += startsWith(name, "bad-");
    build += startsWith(name, "build-");
  }
  EXPECT_GE(msg, 8u);
  EXPECT_GE(bad, 8u);
  EXPECT_GE(build, 4u);
}

TEST(WireCorpus, BothReadersAgreeOnEverySeed) {
  for (const auto& p : seeds()) {
    const std::string name = p.filename().string();
    SCOPED_TRACE(name);
    const std::vector<uint8_t> bytes = readFile(p);
    const WireFuzzOutcome o = runWireInput(bytes.data(), bytes.size(), /*abortOnMismatch=*/false);
    EXPECT_EQ(o.mismatch, "");
    EXPECT_GT(o.reads, 0u);
    if (startsWith(name, "bad-")) {
      EXPECT_GT(o.bothThrew, 0u) << "both refuse something";
    }
    if (startsWith(name, "build-")) {
      EXPECT_TRUE(o.builderMode);
    }
  }
}

}  // namespace
}  // namespace zcrpc::fuzz
