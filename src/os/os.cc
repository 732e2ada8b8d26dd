#include "os/os.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>

namespace zcrpc::os {

std::string errnoText(std::string_view context, int err) {
  std::string s(context);
  s += ": ";
  s += strerror(err);
  return s;
}

void Fd::reset() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

Mapping::Mapping(int fd, size_t size, bool writable, std::string_view what, size_t guardBytes)
    : size_(size), reserved_(size + guardBytes) {
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* where = nullptr;
  int flags = MAP_SHARED;
  if (guardBytes) {
    where = ::mmap(nullptr, reserved_, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (where == MAP_FAILED) throw Failed(errnoText("reserve mapping for " + std::string(what), errno));
    flags |= MAP_FIXED;
  }
  void* p = ::mmap(where, size, prot, flags, fd, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    if (where) ::munmap(where, reserved_);
    throw Failed(errnoText("mmap " + std::string(what), err));
  }
  base_ = static_cast<std::byte*>(p);
}

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    if (base_) ::munmap(base_, reserved_);
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
    reserved_ = std::exchange(o.reserved_, 0);
  }
  return *this;
}

Mapping::~Mapping() {
  if (base_) ::munmap(base_, reserved_);
}

namespace {
size_t wholePages(size_t bytes) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return (std::max<size_t>(bytes, 1) + page - 1) / page * page;
}
}  // namespace

Memory::Memory(size_t bytes, std::string_view what) : size_(wholePages(bytes)) {
  void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    size_ = 0;
    throw Failed(errnoText("cannot map " + std::to_string(bytes) + " bytes for " + std::string(what), errno));
  }
  base_ = static_cast<std::byte*>(p);
}

Memory& Memory::operator=(Memory&& o) noexcept {
  if (this != &o) {
    if (base_) ::munmap(base_, size_);
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

Memory::~Memory() {
  if (base_) ::munmap(base_, size_);
}

#if defined(__SANITIZE_THREAD__)
#define ZCRPC_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ZCRPC_TSAN 1
#endif
#endif

bool Memory::grow(size_t bytes) noexcept {
  if (bytes <= size_) return true;
  const size_t want = wholePages(bytes);
#ifdef ZCRPC_TSAN
  // ThreadSanitizer intercepts mmap and munmap but not mremap: the pages mremap moves away
  // would keep their accesses in its shadow, and the range they move to would keep
  // whatever an earlier owner of those addresses did there, so TSan reports races between
  // a connection's frame and an older frame of another thread at the same address. Under
  // TSan, grow with a new mapping and a copy, which it sees (the release build moves pages).
  void* p = ::mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return false;
  if (base_) {
    std::memcpy(p, base_, size_);
    ::munmap(base_, size_);
  }
#else
  void* p = base_ ? ::mremap(base_, size_, want, MREMAP_MAYMOVE)
                  : ::mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return false;
#endif
  base_ = static_cast<std::byte*>(p);
  size_ = want;
  return true;
}

Fd createSealedMemfd(std::string_view name, size_t size) {
  std::string n(name);
  Fd fd(ZCRPC_SYSCALL(::memfd_create(n.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING),
                      "memfd_create " + n));
  ZCRPC_SYSCALL(::ftruncate(fd.get(), static_cast<off_t>(size)), "ftruncate memfd " + n);
  ZCRPC_SYSCALL(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW),
                "seal memfd " + n);
  return fd;
}

std::string checkSealedMemfd(int fd, size_t size) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errnoText("fstat shared memory", errno);
  if (!S_ISREG(st.st_mode)) return "shared memory descriptor is not a regular file";
  if (static_cast<uint64_t>(st.st_size) != size)
    return "shared memory is " + std::to_string(st.st_size) + " bytes, header says " +
           std::to_string(size);
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) return errnoText("shared memory is not a memfd (F_GET_SEALS)", errno);
  if (!(seals & F_SEAL_SHRINK)) return "shared memory is not sealed against shrinking";
  return {};
}

Fd reopenReadOnly(int fd) {
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  return Fd(ZCRPC_SYSCALL(::open(path.c_str(), O_RDONLY | O_CLOEXEC), "reopen " + path));
}

void sealFutureWrites(int fd) noexcept {
#ifdef F_SEAL_FUTURE_WRITE
  (void)::fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE);
#else
  (void)fd;
#endif
}

bool futexWait(const std::atomic<uint32_t>& word, uint32_t expected,
               std::chrono::nanoseconds timeout) noexcept {
  auto ns = timeout.count();
  if (ns < 0) ns = 0;
  struct timespec ts {
    static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)
  };
  // Shared futex (no FUTEX_PRIVATE_FLAG): the word may be in a mapping shared with a peer.
  long r = ::syscall(SYS_futex, reinterpret_cast<const uint32_t*>(&word), FUTEX_WAIT, expected,
                     &ts, nullptr, 0);
  return !(r == -1 && errno == ETIMEDOUT);
}

void futexWakeAll(const std::atomic<uint32_t>& word) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<const uint32_t*>(&word), FUTEX_WAKE, INT_MAX, nullptr,
            nullptr, 0);
}

namespace {
/// The membarrier command barrierOtherThreads() uses, chosen once: the expedited private
/// one (registered here; Linux 4.14+), else the global one (a scheduler grace period), else
/// -1 (none).
int chooseMembarrier() noexcept {
  const long cmds = ::syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  if (cmds < 0) return -1;
  if ((cmds & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) &&
      ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0)
    return MEMBARRIER_CMD_PRIVATE_EXPEDITED;
  if (cmds & MEMBARRIER_CMD_GLOBAL) return MEMBARRIER_CMD_GLOBAL;
  return -1;
}
}  // namespace

bool barrierOtherThreads() noexcept {
  static const int cmd = chooseMembarrier();
  return cmd >= 0 && ::syscall(SYS_membarrier, cmd, 0, 0) == 0;
}

namespace {
socklen_t abstractAddress(std::string_view name, sockaddr_un& addr) {
  std::string path = "zcrpc/" + std::string(name);
  if (name.empty() || path.size() + 1 > sizeof(addr.sun_path))
    throw InvalidArgument("shm endpoint name '" + std::string(name) + "' is empty or longer than " +
                          std::to_string(sizeof(addr.sun_path) - 7) + " bytes");
  for (char c : name)
    if (c == '\0' || c == '/' || static_cast<unsigned char>(c) < 0x20)
      throw InvalidArgument("shm endpoint name '" + std::string(name) +
                            "' contains '/' or a control character");
  std::memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, path.data(), path.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + path.size());
}
}  // namespace

Fd listenAbstract(std::string_view name) {
  sockaddr_un addr;
  socklen_t len = abstractAddress(name, addr);
  std::string what = "shm://" + std::string(name);
  Fd fd(ZCRPC_SYSCALL(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
                      "socket for " + what));
  ZCRPC_SYSCALL(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len), "bind " + what);
  ZCRPC_SYSCALL(::listen(fd.get(), 128), "listen " + what);
  return fd;
}

Fd connectAbstract(std::string_view name, std::chrono::milliseconds timeout) {
  sockaddr_un addr;
  socklen_t len = abstractAddress(name, addr);
  std::string what = "shm://" + std::string(name);
  Fd fd(ZCRPC_SYSCALL(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
                      "socket for " + what));
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) == 0) return fd;
    if (errno == EINTR) continue;
    // EAGAIN: the listener's backlog is full and no connection was made; try again.
    if (errno != EAGAIN) throw Failed(errnoText("connect " + what, errno));
    if (std::chrono::steady_clock::now() >= deadline)
      throw Failed("connect " + what + ": listener backlog full until the connect timeout");
    ::usleep(1000);
  }
}

Fd acceptNonBlocking(int listenFd) {
  for (;;) {
    int fd = ::accept4(listenFd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) return Fd(fd);
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN) return Fd();
    throw Failed(errnoText("accept", errno));
  }
}

PeerCredentials peerCredentials(int socketFd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  ZCRPC_SYSCALL(::getsockopt(socketFd, SOL_SOCKET, SO_PEERCRED, &cred, &len), "SO_PEERCRED");
  return {cred.pid, cred.uid, cred.gid};
}

void sendWithFds(int fd, std::span<const std::byte> data, std::span<const int> fds) {
  iovec iov{const_cast<std::byte*>(data.data()), data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  if (!fds.empty()) {
    if (fds.size() > 4) throw InvalidArgument("at most 4 descriptors per message");
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n >= 0) return;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      if (pollOne(fd, POLLOUT, std::chrono::milliseconds(1000)) & POLLOUT) continue;
      throw Failed("handshake send timed out");
    }
    if (errno == EPIPE || errno == ECONNRESET) throw Disconnected("peer closed during handshake");
    throw Failed(errnoText("sendmsg", errno));
  }
}

std::optional<size_t> tryReceiveWithFds(int fd, std::span<std::byte> data, std::span<Fd> fds,
                                        size_t& fdCount) {
  fdCount = 0;
  for (;;) {
    iovec iov{data.data(), data.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n > 0) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int received;
          std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          if (fdCount < fds.size())
            fds[fdCount++] = Fd(received);
          else
            ::close(received);  // more than expected: never leak
        }
      }
      if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) throw Failed("handshake message truncated");
      return static_cast<size_t>(n);
    }
    if (n == 0) throw Disconnected("peer closed during handshake");
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return std::nullopt;
    if (errno == ECONNRESET) throw Disconnected("peer reset during handshake");
    throw Failed(errnoText("recvmsg", errno));
  }
}

size_t receiveWithFds(int fd, std::span<std::byte> data, std::span<Fd> fds, size_t& fdCount,
                      std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (auto n = tryReceiveWithFds(fd, data, fds, fdCount)) return *n;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw Failed("handshake timed out");
    short ev = pollOne(fd, POLLIN, left);
    if (ev & (POLLHUP | POLLERR) && !(ev & POLLIN))
      throw Disconnected("peer closed during handshake");
  }
}

short pollOne(int fd, short events, std::chrono::milliseconds timeout) noexcept {
  pollfd p{fd, events, 0};
  int ms = timeout.count() > INT_MAX ? INT_MAX : static_cast<int>(timeout.count());
  int r;
  do {
    r = ::poll(&p, 1, ms);
  } while (r < 0 && errno == EINTR);
  return r > 0 ? p.revents : 0;
}

bool peerHungUp(int socketFd) noexcept {
  short ev = pollOne(socketFd, POLLRDHUP, std::chrono::milliseconds(0));
  return (ev & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) != 0;
}

}  // namespace zcrpc::os
