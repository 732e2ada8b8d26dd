// Writes the seed inputs of the fuzz targets in fuzz_entries.h:
//   build/tests/fuzz/make_fuzz_seeds tests/fuzz/seeds
// Each seed is named for what it is; the replay test (fuzz_seeds_test) runs them all.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

using Bytes = std::vector<uint8_t>;

void put(Bytes& b, const void* p, size_t n) {
  auto* c = static_cast<const uint8_t*>(p);
  b.insert(b.end(), c, c + n);
}
template <typename T>
void put(Bytes& b, T v) {
  put(b, &v, sizeof v);
}
void putText(Bytes& b, const std::string& s) { put(b, s.data(), s.size()); }

// ---- tcp (docs/wire-format.md, "On a TCP stream") ----

Bytes hello(uint64_t magic, uint32_t version, const std::string& token, uint64_t maxMessage,
            uint32_t tokenBytes = UINT32_MAX) {
  Bytes b;
  put(b, magic);
  put(b, version);
  put(b, tokenBytes == UINT32_MAX ? static_cast<uint32_t>(token.size()) : tokenBytes);
  put(b, maxMessage);
  putText(b, token);
  return b;
}

Bytes answer(uint64_t magic, uint32_t accepted, uint64_t maxMessage, const std::string& reason,
             bool terminate = true) {
  Bytes b;
  put(b, magic);
  put(b, uint32_t{1});
  put(b, accepted);
  put(b, maxMessage);
  char r[160];
  std::memset(r, terminate ? 0 : 'A', sizeof r);
  std::memcpy(r, reason.data(), std::min(reason.size(), sizeof r - (terminate ? 1 : 0)));
  put(b, r, sizeof r);
  return b;
}

/// A valid frame of `kind` with one segment holding a null root pointer (48 bytes).
Bytes emptyFrame(uint8_t kind, uint64_t callId, uint32_t frameBytes = 48) {
  Bytes b;
  put(b, frameBytes);
  put(b, kind);
  put(b, uint8_t{0});
  put(b, uint16_t{1});  // one segment
  put(b, callId);
  put(b, uint64_t{0});  // interface
  put(b, uint16_t{0});
  put(b, uint16_t{0});
  put(b, uint32_t{40});  // table offset
  put(b, uint64_t{0});   // the segment: a null root pointer
  put(b, uint32_t{1});   // table: 1 word at word 4
  put(b, uint32_t{4});
  return b;
}

constexpr uint64_t kTcpMagic = 0x31'7063'7263'7a74ull;

Bytes cat(std::initializer_list<Bytes> parts, uint8_t prefix) {
  Bytes b{prefix};
  for (const auto& p : parts) b.insert(b.end(), p.begin(), p.end());
  return b;
}

// ---- shm (the message layout of shm.cc) ----

Bytes shmMessage(uint32_t step, uint64_t ring, uint64_t arena, uint64_t maxMessage, uint64_t file,
                 uint64_t magic = 0x6b68'7372'7063'7a01ull, const std::string& reason = {}) {
  Bytes b;
  put(b, magic);
  put(b, uint32_t{1});
  put(b, step);
  put(b, ring);
  put(b, arena);
  put(b, maxMessage);
  put(b, file);
  char r[192] = {};
  std::memcpy(r, reason.data(), std::min(reason.size(), sizeof r - 1));
  put(b, r, sizeof r);
  return b;
}

/// One ring record at position 0 holding `frame` (docs/wire-format.md, "The ring record").
Bytes ringRecord(const Bytes& frame) {
  Bytes b;
  uint32_t length = static_cast<uint32_t>(16 + frame.size());
  uint32_t tag = (0u ^ 0xA5C3'5A3Cu) | 1u;
  put(b, (uint64_t{tag} << 32) | length);
  put(b, uint64_t{0});  // arena end
  b.insert(b.end(), frame.begin(), frame.end());
  return b;
}

// ---- dispatch (dispatch_entry.cc) ----

uint64_t structPtr(uint32_t offset, uint16_t dataWords, uint16_t ptrs) {
  return (uint64_t{offset} << 2) | (uint64_t{dataWords} << 32) | (uint64_t{ptrs} << 48);
}
uint64_t bytesPtr(uint32_t offset, uint32_t count) {
  return (uint64_t{offset} << 2) | 1 | (((uint64_t{count} << 3) | 2) << 32);
}
uint64_t word(const std::string& s) {
  uint64_t w = 0;
  std::memcpy(&w, s.data(), std::min<size_t>(s.size(), 8));
  return w;
}

/// kind, call id, interface selector (0 Echo, 1 KeyValue, 2 raw id follows, 3 zero),
/// method, then the first segment's words (root pointer first).
Bytes call(uint8_t kind, uint8_t id, uint8_t iface, uint8_t method, std::vector<uint64_t> words,
           uint64_t rawInterface = 0) {
  Bytes b{kind, id, iface, method, static_cast<uint8_t>(words.empty() ? 0 : words.size() - 1)};
  if (iface % 4 == 2) put(b, rawInterface);
  if (words.empty()) words.push_back(0);
  for (uint64_t w : words) put(b, w);
  return b;
}

/// `call(...)` with an extension area: records of {type, payload words} (interface
/// selector's top bit; see dispatch_entry.cc). The entry writes each counted record's count
/// itself; payload words start after it.
Bytes withRecords(Bytes frame, const std::vector<std::pair<uint8_t, std::vector<uint64_t>>>& records) {
  frame[2] |= 0x80;
  frame.push_back(static_cast<uint8_t>(records.size() - 1));
  for (const auto& [type, payload] : records) {
    frame.push_back(type);
    frame.push_back(static_cast<uint8_t>(payload.size() - 1));
    for (uint64_t w : payload) put(frame, w);
  }
  return frame;
}

Bytes join(std::initializer_list<Bytes> parts) {
  Bytes b;
  for (const auto& p : parts) b.insert(b.end(), p.begin(), p.end());
  return b;
}

void write(const std::filesystem::path& dir, const std::string& name, const Bytes& b) {
  std::filesystem::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s SEEDS_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path root = argv[1];

  // tcp: side 0 (a client of the listener: token "fuzz-token"), side 1 (a server).
  auto tcp = root / "tcp_handshake";
  const Bytes good = hello(kTcpMagic, 1, "fuzz-token", 1 << 20);
  write(tcp, "client-valid-with-frames", cat({good, emptyFrame(8, 1), emptyFrame(1, 2)}, 0));
  write(tcp, "client-bad-magic", cat({hello(0x1122334455667788ull, 1, "fuzz-token", 1 << 20)}, 0));
  write(tcp, "client-bad-version", cat({hello(kTcpMagic, 9, "fuzz-token", 1 << 20)}, 0));
  write(tcp, "client-wrong-token", cat({hello(kTcpMagic, 1, "fuzz-tokem", 1 << 20)}, 0));
  write(tcp, "client-no-token", cat({hello(kTcpMagic, 1, "", 1 << 20)}, 0));
  write(tcp, "client-token-too-long", cat({hello(kTcpMagic, 1, "fuzz-token", 1 << 20, 5000)}, 0));
  write(tcp, "client-token-cut-short", cat({hello(kTcpMagic, 1, "fuzz", 1 << 20, 10)}, 0));
  write(tcp, "client-max-message-tiny", cat({hello(kTcpMagic, 1, "fuzz-token", 8)}, 0));
  write(tcp, "client-hello-cut-short", Bytes(good.begin(), good.begin() + 11));
  write(tcp, "client-frame-claims-64mib", cat({good, emptyFrame(8, 1, 64u << 20)}, 0));
  write(tcp, "client-frame-length-unaligned", cat({good, emptyFrame(8, 1, 37)}, 0));
  write(tcp, "client-frame-kind-zero", cat({good, emptyFrame(0, 1)}, 0));
  write(tcp, "server-accepts-with-frame", cat({answer(kTcpMagic, 1, 1 << 20, ""), emptyFrame(2, 1)}, 1));
  write(tcp, "server-refuses", cat({answer(kTcpMagic, 0, 0, "access token does not match")}, 1));
  write(tcp, "server-reason-unterminated", cat({answer(kTcpMagic, 0, 0, "x", false)}, 1));
  write(tcp, "server-bad-magic", cat({answer(0, 1, 1 << 20, "")}, 1));
  write(tcp, "server-max-message-zero", cat({answer(kTcpMagic, 1, 0, ""), emptyFrame(2, 1)}, 1));
  write(tcp, "server-answer-cut-short", cat({Bytes(20, 0x42)}, 1));

  // tls: side 1 (inside a valid TLS session: the tcp client seeds' bytes), side 0 (raw
  // bytes instead of a TLS handshake).
  auto tls = root / "tls_stream";
  write(tls, "inside-valid-with-frames", cat({good, emptyFrame(8, 1), emptyFrame(1, 2)}, 1));
  write(tls, "inside-wrong-token", cat({hello(kTcpMagic, 1, "fuzz-tokem", 1 << 20)}, 1));
  write(tls, "inside-token-too-long", cat({hello(kTcpMagic, 1, "fuzz-token", 1 << 20, 5000)}, 1));
  write(tls, "inside-frame-claims-64mib", cat({good, emptyFrame(8, 1, 64u << 20)}, 1));
  write(tls, "inside-frame-kind-zero", cat({good, emptyFrame(0, 1)}, 1));
  write(tls, "raw-plain-zcrpc-hello", cat({good}, 0));
  // A TLS record header (handshake, TLS 1.0 record version) claiming more than comes, a
  // ClientHello cut short, an alert, and an oversized record length.
  write(tls, "raw-record-cut-short", cat({Bytes{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}}, 0));
  write(tls, "raw-alert", cat({Bytes{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28}}, 0));
  write(tls, "raw-record-too-long", cat({Bytes{0x16, 0x03, 0x03, 0xff, 0xff}, Bytes(300, 0x41)}, 0));
  write(tls, "raw-application-data-first", cat({Bytes{0x17, 0x03, 0x03, 0x00, 0x10}, Bytes(16, 0)}, 0));

  // shm: side, flags, then raw messages / overlays, then ring bytes.
  auto shm = root / "shm_handshake";
  const uint64_t ring = 16 << 10, arena = 64 << 10, maxMsg = 32 << 10, file = 4096 + ring + arena;
  const Bytes record = ringRecord(emptyFrame(8, 1));
  write(shm, "client-valid-one-record", join({{0, 0}, record}));
  write(shm, "client-valid-garbage-ring", join({{0, 0}, Bytes(512, 0xA7)}));
  write(shm, "client-no-file", Bytes{0, 1 << 2});
  write(shm, "client-file-short", Bytes{0, 2 << 2});
  write(shm, "client-file-unsealed", Bytes{0, 3 << 2});
  write(shm, "client-header-zeroed", join({{0, 16}, Bytes(64, 0)}));
  write(shm, "client-control-words-huge", join({{0, 32}, Bytes(192, 0xff), record}));
  write(shm, "client-raw-hello-bad-magic", join({{0, 1}, shmMessage(1, 0, 0, 0, 0, 42)}));
  write(shm, "client-raw-ready-wrong-step", join({{0, 2}, shmMessage(5, ring, arena, maxMsg, file)}));
  write(shm, "server-valid-one-record", join({{1, 0}, record}));
  write(shm, "server-accept-huge-sizes",
        join({{1, 1}, shmMessage(2, uint64_t{1} << 40, uint64_t{1} << 40, uint64_t{1} << 40, 0)}));
  write(shm, "server-refuses", join({{1, 1}, shmMessage(3, 0, 0, 0, 0, 0x6b68'7372'7063'7a01ull, "no")}));
  write(shm, "server-no-file", Bytes{1, 1 << 2});
  write(shm, "server-header-overwritten", join({{1, 16}, Bytes(64, 0x11)}));
  write(shm, "server-sizes-disagree", join({{1, 1}, shmMessage(2, ring * 2, arena, maxMsg, file)}));

  // dispatch: frames to a server of Echo (interface selector 0) and KeyValue (1).
  auto dispatch = root / "dispatch";
  const Bytes echoHello = call(1, 1, 0, 0, {structPtr(0, 0, 1), bytesPtr(0, 5), word("hello")});
  write(dispatch, "echo", echoHello);
  write(dispatch, "echo-same-call-id-twice", join({echoHello, echoHello}));
  write(dispatch, "echo-one-way", call(4, 2, 0, 0, {structPtr(0, 0, 1), bytesPtr(0, 5), word("hello")}));
  write(dispatch, "echo-pointer-out-of-bounds", call(1, 1, 0, 0, {structPtr(0, 0, 1), bytesPtr(1000, 5), 0}));
  write(dispatch, "echo-list-instead-of-struct", call(1, 1, 0, 0, {bytesPtr(0, 8), word("abcdefgh")}));
  write(dispatch, "echo-ping-sink", join({call(1, 1, 0, 1, {}), call(1, 2, 0, 2, {structPtr(0, 0, 1), bytesPtr(0, 3), word("abc")})}));
  write(dispatch, "echo-delay-then-cancel", join({call(1, 3, 0, 3, {structPtr(0, 1, 0), 100}), call(5, 3, 0, 0, {})}));
  write(dispatch, "echo-fail", call(1, 4, 0, 4, {structPtr(0, 1, 1), 42, bytesPtr(0, 4), word("bad")}));
  write(dispatch, "kv-put-get-scan-delete",
        join({call(1, 1, 1, 1, {structPtr(0, 0, 2), bytesPtr(1, 1), bytesPtr(1, 1), word("a"), word("b")}),
              call(1, 2, 1, 0, {structPtr(0, 0, 1), bytesPtr(0, 1), word("a")}),
              call(1, 3, 1, 3, {structPtr(0, 1, 1), 10, 0}),
              call(1, 4, 1, 2, {structPtr(0, 0, 1), bytesPtr(0, 1), word("a")})}));
  write(dispatch, "unknown-interface", call(1, 5, 2, 0, {}, 0x1234'5678'9abc'def0ull));
  write(dispatch, "unknown-method", call(1, 6, 0, 7, {}));
  write(dispatch, "no-interface", call(1, 6, 3, 0, {}));
  write(dispatch, "cancel-unknown-call", call(5, 7, 0, 0, {}));
  write(dispatch, "ping", call(6, 0, 0, 0, {}));
  write(dispatch, "responses-and-errors-to-the-server", join({call(2, 1, 0, 0, {}), call(3, 1, 0, 0, {}), call(7, 1, 0, 0, {})}));
  write(dispatch, "invalid-kind", call(12, 1, 0, 0, {}));
  // Capability records (extension types 1 target, 2 capTable, 3 releases): a CapDescriptor
  // is {u32 id; u8 kind; ...} (kind 1: an export of the sender, 2: one of the receiver).
  const uint64_t senderHosted = uint64_t{1} << 32, receiverHosted = uint64_t{2} << 32;
  write(dispatch, "captable-imports-the-clients-objects",
        withRecords(call(1, 1, 0, 1, {}), {{2, {0, 5 | senderHosted, 6 | senderHosted}}}));
  write(dispatch, "captable-names-a-missing-export-of-the-server",
        withRecords(call(1, 1, 0, 1, {}), {{2, {0, 3 | receiverHosted}}}));
  write(dispatch, "target-an-export-never-made", withRecords(call(1, 2, 0, 1, {}), {{1, {77}}}));
  write(dispatch, "release-of-something-never-given",
        withRecords(call(9, 0, 3, 0, {}), {{3, {0, uint64_t{1} << 32 | 1}}}));
  write(dispatch, "stream-requests-one-failing-then-ping",
        join({call(10, 1, 0, 2, {structPtr(0, 0, 1), bytesPtr(0, 3), word("abc")}),
              call(10, 2, 0, 4, {structPtr(0, 1, 1), 7, bytesPtr(0, 4), word("bad")}),
              call(6, 3, 0, 0, {})}));
  return 0;
}
