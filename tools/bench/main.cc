// zcrpc-bench — what zcrpc costs, measured against a floor and a rival in the same run.
//
// Two processes (this one measures, a forked peer echoes, sinks or serves), each pinned to
// its own CPU. Two modes, both run by default:
//
//  * messages (messages.h): raw zcrpc messages over shm:// — round-trip latency against the
//    floor ring, one-way throughput with batching, memcpy bandwidth;
//  * rpc (rpc_mode.h): Echo.echo through the generated stubs, zcrpc::Server in the peer,
//    over shm:// and/or tcp:// in any wait mode — round-trip latency against the reference
//    (floor ring / raw TCP) and Cap'n Proto's own RPC, and pipelined calls/s.
//
// Over shm both modes also time Cap'n Proto's own work in a round trip (capnpWorkPingPong
// in cells.h: build and read the request and the answer with the data field empty, one
// thread, no transport: the floor moves the payload's bytes itself); the
// floor plus that is the least a round trip of Cap'n Proto messages can take, whatever
// carries them, and the report sets the floor and zcrpc against it.
//
// Latency is reported as a ratio to the reference from the same repetition; the median of
// the per-repetition ratios is the headline, because the host may move the CPUs between
// near and far placement during a run. Targets are printed with PASS / MISS, never asserted.
// Every figure printed was measured in this run; nothing is estimated.
//
//   zcrpc-bench                                   # messages + rpc over shm, busy-poll
//   zcrpc-bench --mode rpc --transport tcp        # zcrpc vs raw TCP vs Cap'n Proto over TCP
//   zcrpc-bench --mode rpc --transports shm,tcp --wait-modes busy-poll,spin-then-sleep,blocking
//               --json o.json --csv o.csv --plot o.png     # the whole matrix (one command)
//   zcrpc-bench --quick                           # a few seconds (the bench-smoke test)
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <kj/exception.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "messages.h"
#include "output.h"
#include "report.h"
#include "rpc_mode.h"
#include "rpc_report.h"

namespace zcrpc::bench {

namespace {

struct Options {
  std::string mode = "all";
  std::string cpus = "0,1";
  std::vector<std::string> sizes = {"64", "4K", "64K", "1M"};
  double seconds = 0.5;
  unsigned reps = 3;
  std::string transport;
  std::vector<std::string> transports;
  std::string waitMode;
  std::vector<std::string> waitModes;
  uint32_t batch = 32;
  uint32_t window = 32;
  bool uncappedWindow = false;
  bool noMetrics = false;
  bool copyPayload = false;
  std::string json;
  std::string csv;
  std::string plot;
  bool quick = false;
};

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
  for (const auto& item : items) {
    T v = parse(item);
    if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
  }
  return out;
}

int run(const Options& o) {
  auto [clientCpu, serverCpu] = parseCpus(o.cpus);
  std::vector<size_t> sizes = parseList<size_t>(o.sizes, parseSize);
  if (sizes.empty()) throw BenchError("--sizes: no sizes given");

  if (!o.transport.empty() && !o.transports.empty())
    throw BenchError("give --transport or --transports, not both");
  std::vector<std::string> transportNames =
      !o.transport.empty()
          ? std::vector<std::string>{o.transport}
          : (!o.transports.empty()   ? o.transports
             : o.mode == "messages" ? std::vector<std::string>{"shm"}
                                    : std::vector<std::string>{"shm", "tcp"});
  std::vector<Transport> transports =
      parseList<Transport>(transportNames, [](const std::string& s) { return parseTransport(s); });

  if (!o.waitMode.empty() && !o.waitModes.empty())
    throw BenchError("give --wait-mode or --wait-modes, not both");
  std::vector<std::string> waitNames =
      !o.waitMode.empty()
          ? std::vector<std::string>{o.waitMode}
          : (o.waitModes.empty() ? std::vector<std::string>{"busy-poll"} : o.waitModes);
  std::vector<WaitMode> waitModes = parseList<WaitMode>(waitNames, [](const std::string& s) {
    try {
      return parseWaitMode(s);
    } catch (const std::exception&) {
      throw BenchError("wait mode '" + s + "' must be busy-poll, spin-then-sleep or blocking");
    }
  });

  const bool hasShm =
      std::find(transports.begin(), transports.end(), Transport::kShm) != transports.end();
  bool runMessagesMode = o.mode == "messages" || o.mode == "all";
  const bool runRpcMode = o.mode == "rpc" || o.mode == "all";
  if (o.mode == "messages" && (!hasShm || transports.size() > 1))
    throw BenchError("--mode messages measures shm:// only; use --mode rpc for tcp://");
  if (runMessagesMode && !hasShm) {
    fmt::print(stderr, "zcrpc-bench: messages mode measures shm:// only: skipped for {}\n",
               fmt::join(transportNames, ","));
    runMessagesMode = false;
  }

  std::string gnuplot;
  if (!o.plot.empty()) {
    gnuplot = findGnuplot();
    if (gnuplot.empty())
      throw BenchError("--plot " + o.plot +
                       ": gnuplot is not installed (Debian/Ubuntu: apt-get install gnuplot-nox); "
                       "run without --plot, or install it and run again");
  }
  checkWritable(o.json, "--json");
  checkWritable(o.csv, "--csv");
  checkWritable(o.plot, "--plot");

  const bool color = ::isatty(STDOUT_FILENO) != 0;
  Results results;
  if (runMessagesMode) {
    for (WaitMode w : waitModes) {
      MessagesOptions m;
      m.clientCpu = clientCpu;
      m.serverCpu = serverCpu;
      m.sizes = sizes;
      m.seconds = o.seconds;
      m.reps = o.reps;
      m.waitMode = w;
      m.batch = o.batch;
      m.quick = o.quick;
      results.messages.push_back(runMessages(m));
      printReport(stdout, results.messages.back(), color);
      std::fflush(stdout);
    }
  }
  if (runRpcMode) {
    RpcOptions r;
    r.clientCpu = clientCpu;
    r.serverCpu = serverCpu;
    r.transports = transports;
    r.waitModes = waitModes;
    r.sizes = sizes;
    r.seconds = o.seconds;
    r.reps = o.reps;
    r.window = o.window;
    r.uncappedWindow = o.uncappedWindow;
    r.metrics = !o.noMetrics;
    r.referenceFrom = o.copyPayload ? SIZE_MAX : kByReferenceBytes;
    r.quick = o.quick;
    results.rpc = runRpc(r);
    printReport(stdout, *results.rpc, color);
    std::fflush(stdout);
  }

  if (!o.json.empty()) {
    writeJsonFile(o.json, results);
    fmt::print("JSON written to {}\n", o.json);
  }
  if (!o.csv.empty()) {
    writeCsvFile(o.csv, results);
    fmt::print("CSV written to {}\n", o.csv);
  }
  if (!o.plot.empty()) {
    writePlot(o.plot, gnuplot, results);
    fmt::print("Plot written to {}\n", o.plot);
  }
  return 0;
}

}  // namespace

}  // namespace zcrpc::bench

int main(int argc, char** argv) {
  using zcrpc::bench::Options;
  Options o;
  CLI::App app{
      "zcrpc-bench: latency and throughput of zcrpc between two pinned processes, against a "
      "reference (floor ring / raw TCP) and Cap'n Proto RPC measured in the same run"};
  app.add_option("--mode", o.mode,
                 "messages: raw messages over shm; rpc: Echo calls (and the rivals); all: both")
      ->check(CLI::IsMember({"messages", "rpc", "all"}))
      ->capture_default_str();
  app.add_option("--cpus", o.cpus, "CPUs for the measuring and the peer process: A,B")
      ->capture_default_str();
  app.add_option("--sizes", o.sizes, "Payload sizes (B, K/KiB, M/MiB), comma separated")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--transport", o.transport, "Transport of rpc mode: shm or tcp (default: both)")
      ->check(CLI::IsMember({"shm", "tcp"}));
  app.add_option("--transports", o.transports, "Several transports, comma separated (default: shm,tcp; messages mode: shm)")
      ->delimiter(',')
      ->check(CLI::IsMember({"shm", "tcp"}));
  app.add_option("--wait-mode", o.waitMode,
                 "Wait mode of zcrpc and the reference (default busy-poll; the messages floor "
                 "always busy-polls)")
      ->check(CLI::IsMember({"busy-poll", "spin-then-sleep", "blocking"}));
  app.add_option("--wait-modes", o.waitModes,
                 "Several wait modes, comma separated: busy-poll,spin-then-sleep,blocking")
      ->delimiter(',')
      ->check(CLI::IsMember({"busy-poll", "spin-then-sleep", "blocking"}));
  auto* duration = app.add_option("--duration", o.seconds, "Seconds per measured cell")
                       ->check(CLI::Range(0.001, 60.0))
                       ->capture_default_str();
  auto* reps = app.add_option("--reps", o.reps, "Repetitions (ratios are per repetition)")
                   ->check(CLI::Range(1u, 100u))
                   ->capture_default_str();
  app.add_option("--batch", o.batch, "Messages per flush() in the messages one-way stream")
      ->check(CLI::Range(1u, 65536u))
      ->capture_default_str();
  app.add_option("--window", o.window, "Outstanding calls of rpc mode's pipelined throughput")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_flag("--uncapped-window", o.uncappedWindow,
               "rpc mode: keep --window even where the calls in flight exceed the rings (the "
               "client then waits for room while taking answers: the congestion path)");
  app.add_flag("--no-metrics", o.noMetrics,
               "rpc mode: turn zcrpc's per-call metrics off on client and server (default on)");
  app.add_flag("--copy-payload", o.copyPayload,
               "rpc mode: copy every echo payload into the request and the answer (default: "
               "over tcp, from 16 KiB on they go by reference, as a large blob is best sent)");
  app.add_option("--json", o.json, "Also write all figures, every repetition, as JSON to FILE");
  app.add_option("--csv", o.csv, "Also write the summary (one row per cell and series) as CSV");
  app.add_option("--plot", o.plot,
                 "Also draw latency percentiles per transport and size into a PNG (needs gnuplot)");
  app.add_flag("--quick", o.quick,
               "Short run (0.02 s per cell, 2 repetitions) unless --duration/--reps are given");
  CLI11_PARSE(app, argc, argv);
  if (o.quick) {
    if (duration->count() == 0) o.seconds = 0.02;
    if (reps->count() == 0) o.reps = 2;
  }
  ::signal(SIGPIPE, SIG_IGN);  // a dead peer shows up as an error, not as a signal
  try {
    return zcrpc::bench::run(o);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "zcrpc-bench: error: {}\n", e.what());
  } catch (const kj::Exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "zcrpc-bench: error: Cap'n Proto: {}\n", e.getDescription().cStr());
  }
  return 1;
}
