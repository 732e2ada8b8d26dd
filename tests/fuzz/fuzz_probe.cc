// Configure-time probe: does clang++ link a libFuzzer binary on this machine?
#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }
