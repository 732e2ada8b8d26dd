// One check of ConnectionOptions for every transport: the same limits, the same words.
#include "transport/options.h"

#include <gtest/gtest.h>

#include <string>

#include "common/errors.h"
#include "zcrpc/error.h"
#include "zcrpc/loopback.h"
#include "zcrpc/shm.h"
#include "zcrpc/tcp.h"

namespace zcrpc {
namespace {

using test::errorOf;

TEST(Options, TheLimitsAreChecked) {
  ConnectionOptions ok;
  EXPECT_EQ(errorOf([&] { checkConnectionOptions(ok, "ring"); }), "");
  for (uint32_t bad : {5000u, 2048u, 0u, 1u << 31}) {
    ConnectionOptions o;
    o.ringBytes = bad;
    EXPECT_EQ(errorOf([&] { checkConnectionOptions(o, "ring"); }),
              "ring size " + std::to_string(bad) +
                  " must be a power of two between 4096 and 1073741824 bytes");
  }
  for (uint64_t bad : {uint64_t{63}, uint64_t{1} << 32}) {
    ConnectionOptions o;
    o.maxMessageBytes = bad;
    EXPECT_EQ(errorOf([&] { checkConnectionOptions(o, "ring"); }),
              "maximum message size " + std::to_string(bad) + " must be between 64 bytes and 4 GiB");
  }
  for (uint32_t bad : {3u, 0u, 1u << 21}) {
    ConnectionOptions o;
    o.maxLeases = bad;
    EXPECT_EQ(errorOf([&] { checkConnectionOptions(o, "ring"); }),
              "maxLeases " + std::to_string(bad) + " must be a power of two up to 1048576");
  }
  ConnectionOptions edge;
  edge.ringBytes = 1u << 30;
  edge.maxMessageBytes = (uint64_t{1} << 32) - 4096;
  edge.maxLeases = 1u << 20;
  EXPECT_EQ(errorOf([&] { checkConnectionOptions(edge, "ring"); }), "");
}

TEST(Options, EveryTransportRefusesTheSameOptionsNamingItsBuffer) {
  ConnectionOptions o;
  o.ringBytes = 5000;
  const std::string rule = " size 5000 must be a power of two between 4096 and 1073741824 bytes";
  EXPECT_EQ(errorOf([&] { makeLoopbackPair(o); }), "ring" + rule);
  ShmListenOptions so;
  so.connection = o;
  EXPECT_EQ(errorOf([&] { listenShm("zcrpc-options-test", so); }), "ring" + rule);
  EXPECT_EQ(errorOf([&] { connectShm("zcrpc-options-test", o); }), "ring" + rule);
  TcpOptions to;
  to.connection = o;
  EXPECT_EQ(errorOf([&] { listenTcp("127.0.0.1:0", to); }), "tcp buffer" + rule);
  EXPECT_EQ(errorOf([&] { connectTcp("127.0.0.1:1", to); }), "tcp buffer" + rule);
}

}  // namespace
}  // namespace zcrpc
