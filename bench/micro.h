// zcrpc — Google Benchmark microbenchmarks: shared declarations.
//
// Every zcrpc figure here is paired with a baseline or rival measured in the same run
// (ZCRPC_RATIO); micro_main.cc prints the ratios after Google Benchmark's own table.
#pragma once

#include <benchmark/benchmark.h>

#include <string>
#include <vector>

namespace zcrpc::micro {

/// One line of the ratio table: benchmarks named `subject/ARG` and `baseline/ARG` are
/// compared for every ARG both ran with.
struct RatioPair {
  std::string subject;
  std::string baseline;
  std::string meaning;  ///< what the ratio says, in a few words
};

/// The pairs registered so far (by ZCRPC_RATIO at static initialisation).
std::vector<RatioPair>& ratioPairs();

struct RatioRegistrar {
  RatioRegistrar(std::string subject, std::string baseline, std::string meaning) {
    ratioPairs().push_back({std::move(subject), std::move(baseline), std::move(meaning)});
  }
};

#define ZCRPC_RATIO_CAT2(a, b) a##b
#define ZCRPC_RATIO_CAT(a, b) ZCRPC_RATIO_CAT2(a, b)
/// Declares that benchmark family `subject` is to be shown as a ratio to `baseline`.
#define ZCRPC_RATIO(subject, baseline, meaning) \
  static ::zcrpc::micro::RatioRegistrar ZCRPC_RATIO_CAT(zcrpcRatio, __LINE__)(subject, baseline, meaning)

}  // namespace zcrpc::micro
