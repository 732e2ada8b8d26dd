// zcrpc — the microbenchmarks' main: Google Benchmark's console table, then each zcrpc
// figure as a ratio to the baseline it was registered with (ZCRPC_RATIO), both from this
// run. With --benchmark_repetitions the median of the repetitions is compared.
#include <fmt/format.h>

#include <map>
#include <string>
#include <vector>

#include "micro.h"

namespace zcrpc::micro {

std::vector<RatioPair>& ratioPairs() {
  static std::vector<RatioPair> pairs;
  return pairs;
}

namespace {

/// Google Benchmark's console output, also keeping each benchmark's time per iteration.
class RecordingReporter final : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.error_occurred) {
        ++errors_;
        continue;
      }
      // A repeated benchmark reports every repetition and then its aggregates: the
      // median wins over any single repetition.
      bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
      if (r.run_type == Run::RT_Aggregate && !median) continue;
      std::string name = r.run_name.str();
      if (!nanos_.count(name)) order_.push_back(name);
      if (median || !medians_.count(name)) nanos_[name] = r.GetAdjustedRealTime() * unitNanos(r.time_unit);
      if (median) medians_[name] = true;
    }
  }

  /// Benchmarks that stopped with an error (SkipWithError).
  int errors() const noexcept { return errors_; }

  /// Prints the ratio table; false when no pair had both sides measured.
  bool printRatios() const {
    bool any = false;
    for (const RatioPair& p : ratioPairs()) {
      for (const std::string& name : order_) {  // in the order they ran
        if (name.rfind(p.subject + "/", 0) != 0) continue;
        double subjectNs = nanos_.at(name);
        std::string arg = name.substr(p.subject.size() + 1);
        auto base = nanos_.find(p.baseline + "/" + arg);
        if (base == nanos_.end() || base->second <= 0) continue;
        if (!any) {
          fmt::print("\nRatios from this run (real time per iteration, zcrpc / baseline):\n");
          fmt::print("  {:<44} {:<36} {:>12} {:>12} {:>8}\n", "zcrpc", "baseline", "zcrpc",
                     "baseline", "ratio");
          any = true;
        }
        fmt::print("  {:<44} {:<36} {:>12} {:>12} {:>7.2f}x   {}\n", name, p.baseline + "/" + arg,
                   formatNs(subjectNs), formatNs(base->second), subjectNs / base->second, p.meaning);
      }
    }
    return any;
  }

 private:
  static double unitNanos(benchmark::TimeUnit u) {
    switch (u) {
      case benchmark::kNanosecond: return 1;
      case benchmark::kMicrosecond: return 1e3;
      case benchmark::kMillisecond: return 1e6;
      case benchmark::kSecond: return 1e9;
    }
    return 1;
  }
  static std::string formatNs(double ns) {
    if (ns < 10'000) return fmt::format("{:.0f} ns", ns);
    if (ns < 10'000'000) return fmt::format("{:.1f} us", ns / 1e3);
    return fmt::format("{:.2f} ms", ns / 1e6);
  }

  std::vector<std::string> order_;
  std::map<std::string, double> nanos_;
  std::map<std::string, bool> medians_;
  int errors_ = 0;
};

}  // namespace
}  // namespace zcrpc::micro

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  zcrpc::micro::RecordingReporter reporter;
  size_t ran = benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  if (ran == 0) {
    fmt::print(stderr, "no benchmark matched the filter\n");
    return 1;
  }
  if (!reporter.printRatios()) fmt::print("\n(no zcrpc / baseline pair ran: no ratios)\n");
  if (reporter.errors()) {
    fmt::print(stderr, "{} benchmark(s) failed (see their error above)\n", reporter.errors());
    return 1;
  }
  return 0;
}
