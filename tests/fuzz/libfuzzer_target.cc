// The libFuzzer binary of one fuzz target: meson builds this file once per target with
// -DZCRPC_FUZZ_ENTRY=<its entry point> (fuzz_entries.h).
#include <cstddef>
#include <cstdint>

#include "fuzz_entries.h"

#ifndef ZCRPC_FUZZ_ENTRY
#error "build with -DZCRPC_FUZZ_ENTRY=runXInput"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  zcrpc::fuzz::ZCRPC_FUZZ_ENTRY(data, size);
  return 0;
}
