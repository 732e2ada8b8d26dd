// zcrpc-wake-options — what waking a sleeping peer costs, one way of waking against another.
//
// Two processes pinned to two CPUs play ping-pong through shared memory, as a zcrpc client
// and a server worker do over shm: the client writes a 64-byte request into a slot and
// publishes it with one release store; the server answers in a slot of its own. What
// differs between the runs is only how a side that found nothing sleeps, and how the
// other side wakes it. The server may hold many connections of which one is busy (as a
// worker does), so the cost of arming a sleep over all of them is measured too.
//
// Server sleeps ("--server"):
//   socket-poll     zcrpc's worker until now: per connection a "sleeping" flag and a unix
//                   socket; it arms every connection, poll()s all sockets, then disarms
//                   every one (a recv() each to drain wake bytes). The client sends a byte.
//   eventfd-epoll   per connection an eventfd, in one epoll set made once; only
//                   connections that had traffic since the last sleep are (re)armed, idle
//                   ones stay armed. The client writes its eventfd.
//   socket-epoll    the same with the unix socket in the epoll set instead of an eventfd:
//                   the client sends a byte, the server drains the socket that fired.
//   futex-doorbell  one "sleeping" flag and one futex word per worker, shared by all its
//                   connections; the client bumps the word and FUTEX_WAKEs.
//   eventfd-doorbell one flag per worker and one eventfd the clients write, slept on in
//                   epoll_wait (as a worker that also watches sockets would).
//   socket-data     the reference: no shared memory, the message itself goes through a
//                   unix stream socket, both sides in a blocking read().
// Client sleeps ("--client"): spin (busy-poll), futex (its own futex word, bumped by the
// server), eventfd (poll() on its eventfd and its socket, for hang-ups), socket (poll()
// then recv() on its unix socket, as zcrpc's blocking client until now).
//
// Calls are sent open loop at a fixed gap (0: back to back); latency is measured from the
// intended send time (coordinated omission corrected) and from the actual send. CPU per
// call is each process's getrusage() over the run.
//
// Usage: zcrpc-wake-options [--server a,b] [--client a,b] [--gaps-us 0,100,1000]
//                           [--connections 1,1000] [--calls N] [--reps N] [--cpus 0,1]
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kPayload = 64;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "zcrpc-wake-options: %s: %s\n", what, std::strerror(errno));
  std::exit(2);
}

inline void cpuRelax() { __builtin_ia32_pause(); }

long futexWait(std::atomic<uint32_t>& w, uint32_t expected, long ns) {
  timespec ts{ns / 1'000'000'000, ns % 1'000'000'000};
  return ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&w), FUTEX_WAIT, expected, &ts,
                   nullptr, 0);
}
void futexWake(std::atomic<uint32_t>& w) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&w), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

double cpuSeconds() {
  rusage r;
  ::getrusage(RUSAGE_SELF, &r);
  return double(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
         double(r.ru_utime.tv_usec + r.ru_stime.tv_usec) * 1e-6;
}

void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity");
}

// ---- shared memory -------------------------------------------------------------------

struct alignas(64) Slot {
  std::atomic<uint64_t> seq;  // published last (release); the reader polls it
  std::byte payload[kPayload];
};

/// Per connection: what each side publishes, and the words each side sleeps on.
struct alignas(64) Conn {
  Slot request;   // client -> server
  Slot response;  // server -> client
  alignas(64) std::atomic<uint32_t> serverSleeping;  // written by the server
  alignas(64) std::atomic<uint32_t> clientSleeping;  // written by the client
  std::atomic<uint32_t> clientFutex;                 // bumped by the server to wake it
};

struct alignas(64) Shared {
  alignas(64) std::atomic<uint32_t> workerSleeping;  // doorbells: written by the server
  alignas(64) std::atomic<uint32_t> doorbell;        // doorbells: written by the clients
  alignas(64) std::atomic<uint32_t> stop;
  double serverCpu;
  uint64_t serverSleeps;
  uint64_t serverWakesSent;
  int64_t serverWakeNs;  // time spent in the calls that woke the client
  Conn conns[1];         // more follow
};

size_t sharedBytes(size_t conns) { return sizeof(Shared) + (conns - 1) * sizeof(Conn); }

enum class ServerWake {
  kSocketPoll,
  kEventfdEpoll,
  kSocketEpoll,
  kFutexDoorbell,
  kEventfdDoorbell,
  kSocketData
};
enum class ClientWake { kSpin, kFutex, kEventfd, kSocket };

const std::map<std::string, ServerWake> kServerNames = {
    {"socket-poll", ServerWake::kSocketPoll},
    {"eventfd-epoll", ServerWake::kEventfdEpoll},
    {"socket-epoll", ServerWake::kSocketEpoll},
    {"futex-doorbell", ServerWake::kFutexDoorbell},
    {"eventfd-doorbell", ServerWake::kEventfdDoorbell},
    {"socket-data", ServerWake::kSocketData}};
const std::map<std::string, ClientWake> kClientNames = {{"spin", ClientWake::kSpin},
                                                        {"futex", ClientWake::kFutex},
                                                        {"eventfd", ClientWake::kEventfd},
                                                        {"socket", ClientWake::kSocket}};

/// One cell: a way of waking each side, a number of connections, a gap between calls.
struct Cell {
  std::string serverName, clientName;
  ServerWake server;
  ClientWake client;
  size_t connections;
  int64_t gapNs;
  size_t calls;
};

/// The kernel objects of one cell, made before fork() so both processes hold them.
struct Objects {
  std::vector<int> toServer, toClient;  // socket pairs: [0] client's end, [1] server's end
  std::vector<int> serverEfd;           // per connection (eventfd-epoll)
  int doorbellEfd = -1;                 // eventfd-doorbell
  int clientEfd = -1;                   // eventfd client
  int dataSock[2] = {-1, -1};           // socket-data
};

struct Result {
  std::vector<int64_t> fromIntended, fromSend;
  double clientCpu = 0, serverCpu = 0;
  uint64_t clientSleeps = 0, serverSleeps = 0, clientWakes = 0, serverWakes = 0;
  int64_t clientWakeNs = 0, serverWakeNs = 0;
  int64_t late = 0;  // sum of send lateness
};

// ---- the server ----------------------------------------------------------------------

class Server {
 public:
  Server(Shared& s, const Cell& cell, const Objects& o) : s_(s), cell_(cell), o_(o) {
    last_.assign(cell.connections, 0);
    armed_.assign(cell.connections, false);
    for (size_t c = 0; c < cell.connections; ++c) active_.push_back(c);  // armed at the first sleep
    if (cell.server == ServerWake::kEventfdEpoll || cell.server == ServerWake::kSocketEpoll ||
        cell.server == ServerWake::kEventfdDoorbell) {
      epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
      if (epoll_ < 0) die("epoll_create1");
      auto add = [&](int fd, uint64_t data) {
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLET;
        ev.data.u64 = data;
        if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
      };
      if (cell.server == ServerWake::kEventfdEpoll) {
        for (size_t c = 0; c < cell.connections; ++c) add(o.serverEfd[c], c);
        // Hang-ups come through the sockets, also in the set (a worker needs them).
        for (size_t c = 0; c < cell.connections; ++c) {
          epoll_event ev{};
          ev.events = EPOLLRDHUP | EPOLLET;
          ev.data.u64 = UINT64_MAX;
          if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, o.toServer[c * 2 + 1], &ev) != 0) die("epoll_ctl");
        }
      } else if (cell.server == ServerWake::kSocketEpoll) {
        // Level-triggered: wake bytes stay until drained, as hang-ups do.
        for (size_t c = 0; c < cell.connections; ++c) {
          epoll_event ev{};
          ev.events = EPOLLIN | EPOLLRDHUP;
          ev.data.u64 = c;
          if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, o.toServer[c * 2 + 1], &ev) != 0) die("epoll_ctl");
        }
      } else {
        add(o.doorbellEfd, 0);
      }
    }
  }

  void run() {
    const double cpu0 = cpuSeconds();
    if (cell_.server == ServerWake::kSocketData) {
      runSocketData();
    } else {
      for (;;) {
        if (scan()) continue;
        if (s_.stop.load(std::memory_order_acquire)) break;
        sleep();
      }
    }
    s_.serverCpu = cpuSeconds() - cpu0;
    s_.serverSleeps = sleeps_;
    s_.serverWakesSent = wakes_;
    s_.serverWakeNs = wakeNs_;
  }

 private:
  bool ready(size_t c) const {
    return s_.conns[c].request.seq.load(std::memory_order_acquire) != last_[c];
  }

  /// Answers every connection with a request; returns whether any had one.
  bool scan() {
    bool any = false;
    for (size_t c = 0; c < cell_.connections; ++c) {
      Conn& k = s_.conns[c];
      uint64_t seq = k.request.seq.load(std::memory_order_acquire);  // pairs with the client's publish
      if (seq == last_[c]) continue;
      last_[c] = seq;
      any = true;
      std::memcpy(k.response.payload, k.request.payload, kPayload);
      k.response.seq.store(seq, std::memory_order_release);
      if ((cell_.server == ServerWake::kEventfdEpoll || cell_.server == ServerWake::kSocketEpoll) &&
          armed_[c]) {
        // A connection with traffic is disarmed: its client stops paying for wake-ups
        // while we are awake. It is re-armed at the next sleep.
        armed_[c] = false;
        k.serverSleeping.store(0, std::memory_order_relaxed);
        active_.push_back(c);
      }
      wakeClient(k, c);
    }
    return any;
  }

  void wakeClient(Conn& k, size_t c) {
    if (cell_.client == ClientWake::kSpin) return;
    std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the client's sleep
    if (!k.clientSleeping.load(std::memory_order_relaxed)) return;
    const int64_t t0 = nowNs();
    switch (cell_.client) {
      case ClientWake::kFutex:
        k.clientFutex.fetch_add(1, std::memory_order_release);
        futexWake(k.clientFutex);
        break;
      case ClientWake::kEventfd: {
        uint64_t one = 1;
        (void)!::write(o_.clientEfd, &one, sizeof one);
        break;
      }
      case ClientWake::kSocket: {
        char b = 'w';
        (void)::send(o_.toClient[c * 2 + 1], &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        break;
      }
      case ClientWake::kSpin: break;
    }
    wakeNs_ += nowNs() - t0;
    ++wakes_;
  }

  void sleep() {
    ++sleeps_;
    switch (cell_.server) {
      case ServerWake::kSocketPoll: {
        // As zcrpc's Worker::sleep(): arm each connection, poll them all, disarm each.
        fds_.clear();
        bool isReady = false;
        size_t armed = 0;
        for (size_t c = 0; c < cell_.connections; ++c) {
          s_.conns[c].serverSleeping.store(1, std::memory_order_seq_cst);
          std::atomic_thread_fence(std::memory_order_seq_cst);
          ++armed;
          if (ready(c) || s_.stop.load(std::memory_order_relaxed)) {
            isReady = true;
            break;
          }
          fds_.push_back({o_.toServer[c * 2 + 1], POLLIN | POLLRDHUP, 0});
        }
        if (!isReady) ::poll(fds_.data(), fds_.size(), 20);
        char buf[64];
        for (size_t c = 0; c < armed; ++c) {
          s_.conns[c].serverSleeping.store(0, std::memory_order_relaxed);
          (void)::recv(o_.toServer[c * 2 + 1], buf, sizeof buf, MSG_DONTWAIT);
        }
        break;
      }
      case ServerWake::kEventfdEpoll:
      case ServerWake::kSocketEpoll: {
        // Arm only what was disarmed by traffic; idle connections stay armed.
        for (size_t c : active_) {
          armed_[c] = true;
          s_.conns[c].serverSleeping.store(1, std::memory_order_relaxed);
        }
        active_.clear();
        std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the clients' publish
        if (anyReady()) return;
        epoll_event ev[16];
        int n = ::epoll_wait(epoll_, ev, 16, 20);  // eventfds: edge-triggered, nothing to drain
        if (cell_.server == ServerWake::kSocketEpoll) {
          char buf[64];
          for (int i = 0; i < n; ++i)
            (void)::recv(o_.toServer[ev[i].data.u64 * 2 + 1], buf, sizeof buf, MSG_DONTWAIT);
        }
        break;
      }
      case ServerWake::kFutexDoorbell: {
        const uint32_t seq = s_.doorbell.load(std::memory_order_acquire);
        s_.workerSleeping.store(1, std::memory_order_seq_cst);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (!anyReady()) futexWait(s_.doorbell, seq, 20'000'000);
        s_.workerSleeping.store(0, std::memory_order_relaxed);
        break;
      }
      case ServerWake::kEventfdDoorbell: {
        s_.workerSleeping.store(1, std::memory_order_seq_cst);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (!anyReady()) {
          epoll_event ev[4];
          (void)::epoll_wait(epoll_, ev, 4, 20);  // edge-triggered: nothing to drain
        }
        s_.workerSleeping.store(0, std::memory_order_relaxed);
        break;
      }
      case ServerWake::kSocketData: break;
    }
  }

  bool anyReady() const {
    if (s_.stop.load(std::memory_order_relaxed)) return true;
    for (size_t c = 0; c < cell_.connections; ++c)
      if (ready(c)) return true;
    return false;
  }

  void runSocketData() {
    std::byte buf[kPayload];
    for (;;) {
      size_t got = 0;
      while (got < kPayload) {
        ssize_t r = ::read(o_.dataSock[1], buf + got, kPayload - got);
        if (r <= 0) return;
        got += static_cast<size_t>(r);
      }
      const int64_t t0 = nowNs();
      if (::write(o_.dataSock[1], buf, kPayload) != ssize_t(kPayload)) return;
      wakeNs_ += nowNs() - t0;
      ++wakes_;
      ++sleeps_;
    }
  }

  Shared& s_;
  const Cell& cell_;
  const Objects& o_;
  std::vector<uint64_t> last_;
  std::vector<bool> armed_;
  std::vector<size_t> active_;
  std::vector<pollfd> fds_;
  int epoll_ = -1;
  uint64_t sleeps_ = 0, wakes_ = 0;
  int64_t wakeNs_ = 0;
};

// ---- the client ----------------------------------------------------------------------

class Client {
 public:
  Client(Shared& s, const Cell& cell, const Objects& o) : s_(s), cell_(cell), o_(o) {}

  Result run() {
    Result r;
    r.fromIntended.reserve(cell_.calls);
    r.fromSend.reserve(cell_.calls);
    Conn& k = s_.conns[0];
    std::byte payload[kPayload] = {};
    const double cpu0 = cpuSeconds();
    const int64_t start = nowNs() + 1'000'000;
    for (size_t i = 0; i < cell_.calls; ++i) {
      const int64_t intended = start + int64_t(i) * cell_.gapNs;
      if (cell_.gapNs) sleepUntil(intended);
      const int64_t sent = nowNs();
      r.late += std::max<int64_t>(0, sent - intended);
      payload[0] = std::byte(i);
      if (cell_.server == ServerWake::kSocketData) {
        if (::write(o_.dataSock[0], payload, kPayload) != ssize_t(kPayload)) die("write");
        size_t got = 0;
        while (got < kPayload) {
          ssize_t n = ::read(o_.dataSock[0], payload + got, kPayload - got);
          if (n <= 0) die("read");
          got += size_t(n);
        }
      } else {
        std::memcpy(k.request.payload, payload, kPayload);
        k.request.seq.store(i + 1, std::memory_order_release);  // pairs with the server's scan
        wakeServer(k);
        waitForResponse(k, i + 1);
      }
      const int64_t done = nowNs();
      r.fromIntended.push_back(done - (cell_.gapNs ? intended : sent));
      r.fromSend.push_back(done - sent);
    }
    r.clientCpu = cpuSeconds() - cpu0;
    r.clientSleeps = sleeps_;
    r.clientWakes = wakes_;
    r.clientWakeNs = wakeNs_;
    return r;
  }

 private:
  static void sleepUntil(int64_t t) {
    if (nowNs() >= t) return;
    timespec ts{t / 1'000'000'000, t % 1'000'000'000};
    while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    }
  }

  void wakeServer(Conn& k) {
    std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the server's sleep
    const int64_t t0 = nowNs();
    switch (cell_.server) {
      case ServerWake::kSocketPoll:
        if (!k.serverSleeping.load(std::memory_order_relaxed)) return;
        {
          char b = 'w';
          (void)::send(o_.toServer[0], &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        break;
      case ServerWake::kEventfdEpoll:
        if (!k.serverSleeping.load(std::memory_order_relaxed)) return;
        {
          uint64_t one = 1;
          (void)!::write(o_.serverEfd[0], &one, sizeof one);
        }
        break;
      case ServerWake::kSocketEpoll:
        if (!k.serverSleeping.load(std::memory_order_relaxed)) return;
        {
          char b = 'w';
          (void)::send(o_.toServer[0], &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        break;
      case ServerWake::kFutexDoorbell:
        if (!s_.workerSleeping.load(std::memory_order_relaxed)) return;
        s_.doorbell.fetch_add(1, std::memory_order_release);
        futexWake(s_.doorbell);
        break;
      case ServerWake::kEventfdDoorbell:
        if (!s_.workerSleeping.load(std::memory_order_relaxed)) return;
        {
          uint64_t one = 1;
          (void)!::write(o_.doorbellEfd, &one, sizeof one);
        }
        break;
      case ServerWake::kSocketData: return;
    }
    wakeNs_ += nowNs() - t0;
    ++wakes_;
  }

  bool arrived(Conn& k, uint64_t want) {
    return k.response.seq.load(std::memory_order_acquire) == want;  // pairs with the server's answer
  }

  void waitForResponse(Conn& k, uint64_t want) {
    if (cell_.client == ClientWake::kSpin) {
      for (uint32_t i = 1; !arrived(k, want); ++i)
        if ((i & 255) == 0)
          ::sched_yield();
        else
          cpuRelax();
      return;
    }
    while (!arrived(k, want)) {
      const uint32_t seq = k.clientFutex.load(std::memory_order_acquire);
      k.clientSleeping.store(1, std::memory_order_seq_cst);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (!arrived(k, want)) {
        ++sleeps_;
        switch (cell_.client) {
          case ClientWake::kFutex: futexWait(k.clientFutex, seq, 20'000'000); break;
          case ClientWake::kEventfd: {
            pollfd fds[2] = {{o_.clientEfd, POLLIN, 0}, {o_.toClient[0], POLLRDHUP, 0}};
            if (::poll(fds, 2, 20) > 0 && (fds[0].revents & POLLIN)) {
              uint64_t n;
              (void)!::read(o_.clientEfd, &n, sizeof n);
            }
            break;
          }
          case ClientWake::kSocket: {
            pollfd fd{o_.toClient[0], POLLIN | POLLRDHUP, 0};
            if (::poll(&fd, 1, 20) > 0 && (fd.revents & POLLIN)) {
              char buf[64];
              (void)::recv(o_.toClient[0], buf, sizeof buf, MSG_DONTWAIT);
            }
            break;
          }
          case ClientWake::kSpin: break;
        }
      }
      k.clientSleeping.store(0, std::memory_order_relaxed);
    }
  }

  Shared& s_;
  const Cell& cell_;
  const Objects& o_;
  uint64_t sleeps_ = 0, wakes_ = 0;
  int64_t wakeNs_ = 0;
};

// ---- a cell ---------------------------------------------------------------------------

Objects makeObjects(const Cell& cell) {
  Objects o;
  for (size_t c = 0; c < cell.connections; ++c) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv)) die("socketpair");
    o.toServer.push_back(sv[0]);
    o.toServer.push_back(sv[1]);
    if (cell.server == ServerWake::kEventfdEpoll) {
      int e = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (e < 0) die("eventfd");
      o.serverEfd.push_back(e);
    }
  }
  o.toClient = o.toServer;  // one socket per connection carries both directions' bytes
  if (cell.server == ServerWake::kEventfdDoorbell) {
    o.doorbellEfd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (o.doorbellEfd < 0) die("eventfd");
  }
  o.clientEfd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (o.clientEfd < 0) die("eventfd");
  if (cell.server == ServerWake::kSocketData &&
      ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, o.dataSock))
    die("socketpair");
  return o;
}

void closeObjects(Objects& o) {
  for (int fd : o.toServer) ::close(fd);
  for (int fd : o.serverEfd) ::close(fd);
  for (int fd : {o.doorbellEfd, o.clientEfd, o.dataSock[0], o.dataSock[1]})
    if (fd >= 0) ::close(fd);
}

Result runCell(const Cell& cell, int clientCpu, int serverCpu) {
  const size_t bytes = sharedBytes(cell.connections);
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) die("mmap");
  auto* s = new (mem) Shared();
  for (size_t c = 0; c < cell.connections; ++c) new (&s->conns[c]) Conn();
  Objects o = makeObjects(cell);
  pid_t pid = ::fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    pin(serverCpu);
    Server server(*s, cell, o);
    server.run();
    ::_exit(0);
  }
  pin(clientCpu);
  Client client(*s, cell, o);
  Result r = client.run();
  s->stop.store(1, std::memory_order_release);
  if (cell.server == ServerWake::kFutexDoorbell) {
    s->doorbell.fetch_add(1);
    futexWake(s->doorbell);
  }
  if (cell.server == ServerWake::kSocketData) ::shutdown(o.dataSock[0], SHUT_RDWR);
  uint64_t one = 1;
  if (o.doorbellEfd >= 0) (void)!::write(o.doorbellEfd, &one, sizeof one);
  if (!o.serverEfd.empty()) (void)!::write(o.serverEfd[0], &one, sizeof one);
  {
    char b = 'w';
    (void)::send(o.toServer[0], &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.serverCpu = s->serverCpu;
  r.serverSleeps = s->serverSleeps;
  r.serverWakes = s->serverWakesSent;
  r.serverWakeNs = s->serverWakeNs;
  closeObjects(o);
  ::munmap(mem, bytes);
  return r;
}

// ---- reporting --------------------------------------------------------------------------

int64_t percentile(std::vector<int64_t> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, size_t(p * double(v.size())));
  return v[i];
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t from = 0;
  while (from <= s.size()) {
    size_t comma = s.find(',', from);
    if (comma == std::string::npos) comma = s.size();
    if (comma > from) out.push_back(s.substr(from, comma - from));
    from = comma + 1;
  }
  return out;
}

struct Figures {
  std::vector<double> p50, p99, p999, send50, cpuClient, cpuServer, wakeClient, wakeServer,
      sleepsClient, sleepsServer;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> servers = {"socket-poll",    "socket-epoll",     "eventfd-epoll",
                                      "futex-doorbell", "eventfd-doorbell", "socket-data"};
  std::vector<std::string> clients = {"spin", "futex", "eventfd", "socket"};
  std::vector<int64_t> gapsUs = {0, 100, 1000};
  std::vector<size_t> connections = {1, 1000};
  size_t calls = 5000, reps = 3;
  int cpus[2] = {0, 1};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--server") servers = split(v);
    else if (a == "--client") clients = split(v);
    else if (a == "--gaps-us") { gapsUs.clear(); for (auto& g : split(v)) gapsUs.push_back(std::stoll(g)); }
    else if (a == "--connections") { connections.clear(); for (auto& c : split(v)) connections.push_back(std::stoul(c)); }
    else if (a == "--calls") calls = std::stoul(v);
    else if (a == "--reps") reps = std::stoul(v);
    else if (a == "--cpus") { auto c = split(v); cpus[0] = std::stoi(c.at(0)); cpus[1] = std::stoi(c.at(1)); }
    else { std::fprintf(stderr, "unknown option %s\n", a.c_str()); return 2; }
  }
  ::prctl(PR_SET_TIMERSLACK, 1UL);  // clock_nanosleep wakes on time, not 50 us late
  std::vector<Cell> cells;
  for (int64_t gap : gapsUs)
    for (size_t n : connections)
      for (auto& sn : servers) {
        auto si = kServerNames.find(sn);
        if (si == kServerNames.end()) { std::fprintf(stderr, "unknown server wake %s\n", sn.c_str()); return 2; }
        for (auto& cn : clients) {
          auto ci = kClientNames.find(cn);
          if (ci == kClientNames.end()) { std::fprintf(stderr, "unknown client wake %s\n", cn.c_str()); return 2; }
          if (si->second == ServerWake::kSocketData && (ci->second != ClientWake::kSpin || n != 1))
            continue;  // the reference has one form: one socket, blocking reads both sides
          cells.push_back({sn, si->second == ServerWake::kSocketData ? "read" : cn, si->second,
                           ci->second, n, gap * 1000, calls});
        }
      }
  // Repetitions go round all cells in turn, so a noisy stretch of the machine spreads over
  // every cell instead of spoiling one.
  std::vector<Figures> figures(cells.size());
  for (size_t rep = 0; rep < reps; ++rep)
    for (size_t i = 0; i < cells.size(); ++i) {
      Result r = runCell(cells[i], cpus[0], cpus[1]);
      Figures& f = figures[i];
      const double n = double(cells[i].calls);
      f.p50.push_back(double(percentile(r.fromIntended, 0.50)) / 1e3);
      f.p99.push_back(double(percentile(r.fromIntended, 0.99)) / 1e3);
      f.p999.push_back(double(percentile(r.fromIntended, 0.999)) / 1e3);
      f.send50.push_back(double(percentile(r.fromSend, 0.50)) / 1e3);
      f.cpuClient.push_back(r.clientCpu / n * 1e6);
      f.cpuServer.push_back(r.serverCpu / n * 1e6);
      f.wakeClient.push_back(r.clientWakes ? double(r.clientWakeNs) / double(r.clientWakes) : 0);
      f.wakeServer.push_back(r.serverWakes ? double(r.serverWakeNs) / double(r.serverWakes) : 0);
      f.sleepsClient.push_back(double(r.clientSleeps) / n);
      f.sleepsServer.push_back(double(r.serverSleeps) / n);
    }
  std::printf("# %zu calls per cell, %zu repetitions, medians of the repetitions [min-max of p50]\n",
              calls, reps);
  std::printf("# latency (us) from the intended send time; cpu (us) per call per side; wake: ns in\n"
              "# the waking call (client wakes server / server wakes client); sleeps per call\n");
  std::printf("%-6s %-5s %-17s %-7s %8s %15s %8s %8s %8s %8s %8s %7s %7s %5s %5s\n", "gap", "conns",
              "server", "client", "p50", "[range]", "p99", "p99.9", "sent-p50", "cpuCli", "cpuSrv",
              "wakeC", "wakeS", "slpC", "slpS");
  for (size_t i = 0; i < cells.size(); ++i) {
    const Cell& c = cells[i];
    const Figures& f = figures[i];
    char range[32];
    std::snprintf(range, sizeof range, "[%.1f-%.1f]", *std::min_element(f.p50.begin(), f.p50.end()),
                  *std::max_element(f.p50.begin(), f.p50.end()));
    std::printf("%-6lld %-5zu %-17s %-7s %8.1f %15s %8.1f %8.1f %8.1f %8.2f %8.2f %7.0f %7.0f %5.2f %5.2f\n",
                static_cast<long long>(c.gapNs / 1000), c.connections, c.serverName.c_str(),
                c.clientName.c_str(), median(f.p50), range, median(f.p99), median(f.p999),
                median(f.send50), median(f.cpuClient), median(f.cpuServer), median(f.wakeClient),
                median(f.wakeServer), median(f.sleepsClient), median(f.sleepsServer));
  }
  return 0;
}
