// zcrpc — TLS under a tcp connection: the ByteStream whose bytes a tls::Session encrypts.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "os/os.h"
#include "transport/tcp/stream.h"
#include "transport/tls/tls.h"

// Internal to libzcrpc: nothing here is exported from the shared library.
#pragma GCC visibility push(hidden)
namespace zcrpc::tcp {

/// A tcp socket with a TLS session over it. The handshake runs through session() (the
/// listener advances it without blocking, a client waits for it); afterwards read() and
/// write() carry plaintext. Owns the socket (closed after the session is gone).
/// Threads: as ByteStream (the session serialises what it must).
class TlsStream final : public ByteStream {
 public:
  TlsStream(os::Fd fd, const tls::Context& context, std::string_view peerName, std::string what)
      : fd_(std::move(fd)), session_(context, fd_.get(), peerName, std::move(what)) {}
  int fd() const noexcept override { return fd_.get(); }
  ssize_t write(const iovec* iov, size_t count) noexcept override {
    return session_.writev(iov, static_cast<int>(std::min<size_t>(count, IOV_MAX)));
  }
  ssize_t read(void* into, size_t bytes) noexcept override { return session_.read(into, bytes); }
  bool buffers() const noexcept override { return true; }
  bool hasBufferedInput() const noexcept override { return session_.hasBufferedInput(); }
  bool hasPendingOutput() const noexcept override { return session_.hasPendingOutput(); }
  bool flushOutput() noexcept override { return session_.flush(); }
  void finish() noexcept override { session_.shutdown(); }
  std::string failure() const override { return session_.error(); }

  tls::Session& session() noexcept { return session_; }

 private:
  os::Fd fd_;  // declared first: destroyed after the session that uses it
  tls::Session session_;
};

}  // namespace zcrpc::tcp
#pragma GCC visibility pop
