// zcrpc — TLS 1.3 over a connected tcp socket (OpenSSL 3): the configuration of one side
// (Context), and one session's handshake and stream I/O (Session), which a tcp connection
// reads and writes through when TLS is on.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <array>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "zcrpc/tls.h"
#include "zcrpc/transport.h"

struct ssl_ctx_st;
struct ssl_st;
struct bio_st;

namespace zcrpc::tls {

enum class Side : uint8_t { kClient, kServer };

/// OpenSSL's error queue as text ("error:...:reason; ..."), emptied; `fallback` when empty.
std::string takeErrors(std::string_view fallback = "no detail from OpenSSL");

/// The configuration of one side (an SSL_CTX) built from TlsOptions: TLS 1.3 only, the
/// cipher suites, certificate and key, the CAs the peer is verified against, no session
/// tickets, kTLS when asked for. A server's certificate, key and CA files can be reloaded
/// while it runs: sessions made afterwards use the new ones, sessions already made keep
/// theirs (each SSL holds a reference to the SSL_CTX it came from).
/// Threads: any; newSsl(), reload() and reloadIfChanged() may race (an internal mutex).
class Context final {
 public:
  /// Loads the files. Throws InvalidArgument for settings that do not fit together
  /// (a server without certificate, client authentication without CAs) and Failed
  /// naming the file and OpenSSL's reason when one does not load.
  Context(Side side, TlsOptions options, std::string what);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  Side side() const noexcept { return side_; }
  const TlsOptions& options() const noexcept { return options_; }

  /// Re-reads the certificate, key and CA files now. Throws Failed (and keeps the
  /// configuration in use) when they do not load.
  void reload();
  /// When `options().reloadInterval` has passed since the last check and a file changed
  /// (inode, size or modification time), reloads it. Returns why a reload failed (the
  /// old configuration then stays), or an empty string. Cheap when nothing is due.
  std::string reloadIfChanged();
  /// How many times the configuration was (re)loaded successfully, the first load included.
  uint64_t loads() const;

  /// A new SSL from the current configuration; the caller owns it (SSL_free).
  ssl_st* newSsl() const;

 private:
  struct Stamp {
    uint64_t dev = 0, ino = 0, size = 0;
    int64_t mtimeNs = 0;
    bool operator==(const Stamp&) const = default;
  };
  ssl_ctx_st* build() const;  // throws
  std::array<Stamp, 3> stamps() const;

  const Side side_;
  const TlsOptions options_;
  const std::string what_;
  mutable std::mutex mutex_;
  ssl_ctx_st* ctx_ = nullptr;  // guarded by mutex_
  std::array<Stamp, 3> stamps_{};
  std::chrono::steady_clock::time_point nextCheck_{};
  uint64_t loads_ = 0;
};

/// One TLS session over a connected, non-blocking TCP socket. The socket is borrowed:
/// the owner keeps it open for the session's life and closes it after destroying it.
///
/// Set-up: call handshake() until it returns kDone, polling the socket as it asks. The
/// client verifies the server's certificate against its CAs and `peerName`; a server
/// configured for it verifies the client's. Afterwards read() and writev() behave like
/// recv() and writev() on a non-blocking socket: bytes moved, 0 at the end of the stream,
/// -1 with errno EAGAIN (nothing now) or another errno (EPROTO: see error()).
///
/// Sending: with kernel TLS (kernelSend()) writev() hands the caller's buffers to the
/// kernel, which encrypts as it copies them: no user-space copy at all. Otherwise
/// OpenSSL encrypts into records (small pieces gathered into one record first), and the
/// ciphertext goes to the socket at once; what the socket does not take waits in the
/// session (hasPendingOutput(): poll for POLLOUT and call flush()). While more than
/// kOutputLimit bytes wait, writev() takes nothing (EAGAIN): back-pressure.
/// Receiving: OpenSSL reads ahead (up to 64 KiB a read) and decrypts into the caller's
/// buffer. Bytes it has read but not yet handed out make the session readable while the
/// socket is not: check hasBufferedInput() before sleeping on the socket.
///
/// Threads: one reading thread and one writing thread at a time, which may differ: an
/// internal mutex serialises the OpenSSL calls (a session allows one at a time).
class Session final {
 public:
  static constexpr size_t kOutputLimit = 256 << 10;

  /// `peerName`: client only, the DNS name or IP address the server's certificate must
  /// carry. `what` names the connection in errors.
  Session(const Context& context, int fd, std::string_view peerName, std::string what);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  enum class Progress : uint8_t { kDone, kWantRead, kWantWrite };
  /// Advances the handshake as far as the socket allows. Throws Failed naming the reason
  /// (certificate verification, the peer's alert, a protocol error, the peer closing).
  Progress handshake();
  /// The whole handshake, polling the socket until `deadline` (Failed when it passes).
  void handshake(std::chrono::steady_clock::time_point deadline);

  ssize_t read(void* data, size_t size) noexcept;
  ssize_t writev(const iovec* iov, int count) noexcept;
  /// Sends ciphertext that waits for the socket; true when none is left.
  bool flush() noexcept;
  bool hasPendingOutput() const noexcept;
  size_t pendingOutputBytes() const noexcept;
  bool hasBufferedInput() const noexcept;
  /// Sends close_notify without waiting (best effort). Idempotent.
  void shutdown() noexcept;

  /// kTLS: the kernel encrypts what writev() sends / decrypts what read() receives.
  bool kernelSend() const noexcept { return kernelSend_; }
  bool kernelReceive() const noexcept { return kernelReceive_; }
  /// After the handshake: protocol, cipher suite, kTLS use and the verified certificate
  /// of the peer (subject and subject alternative names), added to `out`.
  void describePeer(PeerIdentity& out) const;
  /// Why the last read() or writev() failed with EPROTO or another error.
  std::string error() const;

 private:
  friend struct BioAccess;
  void queueCiphertext(const std::byte* data, size_t size) noexcept;  // mutex_ held
  bool flushLocked() noexcept;
  /// Sends what the socket takes now of `data`; returns how much. A failure other than
  /// a full socket is recorded (ioErrno_, fail()). mutex_ held.
  size_t sendNow(const std::byte* data, size_t size) noexcept;
  bool sslWrite(const std::byte* data, size_t size) noexcept;  // mutex_ held
  bool stageOrWrite(const std::byte* data, size_t size) noexcept;
  void fail(std::string why) noexcept;

  ssl_st* ssl_ = nullptr;
  const int fd_;
  const Side side_;
  const std::string what_;
  mutable std::mutex mutex_;
  bool handshakeDone_ = false;
  bool kernelSend_ = false;
  bool kernelReceive_ = false;
  bool shutdownSent_ = false;
  bool corked_ = false;  // inside writev(): gather small records, send once at its end
  int ioErrno_ = 0;      // the socket failed while sending ciphertext
  std::string error_;
  // Ciphertext the socket has not taken yet (not with kTLS): out_[outHead_, end).
  std::vector<std::byte> out_;
  size_t outHead_ = 0;
  // Small plaintext pieces gathered into one record.
  std::vector<std::byte> stage_;
};

}  // namespace zcrpc::tls
