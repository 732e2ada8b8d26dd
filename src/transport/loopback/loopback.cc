// loopback — both ends in one process, over the same rings as shm, in private memory.
#include "zcrpc/loopback.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <utility>

#include "os/os.h"
#include "transport/ring/ring_connection.h"

namespace zcrpc {

namespace {

/// The two transmit files and the two wake-up eventfds, shared by both ends; released
/// when the second end goes.
class Region final {
 public:
  explicit Region(uint64_t fileBytes) : fileBytes_(fileBytes) {
    for (int i = 0; i < 2; ++i) {
      void* p = ::mmap(nullptr, fileBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) {
        release();
        throw Failed(os::errnoText("mmap loopback rings", errno));
      }
      files_[i] = static_cast<std::byte*>(p);
      wake_[i] = os::Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (!wake_[i]) {
        release();
        throw Failed(os::errnoText("eventfd for loopback", errno));
      }
    }
  }
  ~Region() { release(); }
  std::byte* file(int i) const { return files_[i]; }
  int wakeFd(int i) const { return wake_[i].get(); }

 private:
  void release() noexcept {
    for (auto*& f : files_)
      if (f) ::munmap(std::exchange(f, nullptr), fileBytes_);
  }
  uint64_t fileBytes_;
  std::byte* files_[2] = {nullptr, nullptr};
  os::Fd wake_[2];
};

class LoopbackLink final : public ring::Link {
 public:
  LoopbackLink(std::shared_ptr<Region> region, int side)
      : region_(std::move(region)), side_(side) {}
  // The peer's `closed` flag (checked by the ring itself) is the only liveness signal.
  bool peerGone() noexcept override { return false; }
  void wakePeer() noexcept override {
    uint64_t one = 1;
    (void)!::write(region_->wakeFd(1 - side_), &one, sizeof one);
  }
  void sleepOnLink(std::chrono::milliseconds timeout) noexcept override {
    if (os::pollOne(waitFd(), POLLIN, timeout) & POLLIN) drainWakeups();
  }
  int waitFd() const noexcept override { return region_->wakeFd(side_); }
  void drainWakeups() noexcept override {
    uint64_t count;
    (void)!::read(waitFd(), &count, sizeof count);
  }
  void shutdown() noexcept override { wakePeer(); }
  std::string describe() const override {
    return side_ == 0 ? "loopback (end A)" : "loopback (end B)";
  }

 private:
  std::shared_ptr<Region> region_;
  int side_;
};

}  // namespace

std::pair<std::unique_ptr<Connection>, std::unique_ptr<Connection>> makeLoopbackPair(
    const ConnectionOptions& options) {
  ring::checkOptions(options);
  uint64_t fileBytes = ring::fileBytesFor(options.ringBytes, options.arenaBytes);
  auto region = std::make_shared<Region>(fileBytes);
  for (int i = 0; i < 2; ++i)
    ring::initFile(region->file(i), options.ringBytes, options.arenaBytes,
                   options.maxMessageBytes, fileBytes, options.waitMode);
  auto end = [&](int me) {
    ring::RingFiles files;
    files.local = reinterpret_cast<ring::FileControl*>(region->file(me));
    files.peer = reinterpret_cast<const ring::FileControl*>(region->file(1 - me));
    files.ringBytes = options.ringBytes;
    files.arenaBytes = options.arenaBytes;
    files.maxMessageBytes = options.maxMessageBytes;
    return files;
  };
  // Both files are initialised before either end reads the other's flags.
  auto a = std::make_unique<ring::RingConnection>(
      end(0), std::make_unique<LoopbackLink>(region, 0), options);
  auto b = std::make_unique<ring::RingConnection>(
      end(1), std::make_unique<LoopbackLink>(region, 1), options);
  return {std::move(a), std::move(b)};
}

}  // namespace zcrpc
