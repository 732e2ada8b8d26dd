// zcrpc-bench — the run: forks the peer, pins both processes, and measures every row in
// every repetition, the systems of a row interleaved (an order that turns with the
// repetition, the baseline always right next to zcrpc), on the same two CPUs.
//
// Sections (rows):
//  * rpc: Echo.echo round trips through the generated stubs over shm and tcp in each wait
//    mode, beside the baseline (floor ring / raw TCP in the same wait mode), every rival
//    this build has, and over tcp a raw ping-pong of as many bytes as zcrpc's frames; then
//    zcrpc's pipelined calls/s and Cap'n Proto's own work (one thread, no transport). A
//    rival with its own wait is measured once per size and repetition for every wait mode.
//  * standard: standard Cap'n Proto peers (zcrpc/capnp.h). Cap'n Proto's own client
//    (EzRpcClient) and server (EzRpcServer) serving the same Echo, the baseline, over a unix
//    socket (shm rows) or TCP (tcp rows); the same client against zcrpc's capnp listener
//    serving zcrpc's echo handler; a zcrpc Channel over capnp:// against EzRpcServer; and
//    zcrpc's own transport (shm / tcp) beside them: what moving a client to it buys. The
//    Cap'n Proto pair waits in epoll and is measured once per size and repetition.
//  * messages: raw zcrpc messages over shm against the floor (always busy-polling), a
//    shorter floor run on the other side of the zcrpc cell (did the CPUs move?), Cap'n
//    Proto's own work, the one-way stream and, from 1 MiB, memcpy bandwidth.
//  * open-loop: echo calls started at a fixed pace whatever the answers do (a service with
//    real traffic, asleep when a call comes), timed from when each was due, with the CPU
//    time per call of both processes: zcrpc (and, in spin-then-sleep, zcrpc with the fixed
//    spin) against the baseline in the same wait mode (the futex-woken floor ring / raw
//    TCP), a blocking unix-socket ping-pong (shm) and Cap'n Proto's RPC.
//  * tls: echo calls over TLS 1.3 tcp against zcrpc over plain tcp and gRPC over TLS, with
//    certificates made at the start of the run.
//  * stream: messages/s of a `-> stream` method (Chunks.put, then Chunks.flush inside the
//    timing) against zcrpc's one-way messages on the same transport (Echo.sink sent with
//    sendOneWay, then a ping: the floor for a stream, the baseline) and, over tcp, gRPC
//    client streaming (Write each, WritesDone, Finish for the count); every message of
//    the three with its library's "more is coming" hint (SendHint::kMoreComing,
//    WriteOptions::set_buffer_hint), as a bulk sender sends.
//  * callback: over shm, the server calls an Echo object the client passed it (Pump.pump),
//    timed between consecutive callbacks at the client, against an ordinary echo call of
//    the same size (the baseline).
#include <fmt/format.h>
#include <kj/exception.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "model.h"
#include "peer.h"
#include "system.h"
#include "tls/test_pki.h"

namespace zcrpc::bench {

namespace {

constexpr auto kReplyTimeout = std::chrono::seconds(10);
constexpr auto kSetupAllowance = std::chrono::seconds(5);  // connect, prefault, warm-up runs
/// Room beyond the largest payload: the raw TCP cell that sends zcrpc's frame bytes.
constexpr size_t kFrameSlack = 4096;
constexpr size_t kMiB = size_t{1} << 20;

/// The order in which repetition `rep` runs a row's cells: series 0 and 1 (the row's
/// baseline and zcrpc) form one unit whose two alternate with the repetition, so their
/// ratio compares cells a moment apart; each of `others` is a unit of its own; the units'
/// order turns with the repetition.
std::vector<size_t> cellOrder(unsigned rep, const std::vector<size_t>& others) {
  std::vector<std::vector<size_t>> units{{0, 1}};
  if (rep % 2) std::swap(units[0][0], units[0][1]);
  for (size_t i : others) units.push_back({i});
  std::rotate(units.begin(), units.begin() + rep % units.size(), units.end());
  std::vector<size_t> order;
  for (const auto& unit : units) order.insert(order.end(), unit.begin(), unit.end());
  return order;
}

/// Notes in `order` (RowRep::order) that the cell of series `id` ran next.
void ranNext(std::string& order, const std::string& id) {
  order += (order.empty() ? "" : ",") + id;
}

class Driver final {
 public:
  Driver(const Settings& s, std::vector<System*> systems, PeerProcess& peer, size_t room,
         Table& table)
      : s_(s),
        systems_(std::move(systems)),
        peer_(peer),
        table_(table),
        payload_(room),
        scratch_(room, std::byte{0}) {
    for (size_t i = 0; i < payload_.size(); ++i) payload_[i] = std::byte(i * 131 + 7);
    uint64_t most = 4096;
    for (size_t size : s.sizes)
      most = std::max(most, Budget::forPayload(size, s.seconds).maxIterations);
    samples_.assign(std::max(most, s.openLoopCalls), 0);
  }

  /// One repetition of the echo rows of `t` and `size`, one row per wait mode.
  void rpc(unsigned rep, Transport t, size_t size) {
    std::map<std::string, Figure> ownWait;  // rivals measured once for all wait modes
    for (WaitMode w : s_.waitModes) {
      Row& row = this->row("rpc", t, w, size, [&](Row& r) {
        r.series.push_back(system(t == Transport::kShm ? kFloor : kRawTcp).info(t));
        r.series.push_back(system(kRpc).info(t));
        if (t == Transport::kTcp)
          r.series.emplace_back("raw-tcp-frame", "raw TCP of zcrpc's frame bytes", Role::kPart);
        for (size_t i = kFirstRival; i < systems_.size(); ++i)
          if (usable(i, t)) r.series.push_back(system(i).info(t));
        r.series.emplace_back("zcrpc-pipelined", "zcrpc pipelined", Role::kZcrpc, "",
                              Measure::kPipelined);
        r.series.emplace_back("capnp-work", "Cap'n Proto's own work", Role::kPart);
        r.series.emplace_back("bound",
                              t == Transport::kShm ? "floor + Cap'n Proto's own work"
                                                   : "raw TCP of frame bytes + capnp work",
                              Role::kDerived);
      });
      RowRep& rr = row.reps.emplace_back();
      rr.figures.resize(row.series.size());
      const CellSpec spec{t, w, Measure::kRoundTrip, 0, 0, size, 0};
      std::vector<size_t> others;
      for (size_t i = 2; i < row.series.size(); ++i)
        if (row.series[i].measure == Measure::kRoundTrip && row.series[i].role != Role::kDerived &&
            row.series[i].id != "capnp-work")
          others.push_back(i);
      for (size_t i : cellOrder(rep, others)) {
        const SeriesInfo& info = row.series[i];
        Figure& f = rr.figures[i];
        if (i == 0) {
          f = cell(t == Transport::kShm ? kFloor : kRawTcp, spec, row.name() + " " + info.id);
        } else if (i == 1) {
          f = cell(kRpc, spec, row.name() + " zcrpc");
          if (t == Transport::kTcp) frameBytes_[size] = f.peerValue;
        } else if (info.id == "raw-tcp-frame") {
          // zcrpc's frames over raw TCP: what the kernel charges for those bytes. Their size
          // comes from the first zcrpc cell of this size (repetition 1 runs it first).
          const uint64_t frame = frameBytes_[size];
          if (frame < size || frame > size + kFrameSlack)
            throw BenchError(
                fmt::format("{}: the peer saw request frames of {} bytes for {}-byte "
                            "payloads",
                            row.name(), frame, size));
          CellSpec raw = spec;
          raw.payloadBytes = frame;
          f = cell(kRawTcp, raw, row.name() + " raw tcp of frame bytes");
        } else if (auto hit = ownWait.find(info.id); hit != ownWait.end()) {
          f = hit->second;
          continue;
        } else if (failed_.contains(info.id)) {
          continue;
        } else {
          f = rival(systemOf(t, info.id), spec, row.name() + " " + info.id);
          if (!info.ownWait.empty()) ownWait[info.id] = f;
        }
        ranNext(rr.order, info.id);
      }
      CellSpec p = spec;
      p.measure = Measure::kPipelined;
      p.window = pipelineWindow(s_, t, size);
      rr.figures[row.find("zcrpc-pipelined")] = cell(kRpc, p, row.name() + " zcrpc pipelined");
      finishRow(row, rr, true, t == Transport::kShm ? 0 : row.find("raw-tcp-frame"));
    }
  }

  /// One repetition of the standard rows of `t` and `size`, one row per wait mode.
  void standard(unsigned rep, Transport t, size_t size) {
    std::optional<Figure> baseline;  // EzRpc both ends: its own wait, once for all wait modes
    for (WaitMode w : standardWaitModes(s_)) {
      Row& row = this->row("standard", t, w, size, [&](Row& r) {
        r.series.push_back(system(kCapnpBaseline).info(t));
        r.series[0].role = Role::kReference;
        r.series.push_back(system(kCapnpListener).info(t));
        r.series.push_back(system(kCapnpClient).info(t));
        r.series.push_back(system(kRpc).info(t));
        r.series.back().label = t == Transport::kShm ? "zcrpc over shm" : "zcrpc over tcp";
      });
      RowRep& rr = row.reps.emplace_back();
      rr.figures.resize(row.series.size());
      const CellSpec spec{t, w, Measure::kRoundTrip, 0, 0, size, 0};
      // The baseline and zcrpc's listener are the pair (their ratio is the target).
      const size_t systems[] = {kCapnpBaseline, kCapnpListener, kCapnpClient, kRpc};
      for (size_t i : cellOrder(rep, {2, 3})) {
        if (i == 0 && baseline) {
          rr.figures[0] = *baseline;
          continue;
        }
        rr.figures[i] = cell(systems[i], spec, row.name() + " " + row.series[i].id);
        if (i == 0) baseline = rr.figures[0];
        ranNext(rr.order, row.series[i].id);
      }
      finishRow(row, rr, true, Row::npos);
    }
  }

  /// One repetition of the messages row of `w` and `size`.
  void messages(unsigned rep, WaitMode w, size_t size) {
    Row& row = this->row("messages", Transport::kShm, w, size, [&](Row& r) {
      r.series.push_back(system(kFloor).info(Transport::kShm));
      r.series.back().label += ", busy-poll";
      r.series.push_back(system(kMessages).info(Transport::kShm));
      r.series.emplace_back("floor-check", "floor again, on zcrpc's other side", Role::kPart);
      r.series.emplace_back("capnp-work", "Cap'n Proto's own work", Role::kPart);
      r.series.emplace_back("bound", "floor + Cap'n Proto's own work", Role::kDerived);
      r.series.emplace_back("zcrpc-one-way",
                            fmt::format("zcrpc one-way (flush every {})", s_.batch), Role::kZcrpc,
                            "", Measure::kOneWay);
      r.series.emplace_back("memcpy", "memcpy, one core", Role::kPart, "", Measure::kOneWay);
    });
    RowRep& rr = row.reps.emplace_back();
    rr.figures.resize(row.series.size());
    const std::string what = row.name();
    const CellSpec floor{Transport::kShm, WaitMode::kBusyPoll, Measure::kRoundTrip, 0, 0, size, 0};
    CellSpec zcrpc = floor;
    zcrpc.waitMode = w;
    zcrpc.budgetNs =
        std::chrono::nanoseconds(kSetupAllowance).count();  // the first prefaults twice
    // A shorter floor run on the other side of the zcrpc cell: if the host moved the CPUs
    // during the repetition, the two floors disagree.
    Budget check = Budget::forPayload(size, s_.seconds);
    check.measure /= 4;
    check.warmup /= 4;
    check.maxIterations = std::max<uint64_t>(check.maxIterations / 4, 1000);
    std::vector<size_t> order =
        rep % 2 ? std::vector<size_t>{2, 1, 0} : std::vector<size_t>{0, 1, 2};
    for (size_t i : order) {
      rr.figures[i] = i == 1   ? cell(kMessages, zcrpc, what + " zcrpc")
                      : i == 0 ? cell(kFloor, floor, what + " floor")
                               : cell(kFloor, floor, what + " floor check", check);
      ranNext(rr.order, row.series[i].id);
    }
    const auto cellTime = std::chrono::nanoseconds(static_cast<int64_t>(s_.seconds * 1e9));
    if (size >= kMiB) {
      uint64_t preempted = preemptionCount();
      rr.figures[6].rate = memcpyBandwidth(size, cellTime);
      rr.figures[6].preemptions = preemptionCount() - preempted;
    }
    zcrpc.measure = Measure::kOneWay;
    rr.figures[5] = cell(kMessages, zcrpc, what + " zcrpc one-way stream");
    finishRow(row, rr, false, 0);
  }

  /// One repetition of the open-loop row of `t`, `w`, `size` at one call every `interval`.
  void openLoop(unsigned rep, Transport t, WaitMode w, size_t size, int64_t interval) {
    Row& row = this->row("open-loop", t, w, size, [&](Row& r) {
      r.intervalNs = interval;
      r.series.push_back(system(t == Transport::kShm ? kFloor : kRawTcp).info(t));
      r.series.push_back(system(kRpc).info(t));
      if (w == WaitMode::kSpinThenSleep) r.series.push_back(system(kRpcFixedSpin).info(t));
      if (system(kUnixSocket).covers(t)) r.series.push_back(system(kUnixSocket).info(t));
      for (size_t i = kFirstRival; i < systems_.size(); ++i)
        if (usable(i, t) && system(i).info(t).id == "capnp") r.series.push_back(system(i).info(t));
      for (SeriesInfo& si : r.series) si.measure = Measure::kOpenLoop;
    }, interval);
    RowRep& rr = row.reps.emplace_back();
    rr.figures.resize(row.series.size());
    CellSpec spec{t, w, Measure::kOpenLoop, 0, 0, size, 0};
    spec.intervalNs = interval;
    // At least openLoopCalls calls, more if Settings::seconds holds more; a tenth again
    // (at least 50) at the same pace to warm up.
    Budget b;
    b.interval = std::chrono::nanoseconds(interval);
    b.peer = peer_.pid();
    b.maxIterations = std::max<uint64_t>(
        s_.openLoopCalls, static_cast<uint64_t>(s_.seconds * 1e9 / static_cast<double>(interval)));
    b.maxIterations = std::min<uint64_t>(b.maxIterations, samples_.size());
    b.measure = b.interval * b.maxIterations;
    b.warmupIterations = std::max<uint64_t>(50, b.maxIterations / 10);
    b.warmup = b.interval * b.warmupIterations;
    std::vector<size_t> others;
    for (size_t i = 2; i < row.series.size(); ++i) others.push_back(i);
    for (size_t i : cellOrder(rep, others)) {
      const std::string& id = row.series[i].id;
      const size_t sys = i == 0   ? (t == Transport::kShm ? kFloor : kRawTcp)
                         : i == 1 ? kRpc
                         : id == "zcrpc-fixed-spin" ? kRpcFixedSpin
                         : id == "unix-socket"      ? kUnixSocket
                                                    : systemOf(t, id);
      const std::string what = row.name() + " " + id;
      rr.figures[i] = i < 2 ? cell(sys, spec, what, b) : rival(sys, spec, what, b);
      ranNext(rr.order, id);
    }
    std::string line;
    for (size_t i = 0; i < row.series.size(); ++i)
      if (const Latency& l = rr.figures[i].latency; l.p50Ns)
        line += fmt::format(", {} {}/{} cpu {}+{}", row.series[i].id,
                            formatNs(static_cast<double>(l.p50Ns)),
                            formatNs(static_cast<double>(l.p99Ns)), formatNs(l.clientCpuNs),
                            formatNs(l.serverCpuNs));
    fmt::print(stderr, "rep {}/{} {}: {}\n", row.reps.size(), s_.reps, row.name(),
               line.empty() ? "-" : line.substr(2));
  }

  /// One repetition of the tls rows of `size`, one per wait mode: zcrpc echo calls over TLS
  /// 1.3 tcp against zcrpc over plain tcp (the row's baseline, interleaved as in the rpc
  /// rows) and gRPC unary over TLS with the same certificates. Whether the kernel encrypts
  /// (kTLS) depends on the host: zcrpc uses it where the kernel has the tls module.
  void tls(unsigned rep, size_t size) {
    std::map<std::string, Figure> ownWait;
    for (WaitMode w : s_.waitModes) {
      Row& row = this->row("tls", Transport::kTcp, w, size, [&](Row& r) {
        r.series.emplace_back("zcrpc", "zcrpc over plain tcp", Role::kReference);
        r.series.emplace_back("zcrpc-tls", "zcrpc over TLS 1.3 tcp", Role::kZcrpc);
        for (size_t i = kFirstRival; i < systems_.size(); ++i)
          if (system(i).info(Transport::kTcp).id == "grpc-tls" && system(i).unavailable().empty() &&
              !failed_.contains("grpc-tls"))
            r.series.push_back(system(i).info(Transport::kTcp));
      });
      RowRep& rr = row.reps.emplace_back();
      rr.figures.resize(row.series.size());
      const CellSpec plain{Transport::kTcp, w, Measure::kRoundTrip, false, 0, size, 0};
      CellSpec tls = plain;
      tls.tls = true;
      for (size_t i :
           cellOrder(rep, row.series.size() > 2 ? std::vector<size_t>{2} : std::vector<size_t>{})) {
        const std::string& id = row.series[i].id;
        if (i == 0) {
          rr.figures[i] = cell(kRpc, plain, row.name() + " zcrpc");
        } else if (i == 1) {
          rr.figures[i] = cell(kRpc, tls, row.name() + " zcrpc over TLS");
        } else if (auto hit = ownWait.find(id); hit != ownWait.end()) {
          rr.figures[i] = hit->second;
          continue;
        } else if (failed_.contains(id)) {
          continue;
        } else {
          rr.figures[i] = rival(systemOf(Transport::kTcp, id), tls, row.name() + " " + id);
          ownWait[id] = rr.figures[i];
        }
        ranNext(rr.order, id);
      }
      finishRow(row, rr, true, Row::npos);
    }
  }

  /// One repetition of the stream row of `t`, `w`, `size`, `seconds` per cell.
  void stream(unsigned rep, Transport t, WaitMode w, size_t size, double seconds) {
    Row& row = this->row("stream", t, w, size, [&](Row& r) {
      r.series.emplace_back("zcrpc-one-way", "zcrpc one-way Echo.sink (kMoreComing), then a ping",
                            Role::kReference, "", Measure::kOneWay);
      r.series.emplace_back("zcrpc-stream", "zcrpc -> stream Chunks.put (kMoreComing), then flush", Role::kZcrpc,
                            "", Measure::kStream);
      if (t == Transport::kTcp)
        for (size_t i = kFirstRival; i < systems_.size(); ++i)
          if (usable(i, t) && system(i).info(t).id == "grpc-stream")
            r.series.emplace_back("grpc-stream", "gRPC client streaming (TCP, buffer hint)", Role::kRival,
                                  "epoll", Measure::kStream);
    });
    RowRep& rr = row.reps.emplace_back();
    rr.figures.resize(row.series.size());
    CellSpec spec{t, w, Measure::kOneWay, 0, 0, size, 0};
    const Budget b = Budget::forPayload(size, seconds);
    for (size_t i :
         cellOrder(rep, row.series.size() > 2 ? std::vector<size_t>{2} : std::vector<size_t>{})) {
      const std::string what = row.name() + " " + row.series[i].id;
      spec.measure = row.series[i].measure;
      if (i < 2) {
        rr.figures[i] = cell(kRpc, spec, what, b);
        // The sinks have no answer: the server's count (warm-up included) tells they all came.
        if (i == 0 && rr.figures[0].peerValue < rr.figures[0].rate.count)
          throw BenchError(fmt::format("{}: the server handled {} of {} one-way messages", what,
                                       rr.figures[0].peerValue, rr.figures[0].rate.count));
      } else if (failed_.contains("grpc-stream")) {
        continue;
      } else {
        rr.figures[i] = rival(systemOf(t, "grpc-stream"), spec, what, b);
      }
      ranNext(rr.order, row.series[i].id);
    }
    finishRow(row, rr, false, Row::npos);
  }

  /// One repetition of the callback row (shm) of `w` and `size`, `seconds` per cell.
  void callback(unsigned rep, WaitMode w, size_t size, double seconds) {
    Row& row = this->row("callback", Transport::kShm, w, size, [&](Row& r) {
      r.series.emplace_back("zcrpc-echo", "zcrpc echo call", Role::kReference);
      r.series.emplace_back("zcrpc-callback", "zcrpc callback: the server calls the client's Echo",
                            Role::kZcrpc, "", Measure::kCallback);
      r.series.emplace_back("zcrpc-callback-in-place",
                            "zcrpc callback, the client's Echo exported Requests::kInPlace",
                            Role::kZcrpc, "", Measure::kCallbackInPlace);
    });
    RowRep& rr = row.reps.emplace_back();
    rr.figures.resize(row.series.size());
    CellSpec spec{Transport::kShm, w, Measure::kRoundTrip, 0, 0, size, 0};
    for (size_t i : cellOrder(rep, {2})) {
      spec.measure = row.series[i].measure;
      rr.figures[i] =
          cell(kRpc, spec, row.name() + " " + row.series[i].id, Budget::forPayload(size, seconds));
      ranNext(rr.order, row.series[i].id);
    }
    finishRow(row, rr, false, Row::npos);
  }

  /// Lists the rivals that cannot run here, and why.
  void noteUnavailable() {
    for (size_t i = kFirstRival; i < systems_.size(); ++i)
      if (std::string why = system(i).unavailable(); !why.empty())
        addMissing(system(i).info(s_.transports.front()).id, why);
  }

  // Indices of the fixed systems in systems_; rivals follow.
  static constexpr size_t kFloor = 0, kRawTcp = 1, kRpc = 2, kMessages = 3, kCapnpListener = 4,
                          kCapnpClient = 5, kCapnpBaseline = 6, kRpcFixedSpin = 7, kUnixSocket = 8,
                          kFirstRival = 9;

 private:
  System& system(size_t i) { return *systems_[i]; }

  bool usable(size_t i, Transport t) {
    const std::string id = system(i).info(t).id;
    if (!s_.only.empty() && std::find(s_.only.begin(), s_.only.end(), id) == s_.only.end())
      return false;
    return system(i).covers(t) && system(i).unavailable().empty() && !failed_.contains(id);
  }

  size_t systemOf(Transport t, const std::string& id) {
    for (size_t i = kFirstRival; i < systems_.size(); ++i)
      if (system(i).info(t).id == id) return i;
    throw BenchError("no system for series " + id);
  }

  template <typename Init>
  Row& row(const std::string& section, Transport t, WaitMode w, size_t size, Init init,
           int64_t intervalNs = 0) {
    for (Row& r : table_.rows)
      if (r.section == section && r.transport == t && r.waitMode == w && r.payloadBytes == size &&
          r.intervalNs == intervalNs)
        return r;
    Row& r = table_.rows.emplace_back();
    r.section = section;
    r.transport = t;
    r.waitMode = w;
    r.payloadBytes = size;
    init(r);
    return r;
  }

  /// Cap'n Proto's own work (this process alone; the peer waits for a command), the bound
  /// built on it, and a progress line.
  void finishRow(const Row& row, RowRep& rr, bool rpc, size_t moved) {
    const size_t work = row.find("capnp-work"), bound = row.find("bound");
    if (work != Row::npos) {  // rows without these series (tls) skip them
      uint64_t preempted = preemptionCount();
      rr.figures[work].latency = capnpWork(rpc, Budget::forPayload(0, s_.seconds / 4), samples_);
      rr.figures[work].preemptions = preemptionCount() - preempted;
      if (moved != Row::npos && bound != Row::npos)
        rr.figures[bound].latency.p50Ns =
            rr.figures[moved].latency.p50Ns + rr.figures[work].latency.p50Ns;
    }
    std::string line;
    for (size_t i = 0; i < row.series.size(); ++i) {
      const Figure& f = rr.figures[i];
      if (row.series[i].role == Role::kDerived || row.series[i].role == Role::kPart) continue;
      if (f.latency.p50Ns)
        line += fmt::format(", {} {}", row.series[i].id,
                            formatNs(static_cast<double>(f.latency.p50Ns)));
      if (i > 0 && f.latency.p50Ns && rr.figures[0].latency.p50Ns)
        line += fmt::format(" ({})", formatRatio(static_cast<double>(f.latency.p50Ns) /
                                                 static_cast<double>(rr.figures[0].latency.p50Ns)));
      if (f.rate.perSecond)
        line += fmt::format(", {} {}/s", row.series[i].id, formatRate(f.rate.perSecond));
    }
    fmt::print(stderr, "rep {}/{} {}: {}\n", row.reps.size(), s_.reps, row.name(), line.substr(2));
  }

  /// A rival's cell: a failure drops the rival from the rest of the run and says why.
  Figure rival(size_t i, const CellSpec& spec, const std::string& what,
               std::optional<Budget> budget = {}) {
    try {
      return cell(i, spec, what, budget);
    } catch (const BenchError& e) {
      const std::string id = system(i).info(spec.transport).id;
      failed_.insert(id);
      addMissing(id, std::string("failed, left out from here on: ") + e.what());
      fmt::print(stderr, "zcrpc-bench: {} failed, left out from here on: {}\n", id, e.what());
      return {};
    }
  }

  void addMissing(const std::string& id, const std::string& why) {
    table_.missing.push_back({id, why});
  }

  /// Runs one cell: the peer serves, this process measures, both report back. `budget`
  /// defaults to the payload's. Throws BenchError naming the cell (and the peer's reason).
  Figure cell(size_t i, CellSpec spec, const std::string& what, std::optional<Budget> budget = {}) {
    const Budget b = budget.value_or(Budget::forPayload(spec.payloadBytes, s_.seconds));
    spec.budgetNs += (b.total() + kSetupAllowance).count();
    const uint32_t id = ++cells_;
    peer_.send(Command{Op::kCell, static_cast<uint32_t>(i), id, 0, spec});
    Reply started = peer_.expect(ReplyKind::kStarted, id, Clock::now() + kReplyTimeout, what);
    started.text[sizeof started.text - 1] = 0;
    ClientCell c{spec,
                 started.text,
                 std::span<const std::byte>(payload_).first(spec.payloadBytes),
                 scratch_,
                 samples_,
                 b,
                 peer_.controlFd()};
    const uint64_t preempted = preemptionCount();
    Figure f;
    std::string error;
    try {
      f = system(i).measure(c);
    } catch (const std::exception& e) {
      error = e.what();
    } catch (const kj::Exception& e) {
      error = std::string("Cap'n Proto: ") + e.getDescription().cStr();
    }
    f.preemptions = preemptionCount() - preempted;
    try {
      peer_.send(Command{Op::kEndCell, 0, id, 0, {}});
      Reply done = peer_.expect(
          ReplyKind::kDone, id,
          Clock::now() + kReplyTimeout + std::chrono::nanoseconds(spec.budgetNs), what);
      f.preemptions += done.preemptions;
      f.peerValue = done.value;
    } catch (const BenchError& e) {
      throw BenchError(error.empty() ? std::string(e.what())
                                     : what + ": " + error + " (" + e.what() + ")");
    }
    if (!error.empty()) throw BenchError(what + ": " + error);
    return f;
  }

  const Settings& s_;
  std::vector<System*> systems_;
  PeerProcess& peer_;
  Table& table_;
  std::vector<std::byte> payload_;  // the pattern every cell sends, word-aligned
  std::vector<std::byte> scratch_;  // receive room
  std::vector<uint64_t> samples_;
  std::map<size_t, uint64_t> frameBytes_;  // zcrpc's request frame over tcp, per payload size
  std::set<std::string> failed_;
  uint32_t cells_ = 0;  // cells started so far: each one's id
};

}  // namespace

StreamPlan streamPlan(const Settings& s) {
  StreamPlan p;
  if (!s.streamShort) return {s.sizes, s.sizes, s.waitModes, s.seconds};
  // The short version (--mode all): busy-poll as the headline rows (or the first wait mode
  // asked for), the smallest size and the largest up to 64 KiB, callbacks at the smallest,
  // half the time per cell.
  const bool busy =
      std::find(s.waitModes.begin(), s.waitModes.end(), WaitMode::kBusyPoll) != s.waitModes.end();
  p.waitModes = {busy ? WaitMode::kBusyPoll : s.waitModes.front()};
  const size_t least = *std::min_element(s.sizes.begin(), s.sizes.end());
  size_t most = least;
  for (size_t size : s.sizes)
    if (size <= (size_t{64} << 10)) most = std::max(most, size);
  p.streamSizes = most == least ? std::vector<size_t>{least} : std::vector<size_t>{least, most};
  p.callbackSizes = {least};
  p.seconds = s.seconds / 2;
  return p;
}

std::vector<WaitMode> standardWaitModes(const Settings& s) {
  std::vector<WaitMode> modes = s.waitModes;
  if (std::find(modes.begin(), modes.end(), WaitMode::kBlocking) == modes.end())
    modes.push_back(WaitMode::kBlocking);
  return modes;
}

Table runBench(const Settings& settings) {
  if (settings.sizes.empty()) throw BenchError("--sizes: no sizes given");
  // The tls rows' certificates, made now (before the fork) in a directory removed at the
  // end: both processes read the files. Nothing secret is kept.
  Settings s = settings;
  std::optional<test::TestPki> pki;
  if (s.tls) {
    pki.emplace();
    s.tlsFiles = {pki->caFile(), pki->server().cert, pki->server().key};
  }
  Table table;
  table.settings = s;
  table.loadStart = loadAverage();
  const size_t room = *std::max_element(s.sizes.begin(), s.sizes.end()) + kFrameSlack;
  // Every system is made before the fork, so both processes hold one.
  std::vector<std::unique_ptr<System>> owned;
  owned.push_back(makeFloor(s, room));
  owned.push_back(makeRawTcp(s));
  owned.push_back(makeZcrpcRpc(s));
  owned.push_back(makeZcrpcMessages(s));
  owned.push_back(makeZcrpcCapnpListener(s));
  owned.push_back(makeZcrpcCapnpClient(s));
  owned.push_back(makeCapnpRpc());  // the standard rows' baseline
  owned.push_back(makeZcrpcRpc(s, SpinPolicy::kFixed));
  owned.push_back(makeUnixSocket(s));
  std::vector<std::string> notBuilt;
  for (auto& rival : makeRivals(s, notBuilt)) owned.push_back(std::move(rival));
  if (s.tls)
    for (auto& rival : makeTlsRivals(s, notBuilt)) owned.push_back(std::move(rival));
  for (const std::string& line : notBuilt) {
    auto colon = line.find(':');
    table.missing.push_back({line.substr(0, colon), line.substr(colon + 2)});
  }
  std::vector<System*> systems;
  for (auto& sys : owned) systems.push_back(sys.get());

  std::fflush(stdout);
  std::fflush(stderr);
  PeerProcess peer(
      [&](ControlChannel& control) { servePeer(control, systems, s.serverCpu, room); });
  pinToCpu(s.clientCpu);
  peer.expect(ReplyKind::kReady, 0, Clock::now() + kReplyTimeout, "starting the peer process");
  Driver d(s, systems, peer, room, table);
  if (s.rpc || s.tls || s.stream || !s.openLoopRates.empty()) d.noteUnavailable();
  for (unsigned rep = 0; rep < s.reps; ++rep) {
    if (s.messages)
      for (WaitMode w : s.waitModes)
        for (size_t size : s.sizes) d.messages(rep, w, size);
    if (s.rpc)
      for (Transport t : s.transports)
        for (size_t size : s.sizes) d.rpc(rep, t, size);
    if (s.standard)
      for (Transport t : s.transports)
        for (size_t size : s.sizes)
          if (s.standardAllSizes || size == *std::min_element(s.sizes.begin(), s.sizes.end()))
            d.standard(rep, t, size);
    for (double rate : s.openLoopRates)
      for (Transport t : s.transports)
        for (WaitMode w : s.openLoopWaitModes)
          d.openLoop(rep, t, w, *std::min_element(s.sizes.begin(), s.sizes.end()),
                     static_cast<int64_t>(1e9 / rate));
    if (s.tls)
      for (size_t size : s.sizes) d.tls(rep, size);
    if (s.stream) {
      const StreamPlan plan = streamPlan(s);
      for (size_t size : plan.streamSizes)
        for (Transport t : s.transports)
          for (WaitMode w : plan.waitModes) d.stream(rep, t, w, size, plan.seconds);
      if (std::find(s.transports.begin(), s.transports.end(), Transport::kShm) !=
          s.transports.end())
        for (size_t size : plan.callbackSizes)
          for (WaitMode w : plan.waitModes) d.callback(rep, w, size, plan.seconds);
    }
  }
  peer.quit();
  table.loadEnd = loadAverage();
  return table;
}

}  // namespace zcrpc::bench
