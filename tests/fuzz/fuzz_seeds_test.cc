// Replays the seeds of every fuzz target in fuzz_entries.h (tests/fuzz/seeds/<target>/)
// through its entry point with the project's compiler, and cuts of each seed short at a
// few lengths, so the seeds keep covering what they name even where clang's libFuzzer is
// missing. A seed passes when its entry returns (a refusal is an expected outcome); the
// sanitizer builds of this test catch what a fuzzer would.
#include <gtest/gtest.h>

#include <string>

#include "fuzz_entries.h"
#include "seed_files.h"

namespace zcrpc::fuzz {
namespace {

void replay(const std::string& target, void (*entry)(const uint8_t*, size_t), size_t minSeeds) {
  auto files = seedFiles(std::filesystem::path(ZCRPC_FUZZ_SEEDS_DIR) / target);
  EXPECT_GE(files.size(), minSeeds);
  for (const auto& p : files) {
    SCOPED_TRACE(p.filename().string());
    auto bytes = readSeed(p);
    entry(bytes.data(), bytes.size());
    // Cut short: at every handshake boundary and a few points inside.
    for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{11}, size_t{24}, size_t{30}, size_t{184},
                     size_t{242}, bytes.size() / 2, bytes.size() - 1})
      if (n < bytes.size()) entry(bytes.data(), n);
  }
}

TEST(FuzzSeeds, TcpHandshake) { replay("tcp_handshake", runTcpHandshakeInput, 10); }
TEST(FuzzSeeds, ShmHandshake) { replay("shm_handshake", runShmHandshakeInput, 10); }
TEST(FuzzSeeds, Dispatch) { replay("dispatch", runDispatchInput, 10); }
TEST(FuzzSeeds, TlsStream) { replay("tls_stream", runTlsStreamInput, 8); }

}  // namespace
}  // namespace zcrpc::fuzz
