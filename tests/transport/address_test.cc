// The endpoint address parser every network transport and Context share.
#include "transport/address.h"

#include <gtest/gtest.h>
#include <netinet/in.h>

#include "common/errors.h"
#include "zcrpc/error.h"

namespace zcrpc {
namespace {

TEST(Address, SplitsHostAndPortWithOrWithoutTheSchemeIpv6WithoutItsBrackets) {
  struct Case {
    const char* text;
    const char* scheme;
    const char* host;
    const char* port;
  };
  for (const Case& c : {Case{"tcp://example.org:80", "tcp", "example.org", "80"},
                        Case{"10.0.0.1:65535", "rdma", "10.0.0.1", "65535"},
                        Case{"[::1]:0", "tcp", "::1", "0"},
                        Case{"rdma://[fe80::1%eth0]:4791", "rdma", "fe80::1%eth0", "4791"}}) {
    HostPort hp = parseHostPort(c.text, c.scheme);
    EXPECT_EQ(hp.host, c.host) << c.text;
    EXPECT_EQ(hp.port, c.port) << c.text;
  }
}

TEST(Address, AnEmptyHostIsEveryAddressAndAClientDialsThisHost) {
  HostPort a = parseHostPort(":7000", "tcp");
  EXPECT_EQ(a.host, "0.0.0.0");
  EXPECT_EQ(a.forConnect().host, "127.0.0.1");
  EXPECT_EQ(parseHostPort("h:1", "tcp").forConnect().host, "h");
}

TEST(Address, MalformedEndpointsAreRefusedNamingTheEndpoint) {
  auto refusal = [](std::string_view text, std::string_view scheme) {
    return test::errorOf([&] { parseHostPort(text, scheme); });
  };
  EXPECT_EQ(refusal("localhost", "tcp"), "tcp endpoint 'localhost' has no :port");
  EXPECT_EQ(refusal("rdma://h:", "rdma"), "rdma endpoint 'rdma://h:' has a bad port ''");
  EXPECT_EQ(refusal("h:65536", "tcp"), "tcp endpoint 'h:65536' has a bad port '65536'");
  EXPECT_EQ(refusal("h:123456", "tcp"), "tcp endpoint 'h:123456' has a bad port '123456'");
  EXPECT_EQ(refusal("h:http", "tcp"), "tcp endpoint 'h:http' has a bad port 'http'");
  EXPECT_EQ(refusal("[::1]80", "tcp"), "tcp endpoint '[::1]80' is not [ipv6]:port");
  EXPECT_EQ(refusal("[::1", "tcp"), "tcp endpoint '[::1' is not [ipv6]:port");
}

TEST(Address, WithSchemeAddsThePrefixOnce) {
  EXPECT_EQ(withScheme("h:1", "tcp"), "tcp://h:1");
  EXPECT_EQ(withScheme("tcp://h:1", "tcp"), "tcp://h:1");
}

TEST(Address, ResolvesNumericAddressesAndNamesTheFailure) {
  AddressList list = resolve({"127.0.0.1", "8080"}, /*passive=*/false, "tcp://127.0.0.1:8080");
  ASSERT_NE(list.first(), nullptr);
  EXPECT_EQ(addressText(list.first()->ai_addr), "127.0.0.1:8080");
  AddressList v6 = resolve({"::1", "9"}, /*passive=*/false, "tcp://[::1]:9");
  EXPECT_EQ(addressText(v6.first()->ai_addr), "[::1]:9");
  AddressList none;
  EXPECT_FALSE(tryResolve({"no-such-host.invalid", "1"}, false, none).empty());
  EXPECT_EQ(none.first(), nullptr);
  try {
    resolve({"no-such-host.invalid", "1"}, false, "tcp://no-such-host.invalid:1");
    ADD_FAILURE() << "resolved a .invalid name";
  } catch (const Failed& e) {
    EXPECT_EQ(std::string(e.what()).rfind("resolve tcp://no-such-host.invalid:1: ", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace zcrpc
