// libFuzzer target for zcrpc's generated wire accessors against libcapnp (reading untrusted
// bytes, and building). Built by tests/fuzz/meson.build with clang++
// -fsanitize=fuzzer,address,undefined; the work is done in wire_fuzz_entry.cc, which the
// corpus replay test shares.
#include <cstddef>
#include <cstdint>

#include "wire_fuzz_entry.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)zcrpc::fuzz::runWireInput(data, size);
  return 0;
}
