// zcrpc-bench — which transport for me, and what zcrpc costs against a floor and its rivals,
// all measured in the same run between two processes pinned to two CPUs.
//
// The first lines answer "which transport for me": zcrpc's echo call p50/p99 over shm and
// tcp, in busy-poll and in the default wait mode (spin-then-sleep), beside the fastest rival
// of each row. --details prints every row (driver.h says what the rows hold), the ratios to
// each row's baseline and the targets (reported, never asserted); every figure printed was
// measured in this run.
//
//   zcrpc-bench                                    # summary; rpc + messages rows
//   zcrpc-bench --details --json o.json --csv o.csv --plot o.png
//   zcrpc-bench --mode rpc --transports tcp --wait-modes blocking --sizes 64,1M
//   zcrpc-bench --mode tls --transports tcp --sizes 64,1M --details   # TLS against plain
//   zcrpc-bench --mode stream --details            # streams (64 B, 64 KiB) and callbacks
//   zcrpc-bench --quick                            # a few seconds (the bench-smoke test)
#include <fcntl.h>
#include <fmt/format.h>
#include <kj/exception.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "model.h"
#include "report.h"

namespace zcrpc::bench {

namespace {

/// Fails now, not after minutes of measuring, when an output file cannot be created. A file
/// that did not exist before is removed again.
void checkWritable(const std::string& path, const char* option) {
  if (path.empty()) return;
  bool existed = ::access(path.c_str(), F_OK) == 0;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throwErrno(fmt::format("{} {}: cannot write", option, path));
  ::close(fd);
  if (!existed) ::unlink(path.c_str());
}

template <typename T, typename Parse>
std::vector<T> parseList(const std::vector<std::string>& items, Parse parse) {
  std::vector<T> out;
  for (const auto& item : items)
    if (T v = parse(item); std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
  return out;
}

struct Outputs {
  std::string json, csv, plot;
  bool details = false;
};

int run(Settings& s, const Outputs& o) {
  if (!o.plot.empty() && !haveGnuplot())
    throw BenchError("--plot " + o.plot +
                     ": gnuplot is not installed (Debian/Ubuntu: apt-get "
                     "install gnuplot-nox); run without --plot, or install it and run again");
  checkWritable(o.json, "--json");
  checkWritable(o.csv, "--csv");
  checkWritable(o.plot, "--plot");
  if (s.messages &&
      std::find(s.transports.begin(), s.transports.end(), Transport::kShm) == s.transports.end()) {
    if (!s.rpc && !s.standard) throw BenchError("--mode messages measures shm only; use --mode rpc for tcp");
    s.messages = false;
  }
  Table table = runBench(s);
  printSummary(stdout, table);
  if (o.details) printDetails(stdout, table, ::isatty(STDOUT_FILENO) != 0);
  if (!o.json.empty()) writeJson(o.json, table), fmt::print("JSON written to {}\n", o.json);
  if (!o.csv.empty()) writeCsv(o.csv, table), fmt::print("CSV written to {}\n", o.csv);
  if (!o.plot.empty()) writePlot(o.plot, table), fmt::print("Plot written to {}\n", o.plot);
  return 0;
}

}  // namespace

}  // namespace zcrpc::bench

int main(int argc, char** argv) {
  using namespace zcrpc::bench;
  Settings s;
  Outputs o;
  std::string mode = "all", cpus = "0,1";
  std::vector<std::string> sizes{"64", "4K", "64K", "1M"}, transports{"shm", "tcp"},
      waits{"busy-poll", "spin-then-sleep"}, rates, openWaits;
  bool noMetrics = false, copyPayload = false;
  CLI::App app{
      "zcrpc-bench: which transport for me — zcrpc against a floor and its rivals, "
      "measured side by side between two pinned processes"};
  app.add_option(
         "--mode", mode,
         "rpc: echo calls (and the rivals); messages: raw messages over shm; standard: "
         "standard Cap'n Proto peers against zcrpc (every size); open-loop: calls at a "
         "fixed pace (see --rates); tls: echo calls over TLS tcp against plain tcp and gRPC "
         "over TLS; stream: `-> stream` chunks against one-way messages and gRPC client "
         "streaming, and callbacks (the server calls the client's object) against echo "
         "calls (sizes 64,64K unless --sizes); all (standard at the smallest size, open "
         "loop and stream shorter)")
      ->check(CLI::IsMember({"rpc", "messages", "standard", "open-loop", "tls", "stream", "all"}))
      ->capture_default_str();
  app.add_option("--cpus", cpus, "CPUs of the measuring and the serving process: A,B")
      ->capture_default_str();
  auto* sizesOption = app.add_option("--sizes", sizes, "Payload sizes (B, K/KiB, M/MiB)")
                          ->delimiter(',')
                          ->capture_default_str();
  app.add_option("--transports,--transport", transports, "shm, tcp")
      ->delimiter(',')
      ->check(CLI::IsMember({"shm", "tcp"}))
      ->capture_default_str();
  app.add_option("--wait-modes,--wait-mode", waits,
                 "busy-poll, spin-then-sleep, blocking (zcrpc, "
                 "the baselines and the rivals that have them)")
      ->delimiter(',')
      ->check(CLI::IsMember({"busy-poll", "spin-then-sleep", "blocking"}))
      ->capture_default_str();
  app.add_option("--rates", rates,
                 "Open loop: calls per second (1k, 10k, 100k, 250...); default 1k,10k (with "
                 "--mode open-loop 1k,10k,100k); 'none' for no open-loop rows")
      ->delimiter(',');
  app.add_option("--open-loop-wait-modes", openWaits,
                 "Open loop: wait modes of zcrpc and the baselines; default spin-then-sleep,"
                 "blocking (with --mode open-loop also busy-poll)")
      ->delimiter(',')
      ->check(CLI::IsMember({"busy-poll", "spin-then-sleep", "blocking"}));
  auto* openCalls =
      app.add_option("--open-loop-calls", s.openLoopCalls,
                     "Open loop: calls timed per cell, at least (default 1000; 2000 with --mode "
                     "open-loop; a tenth more warm up)")
          ->check(CLI::Range(uint64_t{10}, uint64_t{1'000'000}));
  app.add_option("--rivals", s.only,
                 "Only these rivals (series ids, e.g. capnp); default: all built")
      ->delimiter(',');
  auto* duration = app.add_option("--duration", s.seconds, "Seconds per measured cell")
                       ->check(CLI::Range(0.001, 60.0))
                       ->capture_default_str();
  auto* reps = app.add_option("--reps", s.reps, "Repetitions (ratios are per repetition)")
                   ->check(CLI::Range(1u, 100u))
                   ->capture_default_str();
  app.add_option("--batch", s.batch, "Messages per flush() in the one-way stream")
      ->check(CLI::Range(1u, 65536u))
      ->capture_default_str();
  app.add_option("--window", s.window, "Outstanding calls of the pipelined throughput")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_flag("--uncapped-window", s.uncappedWindow,
               "Keep --window even where the calls in "
               "flight exceed the rings (the client then waits for room: the congestion path)");
  app.add_flag("--no-metrics", noMetrics, "Turn zcrpc's per-call metrics off (default on)");
  app.add_flag("--copy-payload", copyPayload,
               "Copy every echo payload into the messages (default: "
               "over tcp, from 16 KiB on they go by reference, as a large blob is best sent)");
  app.add_flag("--details", o.details,
               "Print every row, ratio, repetition and target after the summary");
  app.add_option("--json", o.json, "Also write every figure of every repetition as JSON to FILE");
  app.add_option("--csv", o.csv, "Also write one line per row and series (medians) as CSV");
  app.add_option("--plot", o.plot, "Also draw the round trips into a PNG (needs gnuplot)");
  app.add_flag("--quick", s.quick,
               "Short run (0.02 s per cell, 2 repetitions) unless --duration/--reps");
  CLI11_PARSE(app, argc, argv);
  if (s.quick) {
    if (duration->count() == 0) s.seconds = 0.02;
    if (reps->count() == 0) s.reps = 2;
  }
  s.metrics = !noMetrics;
  if (copyPayload) s.referenceFrom = SIZE_MAX;
  s.rpc = mode == "rpc" || mode == "all";
  s.messages = mode == "messages" || mode == "all";
  s.standard = mode == "standard" || mode == "all";
  s.standardAllSizes = mode == "standard";
  const bool openOnly = mode == "open-loop";
  if (openCalls->count() == 0) s.openLoopCalls = s.quick ? 100 : openOnly ? 2000 : 1000;
  if (rates.empty() && (openOnly || mode == "all"))
    rates = openOnly && !s.quick ? std::vector<std::string>{"1k", "10k", "100k"}
                                 : std::vector<std::string>{"1k", "10k"};
  if (openWaits.empty())
    openWaits = openOnly && !s.quick
                    ? std::vector<std::string>{"busy-poll", "spin-then-sleep", "blocking"}
                    : std::vector<std::string>{"spin-then-sleep", "blocking"};
  s.tls = mode == "tls" || mode == "all";
  s.stream = mode == "stream" || mode == "all";
  s.streamShort = mode == "all";
  if (mode == "stream" && sizesOption->count() == 0) sizes = {"64", "64K"};
  ::signal(SIGPIPE, SIG_IGN);  // a dead peer shows up as an error, not as a signal
  ::prctl(PR_SET_TIMERSLACK, 1UL);  // open-loop pacing sleeps wake on time (both processes)
  try {
    std::tie(s.clientCpu, s.serverCpu) = parseCpus(cpus);
    s.sizes = parseList<size_t>(sizes, parseSize);
    s.transports =
        parseList<Transport>(transports, [](const std::string& t) { return parseTransport(t); });
    s.waitModes = parseList<zcrpc::WaitMode>(
        waits, [](const std::string& w) { return zcrpc::parseWaitMode(w); });
    s.openLoopWaitModes = parseList<zcrpc::WaitMode>(
        openWaits, [](const std::string& w) { return zcrpc::parseWaitMode(w); });
    if (!(rates.size() == 1 && rates[0] == "none"))
      s.openLoopRates = parseList<double>(rates, parseRate);
    // TLS runs over tcp only.
    if (std::find(s.transports.begin(), s.transports.end(), Transport::kTcp) == s.transports.end()) {
      if (mode == "tls") throw BenchError("--mode tls measures tcp only; add --transports tcp");
      s.tls = false;
    }
    return run(s, o);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "zcrpc-bench: error: {}\n", e.what());
  } catch (const kj::Exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "zcrpc-bench: error: Cap'n Proto: {}\n", e.getDescription().cStr());
  }
  return 1;
}
