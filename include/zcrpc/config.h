// zcrpc — typed settings from defaults, a TOML file, ZCRPC_* variables and URI queries.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zcrpc/rpc.h"
#include "zcrpc/shm.h"
#include "zcrpc/tcp.h"
#include "zcrpc/transport.h"

namespace zcrpc {

enum class SettingType : uint8_t { kBool, kInt, kSize, kDuration, kString, kEnum, kList };

/// One row of the settings table.
struct SettingInfo {
  std::string_view name;          ///< TOML key and URI query key, e.g. "ring_bytes"
  SettingType type;
  std::string_view defaultValue;  ///< as text, in the syntax the setting accepts
  std::string_view env;           ///< environment variable, e.g. "ZCRPC_RING_BYTES"
  std::string_view help;
  std::string_view choices;       ///< kEnum: "a|b|c"
};

/// Every setting zcrpc knows, in documentation order.
std::span<const SettingInfo> settingsTable() noexcept;

/// Where a setting's value came from, lowest priority first.
enum class SettingSource : uint8_t { kDefault, kFile, kEnvironment, kUri, kCode };
std::string_view settingSourceName(SettingSource source) noexcept;

/// Settings fed, in rising priority, by defaults, a TOML file, ZCRPC_* environment
/// variables and URI query parameters (and explicit set() calls). Every value is checked
/// when it is set; a bad one throws InvalidArgument naming its source (file and key,
/// variable, or URI) and what was expected. Threads: read from any thread once built.
class Config final {
 public:
  /// Defaults only.
  Config();
  /// Defaults, then the file named by ZCRPC_CONFIG (if set), then the environment.
  static Config load();

  void loadFile(const std::string& path);
  void loadTomlString(std::string_view toml, const std::string& origin);
  /// Applies every ZCRPC_* variable of the table found in the environment. A ZCRPC_*
  /// variable that is no setting (nor ZCRPC_CONFIG) is ignored with a warning naming the
  /// nearest setting's variable; ZCRPC_TEST_* (the project's own test knobs) silently.
  void loadEnvironment();
  /// Applies `key=value&...` (the part after '?'); `uri` names the source in errors.
  void applyQuery(std::string_view query, std::string_view uri);
  void set(std::string_view name, std::string_view value, SettingSource source,
           std::string origin);

  bool flag(std::string_view name) const;
  int64_t integer(std::string_view name) const;
  uint64_t size(std::string_view name) const;
  std::chrono::nanoseconds duration(std::string_view name) const;
  const std::string& text(std::string_view name) const;
  std::vector<std::string> list(std::string_view name) const;

  /// What was ignored while loading, one line each, naming the source and, when one is
  /// near, the name probably meant: a ZCRPC_* variable that is no setting, a TOML table or
  /// key outside [zcrpc] in a file that has one. Each is also logged (zcrpc/log.h, level
  /// warning) when it is found. Not errors: an unknown key where zcrpc reads settings
  /// still throws InvalidArgument.
  const std::vector<std::string>& warnings() const noexcept { return warnings_; }

  struct Effective {
    std::string name;
    std::string value;
    SettingSource source;
    std::string origin;  ///< file:key, variable name, URI, or "default"
  };
  std::vector<Effective> effective() const;
  /// The settings reference: name, type, default, variable, help (Markdown table).
  static std::string reference();

  ConnectionOptions connectionOptions() const;
  ChannelOptions channelOptions() const;
  ServerOptions serverOptions() const;
  CredentialPolicy credentialPolicy() const;
  ShmListenOptions shmListenOptions() const;
  TcpOptions tcpOptions() const;
  /// Ordered transport preference ("shm", "rdma", "tcp").
  std::vector<std::string> transports() const;

 private:
  struct Value {
    std::string text;
    SettingSource source = SettingSource::kDefault;
    std::string origin = "default";
  };
  const Value& value(std::string_view name, SettingType expected) const;
  void warn(std::string text);
  std::map<std::string, Value, std::less<>> values_;
  std::vector<std::string> warnings_;
};

/// Splits "scheme://rest?query" into its parts (no validation of `rest`).
struct EndpointUri {
  std::string scheme;
  std::string address;  ///< shm: the name; tcp/rdma: host:port
  std::string query;
};
EndpointUri parseEndpoint(std::string_view uri);

}  // namespace zcrpc
