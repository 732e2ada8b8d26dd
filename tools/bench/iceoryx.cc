// zcrpc-bench — rival: iceoryx 2.0 request/response (Debian's libiceoryx-posh, the untyped
// client and server: payloads of any size loaned from RouDi's shared-memory pools). Each
// process registers a runtime with a RouDi daemon that the bench starts (pools sized for
// the run's payloads, process monitoring off) and stops at the end; shm rows only. The
// client loans a request, copies the payload in and sends it; the server takes it, loans
// an answer of the same size, copies the request's data in (the echo's one copy) and
// sends it; the client checks the answer where it lies. Waiting follows the row:
// busy-poll spins on take(); spin-then-sleep spins for spin_time, then sleeps in a
// WaitSet; blocking sleeps at once.
#include <fcntl.h>
#include <fmt/format.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include "iceoryx_hoofs/log/logmanager.hpp"
#include "iceoryx_posh/mepoo/chunk_header.hpp"
#include "iceoryx_posh/popo/untyped_client.hpp"
#include "iceoryx_posh/popo/untyped_server.hpp"
#include "iceoryx_posh/popo/wait_set.hpp"
#include "iceoryx_posh/runtime/posh_runtime.hpp"
#include "system.h"

namespace zcrpc::bench {

namespace {

constexpr int64_t kStop = -1;  // the request's sequence id that ends a cell
const iox::capro::ServiceDescription kService{"zcrpc-bench", "echo", "shm"};
pid_t roudi = -1;    // the daemon this process started
pid_t starter = -1;  // that process (a forked peer inherits the atexit handler, not the daemon)

/// The files of a run in /tmp (made before any signal can come: the handler only unlinks),
/// then RouDi's two shared-memory segments, for when it cannot remove them itself.
std::array<std::string, 8> runFiles;

/// At exit (after this process's runtime has gone, and the peer's): stops RouDi, which
/// removes its shared memory, and the files of the run.
void stopRouDi() {
  if (::getpid() != starter) return;
  if (roudi > 0) {
    ::kill(roudi, SIGTERM);
    int status = 0;
    for (int i = 0; i < 500 && ::waitpid(roudi, &status, WNOHANG) == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (::waitpid(roudi, &status, WNOHANG) == 0)
      ::kill(roudi, SIGKILL), ::waitpid(roudi, &status, 0);
    roudi = -1;
  }
  for (size_t i = 0; i < 6; ++i) ::unlink(runFiles[i].c_str());
}

/// SIGINT / SIGTERM / SIGHUP while RouDi runs: kill it (a RouDi told to stop while processes
/// are registered aborts, leaving its shared memory behind) and remove its segments and the
/// run's files (all async-signal-safe), then die of the signal as before.
void onSignal(int signal) {
  if (::getpid() == starter && roudi > 0) {
    ::kill(roudi, SIGKILL);
    for (const std::string& file : runFiles) ::unlink(file.c_str());
  }
  ::signal(signal, SIG_DFL);
  ::raise(signal);
}

/// Takes from `port` (a client's answers or a server's requests) as the wait mode says.
/// Throws at `deadline`, or when `watchFd` turns readable (the other process gave up).
template <typename Port>
const void* take(Port& port, iox::popo::WaitSet<>& waitSet, WaitMode mode,
                 std::chrono::nanoseconds spin, Deadline deadline, int watchFd) {
  const auto spinUntil = Clock::now() + spin;
  for (uint32_t idle = 1;; ++idle) {
    if (auto got = port.take(); !got.has_error()) return got.value();
    if (mode == WaitMode::kBusyPoll ||
        (mode == WaitMode::kSpinThenSleep && ((idle & 63) || Clock::now() < spinUntil))) {
      if ((idle & 0xffff) == 0 && (Clock::now() >= deadline || readable(watchFd)))
        throw BenchError("iceoryx: no message before the deadline, or the other process gave up");
      cpuRelax();
      continue;
    }
    if (Clock::now() >= deadline) throw BenchError("iceoryx: no message before the deadline");
    if (readable(watchFd)) throw BenchError("iceoryx: the other process gave up on the cell");
    waitSet.timedWait(iox::units::Duration::fromMilliseconds(100));
  }
}

class Iceoryx final : public System {
 public:
  explicit Iceoryx(const Settings& s) : s_(s) {
    if (std::find(s.transports.begin(), s.transports.end(), Transport::kShm) ==
            s.transports.end() ||
        !s.rpc ||
        (!s.only.empty() && std::find(s.only.begin(), s.only.end(), "iceoryx") == s.only.end()))
      return;  // not needed in this run: no daemon
    try {
      startRouDi();
    } catch (const BenchError& e) {
      why_ = e.what();
    }
  }

  SeriesInfo info(Transport) const override {
    return {"iceoryx", "iceoryx request/response", Role::kRival};
  }
  bool covers(Transport t) const override { return t == Transport::kShm; }
  std::string unavailable() const override { return why_; }

  void serve(PeerCell& cell) override {
    if (!server_) {
      runtime(fmt::format("zcrpc-bench-{}-peer", ::getppid()));
      server_ = std::make_unique<iox::popo::UntypedServer>(kService);
      attach(*server_, iox::popo::ServerState::HAS_REQUEST);
    }
    cell.started();
    for (;;) {
      const void* request = take(*server_, *waitSet_, cell.spec.waitMode, s_.spinTime,
                                 cell.deadline, cell.controlFd());
      const auto* header = iox::popo::RequestHeader::fromPayload(request);
      const uint32_t bytes = iox::mepoo::ChunkHeader::fromUserPayload(request)->userPayloadSize();
      auto answer = server_->loan(header, bytes, alignof(std::max_align_t));
      if (answer.has_error())
        throw BenchError(fmt::format("iceoryx: no chunk for an answer of {} bytes", bytes));
      std::memcpy(answer.value(), request, bytes);
      const bool stop = header->getSequenceId() == kStop;
      server_->releaseRequest(request);
      if (server_->send(answer.value()).has_error())
        throw BenchError("iceoryx: the answer was not sent");
      if (stop) return;
    }
  }

  Figure measure(ClientCell& cell) override {
    if (!client_) {
      runtime(fmt::format("zcrpc-bench-{}", ::getpid()));
      client_ = std::make_unique<iox::popo::UntypedClient>(kService);
      attach(*client_, iox::popo::ClientState::HAS_RESPONSE);
      const Deadline connected = Clock::now() + kStallTimeout;
      while (client_->getConnectionState() != iox::ConnectionState::CONNECTED) {
        if (Clock::now() >= connected)
          throw BenchError("iceoryx: the client did not connect to the server");
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    const Deadline deadline = cellDeadline(cell.budget.total());
    const size_t n = cell.payload.size();
    int64_t seq = 0;
    auto roundTrip = [&](bool stop) {
      auto request = client_->loan(static_cast<uint32_t>(n), alignof(std::max_align_t));
      if (request.has_error())
        throw BenchError(fmt::format("iceoryx: no chunk for a request of {} bytes", n));
      std::memcpy(request.value(), cell.payload.data(), n);
      iox::popo::RequestHeader::fromPayload(request.value())->setSequenceId(stop ? kStop : seq++);
      if (client_->send(request.value()).has_error())
        throw BenchError("iceoryx: the request was not sent");
      const void* answer =
          take(*client_, *waitSet_, cell.spec.waitMode, s_.spinTime, deadline, cell.watchFd);
      const uint32_t bytes = iox::mepoo::ChunkHeader::fromUserPayload(answer)->userPayloadSize();
      const bool same =
          bytes == n && static_cast<const std::byte*>(answer)[n - 1] == cell.payload[n - 1];
      client_->releaseResponse(answer);
      if (!same) throw BenchError(fmt::format("iceoryx: answer of {} bytes, sent {}", bytes, n));
    };
    Figure f;
    f.latency = measureLatency([&] { roundTrip(false); }, cell.budget, cell.samples);
    roundTrip(true);
    return f;
  }

 private:
  /// Registers this process with RouDi as `name` (once per process, after the fork). The
  /// measuring process's runtime is a static that goes before the atexit handler that stops
  /// RouDi (registered earlier), so it deregisters first; the peer leaves by _exit().
  void runtime(const std::string& name) {
    if (!why_.empty()) throw BenchError("iceoryx: " + why_);
    iox::log::LogManager::GetLogManager().SetDefaultLogLevel(
        iox::log::LogLevel::kWarn, iox::log::LogLevelOutput::kHideLogLevel);
    iox::runtime::PoshRuntime::initRuntime(iox::RuntimeName_t(iox::cxx::TruncateToCapacity, name));
    waitSet_ = std::make_unique<iox::popo::WaitSet<>>();
  }

  template <typename Port, typename State>
  void attach(Port& port, State state) {
    if (waitSet_->attachState(port, state).has_error())
      throw BenchError("iceoryx: WaitSet attach failed");
  }

  /// Starts iox-roudi with pools for the run's payloads and waits until it serves. It is
  /// stopped at exit, or gets SIGTERM (and removes its shared memory) when this process dies.
  void startRouDi() {
    std::set<size_t> chunks;  // room for the payload and the chunk and request headers
    for (size_t size : s_.sizes) chunks.insert((size + 256 + 63) / 64 * 64);
    std::string pools = "[general]\nversion = 1\n\n[[segment]]\n";
    for (size_t chunk : chunks)  // ascending, as RouDi wants them
      pools += fmt::format("\n[[segment.mempool]]\nsize = {}\ncount = {}\n", chunk,
                           chunk > (1 << 20) ? 8 : 64);
    const std::string config = fmt::format("/tmp/zcrpc-bench-{}-roudi.toml", ::getpid());
    const std::string log = fmt::format("/tmp/zcrpc-bench-{}-roudi.log", ::getpid());
    std::ofstream(config) << pools;
    const pid_t parent = ::getpid();
    roudi = ::fork();
    if (roudi < 0) throwErrno("fork for iox-roudi");
    starter = parent;
    std::atexit(stopRouDi);
    size_t i = 0;  // this process's runtime, the peer's, RouDi's config and log
    for (const char* file : {"", ".lock", "-peer", "-peer.lock", "-roudi.toml", "-roudi.log"})
      runFiles[i++] = fmt::format("/tmp/zcrpc-bench-{}{}", parent, file);
    const passwd* user = ::getpwuid(::geteuid());  // RouDi names its data segment after the user
    runFiles[i++] = "/dev/shm/iceoryx_mgmt";
    runFiles[i++] = user ? fmt::format("/dev/shm/{}", user->pw_name) : std::string();
    for (int signal : {SIGINT, SIGTERM, SIGHUP}) ::signal(signal, onSignal);
    if (roudi == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() != parent || fd < 0) ::_exit(126);
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
      ::execlp("iox-roudi", "iox-roudi", "-m", "off", "-k", "1", "-l", "info", "-c", config.c_str(),
               nullptr);
      ::_exit(127);
    }
    for (const Deadline until = Clock::now() + kStallTimeout; Clock::now() < until;) {
      std::ifstream in(log);
      std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (said.find("RouDi is ready for clients") != std::string::npos) return;
      int status = 0;
      if (::waitpid(roudi, &status, WNOHANG) == roudi) {
        roudi = -1;
        throw BenchError(WIFEXITED(status) && WEXITSTATUS(status) == 127
                             ? "iox-roudi is not installed (Debian package iceoryx)"
                             : "iox-roudi did not start (another RouDi running?): " +
                                   said.substr(said.rfind('\n', said.size() - 2) + 1, 200));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    throw BenchError("iox-roudi did not say it is ready within 10 s");
  }

  const Settings& s_;
  std::string why_;
  std::unique_ptr<iox::popo::WaitSet<>> waitSet_;
  std::unique_ptr<iox::popo::UntypedServer> server_;
  std::unique_ptr<iox::popo::UntypedClient> client_;
};

}  // namespace

std::unique_ptr<System> makeIceoryx(const Settings& s) { return std::make_unique<Iceoryx>(s); }

}  // namespace zcrpc::bench
