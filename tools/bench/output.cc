#include "output.h"

#include <fmt/format.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string_view>

#include "json.h"
#include "rpc_report.h"

extern char** environ;

namespace zcrpc::bench {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double ratioOf(uint64_t a, uint64_t b) {
  return b ? static_cast<double>(a) / static_cast<double>(b) : NAN;
}

/// One row of the CSV: a series' percentiles (medians over repetitions) and its ratios to
/// the row's reference (medians of the per-repetition ratios).
struct Row {
  std::string mode, transport, waitMode, series;
  size_t payloadBytes = 0;
  double p50 = 0, p99 = 0, p999 = 0;
  double x50 = NAN, x99 = NAN, x999 = NAN;
  double perSecond = NAN;
  double perSecondStallFree = NAN;
  unsigned reps = 0;
  double loadStart = -1, loadEnd = -1;
};

/// Collects a series over repetitions: `latency(rep)` and `reference(rep)` per repetition.
template <typename GetLatency, typename GetReference>
Row seriesRow(size_t reps, GetLatency latency, GetReference reference) {
  std::vector<double> p50, p99, p999, x50, x99, x999;
  for (size_t r = 0; r < reps; ++r) {
    const Latency& l = latency(r);
    const Latency& ref = reference(r);
    p50.push_back(static_cast<double>(l.p50Ns));
    p99.push_back(static_cast<double>(l.p99Ns));
    p999.push_back(static_cast<double>(l.p999Ns));
    x50.push_back(ratioOf(l.p50Ns, ref.p50Ns));
    x99.push_back(ratioOf(l.p99Ns, ref.p99Ns));
    x999.push_back(ratioOf(l.p999Ns, ref.p999Ns));
  }
  Row row;
  row.p50 = median(p50), row.p99 = median(p99), row.p999 = median(p999);
  row.x50 = median(x50), row.x99 = median(x99), row.x999 = median(x999);
  row.reps = static_cast<unsigned>(reps);
  return row;
}

std::vector<Row> rows(const Results& results) {
  std::vector<Row> out;
  if (results.rpc && !results.rpc->reps.empty()) {
    const RpcRun& run = *results.rpc;
    const size_t reps = run.reps.size();
    auto summary = summarize(run);
    for (size_t i = 0; i < run.reps.front().size(); ++i) {
      const RpcCell& first = run.reps.front()[i];
      auto ref = [&](size_t r) -> const Latency& { return run.reps[r][i].reference; };
      struct Series {
        const char* name;
        Latency RpcCell::*latency;
      };
      for (Series s :
           {Series{first.transport == Transport::kShm ? "floor" : "raw-tcp", &RpcCell::reference},
            Series{"zcrpc", &RpcCell::zcrpc}, Series{"capnp", &RpcCell::capnp}}) {
        Row row = seriesRow(
            reps, [&](size_t r) -> const Latency& { return run.reps[r][i].*(s.latency); }, ref);
        row.mode = "rpc";
        row.transport = transportName(first.transport);
        row.waitMode = waitModeName(first.waitMode);
        row.series = s.name;
        row.payloadBytes = first.payloadBytes;
        if (s.latency == &RpcCell::zcrpc) {
          row.perSecond = summary[i].callsPerSecond;
          row.perSecondStallFree = summary[i].stallFreeCallsPerSecond;
        }
        row.loadStart = run.loadStart, row.loadEnd = run.loadEnd;
        out.push_back(row);
      }
    }
  }
  for (const Run& run : results.messages) {
    if (run.reps.empty()) continue;
    const size_t reps = run.reps.size();
    auto summary = summarize(run);
    for (size_t i = 0; i < run.reps.front().sizes.size(); ++i) {
      auto ref = [&](size_t r) -> const Latency& { return run.reps[r].sizes[i].floor; };
      for (bool zcrpc : {false, true}) {
        Row row = seriesRow(
            reps,
            [&](size_t r) -> const Latency& {
              return zcrpc ? run.reps[r].sizes[i].zcrpc : run.reps[r].sizes[i].floor;
            },
            ref);
        row.mode = "messages";
        row.transport = "shm";
        row.waitMode = zcrpc ? run.config.waitMode : "busy-poll";
        row.series = zcrpc ? "zcrpc" : "floor";
        row.payloadBytes = summary[i].payloadBytes;
        if (zcrpc) row.perSecond = summary[i].messagesPerSecond;
        row.loadStart = run.config.loadStart, row.loadEnd = run.config.loadEnd;
        out.push_back(row);
      }
    }
  }
  return out;
}

std::string csvNumber(double v) { return std::isfinite(v) ? fmt::format("{:.6g}", v) : ""; }

// ---- plot ----------------------------------------------------------------------------

struct PlotSeries {
  std::string name;
  std::string color;
  std::vector<Percentiles> points;  // one per size, ns; NaN where not measured
};

struct Panel {
  std::string title;
  std::vector<size_t> sizes;
  std::vector<PlotSeries> series;
};

std::vector<Panel> panels(const Results& results) {
  std::vector<Panel> out;
  if (results.rpc) {
    const RpcRun& run = *results.rpc;
    auto summary = summarize(run);
    for (Transport t : run.options.transports) {
      for (WaitMode w : run.options.waitModes) {
        Panel p;
        p.title = fmt::format("rpc over {}, {}", transportName(t), waitModeName(w));
        PlotSeries ref{t == Transport::kShm ? "floor" : "raw TCP", "#777777", {}};
        PlotSeries z{"zcrpc", "#1f5fbf", {}};
        PlotSeries c{
            t == Transport::kShm ? "capnp RPC (unix socket)" : "capnp RPC (TCP)", "#c0392b", {}};
        for (const auto& s : summary) {
          if (s.transport != t || s.waitMode != w) continue;
          p.sizes.push_back(s.payloadBytes);
          ref.points.push_back(s.reference);
          z.points.push_back(s.zcrpc);
          c.points.push_back(s.capnp);
        }
        p.series = {ref, z, c};
        out.push_back(std::move(p));
      }
    }
  }
  for (const Run& run : results.messages) {
    Panel p;
    p.title = fmt::format("messages over shm, {} (floor: busy-poll)", run.config.waitMode);
    PlotSeries f{"floor (busy-poll)", "#777777", {}};
    PlotSeries z{"zcrpc messages", "#1f5fbf", {}};
    for (const auto& s : summarize(run)) {
      p.sizes.push_back(s.payloadBytes);
      f.points.push_back({s.floorP50, s.floorP99, s.floorP999});
      z.points.push_back({s.zcrpcP50, s.zcrpcP99, s.zcrpcP999});
    }
    p.series = {f, z};
    out.push_back(std::move(p));
  }
  return out;
}

/// gnuplot string literal: single quotes, with embedded ones doubled.
std::string gpQuote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    out += c;
    if (c == '\'') out += '\'';
  }
  return out + "'";
}

/// `columns`: panels per row (the RPC matrix puts one wait mode per column).
std::string gnuplotScript(const std::vector<Panel>& panels, size_t columns,
                          const std::string& dataPath, const std::string& pngPath,
                          const std::string& title) {
  const size_t cols = std::clamp<size_t>(columns, 1, std::min<size_t>(panels.size(), 3));
  const size_t rowsN = (panels.size() + cols - 1) / cols;
  std::string s;
  auto add = [&s](std::string line) {
    s += line;
    s += '\n';
  };
  add(fmt::format("set terminal pngcairo size {},{} font 'sans,10' noenhanced",
                  std::max<size_t>(40 + 560 * cols, 1200), 60 + 440 * rowsN));
  add("set output " + gpQuote(pngPath));
  add("set datafile missing 'NaN'");
  add(fmt::format("set multiplot layout {},{} title {} font 'sans,12'", rowsN, cols,
                  gpQuote(title)));
  add("set logscale y 10");
  add("set format y '%.0s %cs'");
  add("set ylabel 'round trip'");
  add("unset xlabel");  // the tics name the sizes; the key sits below the axis
  add("set grid ytics mytics xtics");
  // Colour tells the system, the line the percentile (the title says which): one legend
  // entry per system, below each panel, so no line hides behind it.
  add("set key below horizontal maxcols 3 maxrows 1 font ',9' samplen 3 width -2");
  add("set offsets 0.25, 0.25, 0, 0");
  for (size_t k = 0; k < panels.size(); ++k) {
    const Panel& p = panels[k];
    add("set title " + gpQuote(p.title));
    std::string tics;
    for (size_t i = 0; i < p.sizes.size(); ++i)
      tics += fmt::format("{}{} {}", i ? ", " : "", gpQuote(formatSize(p.sizes[i])), i);
    add("set xtics (" + tics + ")");
    std::string plot = "plot ";
    size_t column = 2;
    for (size_t si = 0; si < p.series.size(); ++si) {
      const PlotSeries& ser = p.series[si];
      static constexpr int kDash[] = {1, 2, 3};
      static constexpr int kPoint[] = {7, 9, 5};
      for (int q = 0; q < 3; ++q) {
        if (plot.size() > 5) plot += ", \\\n     ";
        plot += fmt::format(
            "{} index {} using 1:{} with linespoints lw 2 dt {} pt {} ps 1.1 "
            "lc rgb {} {}",
            gpQuote(dataPath), k, column++, kDash[q], kPoint[q], gpQuote(ser.color),
            q == 0 ? "title " + gpQuote(ser.name) : std::string("notitle"));
      }
    }
    add(plot);
  }
  add("unset multiplot");
  return s;
}

std::string gnuplotData(const std::vector<Panel>& panels) {
  std::string d;
  for (size_t k = 0; k < panels.size(); ++k) {
    const Panel& p = panels[k];
    d += fmt::format("# panel {}: {}\n# x", k, p.title);
    for (const auto& ser : p.series) d += fmt::format(" | {} p50 p99 p99.9 (seconds)", ser.name);
    d += '\n';
    for (size_t i = 0; i < p.sizes.size(); ++i) {
      d += std::to_string(i);
      for (const auto& ser : p.series) {
        const Percentiles& v = ser.points[i];
        for (double x : {v.p50, v.p99, v.p999})
          d += x > 0 && std::isfinite(x) ? fmt::format(" {:.6e}", x / 1e9) : " NaN";
      }
      d += '\n';
    }
    d += "\n\n";  // gnuplot: a new index
  }
  return d;
}

}  // namespace

void writeJsonFile(const std::string& path, const Results& results) {
  JsonWriter j;
  j.beginObject();
  j.string("tool", "zcrpc-bench");
  j.beginArray("messages");  // one run per wait mode
  for (const Run& run : results.messages) writeJson(j, run);
  j.endArray();
  if (results.rpc) writeJson(j, *results.rpc, "rpc");
  j.endObject();
  writeTextFile(path, j.text() + "\n");
}

void writeCsvFile(const std::string& path, const Results& results) {
  std::string text =
      "mode,transport,wait_mode,payload_bytes,series,p50_ns,p99_ns,p999_ns,"
      "x_reference_p50,x_reference_p99,x_reference_p999,per_second,per_second_stall_free,reps,"
      "loadavg_start,loadavg_end\n";
  for (const Row& r : rows(results))
    text += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n", r.mode, r.transport,
                        r.waitMode, r.payloadBytes, r.series, csvNumber(r.p50), csvNumber(r.p99),
                        csvNumber(r.p999), csvNumber(r.x50), csvNumber(r.x99), csvNumber(r.x999),
                        csvNumber(r.perSecond), csvNumber(r.perSecondStallFree), r.reps,
                        csvNumber(r.loadStart), csvNumber(r.loadEnd));
  writeTextFile(path, text);
}

std::string findGnuplot() {
  const char* path = std::getenv("PATH");
  std::string_view dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  while (!dirs.empty()) {
    size_t colon = dirs.find(':');
    std::string dir(dirs.substr(0, colon));
    dirs = colon == std::string_view::npos ? std::string_view() : dirs.substr(colon + 1);
    if (dir.empty()) dir = ".";
    std::string candidate = dir + "/gnuplot";
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0)
      return candidate;
  }
  return {};
}

void writePlot(const std::string& path, const std::string& gnuplot, const Results& results) {
  auto ps = panels(results);
  if (ps.empty()) throw BenchError("--plot: nothing was measured");
  char dirTemplate[] = "/tmp/zcrpc-bench-plot-XXXXXX";
  if (!::mkdtemp(dirTemplate)) throwErrno("--plot: mkdtemp");
  const std::string dir = dirTemplate;
  const std::string data = dir + "/latency.dat";
  const std::string script = dir + "/latency.gp";
  double load = -1;
  unsigned reps = 0;
  if (results.rpc)
    load = results.rpc->loadEnd, reps = results.rpc->options.reps;
  else if (!results.messages.empty())
    load = results.messages.front().config.loadEnd, reps = results.messages.front().config.reps;
  std::string title = fmt::format(
      "zcrpc-bench round trip: p50 solid, p99 dashed, p99.9 dotted; medians of {} "
      "repetition{}; load average {:.2f}",
      reps, reps == 1 ? "" : "s", load);
  std::string absolute = std::filesystem::absolute(path).string();
  writeTextFile(data, gnuplotData(ps));
  const size_t columns = results.rpc ? results.rpc->options.waitModes.size() : 3;
  writeTextFile(script, gnuplotScript(ps, columns, data, absolute, title));

  std::string argv0 = gnuplot;
  char* argv[] = {argv0.data(), const_cast<char*>(script.c_str()), nullptr};
  pid_t pid = -1;
  if (int err = ::posix_spawn(&pid, gnuplot.c_str(), nullptr, nullptr, argv, environ); err != 0)
    throw BenchError(fmt::format("--plot: cannot run {}: {}", gnuplot, std::strerror(err)));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) throwErrno("--plot: waitpid");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw BenchError(
        fmt::format("--plot: gnuplot failed (status {:#x}); its input is in {}", status, dir));
  std::filesystem::remove_all(dir);
}

}  // namespace zcrpc::bench
