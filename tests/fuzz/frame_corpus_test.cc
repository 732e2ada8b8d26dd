// Replays every seed of tests/fuzz/corpus through the fuzzer's entry point with the normal
// compiler, so the seeds stay meaningful even where clang's libFuzzer is missing.
//
// A seed's name says what parseFrame must make of it:
//   ok-*     accepted as a whole and with the bytes after the frame as the arena
//   arena-*  accepted only with the bytes after the frame as the arena
//   bad-*    refused both ways
// Any other file is replayed without an expectation (the entry point still checks every
// accepted frame and reads it in place).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "frame_fuzz_entry.h"

namespace zcrpc::fuzz {
namespace {

namespace fs = std::filesystem;

std::vector<fs::path> corpusFiles() {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(ZCRPC_FUZZ_CORPUS_DIR))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<uint8_t> readFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool startsWith(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

TEST(FrameCorpus, HasSeedsOfEveryKind) {
  size_t ok = 0, arena = 0, bad = 0;
  for (const auto& p : corpusFiles()) {
    std::string name = p.filename().string();
    ok += startsWith(name, "ok-");
    arena += startsWith(name, "arena-");
    bad += startsWith(name, "bad-");
  }
  EXPECT_GE(ok, 3u);
  EXPECT_GE(arena, 1u);
  EXPECT_GE(bad, 10u);
}

TEST(FrameCorpus, EverySeedGetsTheExpectedVerdict) {
  for (const auto& p : corpusFiles()) {
    std::string name = p.filename().string();
    SCOPED_TRACE(name);
    std::vector<uint8_t> bytes = readFile(p);
    FrameFuzzOutcome o = runFrameInput(bytes.data(), bytes.size());
    if (startsWith(name, "ok-")) {
      EXPECT_TRUE(o.acceptedWhole);
      EXPECT_TRUE(o.acceptedSplit);
    } else if (startsWith(name, "arena-")) {
      EXPECT_FALSE(o.acceptedWhole);
      EXPECT_TRUE(o.acceptedSplit);
    } else if (startsWith(name, "bad-")) {
      EXPECT_FALSE(o.acceptedWhole);
      EXPECT_FALSE(o.acceptedSplit);
    }
  }
}

TEST(FrameCorpus, EveryTruncationIsHandled) {
  // Each prefix of each seed is a frame cut short: it must be refused or checked, never
  // crash. Cheap stand-in for the fuzzer on machines without libFuzzer.
  for (const auto& p : corpusFiles()) {
    std::vector<uint8_t> bytes = readFile(p);
    for (size_t n = 0; n < bytes.size() && n <= 4096; n += (n < 256 ? 1 : 64))
      (void)runFrameInput(bytes.data(), n);
  }
}

}  // namespace
}  // namespace zcrpc::fuzz
