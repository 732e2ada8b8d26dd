// Helpers shared by the transport tests: checksummed payloads, child processes that are
// always reaped, and a pipe for synchronising with them. Header-only, test code only.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bench.capnp.h"
#include "common/child.h"
#include "common/pattern.h"
#include "zcrpc/transport.h"

namespace zcrpc::test {

using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------------
// Payloads: bench::Payload{seq, checksum, data} with data derived from the seed and a
// checksum over the bytes, so any torn, stale or overwritten byte is caught.

/// Words a Payload of `size` data bytes needs in one segment (root pointer + struct + data).
inline uint32_t payloadWords(size_t size) { return static_cast<uint32_t>(4 + (size + 7) / 8); }

/// Fills an opened message with a Payload.
inline void buildPayload(OutgoingMessage& msg, uint64_t seq, size_t size) {
  auto p = msg.initRoot<bench::Payload>();
  p.setSeq(seq);
  auto d = p.initData(static_cast<capnp::uint>(size));
  fillPattern(d.begin(), size, seq);
  p.setChecksum(checksum(d.begin(), size));
}

/// Sends a Payload. `firstWords` 0 means "big enough for the whole payload". With
/// `deadline` == Deadline::min() it only tries (tryStartMessage).
inline Status sendPayload(Connection& c, uint64_t seq, size_t size, uint32_t firstWords = 0,
                          Deadline deadline = Deadline::min(), bool flush = true) {
  OutgoingMessage msg;
  uint32_t words = firstWords ? firstWords : payloadWords(size);
  Status s = deadline == Deadline::min() ? c.tryStartMessage(msg, words)
                                         : c.startMessage(msg, words, deadline);
  if (s != Status::kOk) return s;
  buildPayload(msg, seq, size);
  return c.send(msg, flush);
}

/// Checks the payload's bytes against its checksum and its seed; reports seq and size.
inline ::testing::AssertionResult checkPayload(IncomingMessage& in, uint64_t* seqOut = nullptr,
                                               size_t* sizeOut = nullptr) {
  if (!in.valid()) return ::testing::AssertionFailure() << "no message";
  auto p = in.getRoot<bench::Payload>();
  auto d = p.getData();
  uint64_t sum = checksum(d.begin(), d.size());
  if (sum != p.getChecksum())
    return ::testing::AssertionFailure()
           << "checksum mismatch for seq " << p.getSeq() << " (" << d.size() << " bytes)";
  // The checksum field could be stale along with the data: also check the content is the
  // one this seq must carry.
  if (d.size() > 0) {
    std::vector<uint8_t> expect(d.size());
    fillPattern(expect.data(), d.size(), p.getSeq());
    if (std::memcmp(expect.data(), d.begin(), d.size()) != 0)
      return ::testing::AssertionFailure() << "data of seq " << p.getSeq() << " is not its pattern";
  }
  if (seqOut) *seqOut = p.getSeq();
  if (sizeOut) *sizeOut = d.size();
  return ::testing::AssertionSuccess();
}

/// Cheaper check for stress loops: checksum only.
inline bool payloadIntact(IncomingMessage& in, uint64_t& seq, size_t& size) {
  auto p = in.getRoot<bench::Payload>();
  auto d = p.getData();
  seq = p.getSeq();
  size = d.size();
  return checksum(d.begin(), d.size()) == p.getChecksum();
}

inline const char* modeName(WaitMode m) {
  switch (m) {
    case WaitMode::kBusyPoll: return "BusyPoll";
    case WaitMode::kSpinThenSleep: return "SpinThenSleep";
    case WaitMode::kBlocking: return "Blocking";
  }
  return "Unknown";
}

inline double msSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// ---------------------------------------------------------------------------------------
// Processes

/// A pipe with bounded reads, for handshakes between a test and its child.
class Pipe {
 public:
  Pipe() {
    if (::pipe2(fds_, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  }
  ~Pipe() {
    closeRead();
    closeWrite();
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;

  bool put(char c) { return ::write(fds_[1], &c, 1) == 1; }
  bool putString(const std::string& s) {
    return ::write(fds_[1], s.data(), s.size()) == static_cast<ssize_t>(s.size());
  }
  /// One byte, or -1 on timeout / end of file.
  int get(std::chrono::milliseconds timeout) {
    pollfd p{fds_[0], POLLIN, 0};
    auto deadline = Clock::now() + timeout;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() < 0) return -1;
      int r = ::poll(&p, 1, static_cast<int>(left.count()));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return -1;
      char c;
      ssize_t n = ::read(fds_[0], &c, 1);
      if (n < 0 && errno == EINTR) continue;
      return n == 1 ? static_cast<unsigned char>(c) : -1;
    }
  }
  /// Everything until end of file (or timeout).
  std::string drain(std::chrono::milliseconds timeout) {
    std::string out;
    for (int c; (c = get(timeout)) >= 0;) out.push_back(static_cast<char>(c));
    return out;
  }
  void closeRead() {
    if (fds_[0] >= 0) ::close(std::exchange(fds_[0], -1));
  }
  void closeWrite() {
    if (fds_[1] >= 0) ::close(std::exchange(fds_[1], -1));
  }

 private:
  int fds_[2] = {-1, -1};
};

/// Runs `body` (which may use gtest assertions) in a child process, so a crash in the code
/// under test fails this one test instead of ending the whole test program. The child's
/// failures are printed by gtest in the child; the parent fails if the child failed,
/// crashed or ran past `timeout`.
inline ::testing::AssertionResult isolated(const std::function<void()>& body,
                                           std::chrono::milliseconds timeout = 60s) {
  Child child([&] {
    body();
    return ::testing::Test::HasFailure() ? 1 : 0;
  });
  int code = child.wait(timeout);
  if (code == 0) return ::testing::AssertionSuccess();
  if (code == -1) return ::testing::AssertionFailure() << "isolated test hung (killed after timeout)";
  if (code > 128)
    return ::testing::AssertionFailure()
           << "isolated test crashed: signal " << code - 128 << " (" << strsignal(code - 128) << ")";
  return ::testing::AssertionFailure() << "isolated test failed (exit " << code << ", see above)";
}

// ---------------------------------------------------------------------------------------
// Process health

inline std::set<std::string> listDir(const char* path) {
  std::set<std::string> names;
  if (DIR* d = ::opendir(path)) {
    while (dirent* e = ::readdir(d))
      if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) names.insert(e->d_name);
    ::closedir(d);
  }
  return names;
}

inline size_t openFdCount() { return listDir("/proc/self/fd").size(); }

}  // namespace zcrpc::test
