// TLS 1.3 sessions over tcp sockets with OpenSSL 3.
//
// Writes: with kTLS on the sending side, OpenSSL handed the keys to the kernel at the end
// of the handshake and writev() goes straight to the socket. Otherwise the session's
// write BIO is our own (sessionBio): OpenSSL encrypts a record into its buffer and the
// BIO sends it at once, keeping only what the socket did not take (so SSL_write never
// has to be retried with the same arguments, and the caller's queue accounting stays
// that of plain tcp). Reads always go through SSL_read over OpenSSL's socket BIO, with
// read-ahead: kTLS receive for TLS 1.3 needs OpenSSL 3.2, and what is received is
// decrypted into the caller's buffer once either way.
#include "transport/tls/tls.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "os/os.h"

namespace zcrpc {

std::string_view clientAuthName(ClientAuth auth) noexcept {
  switch (auth) {
    case ClientAuth::kNone: return "none";
    case ClientAuth::kOptional: return "optional";
    case ClientAuth::kRequired: return "required";
  }
  return "unknown";
}

ClientAuth parseClientAuth(std::string_view text) {
  if (text == "none") return ClientAuth::kNone;
  if (text == "optional") return ClientAuth::kOptional;
  if (text == "required") return ClientAuth::kRequired;
  throw InvalidArgument("TLS client authentication '" + std::string(text) +
                        "' is not one of none, optional, required");
}

namespace tls {

namespace {

/// Plaintext pieces below this are gathered into one record with their neighbours.
constexpr size_t kGatherBelow = 2048;
/// One gathered record at most (TLS's largest plaintext record).
constexpr size_t kStageBytes = 16384;
/// Plaintext handed to one SSL_write (then the backlog is looked at again).
constexpr size_t kWriteChunk = 64 << 10;
/// OpenSSL's read-ahead buffer: one recv() takes up to this much ciphertext.
constexpr size_t kReadAheadBytes = 64 << 10;
/// While writev() gathers ciphertext, a record at least this large goes out on its own.
constexpr size_t kSendAlone = 8192;

struct SslCtxFree {
  void operator()(SSL_CTX* c) const noexcept { SSL_CTX_free(c); }
};
using CtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;

bool isIpAddress(const std::string& host) {
  in6_addr a6;
  in_addr a4;
  return ::inet_pton(AF_INET, host.c_str(), &a4) == 1 || ::inet_pton(AF_INET6, host.c_str(), &a6) == 1;
}

std::string nameText(X509_NAME* name) {
  BIO* mem = BIO_new(BIO_s_mem());
  if (!mem) return "?";
  X509_NAME_print_ex(mem, name, 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long n = BIO_get_mem_data(mem, &data);
  std::string out(data, static_cast<size_t>(std::max<long>(n, 0)));
  BIO_free(mem);
  return out;
}

std::vector<std::string> altNames(X509* cert) {
  std::vector<std::string> out;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (!names) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
    auto text = [](const ASN1_STRING* s) {
      return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                         static_cast<size_t>(ASN1_STRING_length(s)));
    };
    switch (g->type) {
      case GEN_DNS: out.push_back("DNS:" + text(g->d.dNSName)); break;
      case GEN_URI: out.push_back("URI:" + text(g->d.uniformResourceIdentifier)); break;
      case GEN_EMAIL: out.push_back("email:" + text(g->d.rfc822Name)); break;
      case GEN_IPADD: {
        char buf[INET6_ADDRSTRLEN] = "?";
        int len = ASN1_STRING_length(g->d.iPAddress);
        const unsigned char* p = ASN1_STRING_get0_data(g->d.iPAddress);
        if (len == 4) ::inet_ntop(AF_INET, p, buf, sizeof buf);
        else if (len == 16) ::inet_ntop(AF_INET6, p, buf, sizeof buf);
        out.push_back(std::string("IP:") + buf);
        break;
      }
      default: break;
    }
  }
  GENERAL_NAMES_free(names);
  return out;
}

}  // namespace

std::string takeErrors(std::string_view fallback) {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? std::string(fallback) : out;
}

// ------------------------------------------------------------------------------------
// Context

Context::Context(Side side, TlsOptions options, std::string what)
    : side_(side), options_(std::move(options)), what_(std::move(what)) {
  if (!options_.keyFile.empty() && options_.certFile.empty())
    throw InvalidArgument(what_ + ": a TLS key file (tls_key_file) needs its certificate (tls_cert_file)");
  if (!options_.certFile.empty() && options_.keyFile.empty())
    throw InvalidArgument(what_ + ": a TLS certificate (tls_cert_file) needs its key (tls_key_file)");
  if (side_ == Side::kServer && options_.certFile.empty())
    throw InvalidArgument(what_ + ": a TLS server needs a certificate and key (tls_cert_file, tls_key_file)");
  if (side_ == Side::kServer && options_.clientAuth != ClientAuth::kNone && options_.caFile.empty())
    throw InvalidArgument(what_ + ": checking client certificates (tls_client_auth=" +
                          std::string(clientAuthName(options_.clientAuth)) +
                          ") needs the CAs to check them against (tls_ca_file)");
  stamps_ = stamps();
  ctx_ = build();
  loads_ = 1;
  nextCheck_ = std::chrono::steady_clock::now() + options_.reloadInterval;
}

Context::~Context() { SSL_CTX_free(ctx_); }

std::array<Context::Stamp, 3> Context::stamps() const {
  std::array<Stamp, 3> out{};
  const std::string* files[3] = {&options_.certFile, &options_.keyFile, &options_.caFile};
  for (size_t i = 0; i < 3; ++i) {
    struct stat st {};
    if (files[i]->empty() || ::stat(files[i]->c_str(), &st) != 0) continue;
    out[i] = Stamp{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                   static_cast<uint64_t>(st.st_size),
                   int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec};
  }
  return out;
}

SSL_CTX* Context::build() const {
  ERR_clear_error();
  CtxPtr ctx(SSL_CTX_new(side_ == Side::kServer ? TLS_server_method() : TLS_client_method()));
  if (!ctx) throw Failed(what_ + ": SSL_CTX_new: " + takeErrors());
  auto fail = [&](const std::string& step) -> void {
    throw Failed(what_ + ": " + step + ": " + takeErrors());
  };
  if (!SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION)) fail("TLS 1.3 only");
  if (!SSL_CTX_set_ciphersuites(ctx.get(), options_.ciphersuites.c_str()))
    fail("TLS cipher suites '" + options_.ciphersuites + "'");
  uint64_t ops = SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_TICKET;
  if (options_.kernelTls) ops |= SSL_OP_ENABLE_KTLS;
  SSL_CTX_set_options(ctx.get(), ops);
  // No resumption: nothing is sent after the handshake (no session tickets), and every
  // connection is verified in full.
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  if (side_ == Side::kServer) SSL_CTX_set_num_tickets(ctx.get(), 0);
  SSL_CTX_set_read_ahead(ctx.get(), 1);
  SSL_CTX_set_default_read_buffer_len(ctx.get(), kReadAheadBytes);
  // (Not SSL_MODE_RELEASE_BUFFERS: it would allocate and free the read buffer per record.)
  if (!options_.certFile.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), options_.certFile.c_str()) != 1)
      fail("TLS certificate " + options_.certFile);
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), options_.keyFile.c_str(), SSL_FILETYPE_PEM) != 1) {
      if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
        fail("TLS key " + options_.keyFile + " does not belong to certificate " + options_.certFile);
      fail("TLS key " + options_.keyFile);
    }
    if (SSL_CTX_check_private_key(ctx.get()) != 1)
      fail("TLS key " + options_.keyFile + " does not belong to certificate " + options_.certFile);
  }
  if (side_ == Side::kClient) {
    if (!options_.caFile.empty()) {
      if (SSL_CTX_load_verify_file(ctx.get(), options_.caFile.c_str()) != 1)
        fail("TLS CA file " + options_.caFile);
    } else if (SSL_CTX_set_default_verify_paths(ctx.get()) != 1) {
      fail("the system's TLS trust store");
    }
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  } else if (options_.clientAuth != ClientAuth::kNone) {
    if (SSL_CTX_load_verify_file(ctx.get(), options_.caFile.c_str()) != 1)
      fail("TLS CA file " + options_.caFile);
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(options_.caFile.c_str());
    if (!names) fail("TLS CA file " + options_.caFile + " (names)");
    SSL_CTX_set_client_CA_list(ctx.get(), names);
    SSL_CTX_set_verify(ctx.get(),
                       SSL_VERIFY_PEER | (options_.clientAuth == ClientAuth::kRequired
                                              ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                              : 0),
                       nullptr);
  }
  return ctx.release();
}

void Context::reload() {
  auto stamp = stamps();
  SSL_CTX* fresh = build();  // throws: the old one stays
  std::lock_guard lock(mutex_);
  std::swap(ctx_, fresh);
  stamps_ = stamp;
  ++loads_;
  SSL_CTX_free(fresh);  // sessions made from it hold their own reference
}

std::string Context::reloadIfChanged() {
  if (options_.reloadInterval.count() <= 0) return {};
  auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mutex_);
    if (now < nextCheck_) return {};
    nextCheck_ = now + options_.reloadInterval;
    if (stamps() == stamps_) return {};
  }
  try {
    reload();
  } catch (const std::exception& e) {
    // Not again until a file changes once more.
    std::lock_guard lock(mutex_);
    stamps_ = stamps();
    return e.what();
  }
  return {};
}

uint64_t Context::loads() const {
  std::lock_guard lock(mutex_);
  return loads_;
}

SSL* Context::newSsl() const {
  std::lock_guard lock(mutex_);
  SSL* ssl = SSL_new(ctx_);
  if (!ssl) throw Failed(what_ + ": SSL_new: " + takeErrors());
  return ssl;
}

// ------------------------------------------------------------------------------------
// The write BIO of a session without kTLS.

struct BioAccess {
  static int write(BIO* bio, const char* data, size_t size, size_t* written) {
    auto* session = static_cast<Session*>(BIO_get_data(bio));
    session->queueCiphertext(reinterpret_cast<const std::byte*>(data), size);
    *written = size;
    return 1;
  }
  static long ctrl(BIO*, int cmd, long, void*) {
    // Flushing is the session's business (Session::flush); nothing else applies.
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
  }
  static int create(BIO* bio) {
    BIO_set_init(bio, 1);
    return 1;
  }
};

namespace {
BIO_METHOD* sessionBioMethod() {
  // Made once, never freed: OpenSSL keeps a pointer to it in every BIO made from it.
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "zcrpc tls socket");
    if (!m) return m;
    BIO_meth_set_write_ex(m, &BioAccess::write);
    BIO_meth_set_ctrl(m, &BioAccess::ctrl);
    BIO_meth_set_create(m, &BioAccess::create);
    return m;
  }();
  return method;
}
}  // namespace

// ------------------------------------------------------------------------------------
// Session

Session::Session(const Context& context, int fd, std::string_view peerName, std::string what)
    : fd_(fd), side_(context.side()), what_(std::move(what)) {
  ERR_clear_error();
  ssl_ = context.newSsl();
  if (SSL_set_fd(ssl_, fd) != 1) {
    SSL_free(ssl_);
    throw Failed(what_ + ": SSL_set_fd: " + takeErrors());
  }
  if (side_ == Side::kClient) {
    std::string name(peerName);
    if (name.empty()) {
      SSL_free(ssl_);
      throw InvalidArgument(what_ + ": no name to verify the server's certificate against (tls_server_name)");
    }
    bool ok;
    if (isIpAddress(name)) {
      ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), name.c_str()) == 1;
    } else {
      ok = SSL_set1_host(ssl_, name.c_str()) == 1 && SSL_set_tlsext_host_name(ssl_, name.c_str()) == 1;
    }
    if (!ok) {
      SSL_free(ssl_);
      throw InvalidArgument(what_ + ": cannot verify the server against the name '" + name + "': " + takeErrors());
    }
    SSL_set_connect_state(ssl_);
  } else {
    SSL_set_accept_state(ssl_);
  }
}

Session::~Session() { SSL_free(ssl_); }

Session::Progress Session::handshake() {
  std::lock_guard lock(mutex_);
  if (handshakeDone_) return Progress::kDone;
  ERR_clear_error();
  int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    handshakeDone_ = true;
    kernelSend_ = BIO_get_ktls_send(SSL_get_wbio(ssl_)) != 0;
    kernelReceive_ = BIO_get_ktls_recv(SSL_get_rbio(ssl_)) != 0;
    if (!kernelSend_) {
      // From now on records go out through the session's own BIO (see the top).
      BIO* bio = BIO_new(sessionBioMethod());
      if (!bio) throw Failed(what_ + ": BIO_new: " + takeErrors());
      BIO_set_data(bio, this);
      SSL_set0_wbio(ssl_, bio);
    }
    return Progress::kDone;
  }
  int err = SSL_get_error(ssl_, r);
  if (err == SSL_ERROR_WANT_READ) return Progress::kWantRead;
  if (err == SSL_ERROR_WANT_WRITE) return Progress::kWantWrite;
  std::string why;
  long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK) {
    why = std::string("certificate verification failed: ") + X509_verify_cert_error_string(verify);
    ERR_clear_error();
  } else if (err == SSL_ERROR_ZERO_RETURN ||
             (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)) {
    why = err == SSL_ERROR_SYSCALL && errno ? os::errnoText("TLS handshake", errno)
                                             : "peer closed the connection during the TLS handshake";
  } else {
    why = "TLS handshake failed: " + takeErrors("SSL error " + std::to_string(err));
  }
  throw Failed(what_.empty() ? why : what_ + ": " + why);
}

void Session::handshake(std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    Progress p = handshake();
    if (p == Progress::kDone) return;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw Failed(what_ + ": TLS handshake timed out");
    os::pollOne(fd_, p == Progress::kWantRead ? POLLIN : POLLOUT, left + std::chrono::milliseconds(1));
  }
}

void Session::fail(std::string why) noexcept {
  if (error_.empty()) error_ = std::move(why);
}

void Session::queueCiphertext(const std::byte* data, size_t size) noexcept {
  if (ioErrno_) return;  // the connection is failing: drop it
  size_t pending = out_.size() - outHead_;
  // Gathering (inside writev): small records wait to go out together; a large one goes
  // alone at once, after what waits.
  if (corked_ && size < kSendAlone) {
    out_.insert(out_.end(), data, data + size);
    if (pending + size >= kStageBytes * 4) flushLocked();
    return;
  }
  if (pending && !flushLocked()) {
    out_.insert(out_.end(), data, data + size);
    return;
  }
  const size_t sent = sendNow(data, size);
  if (ioErrno_) return;
  data += sent, size -= sent;
  if (size) {
    if (outHead_ == out_.size()) out_.clear(), outHead_ = 0;
    out_.insert(out_.end(), data, data + size);
  }
}

size_t Session::sendNow(const std::byte* data, size_t size) noexcept {
  size_t sent = 0;
  while (sent < size) {
    ssize_t n = ::send(fd_, data + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) {
      ioErrno_ = errno;
      fail(os::errnoText("write to " + what_, errno));
    }
    break;
  }
  return sent;
}

bool Session::flushLocked() noexcept {
  if (!ioErrno_) outHead_ += sendNow(out_.data() + outHead_, out_.size() - outHead_);
  if (outHead_ < out_.size() && !ioErrno_) return false;
  out_.clear();
  outHead_ = 0;
  if (out_.capacity() > kOutputLimit) out_.shrink_to_fit();  // a burst's memory goes back
  return !ioErrno_;
}

bool Session::flush() noexcept {
  std::lock_guard lock(mutex_);
  return flushLocked();
}

bool Session::hasPendingOutput() const noexcept {
  std::lock_guard lock(mutex_);
  return outHead_ < out_.size();
}

size_t Session::pendingOutputBytes() const noexcept {
  std::lock_guard lock(mutex_);
  return out_.size() - outHead_;
}

bool Session::hasBufferedInput() const noexcept {
  std::lock_guard lock(mutex_);
  return SSL_has_pending(ssl_) != 0;
}

bool Session::sslWrite(const std::byte* data, size_t size) noexcept {
  size_t written = 0;
  if (SSL_write_ex(ssl_, data, size, &written) == 1 && written == size) return true;
  // Our BIO takes everything, so only a fatal error gets here.
  fail(what_ + ": TLS write failed: " + takeErrors());
  return false;
}

ssize_t Session::writev(const iovec* iov, int count) noexcept {
  if (kernelSend_) {
    // The kernel encrypts as it copies from the caller's buffers.
    msghdr m{};
    m.msg_iov = const_cast<iovec*>(iov);
    m.msg_iovlen = static_cast<size_t>(count);
    return ::sendmsg(fd_, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  std::lock_guard lock(mutex_);
  if (!error_.empty() || ioErrno_) {
    errno = ioErrno_ ? ioErrno_ : EPROTO;
    return -1;
  }
  if (!handshakeDone_) {
    errno = EAGAIN;
    return -1;
  }
  flushLocked();
  if (out_.size() - outHead_ > kOutputLimit) {
    errno = EAGAIN;
    return -1;
  }
  ERR_clear_error();
  corked_ = true;
  size_t taken = 0;
  bool ok = true;
  stage_.clear();
  for (int i = 0; i < count && ok; ++i) {
    auto* p = static_cast<const std::byte*>(iov[i].iov_base);
    size_t left = iov[i].iov_len;
    const bool nextSmall = i + 1 < count && iov[i + 1].iov_len < kGatherBelow;
    if (left < kGatherBelow && (!stage_.empty() || nextSmall)) {
      if (stage_.size() + left > kStageBytes) {
        ok = sslWrite(stage_.data(), stage_.size());
        stage_.clear();
      }
      stage_.insert(stage_.end(), p, p + left);
      taken += left;
      continue;
    }
    if (!stage_.empty()) {
      ok = sslWrite(stage_.data(), stage_.size());
      stage_.clear();
    }
    while (ok && left) {
      if (out_.size() - outHead_ > kOutputLimit) break;
      size_t n = std::min(left, kWriteChunk);
      ok = sslWrite(p, n);
      p += n, left -= n, taken += n;
    }
    if (left) break;  // back-pressure: the rest stays with the caller
  }
  if (ok && !stage_.empty()) ok = sslWrite(stage_.data(), stage_.size());
  stage_.clear();
  corked_ = false;
  if (ok) flushLocked();
  if (!ok || ioErrno_) {
    errno = ioErrno_ ? ioErrno_ : EPROTO;
    return -1;
  }
  if (taken == 0) {
    errno = EAGAIN;
    return -1;
  }
  return static_cast<ssize_t>(taken);
}

ssize_t Session::read(void* data, size_t size) noexcept {
  std::lock_guard lock(mutex_);
  if (!handshakeDone_) {
    errno = EAGAIN;
    return -1;
  }
  ERR_clear_error();
  auto* p = static_cast<char*>(data);
  size_t got = 0;
  while (got < size) {
    size_t n = 0;
    int r = SSL_read_ex(ssl_, p + got, size - got, &n);
    if (r == 1) {
      got += n;
      // Another SSL_read would cost a recv() that finds nothing unless OpenSSL holds more.
      if (!SSL_has_pending(ssl_)) break;
      continue;
    }
    int err = SSL_get_error(ssl_, r);
    if (got) return static_cast<ssize_t>(got);
    switch (err) {
      case SSL_ERROR_WANT_READ:
      case SSL_ERROR_WANT_WRITE:
        errno = EAGAIN;
        return -1;
      case SSL_ERROR_ZERO_RETURN:
        return 0;  // close_notify (or, with SSL_OP_IGNORE_UNEXPECTED_EOF, a plain EOF)
      case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) {
          if (errno == 0) return 0;
          fail(os::errnoText("read from " + what_, errno));
          return -1;
        }
        [[fallthrough]];
      default:
        fail(what_ + ": TLS read failed: " + takeErrors());
        errno = EPROTO;
        return -1;
    }
  }
  return static_cast<ssize_t>(got);
}

void Session::shutdown() noexcept {
  std::lock_guard lock(mutex_);
  if (shutdownSent_ || !handshakeDone_) return;
  shutdownSent_ = true;
  ERR_clear_error();
  (void)SSL_shutdown(ssl_);  // queues close_notify; the peer may be gone already
  flushLocked();
  ERR_clear_error();
}

void Session::describePeer(PeerIdentity& out) const {
  std::lock_guard lock(mutex_);
  out.tlsProtocol = SSL_get_version(ssl_);
  out.tlsCipher = SSL_CIPHER_get_name(SSL_get_current_cipher(ssl_));
  out.kernelTlsSend = kernelSend_;
  out.kernelTlsReceive = kernelReceive_;
  X509* cert = SSL_get0_peer_certificate(ssl_);
  if (cert && SSL_get_verify_result(ssl_) == X509_V_OK) {
    out.certificateSubject = nameText(X509_get_subject_name(cert));
    out.certificateNames = altNames(cert);
  }
}

std::string Session::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

}  // namespace tls
}  // namespace zcrpc
