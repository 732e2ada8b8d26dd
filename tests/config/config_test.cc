// Configuration and transport choice: precedence of defaults < file < environment < URI
// (whatever the order they are loaded in), every error naming its source and what was
// expected, and the choice among endpoints with the reason each one was skipped.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/errors.h"
#include "zcrpc/context.h"
#include "zcrpc/loopback.h"
#ifdef ZCRPC_HAVE_RDMA
#include "zcrpc/rdma.h"
#endif

namespace zcrpc {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

/// Sets an environment variable for the scope; restores the old value after.
class ScopedEnv final {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_)
      ::setenv(name_.c_str(), old_.c_str(), 1);
    else
      ::unsetenv(name_.c_str());
  }

 private:
  std::string name_, old_;
  bool had_ = false;
};

/// A TOML file in the temporary directory, removed after.
class TempFile final {
 public:
  explicit TempFile(const std::string& text) {
    char tmpl[] = "/tmp/zcrpc-config-test-XXXXXX";
    int fd = ::mkstemp(tmpl);
    path_ = tmpl;
    (void)!::write(fd, text.data(), text.size());
    ::close(fd);
  }
  ~TempFile() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

Config::Effective effectiveOf(const Config& c, const std::string& name) {
  for (auto& e : c.effective())
    if (e.name == name) return e;
  ADD_FAILURE() << "no setting " << name;
  return {};
}

using test::errorOf;

std::string uniqueName(const char* what) {
  return std::string("cfgtest-") + what + "-" + std::to_string(::getpid());
}

// ---------------------------------------------------------------------------------------
// Precedence

TEST(ConfigPrecedence, DefaultThenFileThenEnvironmentThenUri) {
  Config c;
  auto e = effectiveOf(c, "ring_bytes");
  EXPECT_EQ(e.value, "1048576");
  EXPECT_EQ(e.source, SettingSource::kDefault);
  EXPECT_EQ(e.origin, "default");

  c.loadTomlString("ring_bytes = \"64KiB\"\nwindow = 16\n", "svc.toml");
  e = effectiveOf(c, "ring_bytes");
  EXPECT_EQ(e.value, "65536");
  EXPECT_EQ(e.source, SettingSource::kFile);
  EXPECT_EQ(e.origin, "svc.toml:1 key ring_bytes");

  {
    ScopedEnv env("ZCRPC_RING_BYTES", "128KiB");
    c.loadEnvironment();
  }
  e = effectiveOf(c, "ring_bytes");
  EXPECT_EQ(e.value, "131072");
  EXPECT_EQ(e.source, SettingSource::kEnvironment);
  EXPECT_EQ(e.origin, "ZCRPC_RING_BYTES");
  EXPECT_EQ(c.integer("window"), 16) << "the file's other setting stays";

  c.applyQuery("ring_bytes=256KiB", "shm://svc?ring_bytes=256KiB");
  e = effectiveOf(c, "ring_bytes");
  EXPECT_EQ(c.size("ring_bytes"), 256u * 1024);
  EXPECT_EQ(e.source, SettingSource::kUri);
  EXPECT_EQ(e.origin, "shm://svc?ring_bytes=256KiB (ring_bytes)");
  EXPECT_EQ(c.connectionOptions().ringBytes, 256u * 1024);
  EXPECT_EQ(c.channelOptions().window, 16u);
}

TEST(ConfigPrecedence, DeadPeerTimeoutReachesTheTcpOptions) {
  Config c;
  EXPECT_EQ(c.tcpOptions().deadPeerTimeout, std::chrono::seconds(30));
  c.applyQuery("dead_peer_timeout=3s", "tcp://h:1?dead_peer_timeout=3s");
  EXPECT_EQ(c.tcpOptions().deadPeerTimeout, std::chrono::seconds(3));
  c.applyQuery("dead_peer_timeout=0s", "tcp://h:1?dead_peer_timeout=0s");
  EXPECT_EQ(c.tcpOptions().deadPeerTimeout, std::chrono::milliseconds(0));
}

TEST(ConfigPrecedence, PriorityNotLoadOrderDecides) {
  Config c;
  c.applyQuery("window=8", "tcp://h:1?window=8");
  {
    ScopedEnv env("ZCRPC_WINDOW", "32");
    c.loadEnvironment();
  }
  c.loadTomlString("window = 4\nspin_time = \"7us\"\n", "late.toml");
  EXPECT_EQ(c.integer("window"), 8) << "a URI query outranks the environment and files";
  EXPECT_EQ(effectiveOf(c, "window").source, SettingSource::kUri);
  EXPECT_EQ(c.duration("spin_time"), std::chrono::microseconds(7)) << "unset elsewhere: the file's";
  // A lower source is still checked: its errors are not hidden by a higher value.
  EXPECT_THAT(errorOf([&] { c.loadTomlString("window = 3\n", "late.toml"); }),
              HasSubstr("late.toml:1 key window"));
}

TEST(ConfigPrecedence, LoadReadsTheFileNamedByZcrpcConfigThenTheEnvironment) {
  TempFile file("[zcrpc]\nwait_mode = \"busy-poll\"\nwindow = 128\n");
  ScopedEnv config("ZCRPC_CONFIG", file.path().c_str());
  ScopedEnv window("ZCRPC_WINDOW", "256");
  Config c = Config::load();
  EXPECT_EQ(c.text("wait_mode"), "busy-poll");
  EXPECT_EQ(effectiveOf(c, "wait_mode").origin, file.path() + ":2 key wait_mode");
  EXPECT_EQ(c.integer("window"), 256);
  EXPECT_EQ(c.connectionOptions().waitMode, WaitMode::kBusyPoll);
}

TEST(ConfigReference, ListsEverySettingWithTypeDefaultAndVariable) {
  std::string ref = Config::reference();
  for (const auto& s : settingsTable()) {
    // (std::string(1, '`') += ...: g++ 12 warns falsely about "literal" + std::string.)
    EXPECT_THAT(ref, HasSubstr(std::string(1, '`').append(s.name).append(1, '`')));
    EXPECT_THAT(ref, HasSubstr(std::string(1, '`').append(s.env).append(1, '`')));
    EXPECT_THAT(ref, HasSubstr(std::string(s.help)));
  }
  // A Markdown table: pipes in cells escaped, empty defaults visible, one row per setting.
  EXPECT_THAT(ref, HasSubstr("choice (busy-poll\\|spin-then-sleep\\|blocking)"));
  EXPECT_THAT(ref, HasSubstr("| `token` | string | \"\" | `ZCRPC_TOKEN` |"));
  size_t rows = 0;
  for (size_t at = ref.find("\n| `"); at != std::string::npos; at = ref.find("\n| `", at + 1)) ++rows;
  EXPECT_EQ(rows, settingsTable().size());
}

// ---------------------------------------------------------------------------------------
// Errors name their source and what was expected

struct BadFile {
  const char* toml;
  const char* where;     // file:line key
  const char* expected;  // what the message says was wanted
};

class ConfigFileErrors : public ::testing::TestWithParam<BadFile> {};

TEST_P(ConfigFileErrors, NameFileLineKeyAndExpectation) {
  Config c;
  std::string msg = errorOf([&] { c.loadTomlString(GetParam().toml, "bad.toml"); });
  EXPECT_THAT(msg, HasSubstr(GetParam().where));
  EXPECT_THAT(msg, HasSubstr(GetParam().expected));
  EXPECT_EQ(effectiveOf(c, "ring_bytes").source, SettingSource::kDefault) << "bad values are not applied";
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ConfigFileErrors,
    ::testing::Values(
        BadFile{"window = 4\n\nring_bytes == 3\nspin_time = \"1us\"\n", "bad.toml:3: ", ""},  // syntax
        BadFile{"spin_time = \"1us\"\nbogus = 1\n", "bad.toml:2 key bogus", "unknown setting"},
        BadFile{"ring_bytes = true\n", "bad.toml:1 key ring_bytes", "expected a size"},
        BadFile{"window = \"many\"\n", "bad.toml:1 key window", "expected an integer"},
        BadFile{"ring_bytes = \"12XB\"\n", "bad.toml:1 key ring_bytes", "expected a size"},
        BadFile{"ring_bytes = \"3000\"\n", "bad.toml:1 key ring_bytes",
                "expected a power of two between 4KiB and 1GiB"},
        BadFile{"ring_bytes = \"2GiB\"\n", "bad.toml:1 key ring_bytes", "power of two"},
        BadFile{"arena_bytes = \"5000\"\n", "bad.toml:1 key arena_bytes", "multiple of 4096"},
        BadFile{"spin_time = \"5 parsecs\"\n", "bad.toml:1 key spin_time", "expected a duration"},
        BadFile{"spin_time = 50\n", "bad.toml:1 key spin_time", "with a unit"},
        BadFile{"wait_mode = \"sometimes\"\n", "bad.toml:1 key wait_mode",
                "one of busy-poll|spin-then-sleep|blocking"},
        BadFile{"wait_mode = 2.5\n", "bad.toml:1 key wait_mode", "one of busy-poll"},
        BadFile{"transports = \"shm,pigeon\"\n", "bad.toml:1 key transports",
                "unknown transport 'pigeon'"},
        BadFile{"transports = [1.5]\n", "bad.toml:1 key transports", "list items must be"},
        BadFile{"transports = \"\"\n", "bad.toml:1 key transports", "at least one transport"},
        BadFile{"allow_uids = \"1,x\"\n", "bad.toml:1 key allow_uids", "numeric ids"},
        BadFile{"max_leases = 100\n", "bad.toml:1 key max_leases", "power of two"},
        BadFile{"window = 0\n", "bad.toml:1 key window", "power of two"},
        BadFile{"server_threads = -1\n", "bad.toml:1 key server_threads", "positive integer"},
        BadFile{"allow_same_uid = \"maybe\"\n", "bad.toml:1 key allow_same_uid",
                "true or false"},
        BadFile{"dead_peer_timeout = \"500ms\"\n", "bad.toml:1 key dead_peer_timeout",
                "expected 0s (off) or between 1s and 24h"},
        BadFile{"[zcrpc]\nring_bytes = \"1\"\n", "bad.toml:2 key ring_bytes", "power of two"}));

TEST(ConfigErrors, MissingFileIsNamed) {
  Config c;
  EXPECT_THAT(errorOf([&] { c.loadFile("/nonexistent/zcrpc.toml"); }),
              HasSubstr("config file /nonexistent/zcrpc.toml: cannot be opened"));
  ScopedEnv config("ZCRPC_CONFIG", "/nonexistent/zcrpc.toml");
  EXPECT_THAT(errorOf([] { (void)Config::load(); }), HasSubstr("/nonexistent/zcrpc.toml"));
}

TEST(ConfigErrors, EnvironmentErrorsNameTheVariable) {
  struct Case {
    const char* var;
    const char* value;
    const char* expected;
  };
  for (Case k : {Case{"ZCRPC_WINDOW", "3", "expected a power of two, got '3'"},
                 Case{"ZCRPC_RING_BYTES", "lots", "expected a size"},
                 Case{"ZCRPC_SPIN_TIME", "1 fortnight", "expected a duration"},
                 Case{"ZCRPC_WAIT_MODE", "nap", "expected one of"},
                 Case{"ZCRPC_TRANSPORTS", "tcp,udp", "unknown transport 'udp'"},
                 Case{"ZCRPC_ALLOW_SAME_UID", "perhaps", "true or false"}}) {
    ScopedEnv env(k.var, k.value);
    Config c;
    std::string msg = errorOf([&] { c.loadEnvironment(); });
    EXPECT_THAT(msg, HasSubstr(std::string(k.var) + ": ")) << k.var;
    EXPECT_THAT(msg, HasSubstr(k.expected)) << k.var;
  }
}

TEST(ConfigErrors, UriErrorsNameTheUri) {
  Config c;
  const std::string uri = "shm://svc?ring_bytes=7";
  EXPECT_THAT(errorOf([&] { c.applyQuery("ring_bytes=7", uri); }),
              HasSubstr(uri + " (ring_bytes): expected a power of two"));
  EXPECT_THAT(errorOf([&] { c.applyQuery("colour=blue", "tcp://h:1?colour=blue"); }),
              HasSubstr("tcp://h:1?colour=blue (colour): unknown setting 'colour'"));
  EXPECT_THAT(errorOf([&] { c.applyQuery("window", "tcp://h:1?window"); }),
              HasSubstr("tcp://h:1?window: query parameter 'window' has no value"));
  EXPECT_THAT(errorOf([] { (void)parseEndpoint("localhost:80"); }),
              HasSubstr("endpoint 'localhost:80' is not scheme://address"));
  EXPECT_THAT(errorOf([] { (void)parseEndpoint("tcp://"); }), HasSubstr("'tcp://' has no address"));

  // Through a Context: the endpoint with the bad query is named in the failure.
  Context ctx{Config()};
  std::vector<std::string> eps{"tcp://127.0.0.1:1?window=5"};
  try {
    (void)ctx.connect(eps);
    ADD_FAILURE() << "connect with a bad query succeeded";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("tcp://127.0.0.1:1?window=5 (window)"));
  }
  EXPECT_THAT(errorOf([&] { (void)ctx.listen("tcp://127.0.0.1:0?ring_bytes=5"); }),
              HasSubstr("tcp://127.0.0.1:0?ring_bytes=5 (ring_bytes)"));
}

TEST(ConfigErrors, UnknownSettingsNameTheNearestOne) {
  Config c;
  EXPECT_THAT(errorOf([&] { c.loadTomlString("ring_byte = \"64KiB\"\n", "svc.toml"); }),
              HasSubstr("svc.toml:1 key ring_byte: unknown setting; did you mean ring_bytes?"));
  EXPECT_THAT(errorOf([&] { c.applyQuery("windw=8", "tcp://h:1?windw=8"); }),
              HasSubstr("unknown setting 'windw'; did you mean window?"));
  // Without [zcrpc], a misspelt [zcrpc] table is an unknown top-level key.
  EXPECT_THAT(errorOf([&] { c.loadTomlString("[zcprc]\nwindow = 8\n", "svc.toml"); }),
              HasSubstr("svc.toml:1 key zcprc: unknown setting; settings go at the top level or "
                        "under [zcrpc]; did you mean zcrpc?"));
  EXPECT_THAT(errorOf([&] { c.loadTomlString("colour = 1\n", "svc.toml"); }),
              AllOf(HasSubstr("unknown setting"), Not(HasSubstr("did you mean"))));
}

TEST(ConfigWarnings, MisspeltVariablesAreIgnoredWithTheNearestName) {
  ScopedEnv typo("ZCRPC_RING_BYTE", "64KiB");
  ScopedEnv lower("zcrpc_windw", "8");
  ScopedEnv far("ZCRPC_SOMETHING_ELSE_ENTIRELY", "1");
  ScopedEnv real("ZCRPC_WINDOW", "32");
  Config c;
  c.loadEnvironment();
  EXPECT_EQ(effectiveOf(c, "ring_bytes").source, SettingSource::kDefault);
  EXPECT_EQ(c.integer("window"), 32);
  EXPECT_THAT(c.warnings(), Contains(HasSubstr("ZCRPC_RING_BYTE is set but is not a zcrpc "
                                               "setting (ignored); did you mean ZCRPC_RING_BYTES?")));
  EXPECT_THAT(c.warnings(), Contains(HasSubstr("zcrpc_windw is set but is not a zcrpc setting "
                                               "(ignored); did you mean ZCRPC_WINDOW?")));
  EXPECT_THAT(c.warnings(), Contains(AllOf(HasSubstr("ZCRPC_SOMETHING_ELSE_ENTIRELY is set"),
                                           Not(HasSubstr("did you mean")))));
  EXPECT_THAT(c.warnings(), Not(Contains(HasSubstr("ZCRPC_WINDOW "))));
  EXPECT_THAT(c.warnings(), Not(Contains(HasSubstr("ZCRPC_CONFIG"))));
}

TEST(ConfigWarnings, TheProjectsOwnTestVariablesAreNoSettingsAndPassWithoutAWarning) {
  ScopedEnv knob("ZCRPC_TEST_RDMA_BENCH_CALLS", "100");  // tests/rdma/run_vm.sh's
  ScopedEnv typo("ZCRPC_WINDW", "8");
  Config c;
  c.loadEnvironment();
  EXPECT_THAT(c.warnings(), Not(Contains(HasSubstr("ZCRPC_TEST_"))));
  EXPECT_THAT(c.warnings(), Contains(HasSubstr("ZCRPC_WINDW is set but is not a zcrpc setting")));
}

TEST(ConfigWarnings, TablesAndKeysOutsideZcrpcAreIgnoredWithAWarning) {
  Config c;
  c.loadTomlString(
      "window = 8\n"
      "[zcprc]\nring_bytes = \"64KiB\"\n"
      "[zcrpc]\nspin_time = \"1us\"\n"
      "[myapp]\nthreads = 4\n",
      "svc.toml");
  EXPECT_EQ(c.duration("spin_time"), std::chrono::microseconds(1));
  EXPECT_EQ(effectiveOf(c, "window").source, SettingSource::kDefault);
  EXPECT_EQ(effectiveOf(c, "ring_bytes").source, SettingSource::kDefault);
  EXPECT_THAT(c.warnings(), Contains(HasSubstr("svc.toml:1: key window ignored: outside "
                                               "[zcrpc], where zcrpc reads its settings; move it "
                                               "into [zcrpc]")));
  EXPECT_THAT(c.warnings(), Contains(HasSubstr("svc.toml:2: table [zcprc] ignored: zcrpc reads "
                                               "only [zcrpc] in this file; did you mean zcrpc?")));
  EXPECT_THAT(c.warnings(), Contains(AllOf(HasSubstr("svc.toml:6: table [myapp] ignored"),
                                           Not(HasSubstr("did you mean")))));
  EXPECT_EQ(c.warnings().size(), 3u);
}

TEST(ConfigErrors, AccessorsOfTheWrongTypeAreRefused) {
  Config c;
  EXPECT_THAT(errorOf([&] { (void)c.size("window"); }), HasSubstr("'window' is not a size"));
  EXPECT_THAT(errorOf([&] { (void)c.flag("nonsense"); }), HasSubstr("'nonsense'"));
  EXPECT_THAT(errorOf([&] { c.set("nonsense", "1", SettingSource::kCode, "test"); }),
              HasSubstr("test: unknown setting 'nonsense'"));
}

// ---------------------------------------------------------------------------------------
// Transport choice

Config withTransports(const char* list) {
  Config c;
  c.set("transports", list, SettingSource::kCode, "test");
  return c;
}

const EndpointVerdict& verdictOf(const TransportChoice& choice, const std::string& endpoint) {
  for (const auto& v : choice.verdicts)
    if (v.endpoint == endpoint) return v;
  static EndpointVerdict none;
  ADD_FAILURE() << "no verdict for " << endpoint << " in:\n" << choice.describe();
  return none;
}

TEST(TransportChoice, ShmIsChosenOnlyWhileItsListenerExists) {
  Context ctx{withTransports("shm,tcp")};
  const std::string ep = "shm://" + uniqueName("shm");
  std::vector<std::string> eps{ep};
  {
    auto listener = ctx.listen(ep);
    TransportChoice c = ctx.choose(eps);
    ASSERT_NE(c.chosen(), nullptr) << c.describe();
    EXPECT_EQ(c.chosen()->endpoint, ep);
    EXPECT_EQ(c.chosen()->transport, "shm");
    EXPECT_THAT(c.describe(), HasSubstr(ep + ": chosen"));
  }
  TransportChoice c = ctx.choose(eps);
  EXPECT_EQ(c.chosen(), nullptr);
  EXPECT_THAT(verdictOf(c, ep).reason, HasSubstr("no shm listener @zcrpc/" + uniqueName("shm")));
  try {
    (void)ctx.connect(eps);
    ADD_FAILURE() << "connected to a listener that is gone";
  } catch (const Failed& e) {
    EXPECT_THAT(e.what(), HasSubstr("no endpoint could be reached"));
    EXPECT_THAT(e.what(), HasSubstr(ep + ": skipped: no shm listener"));
  }
}

TEST(TransportChoice, RdmaIsSkippedWithTheReasonThisBuildAndHostGive) {
  Context ctx{withTransports("rdma,tcp")};
  const std::string rdma = "rdma://127.0.0.1:18515", tcp = "tcp://127.0.0.1:18515";
  std::vector<std::string> eps{rdma, tcp};
  TransportChoice c = ctx.choose(eps);
  auto compiled = compiledTransports();
  const bool haveRdma = std::find(compiled.begin(), compiled.end(), "rdma") != compiled.end();
  bool haveDevice = false;
#ifdef ZCRPC_HAVE_RDMA
  haveDevice = !rdmaDevices().empty();
#endif
  EXPECT_EQ(haveRdma, ZCRPC_TEST_RDMA_COMPILED != 0) << "compiledTransports() vs meson's choice";
  if (!haveRdma) {
    EXPECT_THAT(verdictOf(c, rdma).reason, HasSubstr("rdma transport not compiled in"));
  } else if (!haveDevice) {
    EXPECT_THAT(verdictOf(c, rdma).reason, HasSubstr("no RDMA device"));
  } else {
    GTEST_SKIP() << "this host has an RDMA device: rdma would be chosen";
  }
  ASSERT_NE(c.chosen(), nullptr) << c.describe();
  EXPECT_EQ(c.chosen()->endpoint, tcp) << "tcp next in preference, and it resolves";
}

TEST(TransportChoice, UnresolvableTcpAndUnknownSchemesAreSkippedWithReasons) {
  Context ctx{withTransports("tcp")};
  std::vector<std::string> eps{"tcp://no-such-host.invalid:9", "tcp://127.0.0.1:9"};
  TransportChoice c = ctx.choose(eps);
  EXPECT_THAT(verdictOf(c, eps[0]).reason,
              HasSubstr("address no-such-host.invalid:9 does not resolve"));
  ASSERT_NE(c.chosen(), nullptr);
  EXPECT_EQ(c.chosen()->endpoint, eps[1]);

  // A scheme zcrpc has no transport for is named as such (as listen() names it), not as
  // one missing from the preference list; a near one is suggested.
  std::vector<std::string> odd{"carrier://pigeon", "http://example.com:80", "tpc://h:1"};
  Context all{withTransports("shm,rdma,tcp")};
  TransportChoice c2 = all.choose(odd);
  EXPECT_THAT(verdictOf(c2, odd[0]).reason,
              AllOf(HasSubstr("unknown scheme 'carrier' (known: shm://, tcp://, rdma://, capnp://, capnp+unix://)"),
                    Not(HasSubstr("preference"))));
  EXPECT_THAT(verdictOf(c2, odd[1]).reason, HasSubstr("unknown scheme 'http'"));
  EXPECT_THAT(verdictOf(c2, odd[2]).reason,
              HasSubstr("unknown scheme 'tpc' (known: shm://, tcp://, rdma://, capnp://, capnp+unix://); did you mean tcp?"));
  EXPECT_THAT(errorOf([&] { (void)all.connect(std::vector<std::string>{odd[1]}); }),
              HasSubstr("http://example.com:80: skipped: unknown scheme 'http'"));
  EXPECT_THAT(errorOf([&] { (void)all.listen(odd[1]); }),
              HasSubstr("cannot listen on 'http://example.com:80': unknown scheme 'http'"));
}

TEST(TransportChoice, TransportsOutsideThePreferenceListAreSkipped) {
  Context ctx{withTransports("shm,tcp")};
  std::vector<std::string> eps{"rdma://127.0.0.1:1", "tcp://127.0.0.1:1"};
  TransportChoice c = ctx.choose(eps);
  EXPECT_THAT(verdictOf(c, eps[0]).reason,
              HasSubstr("transport 'rdma' is not in the preference list (transports = shm,tcp)"));
  ASSERT_NE(c.chosen(), nullptr);
  EXPECT_EQ(c.chosen()->endpoint, eps[1]);
}

TEST(TransportChoice, PreferenceOrderDecidesNotListOrder) {
  const std::string shm = "shm://" + uniqueName("pref");
  Context server{Config()};
  auto shmListener = server.listen(shm);
  auto tcpListener = server.listen("tcp://127.0.0.1:0");
  const std::string tcp = tcpListener->endpoint();
  ASSERT_THAT(tcp, HasSubstr("tcp://127.0.0.1:"));
  std::vector<std::string> eps{tcp, shm};  // tcp listed first

  TransportChoice c = Context{withTransports("shm,tcp")}.choose(eps);
  ASSERT_NE(c.chosen(), nullptr);
  EXPECT_EQ(c.chosen()->endpoint, shm);
  EXPECT_EQ(verdictOf(c, tcp).reason, "an earlier preference was chosen");
  EXPECT_EQ(c.verdicts.front().endpoint, shm) << "verdicts in the order considered";

  TransportChoice c2 = Context{withTransports("tcp,shm")}.choose(eps);
  ASSERT_NE(c2.chosen(), nullptr);
  EXPECT_EQ(c2.chosen()->endpoint, tcp);
  EXPECT_EQ(verdictOf(c2, shm).reason, "an earlier preference was chosen");

  // The environment's preference, through Context's default Config::load().
  ScopedEnv env("ZCRPC_TRANSPORTS", "tcp,shm");
  TransportChoice c3 = Context().choose(eps);
  ASSERT_NE(c3.chosen(), nullptr);
  EXPECT_EQ(c3.chosen()->endpoint, tcp);
}

TEST(TransportChoice, ConnectFallsBackAndRecordsWhy) {
  Context ctx{withTransports("shm,tcp")};
  auto tcpListener = ctx.listen("tcp://127.0.0.1:0");
  std::thread acceptor([&] { auto c = tcpListener->accept(deadlineAfter(std::chrono::seconds(5))); });
  const std::string gone = "shm://" + uniqueName("gone");
  std::vector<std::string> eps{gone, tcpListener->endpoint()};
  TransportChoice choice;
  auto conn = ctx.connect(eps, &choice);
  acceptor.join();
  ASSERT_NE(conn, nullptr);
  ASSERT_NE(choice.chosen(), nullptr);
  EXPECT_EQ(choice.chosen()->endpoint, tcpListener->endpoint());
  EXPECT_THAT(verdictOf(choice, gone).reason, HasSubstr("no shm listener"));
  EXPECT_THAT(choice.describe(), HasSubstr(tcpListener->endpoint() + ": chosen"));
  conn->close();
}

// ---------------------------------------------------------------------------------------
// The Context's list of transports: it connects and listens through the list it is given.

/// A transport of the test's own under a built-in scheme: counts its calls and connects
/// over a loopback pair.
class FakeTransport final : public Transport {
 public:
  explicit FakeTransport(std::string scheme, std::string unavailable = {})
      : scheme_(std::move(scheme)), unavailable_(std::move(unavailable)) {}
  std::string_view scheme() const noexcept override { return scheme_; }
  std::string_view summary() const noexcept override { return "the test's own"; }
  TransportTraits traits() const noexcept override { return {}; }
  std::span<const std::string_view> settings() const noexcept override { return {}; }
  std::string unavailable(const Config&) const override { return unavailable_; }
  std::string unreachable(std::string_view address, const Config&) const override {
    return address == "far" ? "the test says far is unreachable" : "";
  }
  std::unique_ptr<Connection> connect(std::string_view address, const ConnectionOptions& o,
                                      const Config&) const override {
    connects.push_back(std::string(address));
    options.push_back(o);
    auto [a, b] = makeLoopbackPair(o);
    peers.push_back(std::move(b));
    return std::move(a);
  }
  std::unique_ptr<Listener> listen(std::string_view address, const ConnectionOptions&,
                                   const Config&) const override {
    throw Failed("fake listen on " + std::string(address));
  }
  std::string localAddress() const override { return "near"; }

  mutable std::vector<std::string> connects;
  mutable std::vector<ConnectionOptions> options;
  mutable std::vector<std::unique_ptr<Connection>> peers;

 private:
  std::string scheme_, unavailable_;
};

TEST(Transports, TheBuiltInListHasShmTcpRdmaAndStandardPeersSayingWhatEachCanDo) {
  TransportList list = builtinTransports();
  ASSERT_EQ(list.size(), 5u);
  EXPECT_EQ(list[0]->scheme(), "shm");
  EXPECT_EQ(list[1]->scheme(), "tcp");
  EXPECT_EQ(list[2]->scheme(), "rdma");
  EXPECT_EQ(list[3]->scheme(), "capnp");
  EXPECT_EQ(list[4]->scheme(), "capnp+unix");
  for (size_t i = 0; i < 3; ++i) EXPECT_FALSE(list[i]->traits().rpcFramesOnly) << list[i]->scheme();
  EXPECT_TRUE(list[3]->traits().rpcFramesOnly);  // Cap'n Proto's RPC protocol on the wire
  EXPECT_TRUE(list[4]->traits().rpcFramesOnly);
  EXPECT_TRUE(list[3]->traits().crossHost);
  EXPECT_FALSE(list[4]->traits().crossHost);
  EXPECT_FALSE(list[0]->traits().crossHost);
  EXPECT_TRUE(list[0]->traits().sharedMemory);
  EXPECT_EQ(list[0]->traits().gathersFromBytes, 1024u);
  EXPECT_TRUE(list[1]->traits().crossHost);
  EXPECT_EQ(list[1]->traits().gathersFromBytes, 16u << 10);
  EXPECT_EQ(list[2]->traits().gathersFromBytes, UINT64_MAX);
  EXPECT_EQ(list[2]->traits().compiledIn, ZCRPC_TEST_RDMA_COMPILED != 0);
  // Each names settings of the table it reads; all of them exist.
  auto table = settingsTable();
  for (const auto& t : list)
    for (std::string_view name : t->settings())
      EXPECT_TRUE(std::any_of(table.begin(), table.end(), [&](const SettingInfo& s) { return s.name == name; }))
          << t->scheme() << " reads unknown setting " << name;
  EXPECT_EQ(list[1]->localAddress(), "127.0.0.1:0");
  EXPECT_NE(list[0]->localAddress(), list[0]->localAddress()) << "a fresh shm name each time";
}

TEST(Transports, AContextConnectsThroughTheTransportsItIsGivenNotByName) {
  auto fake = std::make_shared<FakeTransport>("tcp");
  Context ctx{withTransports("shm,tcp"), {fake}};
  EXPECT_EQ(ctx.transport("tcp"), fake.get());
  EXPECT_EQ(ctx.transport("shm"), nullptr);
  std::vector<std::string> eps{"shm://x", "tcp://far", "tcp://near?ring_bytes=64KiB"};
  TransportChoice choice;
  auto conn = ctx.connect(eps, &choice);
  ASSERT_NE(conn, nullptr);
  EXPECT_THAT(verdictOf(choice, "shm://x").reason, HasSubstr("unknown scheme 'shm' (known: tcp://)"));
  EXPECT_THAT(verdictOf(choice, "tcp://far").reason, HasSubstr("the test says far is unreachable"));
  ASSERT_EQ(fake->connects.size(), 1u);
  EXPECT_EQ(fake->connects[0], "near");
  EXPECT_EQ(fake->options[0].ringBytes, 64u << 10) << "the URI's query reaches the options";
  EXPECT_THROW(ctx.listen("shm://x"), InvalidArgument);
  try {
    ctx.listen("tcp://somewhere:1");
    ADD_FAILURE() << "listen did not reach the transport";
  } catch (const Failed& e) {
    EXPECT_STREQ(e.what(), "fake listen on somewhere:1");
  }
}

TEST(Transports, AnUnavailableTransportIsSkippedWithItsReason) {
  auto fake = std::make_shared<FakeTransport>("tcp", "switched off by the test");
  Context ctx{withTransports("tcp"), {fake}};
  std::vector<std::string> eps{"tcp://near"};
  TransportChoice c = ctx.choose(eps);
  EXPECT_EQ(c.chosen(), nullptr);
  EXPECT_THAT(verdictOf(c, "tcp://near").reason, HasSubstr("switched off by the test"));
  EXPECT_TRUE(fake->connects.empty());
}

}  // namespace
}  // namespace zcrpc
