// A program outside the project that uses an installed (or subproject) zcrpc: it sends
// one Cap'n Proto message through a loopback pair and reads it back in place.
#include <capnp/any.h>
#include <capnp/blob.h>
#include <zcrpc/loopback.h>

#include <chrono>
#include <cstdio>
#include <cstring>

int main() {
  auto [a, b] = zcrpc::makeLoopbackPair();
  zcrpc::OutgoingMessage out;
  if (a->startMessage(out, 8, zcrpc::deadlineAfter(std::chrono::seconds(5))) != zcrpc::Status::kOk) {
    std::fprintf(stderr, "consumer: could not start a message\n");
    return 1;
  }
  out.getRoot<capnp::AnyPointer>().setAs<capnp::Text>("hello from a consumer");
  if (a->send(out) != zcrpc::Status::kOk) return 1;
  zcrpc::IncomingMessage in;
  if (b->receive(in, zcrpc::deadlineAfter(std::chrono::seconds(5))) != zcrpc::Status::kOk) {
    std::fprintf(stderr, "consumer: nothing received\n");
    return 1;
  }
  auto text = in.getRoot<capnp::AnyPointer>().getAs<capnp::Text>();
  if (std::strcmp(text.cStr(), "hello from a consumer") != 0) return 1;
  std::printf("consumer: %s\n", text.cStr());
  return 0;
}
