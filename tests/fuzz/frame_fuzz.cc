// libFuzzer target for zcrpc::parseFrame and in-place reading of the frames it accepts.
// Built by tests/fuzz/meson.build with clang++ -fsanitize=fuzzer,address,undefined; the
// work is done in frame_fuzz_entry.cc, which the corpus replay test shares.
#include <cstddef>
#include <cstdint>

#include "frame_fuzz_entry.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)zcrpc::fuzz::runFrameInput(data, size);
  return 0;
}
