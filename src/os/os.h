// zcrpc — thin, checked wrappers over the system calls the transports use.
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include <sys/types.h>

#include "zcrpc/error.h"

namespace zcrpc::os {

/// The cache line of the CPUs zcrpc runs on (x86-64, aarch64): what alignas() keeps apart
/// when two threads write neighbouring data.
inline constexpr size_t kCacheLine = 64;

/// "context: strerror(err)".
std::string errnoText(std::string_view context, int err);

/// Runs a system call, retrying on EINTR; throws Failed with the context and errno text
/// when it returns -1. Returns the call's result.
template <typename F>
auto checkedSyscall(std::string_view context, F&& call) {
  for (;;) {
    auto r = call();
    if (r != -1) return r;
    if (errno == EINTR) continue;
    throw Failed(errnoText(context, errno));
  }
}
#define ZCRPC_SYSCALL(expr, context) ::zcrpc::os::checkedSyscall((context), [&] { return (expr); })

/// Owns a file descriptor.
class Fd final {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset() noexcept;

 private:
  int fd_ = -1;
};

/// A shared mapping of a file; unmapped on destruction.
class Mapping final {
 public:
  Mapping() = default;
  /// Maps `size` bytes of `fd`. With `guardBytes`, that many bytes of read-only zero
  /// pages follow the mapping, so a reader that overruns the end by less than that reads
  /// zeros instead of faulting.
  Mapping(int fd, size_t size, bool writable, std::string_view what, size_t guardBytes = 0);
  Mapping(Mapping&& o) noexcept
      : base_(std::exchange(o.base_, nullptr)),
        size_(std::exchange(o.size_, 0)),
        reserved_(std::exchange(o.reserved_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept;
  ~Mapping();
  std::byte* data() const noexcept { return base_; }
  size_t size() const noexcept { return size_; }

 private:
  std::byte* base_ = nullptr;
  size_t size_ = 0;
  size_t reserved_ = 0;  // size plus guard
};

/// Private anonymous memory straight from the kernel (mmap), not from the allocator:
/// freeing it gives it back to the system at once (an allocator keeps large freed blocks
/// for reuse, so a server whose connections come and go would keep their buffers), and
/// growing it moves pages (mremap) instead of copying bytes. Pages cost memory only once
/// touched. Move-only, one owner; not thread-safe.
class Memory final {
 public:
  Memory() = default;
  /// At least `bytes` (whole pages). Throws Failed naming `what` when the system refuses
  /// (an address-space or overcommit limit).
  Memory(size_t bytes, std::string_view what);
  Memory(Memory&& o) noexcept : base_(std::exchange(o.base_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  Memory& operator=(Memory&& o) noexcept;
  ~Memory();
  std::byte* data() const noexcept { return base_; }
  size_t size() const noexcept { return size_; }
  explicit operator bool() const noexcept { return base_ != nullptr; }
  /// Grows to at least `bytes`, keeping the contents (the address may change). False, and
  /// unchanged, when the system refuses.
  [[nodiscard]] bool grow(size_t bytes) noexcept;

 private:
  std::byte* base_ = nullptr;
  size_t size_ = 0;
};

/// Anonymous memory file of `size` bytes, sealed against shrinking and growing so a peer
/// holding it cannot make our mapping fault. Nothing appears in the file system.
Fd createSealedMemfd(std::string_view name, size_t size);
/// Checks that `fd` is a memfd of exactly `size` bytes sealed against shrinking.
/// Returns an empty string or the reason.
std::string checkSealedMemfd(int fd, size_t size);
/// A new read-only descriptor for the same file (so a peer can only map it read-only).
Fd reopenReadOnly(int fd);
/// Forbids new writable mappings of the file (ours stays); best effort on old kernels.
void sealFutureWrites(int fd) noexcept;

/// Futex on a 32-bit word that may live in shared memory.
/// Waits while *word == expected, at most `timeout`. Returns false on timeout.
bool futexWait(const std::atomic<uint32_t>& word, uint32_t expected,
               std::chrono::nanoseconds timeout) noexcept;
void futexWakeAll(const std::atomic<uint32_t>& word) noexcept;

/// An asymmetric memory barrier (membarrier(2)): when it returns, every other thread of this
/// process has passed a full memory barrier, so a thread that only keeps its compiler from
/// reordering (std::atomic_signal_fence) pairs with it as if it had fenced. Returns false
/// when the kernel offers no form of it (before Linux 4.3, or refused by a seccomp filter);
/// a caller then has no such guarantee. Expensive (microseconds: an interrupt to each CPU
/// running this process, or a grace period on kernels before 4.14): for slow paths only.
/// Any thread.
bool barrierOtherThreads() noexcept;

// ---- unix sockets ----

/// Abstract-namespace SOCK_SEQPACKET listener for `name` (the socket is "@zcrpc/<name>").
Fd listenAbstract(std::string_view name);
/// Connects to it, failing after `timeout`.
Fd connectAbstract(std::string_view name, std::chrono::milliseconds timeout);
/// accept4 (non-blocking, close-on-exec); an empty Fd when none is pending.
Fd acceptNonBlocking(int listenFd);

struct PeerCredentials {
  pid_t pid;
  uid_t uid;
  gid_t gid;
};
PeerCredentials peerCredentials(int socketFd);

/// Sends one datagram with up to 4 descriptors attached.
void sendWithFds(int fd, std::span<const std::byte> data, std::span<const int> fds);
/// One non-blocking attempt at receiveWithFds: nullopt when nothing is there yet.
std::optional<size_t> tryReceiveWithFds(int fd, std::span<std::byte> data, std::span<Fd> fds,
                                        size_t& fdCount);
/// Receives one datagram (and descriptors) waiting at most until `timeout`. Returns the
/// payload size; fills `fds` with received descriptors. Throws Disconnected on hang-up,
/// Failed on timeout or error.
size_t receiveWithFds(int fd, std::span<std::byte> data, std::span<Fd> fds, size_t& fdCount,
                      std::chrono::milliseconds timeout);

/// poll() for `events` with a timeout; returns revents (0 on timeout).
short pollOne(int fd, short events, std::chrono::milliseconds timeout) noexcept;

/// True when the socket's peer has hung up (non-blocking check).
bool peerHungUp(int socketFd) noexcept;

}  // namespace zcrpc::os
