// zcrpc-bench — what a measured system looks like to the driver: a serving side that runs in
// the peer process and a measuring side that runs here, one cell at a time.
//
// Adding a rival is writing one System (serve + measure, usually measureLatency() around one
// round trip) and listing it in rivals.cc: the driver runs it in every repetition beside
// zcrpc, and the report shows it as one more series of its rows.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common.h"

namespace zcrpc::bench {

/// Settings of a whole run that systems read on both sides (fixed before the peer forks).
struct Settings {
  int clientCpu = 0;
  int serverCpu = 1;
  std::vector<Transport> transports{Transport::kShm, Transport::kTcp};
  std::vector<WaitMode> waitModes{WaitMode::kBusyPoll, WaitMode::kSpinThenSleep};
  std::vector<size_t> sizes;
  double seconds = 0.5;  ///< per measured cell
  unsigned reps = 3;
  bool rpc = true;       ///< the rpc rows (RPC round trips, rivals, pipelined)
  bool messages = true;  ///< the messages rows (raw zcrpc messages over shm vs the floor)
  /// The standard rows (standard Cap'n Proto clients and servers against zcrpc), at the
  /// smallest size only unless standardAllSizes.
  bool standard = true;
  bool standardAllSizes = false;
  uint32_t batch = 32;   ///< messages per flush() in the one-way stream
  uint32_t window = 32;  ///< pipelined calls outstanding (capped to the rings unless uncapped)
  bool uncappedWindow = false;
  bool metrics = true;  ///< zcrpc's per-call metrics on client and server
  /// Over tcp, echo payloads from this size on go by reference (SIZE_MAX: always copied).
  size_t referenceFrom = size_t{16} << 10;
  std::chrono::nanoseconds spinTime = std::chrono::microseconds(50);  ///< spin-then-sleep
  std::vector<std::string> only;  ///< --rivals: the rival series to run (empty: all)
  bool quick = false;
  /// The open-loop rows: calls at these rates (calls/s), in these wait modes, over
  /// Settings::transports at the smallest size (empty rates: none).
  std::vector<double> openLoopRates;
  std::vector<WaitMode> openLoopWaitModes{WaitMode::kSpinThenSleep, WaitMode::kBlocking};
  /// Calls timed per open-loop cell (at least; at high rates Settings::seconds may run more).
  uint64_t openLoopCalls = 2000;
  bool tls = false;  ///< the tls rows (zcrpc over TLS tcp vs plain tcp vs gRPC over TLS)
  /// The stream rows (zcrpc `-> stream` vs its one-way messages vs gRPC client streaming)
  /// and the callback rows (the server calls the client's object vs an echo call).
  bool stream = false;
  /// Only the short version of them (--mode all, streamPlan()). Else every size and wait mode.
  bool streamShort = false;
  /// PEM files of the tls rows, made at run time before the fork (driver.cc): a CA, and a
  /// server certificate it signed for 127.0.0.1 with its key. zcrpc and gRPC use the same.
  struct TlsFiles {
    std::string ca, cert, key;
  } tlsFiles;
};

/// The wait modes of the standard rows: the run's, and blocking (zcrpc sleeping in poll(), as
/// Cap'n Proto's side sleeps in epoll) when the run has not named it.
std::vector<WaitMode> standardWaitModes(const Settings& s);

/// What the stream and callback rows cover (driver.cc): with Settings::streamShort a short
/// version, else every size and wait mode of the run.
struct StreamPlan {
  std::vector<size_t> streamSizes, callbackSizes;
  std::vector<WaitMode> waitModes;
  double seconds = 0;  ///< per measured cell
};
StreamPlan streamPlan(const Settings& s);

/// What a cell measures.
enum class Measure : uint8_t {
  kRoundTrip,  ///< one request, one answer, timed per round trip
  kPipelined,  ///< calls/s with `window` outstanding (a warm-up run first)
  kOneWay,     ///< messages/s one way, the receiver acknowledging the end (a warm-up run first)
  /// round trips started at a fixed rate whatever the answers do (CellSpec::intervalNs),
  /// timed from when each was due, with the CPU time per call of both processes
  kOpenLoop,
  /// messages/s of a `-> stream` method (Chunks.put), ending with a call (Chunks.flush) that
  /// answers once every chunk was handled, inside the timing (a warm-up run first)
  kStream,
  /// round trips the server makes to an object the client passed it (Pump.pump calls the
  /// client's Echo), timed in this process between consecutive callbacks (driver.h)
  kCallback,
  /// kCallback with the client's Echo exported Capability::Requests::kInPlace (its handler
  /// reads each request in transport memory instead of a heap copy)
  kCallbackInPlace,
};

/// One cell's parameters; they travel to the peer in the control message.
struct CellSpec {
  Transport transport = Transport::kShm;
  WaitMode waitMode = WaitMode::kBusyPoll;
  Measure measure = Measure::kRoundTrip;
  bool tls = false;  ///< over TLS 1.3 with Settings::tlsFiles (tcp only)
  uint32_t window = 0;  ///< kPipelined
  uint64_t payloadBytes = 0;
  int64_t budgetNs = 0;  ///< the measuring side's time: bounds the peer's waits
  int64_t intervalNs = 0;  ///< kOpenLoop: a call every intervalNs
};

/// What one cell measured.
struct Figure {
  Latency latency;           ///< kRoundTrip (samples == 0 otherwise)
  Rate rate;                 ///< kPipelined / kOneWay / kStream
  uint64_t preemptions = 0;  ///< involuntary context switches of both processes in the cell
  uint64_t peerValue = 0;    ///< what the serving side reported (PeerCell::value)
};

class ControlChannel;

/// The serving side of one cell, in the peer process. Threads: the peer's main thread.
class PeerCell final {
 public:
  PeerCell(ControlChannel& control, uint32_t id, const CellSpec& spec,
           std::span<std::byte> scratch);
  /// Tells the measuring side that the cell runs and where to connect. Call once, when
  /// listening (or, for loops that need no endpoint, right before the loop).
  void started(std::string_view endpoint = {});
  /// Waits for the measuring side to end the cell. Throws BenchError at `deadline`.
  void awaitEnd();
  /// For event loops that read the control socket themselves: `message` is what they read;
  /// throws BenchError unless it ends the cell.
  void endedWith(std::span<const std::byte> message);
  bool ended() const noexcept { return ended_; }
  /// Whether the measuring side ended the cell before serve() returned (it gave up after a
  /// failure): loops that wait in their own way check it now and then, and throw.
  bool abandoned() const noexcept;
  int controlFd() const noexcept;

  const CellSpec spec;
  const Deadline deadline;             ///< the measuring side's budget plus stall allowances
  const std::span<std::byte> scratch;  ///< room for the largest payload (+4 KiB), faulted in
  uint64_t value = 0;                  ///< goes back to the measuring side as Figure::peerValue

 private:
  ControlChannel& control_;
  uint32_t id_;
  bool started_ = false;
  bool ended_ = false;
};

/// The measuring side of one cell, in this process. Threads: the main thread.
struct ClientCell {
  const CellSpec& spec;
  std::string endpoint;                ///< what the peer passed to PeerCell::started()
  std::span<const std::byte> payload;  ///< spec.payloadBytes of a pattern, word-aligned
  std::span<std::byte> scratch;        ///< receive room for the largest payload (+4 KiB)
  std::span<uint64_t> samples;         ///< pre-touched room for the latency samples
  Budget budget;                       ///< kRoundTrip; the others run for budget.measure
  int watchFd = -1;  ///< the control socket: readable() when the peer failed mid-cell
};

/// Which part a series plays in its row.
enum class Role : uint8_t {
  kReference,  ///< the row's baseline: what moves the bytes (floor ring, raw TCP)
  kZcrpc,      ///< zcrpc itself
  kRival,      ///< what a user would pick instead of zcrpc
  kPart,       ///< a measured part of the whole (Cap'n Proto's own work, memcpy, checks)
  kDerived,    ///< computed from measured series of the same repetition (a bound)
};

/// A column of a row: one system measured one way.
struct SeriesInfo {
  SeriesInfo() = default;
  SeriesInfo(std::string seriesId, std::string text, Role r, std::string wait = {},
             Measure m = Measure::kRoundTrip)
      : id(std::move(seriesId)),
        label(std::move(text)),
        role(r),
        ownWait(std::move(wait)),
        measure(m) {}

  std::string id;     ///< stable name for JSON/CSV: "zcrpc", "floor", "ucx-am", ...
  std::string label;  ///< for people: "UCX ucp_am over sm"
  Role role = Role::kRival;
  /// How it waits: empty when it follows the row's wait mode, otherwise its own wait
  /// ("epoll"): such a series is measured once per size and repetition for all wait modes.
  std::string ownWait;
  Measure measure = Measure::kRoundTrip;  ///< a latency; a rate for the other two
};

/// One system the bench measures. Both processes hold a copy made before fork, so state
/// kept across cells (a connection, a runtime, a worker) is per process.
class System {
 public:
  virtual ~System() = default;
  /// The series this system's cells fill in a row over `t` (measure: kRoundTrip).
  virtual SeriesInfo info(Transport t) const = 0;
  /// Whether it has a path for rows over `t` at all (iceoryx has no tcp).
  virtual bool covers(Transport t) const = 0;
  /// Empty when it can run here; otherwise why not (shown in the report).
  virtual std::string unavailable() const { return {}; }
  /// Peer process: serve one cell (PeerCell::started() first); return when the measuring
  /// side is done (its stop message, end of stream, or PeerCell::awaitEnd()).
  virtual void serve(PeerCell& cell) = 0;
  /// This process: the cell's measurement against the peer's endpoint.
  virtual Figure measure(ClientCell& cell) = 0;
  /// Peer process, once, as it stops serving: release what serve() made in this process.
  /// The peer leaves with std::exit(), which destroys no system (they live in the measuring
  /// process's frames, copied by fork), so nothing else tears such state down there.
  virtual void leavePeer() {}
};

// ---- the systems (one file each) -----------------------------------------------------

/// floor.cc: the baseline over shm, a ring of payloads up to `maxPayloadBytes` mapped now.
std::unique_ptr<System> makeFloor(const Settings& s, size_t maxPayloadBytes);
/// raw_tcp.cc: the baseline over tcp.
std::unique_ptr<System> makeRawTcp(const Settings& s);
/// zcrpc.cc: echo calls through the generated stubs (kRoundTrip, kPipelined), one-way
/// Echo.sink messages (kOneWay), Chunks.put chunks (kStream) and Pump.pump callbacks
/// (kCallback) against a zcrpc::Server with one worker started for each cell, and raw
/// bench::Payload messages over one shm:// connection per wait mode (kRoundTrip, kOneWay).
std::unique_ptr<System> makeZcrpcRpc(const Settings& s, SpinPolicy spin = SpinPolicy::kAdaptive);
std::unique_ptr<System> makeZcrpcMessages(const Settings& s);
/// raw_tcp.cc: a ping-pong over a unix stream socket with blocking reads on both sides (the
/// plain kernel way two processes on one host talk: the open-loop rows' reference).
std::unique_ptr<System> makeUnixSocket(const Settings& s);
/// capnp_rpc.cc: Cap'n Proto's own RPC (EzRpc) serving the same Echo.
std::unique_ptr<System> makeCapnpRpc();
/// capnp_rpc.cc, for the systems that meet Cap'n Proto's own RPC: an EzRpcServer serving Echo
/// for one cell (a unix socket in shm rows, TCP in tcp rows; the endpoint it reports is kj's
/// "unix:/path" or "127.0.0.1:port"), and an EzRpcClient's echo round trips against such an
/// address.
void serveCapnpEcho(PeerCell& cell);
Latency capnpEchoLatency(ClientCell& cell, const std::string& kjAddress);
/// zcrpc.cc, standard Cap'n Proto peers (zcrpc/capnp.h), the "standard" rows: a zcrpc::Server
/// serving the same echo handler through its capnp listener to an EzRpcClient (unix socket
/// in shm rows, TCP in tcp rows; the server in the row's wait mode), and a zcrpc Channel
/// over capnp:// calling an EzRpcServer (the channel in the row's wait mode).
std::unique_ptr<System> makeZcrpcCapnpListener(const Settings& s);
std::unique_ptr<System> makeZcrpcCapnpClient(const Settings& s);
/// Built when their libraries are found (rivals.cc says which are not): ucx.cc, UCX active
/// messages or tag matching; iceoryx.cc, iceoryx request/response with the RouDi daemon it
/// starts now; grpc.cc, gRPC C++ serving the same echo, unary or on one stream.
std::unique_ptr<System> makeUcx(const Settings& s, bool tag);
std::unique_ptr<System> makeIceoryx(const Settings& s);
std::unique_ptr<System> makeGrpc(bool stream);
/// grpc.cc: gRPC unary over TLS with Settings::tlsFiles, for the tls rows only (it covers
/// no rpc row).
std::unique_ptr<System> makeGrpcTls(const Settings& s);
/// rivals.cc: the rivals this build has, in the order rows show them; `notBuilt` gets a
/// "series: why" line for each one it has not.
std::vector<std::unique_ptr<System>> makeRivals(const Settings& s,
                                                std::vector<std::string>& notBuilt);
/// rivals.cc: the rivals of the tls rows this build has (gRPC over TLS), after makeRivals'.
std::vector<std::unique_ptr<System>> makeTlsRivals(const Settings& s,
                                                   std::vector<std::string>& notBuilt);

/// Words of the first segment of an echo request or answer (or a bench::Payload) with
/// `payloadBytes` of data: root pointer, the struct, the data rounded up to words.
constexpr uint32_t echoWords(size_t payloadBytes) {
  return static_cast<uint32_t>(4 + (payloadBytes + 7) / 8);
}
/// The pipelined window for `size` over `t`: Settings::window, capped (unless uncapped) so
/// the calls in flight fit in one ring (shm: the arena for messages that go there; tcp: the
/// send queue, which blocks the sender beyond ringBytes). More only make the client wait for
/// room while the server holds answers back: the congestion path, not the pipeline.
uint32_t pipelineWindow(const Settings& s, Transport t, size_t size);
/// Cap'n Proto's own share of an echo round trip, no transport, one thread: a request built
/// into zeroed memory (zeroed outside the timed part), read back over its segments, an answer
/// built from it, read back and checked. The data field is empty: moving the payload's bytes
/// is what the floor does too, so floor + this is the least a round trip of Cap'n Proto
/// messages can take, whatever carries them. `rpc`: the Echo params/results (else Payload).
Latency capnpWork(bool rpc, const Budget& budget, std::span<uint64_t> samples);
/// Single-core memcpy of `chunkBytes` copies rotating through two 64 MiB buffers (beyond the
/// caches), for `duration` after one pass to fault them in.
Rate memcpyBandwidth(size_t chunkBytes, std::chrono::nanoseconds duration);

}  // namespace zcrpc::bench
