// zcrpc — standard Cap'n Proto RPC peers: Cap'n Proto's own two-party protocol (rpc.capnp)
// on TCP (`capnp://host:port`) and on unix stream sockets (`capnp+unix:///path`, or
// `capnp+unix://@name` for an abstract socket). See docs/capnp-compat.md.
//
// A capnp listener added to a zcrpc::Server serves every service added with addService to
// any Cap'n Proto client (capnp::EzRpcClient, TwoPartyClient, and the Rust, Go, Python,
// JavaScript implementations): the bootstrap capability answers every interface the
// server serves, dispatched to the same handlers as zcrpc's own transports. A capnp
// connection given to a zcrpc::Channel calls an existing Cap'n Proto RPC server (e.g. one
// written with capnp::EzRpcServer) through the generated zcrpc stubs.
//
// Under the Connection seam these speak rpc.capnp through libcapnp-rpc (capnp::RpcSystem,
// TwoPartyVatNetwork), whose KJ event loop runs only inside the connection's own calls
// (tryReceive, receive, send, flush, ...) on the calling thread: a server worker serves
// them among its other connections, a Channel drives its own, with no thread of their own.
// Such a connection carries the RPC core's frames only (requests, answers, errors,
// cancellations, pings, stream chunks, and the capabilities, targets and releases of their
// extension records, as Cap'n Proto's own capabilities), not plain messages
// (FrameKind::kData).
#pragma once

#include <chrono>
#include <memory>
#include <string_view>

#include "zcrpc/tls.h"
#include "zcrpc/transport.h"

namespace zcrpc {

struct CapnpOptions {
  /// maxMessageBytes bounds every Cap'n Proto message either way (a peer's larger one
  /// closes the connection with the reason); readerLimits bound the RPC system's reads of
  /// each message and the handler's of its params (or the caller's of its results);
  /// connectTimeout bounds connecting; maxLeases is how many received answers or requests
  /// may be held at once; waitMode, spinTime and spinPolicy set how a Channel waits for
  /// answers. ringBytes sets the output a connection queues for a peer that does not read
  /// before tryStartMessage() returns kWouldBlock (the server then keeps answers in its
  /// backlog and reads no new requests from that peer). arenaBytes is not used.
  ConnectionOptions connection;
  /// capnp+unix listeners: who may connect, checked with SO_PEERCRED before the RPC system
  /// reads anything from the client. A refused client is closed and listed in refusals().
  CredentialPolicy policy;
  /// capnp:// (TCP): as TcpOptions::deadPeerTimeout (keepalive probes, TCP_USER_TIMEOUT).
  std::chrono::milliseconds deadPeerTimeout{30'000};
  /// capnp:// (TCP): TLS 1.3 under Cap'n Proto's protocol, as for tcp (TcpOptions::tls,
  /// zcrpc/tls.h; the settings tls, tls_cert_file, ...). A listener with `tls.enabled`
  /// runs each client's handshake first (without blocking, within connectTimeout) and
  /// refuses one that fails, saying why in refusals(); a client connects with TLS and checks
  /// the server's certificate. Cap'n Proto's own C++ peers speak it through kj::TlsContext
  /// (libkj-tls). Not for capnp+unix (the credential policy guards those).
  TlsOptions tls;
};

/// Listens for standard Cap'n Proto clients on `host:port` (port 0: an ephemeral port,
/// reported by endpoint() as capnp://host:port). Throws Failed / InvalidArgument naming the
/// address.
std::unique_ptr<Listener> listenCapnp(std::string_view hostPort, const CapnpOptions& options = {});
/// On a unix stream socket: a path (created; a stale socket file there is replaced; removed
/// when the listener goes) or "@name" for an abstract socket.
std::unique_ptr<Listener> listenCapnpUnix(std::string_view path, const CapnpOptions& options = {});

/// Connects to a standard Cap'n Proto RPC server and bootstraps its main capability: the
/// Connection's request frames become calls on it. Throws Failed naming the address.
std::unique_ptr<Connection> connectCapnp(std::string_view hostPort, const CapnpOptions& options = {});
std::unique_ptr<Connection> connectCapnpUnix(std::string_view path, const CapnpOptions& options = {});

}  // namespace zcrpc
