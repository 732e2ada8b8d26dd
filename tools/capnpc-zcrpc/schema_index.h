// capnpc-zcrpc: the CodeGeneratorRequest's schema nodes and how capnpc-c++ names them,
// shared by the stub generator (capnpc_zcrpc.cc) and the accessor generator (accessors.cc).
#pragma once

#include <capnp/schema.capnp.h>

#include <algorithm>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace zcrpc::codegen {

namespace schema = capnp::schema;

inline constexpr uint64_t kNamespaceAnnotationId = 0xb9c6f99ebf805f2cull;  // $Cxx.namespace
inline constexpr uint64_t kNameAnnotationId = 0xf264a779fef191ceull;       // $Cxx.name
inline constexpr uint64_t kStreamResultId = 0x995f9a3377c0b16eull;         // capnp/stream.capnp

/// A schema the generated code cannot express. The message is complete (file and
/// interface included) and is printed after "capnpc-zcrpc: ".
class SchemaRefused final : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};


inline std::string toTitleCase(std::string_view name) {
  std::string out(name);
  if (!out.empty() && out[0] >= 'a' && out[0] <= 'z')
    out[0] = static_cast<char>(out[0] - 'a' + 'A');
  return out;
}

inline std::string hexId(uint64_t id) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%016" PRIx64 "ull", id);
  return buf;
}

template <typename Proto>
std::optional<std::string> annotationText(Proto proto, uint64_t annotationId) {
  for (auto annotation : proto.getAnnotations()) {
    if (annotation.getId() == annotationId && annotation.getValue().isText())
      return std::string(annotation.getValue().getText().cStr());
  }
  return std::nullopt;
}

/// The name capnpc-c++ gives a method or member: `$Cxx.name` if present, else the
/// schema name.
template <typename Proto>
std::string cppProtoName(Proto proto) {
  if (auto annotated = annotationText(proto, kNameAnnotationId)) return *annotated;
  return proto.getName().cStr();
}

/// How a generated header includes the capnpc-c++ header of a file imported as `importName`
/// (`import "/a/b.capnp"` -> `<a/b.capnp.h>`, `import "b.capnp"` -> `"b.capnp.h"`).
inline std::string includeFor(std::string_view importName) {
  // Appended piece by piece: GCC 12 at -O3 with sanitizers warns falsely (-Wrestrict) on
  // `"<" + std::string(...)`.
  const bool system = importName.starts_with("/");
  if (system) importName.remove_prefix(1);
  std::string out;
  out.reserve(importName.size() + 4);
  out += system ? '<' : '"';
  out += importName;
  out += system ? ".h>" : ".h\"";
  return out;
}

/// Writes `text` as `///` comment lines indented by `indent`.
inline void writeDocComment(std::ostream& out, std::string_view indent, std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  if (text.empty()) return;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.remove_suffix(1);
    // A trailing backslash would splice the next line (maybe code) into the comment.
    out << indent << "///" << (line.empty() ? "" : " ") << line << (line.ends_with('\\') ? "." : "")
        << '\n';
    start = end + 1;
  }
}

// ------------------------------------------------------------------------------------
// The schema: every node of the request by id, and how capnpc-c++ names them.

/// Read-only index over a CodeGeneratorRequest. Lives as long as the request's reader.
class SchemaIndex final {
 public:
  explicit SchemaIndex(schema::CodeGeneratorRequest::Reader request) {
    for (auto node : request.getNodes()) nodes_.emplace(node.getId(), node);
    for (auto info : request.getSourceInfo()) sourceInfo_.emplace(info.getId(), info);
    // A method's implicit `(a :A) -> (b :B)` structs have no scope (scopeId 0); capnpc-c++
    // nests them in the interface as `<Method>Params` / `<Method>Results`.
    for (auto node : request.getNodes()) {
      if (!node.isInterface()) continue;
      for (auto method : node.getInterface().getMethods()) {
        const std::string title = toTitleCase(cppProtoName(method));
        implicit_.emplace(method.getParamStructType(), Implicit{node.getId(), title + "Params"});
        implicit_.emplace(method.getResultStructType(), Implicit{node.getId(), title + "Results"});
      }
    }
  }

  /// The node `id`; throws SchemaRefused naming `context` when the request lacks it.
  schema::Node::Reader node(uint64_t id, std::string_view context) const {
    auto it = nodes_.find(id);
    if (it == nodes_.end())
      throw SchemaRefused(std::string(context) + ": the request has no schema node " + hexId(id));
    return it->second;
  }

  std::string docComment(uint64_t id) const {
    auto it = sourceInfo_.find(id);
    return it == sourceInfo_.end() ? std::string() : it->second.getDocComment().cStr();
  }
  std::string memberDocComment(uint64_t id, uint32_t index) const {
    auto it = sourceInfo_.find(id);
    if (it == sourceInfo_.end() || index >= it->second.getMembers().size()) return {};
    return it->second.getMembers()[index].getDocComment().cStr();
  }

  /// The file node that (transitively) contains node `id`.
  schema::Node::Reader fileOf(uint64_t id) const {
    schema::Node::Reader n = node(id, "scope lookup");
    for (int depth = 0; !n.isFile(); ++depth) {
      const uint64_t scope = scopeOf(n);
      if (scope == 0 || depth > 1000)
        throw SchemaRefused(std::string(n.getDisplayName().cStr()) + ": node has no enclosing file");
      n = node(scope, n.getDisplayName().cStr());
    }
    return n;
  }

  /// The node's name as written in its file: "Outer.Inner" (display name after the ':').
  static std::string schemaName(schema::Node::Reader n) {
    std::string_view display = n.getDisplayName().cStr();
    size_t colon = display.find(':');
    return std::string(colon == std::string_view::npos ? display : display.substr(colon + 1));
  }

  /// The C++ names of the scopes from the file down to `id` (inclusive), as capnpc-c++
  /// spells them: nested-node names, `$Cxx.name` overrides, TitleCased group fields.
  std::vector<std::string> cppScopePath(uint64_t id) const {
    std::vector<std::string> path;
    schema::Node::Reader n = node(id, "scope lookup");
    for (int depth = 0; !n.isFile(); ++depth) {
      const uint64_t scope = scopeOf(n);
      if (scope == 0 || depth > 1000)
        throw SchemaRefused(std::string(n.getDisplayName().cStr()) +
                            ": node has no enclosing file");
      schema::Node::Reader parent = node(scope, n.getDisplayName().cStr());
      path.push_back(unqualifiedCppName(n, parent));
      n = parent;
    }
    std::reverse(path.begin(), path.end());
    return path;
  }

  /// "::ns::Outer::Inner": the fully qualified C++ name capnpc-c++ gives node `id`.
  std::string cppFullName(uint64_t id) const {
    std::string out = cppNamespacePrefix(fileOf(id));
    for (const std::string& part : cppScopePath(id)) out += "::" + part;
    return out;
  }

  /// "::ns" for a file with `$Cxx.namespace("ns")`, "" for one without.
  static std::string cppNamespacePrefix(schema::Node::Reader file) {
    auto ns = annotationText(file, kNamespaceAnnotationId);
    if (!ns) return {};
    std::string_view text = *ns;
    if (text.starts_with("::")) text.remove_prefix(2);
    return "::" + std::string(text);
  }

  /// The node's scope: its scopeId, or for a method's implicit params/results struct the
  /// interface capnpc-c++ nests it in (0 for a file).
  uint64_t scopeOf(schema::Node::Reader n) const {
    if (n.getScopeId() != 0) return n.getScopeId();
    auto it = implicit_.find(n.getId());
    return it == implicit_.end() ? 0 : it->second.interfaceId;
  }

 private:
  struct Implicit {
    uint64_t interfaceId;
    std::string cppName;  ///< "EchoParams"
  };

  std::string unqualifiedCppName(schema::Node::Reader n, schema::Node::Reader parent) const {
    if (auto it = implicit_.find(n.getId()); it != implicit_.end() && n.getScopeId() == 0)
      return it->second.cppName;
    if (auto annotated = annotationText(n, kNameAnnotationId)) return *annotated;
    for (auto nested : parent.getNestedNodes())
      if (nested.getId() == n.getId()) return nested.getName().cStr();
    if (parent.isStruct()) {
      for (auto field : parent.getStruct().getFields())
        if (field.isGroup() && field.getGroup().getTypeId() == n.getId())
          return toTitleCase(cppProtoName(field));
    }
    throw SchemaRefused(std::string(n.getDisplayName().cStr()) +
                        ": its scope does not list it as a nested node");
  }

  std::unordered_map<uint64_t, schema::Node::Reader> nodes_;
  std::unordered_map<uint64_t, schema::Node::SourceInfo::Reader> sourceInfo_;
  std::unordered_map<uint64_t, Implicit> implicit_;
};


}  // namespace zcrpc::codegen
