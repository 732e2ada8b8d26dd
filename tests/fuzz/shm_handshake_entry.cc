// Fuzz target: the shm handshake from both sides, the shared file each side hands the
// other, and (once established) the ring and control words a hostile peer writes into
// its own file, which the other side reads. See fuzz_entries.h.
//
// Input: byte 0 bit 0: side (0: hostile client of a listener, 1: hostile server of a
// connectShm client). Byte 1: flags
//   bit 0  the first message (Hello / Accept) is raw input bytes instead of a valid one
//   bit 1  the second message (Ready / Established) is raw input bytes
//   bits 2-3  the file passed: 0 valid, 1 none, 2 one page short, 3 not sealed
//   bit 4  the file's header is overwritten with input bytes (64)
//   bit 5  the file's control words are overwritten with input bytes (192)
// then the raw messages (240 bytes each) and overlays in that order, as the flags ask;
// the rest is written into the ring once the connection is up.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <thread>

#include "fuzz_entries.h"
#include "fuzz_util.h"
#include "transport/ring/layout.h"
#include "transport/ring/ring_connection.h"
#include "zcrpc/shm.h"

namespace zcrpc::fuzz {
namespace {

using namespace std::chrono_literals;

/// The shm handshake message as shm.cc lays it out (docs: the comment at its top).
struct Message {
  uint64_t magic = 0x6b68'7372'7063'7a01ull;
  uint32_t version = 1;
  uint32_t step = 0;  // 1 Hello, 2 Accept, 3 Refuse, 4 Ready, 5 Established
  uint64_t ringBytes = 0;
  uint64_t arenaBytes = 0;
  uint64_t maxMessageBytes = 0;
  uint64_t fileBytes = 0;
  char reason[192] = {};
};
static_assert(sizeof(Message) == 240);

constexpr uint64_t kRing = 16 << 10;
constexpr uint64_t kArena = 64 << 10;
constexpr uint64_t kMaxMessage = 32 << 10;

ConnectionOptions options() {
  ConnectionOptions o;
  o.ringBytes = kRing;
  o.arenaBytes = kArena;
  o.maxMessageBytes = kMaxMessage;
  o.maxLeases = 16;
  o.connectTimeout = 2s;
  return o;
}

struct Flags {
  bool rawFirst, rawSecond, headerOverlay, controlOverlay;
  int fileKind;
};

Message messageFrom(InputReader& in, bool raw, uint32_t step) {
  Message m;
  if (raw) {
    in.bytes(&m, sizeof m);
  } else {
    m.step = step;
    m.ringBytes = kRing;
    m.arenaBytes = kArena;
    m.maxMessageBytes = kMaxMessage;
    m.fileBytes = ring::fileBytesFor(kRing, kArena);
  }
  return m;
}

/// The hostile side's own transmit file, made as the flags say, mapped writable.
struct HostileFile {
  os::Fd fd;        // the descriptor passed (read-only reopen, or the file itself)
  os::Fd own;
  os::Mapping map;  // writable, for the ring bytes written once established
};

HostileFile makeFile(const Flags& f, InputReader& in) {
  HostileFile h;
  if (f.fileKind == 1) return h;
  const uint64_t bytes = ring::fileBytesFor(kRing, kArena) - (f.fileKind == 2 ? 4096 : 0);
  if (f.fileKind == 3) {
    h.own = os::Fd(::memfd_create("zcrpc fuzz unsealed", MFD_CLOEXEC));
    if (!h.own || ::ftruncate(h.own.get(), static_cast<off_t>(bytes)) != 0) return h;
  } else {
    h.own = os::createSealedMemfd("zcrpc fuzz", bytes);
  }
  h.map = os::Mapping(h.own.get(), bytes, /*writable=*/true, "fuzz file");
  ring::initFile(h.map.data(), kRing, kArena, kMaxMessage, bytes, WaitMode::kSpinThenSleep);
  if (f.headerOverlay) in.bytes(h.map.data(), 64);
  if (f.controlOverlay) in.bytes(h.map.data() + 64, 192);
  h.fd = f.fileKind == 3 ? os::Fd(::dup(h.own.get())) : os::reopenReadOnly(h.own.get());
  return h;
}

void send(int fd, const Message& m, const os::Fd& file) {
  int fds[1] = {file.get()};
  try {
    os::sendWithFds(fd, std::as_bytes(std::span(&m, 1)),
                    file ? std::span<const int>(fds, 1) : std::span<const int>());
  } catch (const std::exception&) {
    // The peer hung up: it decided already.
  }
}

/// Writes the rest of the input into the hostile side's ring (after the connection is up).
void writeRing(HostileFile& h, InputReader& in) {
  if (!h.map.data() || h.map.size() < ring::kDataOffset + kRing) return;
  auto rest = in.rest();
  std::memcpy(h.map.data() + ring::kDataOffset, rest.data(), std::min<size_t>(rest.size(), kRing));
}

void asClient(const Flags& f, InputReader& in) {
  static const std::string name = "zcrpc-fuzz-" + std::to_string(::getpid());
  static auto listener = listenShm(name, ShmListenOptions{options(), {}, 0});
  os::Fd sock = os::connectAbstract(name, 1000ms);
  send(sock.get(), messageFrom(in, f.rawFirst, 1), os::Fd());
  std::unique_ptr<Connection> conn;
  HostileFile file;
  bool readySent = false;
  for (auto until = Clock::now() + 3s; !conn && Clock::now() < until;) {
    conn = listener->accept(deadlineAfter(2ms));
    if (conn) break;
    if (!readableOrClosed(sock.get(), 0ms)) continue;
    Message m;
    os::Fd fds[2];
    size_t count = 0;
    std::optional<size_t> n;
    try {
      n = os::tryReceiveWithFds(sock.get(), std::as_writable_bytes(std::span(&m, 1)), fds, count);
    } catch (const std::exception&) {
      break;  // hung up: refused
    }
    if (!n || readySent || m.step != 2) break;  // refused, or done
    file = makeFile(f, in);
    send(sock.get(), messageFrom(in, f.rawSecond, 4), file.fd);
    file.fd.reset();
    readySent = true;
  }
  if (!conn) return;
  writeRing(file, in);
  drainMessages(*conn, 20ms, 64);
}

void asServer(const Flags& f, InputReader& in) {
  static const std::string name = "zcrpc-fuzz-server-" + std::to_string(::getpid());
  static os::Fd listening = os::listenAbstract(name);
  HostileFile file;
  std::atomic<bool> established{false};
  std::thread server([&] {
    if (!readableOrClosed(listening.get(), 3000ms)) return;
    os::Fd s(::accept4(listening.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!s) return;
    Message m;
    os::Fd fds[2];
    size_t count = 0;
    try {
      os::receiveWithFds(s.get(), std::as_writable_bytes(std::span(&m, 1)), fds, count, 2000ms);  // Hello
      file = makeFile(f, in);
      send(s.get(), messageFrom(in, f.rawFirst, 2), file.fd);
      file.fd.reset();
      os::receiveWithFds(s.get(), std::as_writable_bytes(std::span(&m, 1)), fds, count, 2000ms);  // Ready
      Message est = messageFrom(in, f.rawSecond, 5);
      established.store(true, std::memory_order_release);  // done with `in` and `file`
      send(s.get(), est, os::Fd());
      // Keep the socket open until the client is done.
      for (auto until = Clock::now() + 3s; Clock::now() < until;)
        if (readableOrClosed(s.get(), 100ms)) {
          char b[64];
          if (::recv(s.get(), b, sizeof b, MSG_DONTWAIT) == 0) break;
        }
    } catch (const std::exception&) {
      // The client refused or hung up.
    }
  });
  try {
    auto conn = connectShm(name, options());
    if (established.load(std::memory_order_acquire)) writeRing(file, in);
    drainMessages(*conn, 20ms, 64);
  } catch (const std::exception&) {
    // Refused: the expected outcome of most inputs.
  }
  server.join();
}

}  // namespace

void runShmHandshakeInput(const uint8_t* data, size_t size) {
  InputReader in(data, std::min<size_t>(size, 64 << 10));
  uint8_t side = in.byte();
  uint8_t flags = in.byte();
  Flags f{(flags & 1) != 0, (flags & 2) != 0, (flags & 16) != 0, (flags & 32) != 0, (flags >> 2) & 3};
  if (side & 1) asServer(f, in);
  else asClient(f, in);
}

}  // namespace zcrpc::fuzz
