// zcrpc-bench — rival: gRPC C++ (Debian's libgrpc++) serving the same echo (echo.proto) over
// a unix socket (shm rows) or TCP on 127.0.0.1 (tcp rows), unary and as a ping-pong on one
// bidirectional stream. The synchronous API on both sides, as most users write it: a
// blocking client call, and a server whose polling thread runs the handler (no hand-off to
// another thread). A server is started for each cell and shut down after it. In the stream
// rows (Measure::kStream, tcp), the "grpc-stream" system streams from the client instead
// (Upload: Write() each message with WriteOptions::set_buffer_hint(), as zcrpc's stream
// rows send with SendHint::kMoreComing; WritesDone(), Finish() for the server's count). gRPC waits in
// its own poller (epoll) whatever the row's wait mode; its messages are protobuf, copied
// into and out of std::string on each side. The tls rows' variant: unary over TLS with the
// same certificate and CA as zcrpc's TLS cells.
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <fstream>
#include <iterator>

#include "echo.grpc.pb.h"
#include "system.h"

namespace zcrpc::bench {

namespace {

using zcrpcbench::Payload;

constexpr int kMaxMessage = 64 << 20;  // beyond the largest payload: gRPC's default is 4 MiB

class EchoService final : public zcrpcbench::Echo::Service {
 public:
  size_t bytes = 0;  ///< the cell's payload size (Upload checks it)

 private:
  grpc::Status Echo(grpc::ServerContext*, const Payload* request, Payload* reply) override {
    reply->set_data(request->data());  // one copy, as zcrpc's echo makes
    return grpc::Status::OK;
  }
  grpc::Status EchoStream(grpc::ServerContext*,
                          grpc::ServerReaderWriter<Payload, Payload>* stream) override {
    for (Payload p; stream->Read(&p);)
      if (!stream->Write(p)) break;
    return grpc::Status::OK;
  }
  grpc::Status Upload(grpc::ServerContext*, grpc::ServerReader<Payload>* reader,
                      zcrpcbench::Count* count) override {
    uint64_t n = 0;
    for (Payload p; reader->Read(&p); ++n)
      if (p.data().size() != bytes)
        return {grpc::StatusCode::INVALID_ARGUMENT,
                fmt::format("a message of {} bytes, expected {}", p.data().size(), bytes)};
    count->set_count(n);
    return grpc::Status::OK;
  }
};

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw BenchError("gRPC TLS: cannot read " + path);
  if (text.empty()) throw BenchError("gRPC TLS: " + path + " is empty or missing");
  return text;
}

class Grpc final : public System {
 public:
  /// `tls`: over TLS with its files (the tls rows only), else plain.
  Grpc(bool stream, const Settings::TlsFiles* tls) : stream_(stream), tls_(tls) {}

  SeriesInfo info(Transport t) const override {
    if (tls_) return {"grpc-tls", "gRPC unary over TLS (TCP)", Role::kRival, "epoll"};
    return {stream_ ? "grpc-stream" : "grpc-unary",
            fmt::format("gRPC {} ({})", stream_ ? "stream" : "unary",
                        t == Transport::kShm ? "unix socket" : "TCP"),
            Role::kRival, "epoll"};
  }
  /// The TLS variant has no place in the rpc rows: the tls rows pick it by its id.
  bool covers(Transport) const override { return !tls_; }

  void serve(PeerCell& cell) override {
    const bool unix = cell.spec.transport == Transport::kShm;
    const std::string path = fmt::format("/tmp/zcrpc-bench-{}-grpc.sock", ::getpid());
    UnlinkOnExit unlinkSocket(unix ? path : std::string());
    EchoService service;
    service.bytes = cell.spec.payloadBytes;
    grpc::ServerBuilder builder;
    int port = 0;
    std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
    if (tls_) {
      grpc::SslServerCredentialsOptions o;
      o.pem_key_cert_pairs.push_back({readFile(tls_->key), readFile(tls_->cert)});
      credentials = grpc::SslServerCredentials(o);
    }
    builder.AddListeningPort(unix ? "unix:" + path : "127.0.0.1:0", credentials, &port);
    builder.RegisterService(&service);
    builder.SetMaxReceiveMessageSize(kMaxMessage);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (!server || (!unix && port == 0)) throw BenchError("gRPC: the server did not start");
    cell.started(unix ? "unix:" + path : fmt::format("127.0.0.1:{}", port));
    cell.awaitEnd();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }

  Figure measure(ClientCell& cell) override {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxMessage);
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
    if (tls_) {
      grpc::SslCredentialsOptions o;
      o.pem_root_certs = readFile(tls_->ca);
      credentials = grpc::SslCredentials(o);
      args.SetSslTargetNameOverride("localhost");  // the certificate's DNS name
    }
    auto channel = grpc::CreateCustomChannel(cell.endpoint, credentials, args);
    auto stub = zcrpcbench::Echo::NewStub(channel);
    Payload request, reply;
    request.set_data(cell.payload.data(), cell.payload.size());
    const size_t n = cell.payload.size();
    auto check = [&](bool ok, const char* what) {
      if (!ok || reply.data().size() != n || reply.data()[n - 1] != request.data()[n - 1])
        throw BenchError(
            fmt::format("gRPC {}: {}", what, ok ? "the echo came back different" : "failed"));
    };
    Figure f;
    if (cell.spec.measure == Measure::kStream) {
      (void)upload(*stub, request, cell.budget.measure / 4);  // warm-up
      f.rate = upload(*stub, request, cell.budget.measure);
      return f;
    }
    if (!stream_ || tls_) {
      auto roundTrip = [&] {
        grpc::ClientContext context;  // one per call, as gRPC requires
        context.set_deadline(std::chrono::system_clock::now() + kStallTimeout);
        grpc::Status s = stub->Echo(&context, request, &reply);
        if (!s.ok()) throw BenchError("gRPC unary: " + s.error_message());
        check(true, "unary");
      };
      f.latency = measureLatency(roundTrip, cell.budget, cell.samples);
      return f;
    }
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + cell.budget.total() + kStallTimeout);
    auto rw = stub->EchoStream(&context);
    auto roundTrip = [&] { check(rw->Write(request) && rw->Read(&reply), "stream"); };
    f.latency = measureLatency(roundTrip, cell.budget, cell.samples);
    rw->WritesDone();
    if (grpc::Status s = rw->Finish(); !s.ok())
      throw BenchError("gRPC stream: " + s.error_message());
    return f;
  }

 private:
  /// One client-streaming call: `request` written until `duration` has passed, then
  /// WritesDone() and Finish(), whose count must be every message written.
  static Rate upload(zcrpcbench::Echo::Stub& stub, const Payload& request,
                     std::chrono::nanoseconds duration) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + duration + kStallTimeout);
    zcrpcbench::Count count;
    auto writer = stub.Upload(&context, &count);
    auto send = [&](uint64_t) {
      if (!writer->Write(request, grpc::WriteOptions().set_buffer_hint()))
        throw BenchError("gRPC upload: the stream broke");
    };
    auto finish = [&](uint64_t sent) {
      if (!writer->WritesDone()) throw BenchError("gRPC upload: WritesDone failed");
      if (grpc::Status s = writer->Finish(); !s.ok())
        throw BenchError("gRPC upload: " + s.error_message());
      if (count.count() != sent)
        throw BenchError(fmt::format("gRPC upload: the server counted {} messages, {} were sent",
                                     count.count(), sent));
    };
    return streamFor(duration, request.data().size(), send, finish);
  }

  bool stream_;
  const Settings::TlsFiles* tls_;
};

}  // namespace

std::unique_ptr<System> makeGrpc(bool stream) { return std::make_unique<Grpc>(stream, nullptr); }
std::unique_ptr<System> makeGrpcTls(const Settings& s) {
  return std::make_unique<Grpc>(/*stream=*/false, &s.tlsFiles);
}

}  // namespace zcrpc::bench
