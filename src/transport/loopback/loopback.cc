// loopback — both ends in one process, over the same rings as shm, in private memory.
#include "zcrpc/loopback.h"

#include <sys/mman.h>

#include "os/os.h"
#include "transport/ring/ring_connection.h"

namespace zcrpc {

namespace {

/// The two transmit files, shared by both ends; unmapped when the second end goes.
class Region final {
 public:
  explicit Region(uint64_t fileBytes) : fileBytes_(fileBytes) {
    for (auto& f : files_) {
      void* p = ::mmap(nullptr, fileBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) {
        this->~Region();
        throw Failed(os::errnoText("mmap loopback rings", errno));
      }
      f = static_cast<std::byte*>(p);
    }
  }
  ~Region() {
    for (auto* f : files_)
      if (f) ::munmap(f, fileBytes_);
  }
  std::byte* file(int i) const { return files_[i]; }

 private:
  uint64_t fileBytes_;
  std::byte* files_[2] = {nullptr, nullptr};
};

class LoopbackLink final : public ring::Link {
 public:
  LoopbackLink(std::shared_ptr<Region> region, int side)
      : region_(std::move(region)), side_(side) {}
  // The peer's `closed` flag (checked by the ring itself) is the only liveness signal.
  bool peerGone() noexcept override { return false; }
  bool canSleepOnLink() const noexcept override { return false; }
  void wakePeer() noexcept override {}
  void sleepOnLink(std::chrono::milliseconds) noexcept override {}
  void shutdown() noexcept override {}
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
