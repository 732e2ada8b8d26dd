// capnpc-zcrpc — Cap'n Proto compiler plugin that writes zcrpc client stubs and service
// base classes (`<file>.zcrpc.h`) for every interface of the requested files.
//
// Run it the way capnpc-c++ is run, next to it:
//
//   capnp compile -oc++:OUT -ozcrpc:OUT foo.capnp     # capnpc-zcrpc on PATH
//   capnp compile -oc++:OUT -o/path/to/capnpc-zcrpc:OUT foo.capnp
//
// capnp starts the plugin with OUT as its working directory and the CodeGeneratorRequest
// on stdin; for each requested file it writes `<filename>.zcrpc.h` (the same relative
// path capnpc-c++ uses for `<filename>.h`). The naming rules are written down in
// docs/codegen.md and at the top of every generated header.
//
// Anything the generated code could not express correctly (generic interfaces or
// methods, generic parameter types, streaming methods, names that would collide) is
// refused: the plugin prints one line per problem on stderr, naming the file and the
// interface, writes nothing for that file and exits with status 1.

#include <capnp/schema.capnp.h>
#include <capnp/serialize.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "accessors.h"
#include "schema_index.h"

namespace zcrpc::codegen {
namespace {

/// C++20 keywords, and names that are macros in standard headers (NULL, assert, errno).
/// A method whose C++ name is one of these gets a trailing '_' as its service handler,
/// as capnpc-c++ does for its accessors.
const std::unordered_set<std::string_view>& cppReservedNames() {
  static const std::unordered_set<std::string_view> names = {
      "alignas",       "alignof",     "and",
      "and_eq",        "asm",         "auto",
      "bitand",        "bitor",       "bool",
      "break",         "case",        "catch",
      "char",          "char8_t",     "char16_t",
      "char32_t",      "class",       "compl",
      "concept",       "const",       "consteval",
      "constexpr",     "constinit",   "const_cast",
      "continue",      "co_await",    "co_return",
      "co_yield",      "decltype",    "default",
      "delete",        "do",          "double",
      "dynamic_cast",  "else",        "enum",
      "explicit",      "export",      "extern",
      "false",         "float",       "for",
      "friend",        "goto",        "if",
      "inline",        "int",         "long",
      "mutable",       "namespace",   "new",
      "noexcept",      "not",         "not_eq",
      "nullptr",       "operator",    "or",
      "or_eq",         "private",     "protected",
      "public",        "register",    "reinterpret_cast",
      "requires",      "return",      "short",
      "signed",        "sizeof",      "static",
      "static_assert", "static_cast", "struct",
      "switch",        "template",    "this",
      "thread_local",  "throw",       "true",
      "try",           "typedef",     "typeid",
      "typename",      "union",       "unsigned",
      "using",         "virtual",     "void",
      "volatile",      "wchar_t",     "while",
      "xor",           "xor_eq",      "NULL",
      "assert",        "errno",
  };
  return names;
}

/// Members the generated service class already has; a method named like one of them
/// gets a trailing '_' as its handler so it cannot hide or overload them.
bool isServiceMemberName(std::string_view name) {
  return name == "dispatch" || name == "interfaceIds" || name == "methodName" || name == "streams";
}

// ------------------------------------------------------------------------------------
// The interfaces' methods.

/// One method as the stubs see it: the interface that declares it (own or a base).
struct MethodInfo {
  uint64_t interfaceId;
  std::string interfaceName;  ///< schema name of the declaring interface, e.g. "Outer.Base"
  uint16_t ordinal;
  std::string cppName;     ///< capnpc-c++ name ($Cxx.name or the schema name)
  std::string paramsType;  ///< fully qualified C++ type
  std::string resultsType;
  std::string docComment;
  std::string signature;  ///< "Base.bar @2" for the comment line
  /// "Outer.Base.bar": the declaring interface's schema name (its scope path, without the
  /// file) and the method's schema name, as metrics, tools and tracers show the method.
  std::string fullName;
  /// `-> stream`: the client's request is a zcrpc::StreamRequest, the handler's a StreamCall.
  bool streaming = false;
};

// ------------------------------------------------------------------------------------
// One requested file → one header.

/// Generates `<file>.zcrpc.h` for one requested file. Collects every refusal instead of
/// stopping at the first, so one run reports all of them.
class FileGenerator final {
 public:
  FileGenerator(const SchemaIndex& index, schema::CodeGeneratorRequest::RequestedFile::Reader file)
      : index_(index),
        requested_(file),
        fileName_(file.getFilename().cStr()),
        fileNode_(index.node(file.getId(), file.getFilename().cStr())),
        accessors_(index, file) {}

  /// The header text; throws SchemaRefused (all problems, one per line) if refused.
  std::string generate() {
    collectInterfaces(fileNode_);
    checkTopLevelCollisions();
    std::ostringstream body;
    for (const InterfaceStub& stub : stubs_) {
      try {
        writeInterface(body, stub);
      } catch (const SchemaRefused& e) {
        problems_.push_back(e.what());
      }
    }
    if (!problems_.empty()) {
      std::string all;
      for (const std::string& p : problems_) all += (all.empty() ? "" : "\n") + p;
      throw SchemaRefused(all);
    }
    std::ostringstream out;
    writePrologue(out);
    out << body.str();
    writeEpilogue(out);
    return out.str();
  }

 private:
  struct InterfaceStub {
    uint64_t id;
    std::string schemaName;  ///< "Outer.Inner"
    std::string stubPrefix;  ///< "Outer_Inner"
  };

  std::string refusal(const InterfaceStub& stub, std::string_view what) const {
    return fileName_ + ": interface " + stub.schemaName + " " + std::string(what);
  }

  /// Walks the file's nested nodes (structs and interfaces nest further), depth first in
  /// declaration order, and records every interface.
  void collectInterfaces(schema::Node::Reader scope) {
    for (auto nested : scope.getNestedNodes()) {
      schema::Node::Reader n;
      try {
        n = index_.node(nested.getId(), fileName_);
      } catch (const SchemaRefused& e) {
        problems_.push_back(e.what());
        continue;
      }
      if (n.isInterface()) {
        InterfaceStub stub{n.getId(), SchemaIndex::schemaName(n), {}};
        try {
          for (const std::string& part : index_.cppScopePath(n.getId()))
            stub.stubPrefix += (stub.stubPrefix.empty() ? "" : "_") + part;
        } catch (const SchemaRefused& e) {
          problems_.push_back(e.what());
          continue;
        }
        stubs_.push_back(std::move(stub));
      }
      if (n.isStruct() || n.isInterface()) collectInterfaces(n);
    }
  }

  /// The generated classes live in the file's namespace beside capnpc-c++'s top-level
  /// types; refuse a file where one name would mean two things.
  void checkTopLevelCollisions() {
    std::map<std::string, std::string> taken;  // C++ name -> what it is
    for (auto nested : fileNode_.getNestedNodes()) {
      std::string name = nested.getName().cStr();
      try {
        if (auto annotated =
                annotationText(index_.node(nested.getId(), fileName_), kNameAnnotationId))
          name = *annotated;
      } catch (const SchemaRefused&) {
      }
      taken.emplace(name, "the schema's own " + std::string(nested.getName().cStr()));
    }
    for (const InterfaceStub& stub : stubs_) {
      for (const char* suffix : {"Client", "Service"}) {
        std::string name = stub.stubPrefix + suffix;
        auto [it, inserted] =
            taken.emplace(name, "the " + std::string(suffix) + " of " + stub.schemaName);
        if (!inserted)
          problems_.push_back(refusal(stub, "would generate " + name + ", which is already " +
                                                it->second + "; rename one of them"));
      }
    }
  }

  /// How messages and comments name node `id`: "Outer.Inner" in this file,
  /// "other.capnp:Outer.Inner" in another.
  std::string displayFor(uint64_t id) const {
    schema::Node::Reader n = index_.node(id, fileName_);
    if (index_.fileOf(id).getId() == fileNode_.getId()) return SchemaIndex::schemaName(n);
    return n.getDisplayName().cStr();
  }

  /// Records that the generated header uses node `id` (a struct or interface), so the
  /// header of the file declaring it is included.
  void noteUse(uint64_t id) {
    schema::Node::Reader file = index_.fileOf(id);
    if (file.getId() == fileNode_.getId()) return;
    for (auto import : requested_.getImports()) {
      if (import.getId() == file.getId()) {
        includes_.insert(includeFor(import.getName().cStr()));
        return;
      }
    }
    // Reached through an alias in an imported file: capnp names the file by its path
    // below the import directory, which is where its header sits on the include path.
    includes_.insert("\"" + std::string(file.getDisplayName().cStr()) + ".h\"");
  }

  /// The C++ type of a method's params or results struct.
  std::string structTypeName(const InterfaceStub& stub, schema::Node::Reader iface,
                             schema::Method::Reader method, uint64_t structId,
                             schema::Brand::Reader brand, std::string_view role) {
    std::string where =
        "has the method " + displayFor(iface.getId()) + "." + std::string(method.getName().cStr());
    schema::Node::Reader s = index_.node(structId, fileName_ + ": " + where);
    if (brand.getScopes().size() > 0 || s.getIsGeneric() || s.getParameters().size() > 0)
      throw SchemaRefused(refusal(stub, where + ", whose " + std::string(role) + " type " +
                                            displayFor(structId) +
                                            " is generic; zcrpc does not support generic types"));
    if (!s.isStruct())
      throw SchemaRefused(
          refusal(stub, where + ", whose " + std::string(role) + " type is not a struct"));
    std::set<uint64_t> visited;
    if (auto path = capabilityIn(structId, visited))
      throw SchemaRefused(refusal(stub, where + ", whose " + std::string(role) + " hold " + *path));
    if (s.getScopeId() == 0) {
      // Implicit `(a :A, b :B)` list: capnpc-c++ nests it in the interface as
      // `<MethodTitleCase>Params` / `Results`.
      noteUse(iface.getId());
      accessors_.addRoot(structId);
      return index_.cppFullName(iface.getId()) + "::" + toTitleCase(cppProtoName(method)) +
             (role == "params" ? "Params" : "Results");
    }
    noteUse(structId);
    accessors_.addRoot(structId);
    return index_.cppFullName(structId);
  }

  /// The first field under struct `id` that holds capabilities in a way zcrpc does not carry
  /// (a capability-constrained AnyPointer), searching nested structs, lists and groups, as
  /// "has <path>, <why>"; nullopt if there is none. Interface fields and lists of them are
  /// carried (zcrpc::Capability).
  std::optional<std::string> capabilityIn(uint64_t id, std::set<uint64_t>& visited) {
    if (!visited.insert(id).second) return std::nullopt;
    schema::Node::Reader n = index_.node(id, fileName_);
    if (!n.isStruct()) return std::nullopt;
    for (auto field : n.getStruct().getFields()) {
      std::string name = field.getName().cStr();
      if (field.isGroup()) {
        if (auto inner = capabilityIn(field.getGroup().getTypeId(), visited))
          return name + "." + *inner;
        continue;
      }
      auto type = field.getSlot().getType();
      while (type.isList()) type = type.getList().getElementType();
      if (type.isAnyPointer() && type.getAnyPointer().isUnconstrained() &&
          type.getAnyPointer().getUnconstrained().isCapability())
        return name + ", an untyped capability (zcrpc carries typed interface fields only)";
      if (type.isStruct()) {
        if (auto inner = capabilityIn(type.getStruct().getTypeId(), visited))
          return name + "." + *inner;
      }
    }
    return std::nullopt;
  }

  /// Own methods first, then each base's (depth first, declaration order), each interface
  /// once. `ids` receives the interface ids in the same order.
  void flatten(const InterfaceStub& stub, uint64_t id, std::vector<uint64_t>& ids,
               std::vector<MethodInfo>& methods, int depth) {
    if (std::find(ids.begin(), ids.end(), id) != ids.end()) return;
    if (depth > 64) throw SchemaRefused(refusal(stub, "has an inheritance chain deeper than 64"));
    schema::Node::Reader iface = index_.node(id, fileName_ + ": interface " + stub.schemaName);
    std::string ifaceName = displayFor(id);
    if (!iface.isInterface())
      throw SchemaRefused(
          refusal(stub, "extends " + displayFor(id) + ", which is not an interface"));
    if (iface.getIsGeneric() || iface.getParameters().size() > 0)
      throw SchemaRefused(
          refusal(stub, id == stub.id ? "is generic; zcrpc does not support generic interfaces"
                                      : "extends the generic interface " + displayFor(id) +
                                            "; zcrpc does not support generic interfaces"));
    ids.push_back(id);
    auto methodList = iface.getInterface().getMethods();
    for (uint32_t i = 0; i < methodList.size(); ++i) {
      auto method = methodList[i];
      std::string where = ifaceName + "." + method.getName().cStr();
      if (method.getImplicitParameters().size() > 0)
        throw SchemaRefused(refusal(
            stub, "has the generic method " + where + "; zcrpc does not support generic methods"));
      if (i > UINT16_MAX) throw SchemaRefused(refusal(stub, "has more than 65536 methods"));
      MethodInfo info;
      info.interfaceId = id;
      info.interfaceName = ifaceName;
      info.ordinal = static_cast<uint16_t>(i);
      info.cppName = cppProtoName(method);
      info.paramsType = structTypeName(stub, iface, method, method.getParamStructType(),
                                       method.getParamBrand(), "params");
      info.streaming = method.getResultStructType() == kStreamResultId;
      info.resultsType = info.streaming ? "::capnp::StreamResult"
                                        : structTypeName(stub, iface, method,
                                                         method.getResultStructType(),
                                                         method.getResultBrand(), "results");
      info.docComment = index_.memberDocComment(id, i);
      info.signature = where + " @" + std::to_string(i);
      info.fullName = SchemaIndex::schemaName(iface) + "." + method.getName().cStr();
      methods.push_back(std::move(info));
    }
    for (auto super : iface.getInterface().getSuperclasses()) {
      if (super.getBrand().getScopes().size() > 0)
        throw SchemaRefused(refusal(stub, "extends the generic interface " +
                                              displayFor(super.getId()) +
                                              "; zcrpc does not support generic interfaces"));
      if (super.getId() != id) noteUse(super.getId());
      flatten(stub, super.getId(), ids, methods, depth + 1);
    }
  }

  static std::string handlerName(const MethodInfo& m) {
    if (cppReservedNames().count(m.cppName) || isServiceMemberName(m.cppName))
      return m.cppName + "_";
    return m.cppName;
  }

  void writeInterface(std::ostream& out, const InterfaceStub& stub) {
    std::vector<uint64_t> ids;
    std::vector<MethodInfo> methods;
    flatten(stub, stub.id, ids, methods, 0);

    // One C++ name may not mean two methods (an override of a base method's name, or
    // two bases both declaring `bar`): the client's barRequest() would be ambiguous.
    std::map<std::string, const MethodInfo*> byName;
    for (const MethodInfo& m : methods) {
      for (const std::string& name :
           {m.cppName + "Request", handlerName(m), toTitleCase(m.cppName)}) {
        auto [it, inserted] = byName.emplace(name, &m);
        if (!inserted && it->second != &m)
          throw SchemaRefused(refusal(stub, "has two methods that map to the C++ name " + name +
                                                " (" + it->second->signature + " and " +
                                                m.signature + "); rename one or use $Cxx.name"));
      }
    }

    const std::string client = stub.stubPrefix + "Client";
    const std::string service = stub.stubPrefix + "Service";
    const std::string doc = index_.docComment(stub.id);
    std::string bases;
    for (size_t i = 1; i < ids.size(); ++i) bases += (i == 1 ? "" : ", ") + displayFor(ids[i]);

    // ---- client
    out << "\n// " << std::string(86, '-') << "\n// interface " << stub.schemaName << " @"
        << hexId(stub.id).substr(0, 18) << (bases.empty() ? "" : " extends " + bases) << "\n\n";
    writeDocComment(out, "", doc);
    out << "/// Client stub of `" << stub.schemaName << "`"
        << (bases.empty() ? "" : " (with the methods of " + bases + ")") << ".\n"
        << "/// Each `<method>Request()` starts a request in place in the channel's transport\n"
        << "/// memory; fill `params()` and send it once with call(), callAsync() or "
           "sendOneWay().\n"
        << "/// Calls go to the Channel's bootstrap services (FooClient(channel)), or to the\n"
        << "/// object a capability refers to (FooClient(capability), e.g. read from an\n"
        << "/// interface field). Borrows the Channel, which must outlive it; cheap to copy.\n"
        << "/// Threads: the thread of the Channel (of the capability's connection) only.\n"
        << "class " << client << " final {\n"
        << " public:\n"
        << "  static constexpr uint64_t kInterfaceId = " << hexId(stub.id) << ";\n\n";
    bool streams = false;
    for (const MethodInfo& m : methods) streams |= m.streaming;
    for (const MethodInfo& m : methods)
      out << "  using " << toTitleCase(m.cppName) << "Request =\n      "
          << (m.streaming ? "::zcrpc::StreamRequest<" + m.paramsType + ">;\n"
                          : "::zcrpc::Request<" + m.paramsType + ", " + m.resultsType + ">;\n");
    if (!methods.empty()) out << "\n";
    out << "  explicit " << client
        << "(::zcrpc::Channel& channel) noexcept : channel_(&channel) {}\n"
        << "  /// Calls on the object `capability` refers to (an import; see zcrpc::Capability).\n"
        << "  explicit " << client
        << "(::zcrpc::Capability capability) noexcept : capability_(std::move(capability)) {}\n"
        << "  /// The Channel of a bootstrap client (null for one made from a capability).\n"
        << "  ::zcrpc::Channel* channel() const noexcept { return channel_; }\n"
        << "  /// The capability of a client made from one (null for a bootstrap client).\n"
        << "  const ::zcrpc::Capability& capability() const noexcept { return capability_; }\n";
    if (streams)
      out << "  /// The chunks of this client's streams in flight (shared by its copies).\n"
          << "  ::zcrpc::StreamFlow& streamFlow() const noexcept { return *flow_; }\n";
    for (const MethodInfo& m : methods) {
      out << "\n";
      writeDocComment(out, "  ", m.docComment);
      out << "  /// " << m.signature
          << (m.interfaceId == stub.id
                  ? ""
                  : ", inherited (interface " + hexId(m.interfaceId).substr(0, 18) + ")")
          << ". sizeHintWords: first segment, in words (0: default).\n"
          << "  " << toTitleCase(m.cppName) << "Request " << m.cppName
          << "Request(uint32_t sizeHintWords = 0) const {\n";
      // A stream's chunks go with the client's flow; any other call first waits for them
      // (and fails with the first error one met: Cap'n Proto's semantics).
      const std::string flowArg = m.streaming ? ", flow_" : "";
      if (streams && !m.streaming) out << "    flow_->finish();\n";
      out << "    if (channel_) [[likely]]\n"
          << "      return {*channel_, " << hexId(m.interfaceId) << ", " << m.ordinal
          << ", sizeHintWords, \"" << m.fullName << "\"" << flowArg << "};\n"
          << "    return {capability_, " << hexId(m.interfaceId) << ", " << m.ordinal
          << ", sizeHintWords, \"" << m.fullName << "\"" << flowArg << "};\n"
          << "  }\n";
    }
    out << "\n private:\n  ::zcrpc::Channel* channel_ = nullptr;  // borrowed\n"
        << "  ::zcrpc::Capability capability_;\n"
        << (streams ? "  std::shared_ptr<::zcrpc::StreamFlow> flow_ = "
                      "std::make_shared<::zcrpc::StreamFlow>();\n"
                    : "")
        << "};\n\n";

    // ---- service
    writeDocComment(out, "", doc);
    out << "/// Service base of `" << stub.schemaName << "`: derive, implement every handler and\n"
        << "/// register the object with zcrpc::Server::addService(), which routes calls to "
        << (ids.size() > 1 ? "this\n/// interface and to " + bases : "it") << ".\n"
        << "/// A handler reads `call.params()` in place and writes `call.results()` in place\n"
        << "/// (or calls `call.defer()` and answers later); an exception it throws reaches the\n"
        << "/// caller as a typed zcrpc error. Threads: handlers run on the server's polling\n"
        << "/// thread of the connection (one at a time per connection; with several worker\n"
        << "/// threads, different connections may call concurrently).\n"
        << "class " << service << " : public ::zcrpc::Service {\n"
        << " public:\n"
        << "  static constexpr uint64_t kInterfaceId = " << hexId(stub.id) << ";\n"
        << "  /// Interfaces this service answers: its own, then those it extends.\n"
        << "  static constexpr uint64_t kInterfaceIds[] = {\n";
    for (uint64_t id : ids) out << "      " << hexId(id) << ",  // " << displayFor(id) << "\n";
    out << "  };\n\n";
    for (const MethodInfo& m : methods)
      out << "  using " << toTitleCase(m.cppName) << "Call =\n      "
          << (m.streaming ? "::zcrpc::StreamCall<" + m.paramsType + ">;\n"
                          : "::zcrpc::ServerCall<" + m.paramsType + ", " + m.resultsType + ">;\n");
    if (!methods.empty()) out << "\n";
    for (const MethodInfo& m : methods) {
      writeDocComment(out, "  ", m.docComment);
      out << "  /// " << m.signature << (m.interfaceId == stub.id ? "" : ", inherited") << ".\n"
          << "  virtual void " << handlerName(m) << "(" << toTitleCase(m.cppName)
          << "Call& call) = 0;\n";
    }
    if (!methods.empty()) out << "\n";
    out << "  std::span<const uint64_t> interfaceIds() const noexcept override { return "
           "kInterfaceIds; }\n\n";
    writeMethodName(out, ids, methods);
    writeStreams(out, methods);
    out
        << "  /// Runs the handler of (interfaceId, methodId); false for a method this\n"
        << "  /// interface does not have (the caller then gets zcrpc::Unimplemented).\n"
        << "  bool dispatch(uint64_t interfaceId, uint16_t methodId,\n"
        << "                ::zcrpc::CallContext& context) override {\n";
    if (methods.empty()) {
      out << "    (void)interfaceId;\n    (void)methodId;\n    (void)context;\n    return false;\n";
    } else {
      out << "    switch (interfaceId) {\n";
      for (uint64_t id : ids) {
        out << "      case " << hexId(id) << ":  // " << displayFor(id) << "\n"
            << "        switch (methodId) {\n";
        for (const MethodInfo& m : methods) {
          if (m.interfaceId != id) continue;
          out << "          case " << m.ordinal << ": {\n"
              << "            " << toTitleCase(m.cppName) << "Call call(context);\n"
              << "            " << handlerName(m) << "(call);\n"
              << "            return true;\n"
              << "          }\n";
        }
        out << "          default:\n"
            << "            return false;\n"
            << "        }\n";
      }
      out << "      default:\n"
          << "        return false;\n"
          << "    }\n";
    }
    out << "  }\n};\n";
    generatedAny_ = true;
  }

  /// FooService::methodName(): "Interface.method" (a string literal) for every method it
  /// dispatches, so the server's metrics, zcrpc-stat and tracers can name calls.
  static void writeMethodName(std::ostream& out, const std::vector<uint64_t>& ids,
                              const std::vector<MethodInfo>& methods) {
    out << "  /// \"Interface.method\" of a method this service dispatches (a string literal),\n"
        << "  /// as metrics, zcrpc-stat and tracers show it; empty for any other.\n"
        << "  std::string_view methodName(uint64_t interfaceId,\n"
        << "                              uint16_t methodId) const noexcept override {\n";
    if (methods.empty()) {
      out << "    (void)interfaceId;\n    (void)methodId;\n    return {};\n  }\n\n";
      return;
    }
    out << "    switch (interfaceId) {\n";
    for (uint64_t id : ids) {
      bool any = false;
      for (const MethodInfo& m : methods) any |= m.interfaceId == id;
      if (!any) continue;
      out << "      case " << hexId(id) << ":\n        switch (methodId) {\n";
      for (const MethodInfo& m : methods)
        if (m.interfaceId == id)
          out << "          case " << m.ordinal << ": return \"" << m.fullName << "\";\n";
      out << "          default: return {};\n        }\n";
    }
    out << "      default:\n        return {};\n    }\n  }\n\n";
  }

  /// FooService::streams(): its `-> stream` methods (an interface without any keeps the
  /// base's answer, false for all).
  static void writeStreams(std::ostream& out, const std::vector<MethodInfo>& methods) {
    std::map<uint64_t, std::vector<uint16_t>> streaming;  // by interface, in schema order
    for (const MethodInfo& m : methods)
      if (m.streaming) streaming[m.interfaceId].push_back(m.ordinal);
    if (streaming.empty()) return;
    out << "  /// True for the `-> stream` methods this service dispatches.\n"
        << "  bool streams(uint64_t interfaceId, uint16_t methodId) const noexcept override {\n"
        << "    switch (interfaceId) {\n";
    for (const auto& [id, ordinals] : streaming) {
      out << "      case " << hexId(id) << ":\n        return ";
      for (size_t i = 0; i < ordinals.size(); ++i)
        out << (i ? " || " : "") << "methodId == " << ordinals[i];
      out << ";\n";
    }
    out << "      default:\n        return false;\n    }\n  }\n\n";
  }

  void writePrologue(std::ostream& out) const {
    std::string base = fileName_.substr(fileName_.rfind('/') + 1);
    out << "// Generated by capnpc-zcrpc from " << fileName_ << ". Do not edit.\n"
        << "//\n"
        << "// zcrpc client stubs and service base classes (docs/codegen.md). Naming rules:\n"
        << "//   * interface `Foo` -> `FooClient` and `FooService` in the file's $Cxx.namespace;\n"
        << "//     a nested interface `Outer.Inner` -> `Outer_InnerClient` / `Outer_InnerService`\n"
        << "//     (the C++ scope names joined by '_', which schema names cannot contain);\n"
        << "//   * method `bar` -> `FooClient::barRequest()` returning `FooClient::BarRequest`\n"
        << "//     (a zcrpc::Request) and the pure virtual `FooService::bar(BarCall&)`; a\n"
        << "//     handler whose name is a C++ keyword, `dispatch`, `interfaceIds` or\n"
        << "//     `methodName` gets a trailing '_' (`delete_`);\n"
        << "//   * every method is named \"Interface.method\" (schema names) for metrics, tools\n"
        << "//     and tracers: passed with each request, returned by methodName();\n"
        << "//   * the methods of every interface `Foo` extends (transitively) are members too,\n"
        << "//     sent with the base's interface id; FooService answers those ids as well;\n"
        << "//   * params/results are the structs capnpc-c++ generates: `Foo::BarParams` /\n"
        << "//     `Foo::BarResults` for `bar @0 (...) -> (...)`, or the named struct types;\n"
        << "//   * `FooService::BarCall::params()` and `results()`, `FooClient::BarRequest::params()`\n"
        << "//     and its response's `results()` are zcrpc's own accessors of those structs\n"
        << "//     (zcrpc::wire::Reader<T> / Builder<T>, below), with capnpc-c++'s method names;\n"
        << "//     `paramsCapnp()` / `resultsCapnp()` give capnpc-c++'s Reader and Builder.\n"
        << "#pragma once\n\n"
        << "#include <cstdint>\n#include <span>\n#include <string_view>\n\n"
        << "#include <zcrpc/rpc.h>\n#include <zcrpc/wire.h>\n\n"
        << "#include \"" << base << ".h\"\n";
    std::set<std::string> includes = includes_;
    includes.merge(accessors_.includes());
    for (const std::string& inc : includes) out << "#include " << inc << "\n";
    accessors_.write(out);
    std::string ns = SchemaIndex::cppNamespacePrefix(fileNode_);
    if (!ns.empty()) out << "\nnamespace " << ns.substr(2) << " {\n";
  }

  void writeEpilogue(std::ostream& out) const {
    std::string ns = SchemaIndex::cppNamespacePrefix(fileNode_);
    if (!generatedAny_) out << "\n// (" << fileName_ << " declares no interfaces.)\n";
    if (!ns.empty()) out << "\n}  // namespace " << ns.substr(2) << "\n";
  }

  const SchemaIndex& index_;
  schema::CodeGeneratorRequest::RequestedFile::Reader requested_;
  std::string fileName_;
  schema::Node::Reader fileNode_;
  std::vector<InterfaceStub> stubs_;
  std::set<std::string> includes_;
  std::vector<std::string> problems_;
  bool generatedAny_ = false;
  AccessorWriter accessors_;  // the structs' wire accessors (accessors.cc)
};

/// Writes `text` to `path` (relative to the working directory, which capnp sets to the
/// output directory), creating parent directories. Throws std::runtime_error.
void writeFile(const std::string& path, const std::string& text) {
  std::filesystem::path p(path);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << text;
  f.close();
  if (!f) throw std::runtime_error("cannot write " + path);
}

int run() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = uint64_t{1} << 40;  // every node of every imported file
  options.nestingLimit = 256;
  capnp::StreamFdMessageReader message(STDIN_FILENO, options);
  auto request = message.getRoot<schema::CodeGeneratorRequest>();
  SchemaIndex index(request);

  int status = 0;
  for (auto file : request.getRequestedFiles()) {
    std::string fileName = file.getFilename().cStr();
    try {
      FileGenerator generator(index, file);
      std::string text = generator.generate();
      writeFile(fileName + ".zcrpc.h", text);
    } catch (const SchemaRefused& e) {
      std::string_view all = e.what();
      while (!all.empty()) {
        size_t nl = all.find('\n');
        std::cerr << "capnpc-zcrpc: " << all.substr(0, nl) << '\n';
        all = nl == std::string_view::npos ? std::string_view() : all.substr(nl + 1);
      }
      status = 1;
    } catch (const std::exception& e) {
      std::cerr << "capnpc-zcrpc: " << fileName << ": " << e.what() << '\n';
      status = 1;
    }
  }
  return status;
}

}  // namespace
}  // namespace zcrpc::codegen

int main(int argc, char** argv) {
  if (argc > 1) {
    std::string_view arg = argv[1];
    if (arg == "--version") {
      std::cout << "capnpc-zcrpc (zcrpc) " ZCRPC_VERSION "\n";
      return 0;
    }
    std::cerr << "capnpc-zcrpc is a Cap'n Proto compiler plugin; run it through capnp:\n"
                 "  capnp compile -oc++:OUT -ozcrpc:OUT file.capnp\n";
    return arg == "--help" ? 0 : 2;
  }
  try {
    return zcrpc::codegen::run();
  } catch (const kj::Exception& e) {
    std::cerr << "capnpc-zcrpc: cannot read the CodeGeneratorRequest on stdin: "
              << e.getDescription().cStr() << '\n';
  } catch (const std::exception& e) {
    std::cerr << "capnpc-zcrpc: " << e.what() << '\n';
  }
  return 1;
}
