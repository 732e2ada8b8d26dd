// capnpc-zcrpc: generated wire accessors (see accessors.h and docs/codegen.md).
//
// For each covered struct `Foo` (C++ `::ns::Foo`) the header gets, in `ns::zcrpc_wire`, a tag
// type `Foo` (sizes, default values) with `Foo::Reader` and `Foo::Builder`, and the
// specialisation zcrpc::wire::Accessors<::ns::Foo> that makes them what zcrpc::wire::Reader<>
// and Builder<> name. The code comes in four phases, each type's guarded on its own, so that
// types referring to each other (and headers sharing types) compile in any order: tags,
// class definitions (member declarations only), then the inline member definitions.
#include "accessors.h"

#include <capnp/any.h>
#include <capnp/message.h>

#include <cinttypes>
#include <cstring>
#include <map>
#include <sstream>
#include <vector>

namespace zcrpc::codegen {
namespace {

constexpr uint16_t kNoDiscriminant = 0xffff;

std::string macroId(uint64_t id) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016" PRIX64, id);
  return buf;
}

/// A C++ string literal of `bytes` (octal escapes for anything not plainly printable).
std::string cppStringLiteral(std::string_view bytes) {
  std::string out = "\"";
  for (unsigned char c : bytes) {
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '?') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\%03o", c);
      out += buf;
    }
  }
  return out + "\"";
}

/// Bytes of a primitive, as the wire holds them: what a default XORs with.
uint64_t primitiveBits(schema::Value::Reader v) {
  switch (v.which()) {
    case schema::Value::BOOL: return v.getBool() ? 1 : 0;
    case schema::Value::INT8: return static_cast<uint8_t>(v.getInt8());
    case schema::Value::INT16: return static_cast<uint16_t>(v.getInt16());
    case schema::Value::INT32: return static_cast<uint32_t>(v.getInt32());
    case schema::Value::INT64: return static_cast<uint64_t>(v.getInt64());
    case schema::Value::UINT8: return v.getUint8();
    case schema::Value::UINT16: return v.getUint16();
    case schema::Value::UINT32: return v.getUint32();
    case schema::Value::UINT64: return v.getUint64();
    case schema::Value::FLOAT32: {
      const float f = v.getFloat32();
      uint32_t bits;
      std::memcpy(&bits, &f, sizeof bits);
      return bits;
    }
    case schema::Value::FLOAT64: {
      const double d = v.getFloat64();
      uint64_t bits;
      std::memcpy(&bits, &d, sizeof bits);
      return bits;
    }
    case schema::Value::ENUM: return v.getEnum();
    default: return 0;
  }
}

/// The words of a default struct or list value: a single-segment message whose root pointer
/// (word 0) points to a copy of it. Empty when there is no default.
std::vector<uint64_t> defaultWords(capnp::AnyPointer::Reader value) {
  if (value.isNull()) return {};
  const size_t words = value.targetSize().wordCount + 1;
  capnp::MallocMessageBuilder message(static_cast<capnp::uint>(words + 8),
                                      capnp::AllocationStrategy::FIXED_SIZE);
  message.getRoot<capnp::AnyPointer>().set(value);
  auto segments = message.getSegmentsForOutput();
  if (segments.size() != 1) throw SchemaRefused("a default value did not fit one segment");
  std::vector<uint64_t> out(segments[0].size());
  std::memcpy(out.data(), segments[0].begin(), out.size() * sizeof(uint64_t));
  return out;
}

struct PrimitiveInfo {
  const char* cppType;   ///< what getters return
  const char* maskType;  ///< what the default XORs as (zcrpc::wire::_::MaskOf)
};

/// Void, Bool and the numeric types; nullptr for others.
const PrimitiveInfo* primitive(schema::Type::Which w) {
  static const PrimitiveInfo kVoid{"::capnp::Void", ""}, kBool{"bool", "bool"},
      kInt8{"::int8_t", "::int8_t"}, kInt16{"::int16_t", "::int16_t"},
      kInt32{"::int32_t", "::int32_t"}, kInt64{"::int64_t", "::int64_t"},
      kUint8{"::uint8_t", "::uint8_t"}, kUint16{"::uint16_t", "::uint16_t"},
      kUint32{"::uint32_t", "::uint32_t"}, kUint64{"::uint64_t", "::uint64_t"},
      kFloat32{"float", "::uint32_t"}, kFloat64{"double", "::uint64_t"};
  switch (w) {
    case schema::Type::VOID: return &kVoid;
    case schema::Type::BOOL: return &kBool;
    case schema::Type::INT8: return &kInt8;
    case schema::Type::INT16: return &kInt16;
    case schema::Type::INT32: return &kInt32;
    case schema::Type::INT64: return &kInt64;
    case schema::Type::UINT8: return &kUint8;
    case schema::Type::UINT16: return &kUint16;
    case schema::Type::UINT32: return &kUint32;
    case schema::Type::UINT64: return &kUint64;
    case schema::Type::FLOAT32: return &kFloat32;
    case schema::Type::FLOAT64: return &kFloat64;
    default: return nullptr;
  }
}

/// One member function: its declaration in the class and its definition after all classes.
struct Method {
  std::string declaration;
  std::string definition;
};

}  // namespace

struct AccessorWriter::Impl {
  const SchemaIndex& index;
  schema::CodeGeneratorRequest::RequestedFile::Reader requested;
  schema::Node::Reader file;
  std::vector<uint64_t> order;                     // structs, in the order first reached
  std::set<uint64_t> seen;
  std::map<uint64_t, std::string> uncovered;       // struct -> why
  std::map<uint64_t, std::vector<uint64_t>> uses;  // struct -> structs its fields name
  std::set<uint64_t> files;                        // files of the types named

  Impl(const SchemaIndex& i, schema::CodeGeneratorRequest::RequestedFile::Reader r)
      : index(i), requested(r), file(i.node(r.getId(), r.getFilename().cStr())) {}

  std::string display(uint64_t id) const {
    return index.node(id, "accessors").getDisplayName().cStr();
  }

  void visitScope(schema::Node::Reader scope) {
    for (auto nested : scope.getNestedNodes()) {
      schema::Node::Reader n = index.node(nested.getId(), requested.getFilename().cStr());
      if (n.isStruct()) visit(n.getId());
      if (n.isStruct() || n.isInterface()) visitScope(n);
    }
  }

  void visit(uint64_t id) {
    if (!seen.insert(id).second) return;
    order.push_back(id);
    schema::Node::Reader n = index.node(id, "accessors");
    try {
      files.insert(index.fileOf(id).getId());
      index.cppFullName(id);
    } catch (const SchemaRefused& e) {
      uncovered.emplace(id, e.what());
      return;
    }
    if (!n.isStruct()) {
      uncovered.emplace(id, "it is not a struct");
      return;
    }
    if (n.getIsGeneric() || n.getParameters().size() > 0) {
      uncovered.emplace(id, "it is generic");
      return;
    }
    for (auto field : n.getStruct().getFields()) {
      if (field.isGroup()) {
        visit(field.getGroup().getTypeId());
        uses[id].push_back(field.getGroup().getTypeId());
        continue;
      }
      std::string problem = visitType(id, field.getSlot().getType());
      if (!problem.empty() && !uncovered.count(id))
        uncovered.emplace(id, "its field " + std::string(field.getName().cStr()) + " " + problem);
    }
  }

  /// Records what type `t` (of a field of struct `owner`) needs; says why it is not covered.
  std::string visitType(uint64_t owner, schema::Type::Reader t) {
    switch (t.which()) {
      case schema::Type::ANY_POINTER:
        return "is an AnyPointer (or a generic parameter)";
      case schema::Type::INTERFACE:
        return {};  // a zcrpc::Capability (see writeCapabilityField)
      case schema::Type::STRUCT:
        if (t.getStruct().getBrand().getScopes().size() > 0) return "is of a generic struct type";
        visit(t.getStruct().getTypeId());
        uses[owner].push_back(t.getStruct().getTypeId());
        return {};
      case schema::Type::ENUM:
        files.insert(index.fileOf(t.getEnum().getTypeId()).getId());
        return {};
      case schema::Type::LIST: {
        if (t.getList().getElementType().isInterface()) {  // zcrpc::Capability elements
          files.insert(index.fileOf(t.getList().getElementType().getInterface().getTypeId()).getId());
          return {};
        }
        std::string inner = visitType(owner, t.getList().getElementType());
        return inner.empty() ? inner : "is a list whose elements " + inner.substr(3);
      }
      default:
        return {};
    }
  }

  /// A struct that names an uncovered struct is not covered either.
  void settle() {
    for (bool changed = true; changed;) {
      changed = false;
      for (uint64_t id : order) {
        if (uncovered.count(id)) continue;
        for (uint64_t used : uses[id]) {
          if (!uncovered.count(used)) continue;
          uncovered.emplace(id, "it reaches " + display(used) +
                                    ", which has none (" + uncovered.at(used) + ")");
          changed = true;
          break;
        }
      }
    }
  }

  // ---------------------------------------------------------------------------------
  // Names

  std::string namespaceOf(uint64_t id) const {
    const std::string ns = SchemaIndex::cppNamespacePrefix(index.fileOf(id));
    return (ns.empty() ? std::string() : ns.substr(2) + "::") + "zcrpc_wire";
  }

  /// The tag type's name inside its namespace: the C++ scope path joined by '_'.
  std::string tagLocalName(uint64_t id) const {
    std::string name;
    for (const std::string& part : index.cppScopePath(id)) name += (name.empty() ? "" : "_") + part;
    // A tag may not be named like its own nested classes.
    if (name == "Reader" || name == "Builder") name += "_";
    return name;
  }

  std::string tagName(uint64_t id) const { return "::" + namespaceOf(id) + "::" + tagLocalName(id); }

  /// The element type zcrpc::wire::List<> takes for `t`.
  std::string elementType(schema::Type::Reader t) const {
    if (const PrimitiveInfo* p = primitive(t.which())) return p->cppType;
    switch (t.which()) {
      case schema::Type::TEXT: return "::capnp::Text";
      case schema::Type::DATA: return "::capnp::Data";
      case schema::Type::ENUM: return index.cppFullName(t.getEnum().getTypeId());
      case schema::Type::STRUCT: return tagName(t.getStruct().getTypeId());
      case schema::Type::INTERFACE: return index.cppFullName(t.getInterface().getTypeId());
      case schema::Type::LIST:
        return "::zcrpc::wire::List<" + elementType(t.getList().getElementType()) + ">";
      default: throw SchemaRefused("accessors: uncovered type reached the writer");
    }
  }

  // ---------------------------------------------------------------------------------
  // Members of one struct

  struct Member {
    std::string title;  ///< capnpc-c++'s name, TitleCased: getTitle(), setTitle()
    std::string schemaName;
    uint16_t discriminant = kNoDiscriminant;
    bool isGroup = false;
    uint64_t groupId = 0;
    schema::Type::Reader type;
    uint32_t offset = 0;
    schema::Value::Reader defaultValue;
  };

  std::vector<Member> members(schema::Node::Reader n) const {
    std::vector<Member> out;
    for (auto field : n.getStruct().getFields()) {
      Member m;
      m.title = toTitleCase(cppProtoName(field));
      m.schemaName = field.getName().cStr();
      m.discriminant = field.getDiscriminantValue();
      if (field.isGroup()) {
        m.isGroup = true;
        m.groupId = field.getGroup().getTypeId();
      } else {
        m.type = field.getSlot().getType();
        m.offset = field.getSlot().getOffset();
        m.defaultValue = field.getSlot().getDefaultValue();
      }
      out.push_back(m);
    }
    return out;
  }

  /// Default value members of the tag (pointer fields with a default), by member title.
  void writeDefaults(std::ostream& out, schema::Node::Reader n) const {
    for (const Member& m : members(n)) {
      if (m.isGroup) continue;
      switch (m.type.which()) {
        case schema::Type::TEXT: {
          const std::string_view text = m.defaultValue.getText().cStr();
          if (text.empty()) break;
          out << "  static constexpr char kDefault" << m.title << "[] = " << cppStringLiteral(text)
              << ";\n";
          break;
        }
        case schema::Type::DATA: {
          auto data = m.defaultValue.getData();
          if (data.size() == 0) break;
          out << "  static constexpr ::kj::byte kDefault" << m.title << "[] = {";
          for (size_t i = 0; i < data.size(); ++i) out << (i ? ", " : "") << unsigned{data[i]};
          out << "};\n";
          break;
        }
        case schema::Type::STRUCT:
        case schema::Type::LIST: {
          std::vector<uint64_t> words = defaultWords(m.type.isStruct() ? m.defaultValue.getStruct()
                                                                        : m.defaultValue.getList());
          if (words.empty()) break;
          out << "  static constexpr ::uint64_t kDefault" << m.title << "Words[] = {";
          for (size_t i = 0; i < words.size(); ++i)
            out << (i % 3 == 0 ? "\n      " : " ") << hexId(words[i]) << ",";
          out << "};\n"
              << "  static constexpr ::zcrpc::wire::DefaultValue kDefault" << m.title << "{kDefault"
              << m.title << "Words, " << words.size() << "};\n";
          break;
        }
        default:
          break;
      }
    }
  }

  static bool hasTextDefault(const Member& m) { return m.defaultValue.getText().size() != 0; }
  static bool hasDataDefault(const Member& m) { return m.defaultValue.getData().size() != 0; }
  bool hasPointerDefault(const Member& m) const {
    return m.type.isStruct() ? !m.defaultValue.getStruct().isNull()
                             : !m.defaultValue.getList().isNull();
  }

  /// Methods of the Reader (builder == false) or Builder of struct `id`.
  std::vector<Method> methods(uint64_t id, bool builder) const {
    schema::Node::Reader n = index.node(id, "accessors");
    const std::string tag = tagName(id);
    // Definitions are written inside the tag's namespace: a qualified name after a return
    // type that ends in a name would be read as one name.
    const std::string cls = tagLocalName(id) + (builder ? "::Builder" : "::Reader");
    const std::string self = builder ? "_b" : "_r";
    const std::string cnst = builder ? "" : " const";
    std::vector<Method> out;
    auto add = [&](const std::string& ret, const std::string& name, const std::string& paramsDecl,
                   const std::string& paramsDef, const std::string& body) {
      out.push_back({"  " + ret + " " + name + "(" + paramsDecl + ")" + cnst + ";\n",
                     "inline " + ret + " " + cls + "::" + name + "(" + paramsDef + ")" + cnst +
                         " {\n  " + body + "\n}\n"});
    };

    const auto st = n.getStruct();
    const bool hasUnion = st.getDiscriminantCount() > 0;
    const std::string whichType = index.cppFullName(id) + "::Which";
    const std::string discOffset = std::to_string(st.getDiscriminantOffset());
    if (hasUnion)
      add(whichType, "which", "", "",
          "return static_cast<" + whichType + ">(" + self + ".data<::uint16_t>(" + discOffset +
              "));");

    for (const Member& m : members(n)) {
      const bool inUnion = m.discriminant != kNoDiscriminant;
      const std::string setDisc =
          inUnion ? self + ".setData<::uint16_t>(" + discOffset + ", " +
                        std::to_string(m.discriminant) + ");\n  "
                  : "";
      if (inUnion)
        add("bool", "is" + m.title, "", "",
            "return which() == static_cast<" + whichType + ">(" + std::to_string(m.discriminant) +
                ");");

      if (m.isGroup) {
        const std::string g = tagName(m.groupId);
        add(g + (builder ? "::Builder" : "::Reader"), "get" + m.title, "", "",
            "return " + g + (builder ? "::Builder(_b);" : "::Reader(_r);"));
        if (builder) {
          std::string zero;
          zeroGroup(m.groupId, zero);
          add(g + "::Builder", "init" + m.title, "", "", setDisc + zero + "return " + g + "::Builder(_b);");
        }
        continue;
      }

      const std::string off = std::to_string(m.offset);
      const std::string title = m.title;
      if (const PrimitiveInfo* p = primitive(m.type.which())) {
        if (m.type.isVoid()) {
          add("::capnp::Void", "get" + title, "", "", "return ::capnp::VOID;");
          if (builder)
            add("void", "set" + title, "::capnp::Void = ::capnp::VOID", "::capnp::Void",
                setDisc.empty() ? "" : setDisc.substr(0, setDisc.size() - 3));
          continue;
        }
        const uint64_t bits = primitiveBits(m.defaultValue);
        if (m.type.isBool()) {
          const std::string mask = bits ? ", true" : "";
          add("bool", "get" + title, "", "", "return " + self + ".bit(" + off + mask + ");");
          if (builder)
            add("void", "set" + title, "bool value", "bool value",
                setDisc + "_b.setBit(" + off + ", value" + mask + ");");
          continue;
        }
        const std::string mask =
            bits ? std::string(", static_cast<") + p->maskType + ">(" + hexId(bits) + ")" : "";
        add(p->cppType, "get" + title, "", "",
            "return " + self + ".data<" + p->cppType + ">(" + off + mask + ");");
        if (builder)
          add("void", "set" + title, std::string(p->cppType) + " value",
              std::string(p->cppType) + " value",
              setDisc + "_b.setData<" + p->cppType + ">(" + off + ", value" + mask + ");");
        continue;
      }

      switch (m.type.which()) {
        case schema::Type::ENUM: {
          const std::string e = index.cppFullName(m.type.getEnum().getTypeId());
          const uint64_t bits = primitiveBits(m.defaultValue);
          const std::string mask = bits ? ", " + std::to_string(bits) : "";
          add(e, "get" + title, "", "",
              "return static_cast<" + e + ">(" + self + ".data<::uint16_t>(" + off + mask + "));");
          if (builder)
            add("void", "set" + title, e + " value", e + " value",
                setDisc + "_b.setData<::uint16_t>(" + off + ", static_cast<::uint16_t>(value)" +
                    mask + ");");
          break;
        }
        case schema::Type::TEXT:
        case schema::Type::DATA: {
          const bool text = m.type.isText();
          const std::string blob = text ? "::capnp::Text" : "::capnp::Data";
          const bool hasDefault = text ? hasTextDefault(m) : hasDataDefault(m);
          const std::string def =
              hasDefault ? tag + "::kDefault" + title + ", " +
                               std::to_string(text ? m.defaultValue.getText().size()
                                                   : m.defaultValue.getData().size())
                         : "nullptr, 0";
          writeHas(add, m, whichType, self);
          if (!builder) {
            add(blob + "::Reader", "get" + title, "", "",
                "return _r.pointer(" + off + ")." + (text ? "readText(" : "readData(") + def + ");");
          } else {
            add(blob + "::Builder", "get" + title, "", "",
                "return _b.pointer(" + off + ")." + (text ? "getText(" : "getData(") + def + ");");
            add("void", "set" + title, blob + "::Reader value", blob + "::Reader value",
                setDisc + "_b.pointer(" + off + ")." + (text ? "setText" : "setData") + "(value);");
            add(blob + "::Builder", "init" + title, "unsigned int size", "unsigned int size",
                setDisc + "return _b.pointer(" + off + ")." + (text ? "initText" : "initData") +
                    "(size);");
          }
          break;
        }
        case schema::Type::STRUCT: {
          const std::string s = tagName(m.type.getStruct().getTypeId());
          const std::string def = hasPointerDefault(m) ? "&" + tag + "::kDefault" + title : "nullptr";
          writeHas(add, m, whichType, self);
          if (!builder) {
            add(s + "::Reader", "get" + title, "", "",
                "return " + s + "::Reader(_r.pointer(" + off + ").readStruct(" + def + "));");
          } else {
            add(s + "::Builder", "get" + title, "", "",
                "return " + s + "::Builder(_b.pointer(" + off + ").getStruct(" + s + "::kDataWords, " +
                    s + "::kPointers, " + def + "));");
            add("void", "set" + title, s + "::Reader value", s + "::Reader value",
                setDisc + "_b.pointer(" + off + ").setStruct(value._wire());");
            add(s + "::Builder", "init" + title, "", "",
                setDisc + "return " + s + "::Builder(_b.pointer(" + off + ").initStruct(" + s +
                    "::kDataWords, " + s + "::kPointers));");
          }
          break;
        }
        case schema::Type::LIST: {
          const auto elementT = m.type.getList().getElementType();
          const std::string e = elementType(elementT);
          const std::string list = "::zcrpc::wire::List<" + e + ">";
          const std::string def = hasPointerDefault(m) ? "&" + tag + "::kDefault" + title : "nullptr";
          writeHas(add, m, whichType, self);
          if (!builder) {
            add(list + "::Reader", "get" + title, "", "",
                "return " + list + "::Reader(_r.pointer(" + off + ").readList(::zcrpc::wire::Element<" +
                    e + ">::kSize, " + def + "));");
          } else {
            add(list + "::Builder", "get" + title, "", "",
                "return " + list + "::getFrom(_b.pointer(" + off + "), " + def + ");");
            add("void", "set" + title, list + "::Reader value", list + "::Reader value",
                setDisc + "_b.pointer(" + off + ").setList(value._wire());");
            const bool fromArray = primitive(elementT.which()) || elementT.isEnum() ||
                                   elementT.isText() || elementT.isData() ||
                                   elementT.isInterface();
            if (fromArray) {
              const std::string item = elementT.isText()        ? "::capnp::Text::Reader"
                                       : elementT.isData()      ? "::capnp::Data::Reader"
                                       : elementT.isInterface() ? "::zcrpc::Capability"
                                                                : e;
              add("void", "set" + title, "::kj::ArrayPtr<const " + item + "> value",
                  "::kj::ArrayPtr<const " + item + "> value",
                  setDisc + list + "::setIn(_b.pointer(" + off + "), value);");
            }
            add(list + "::Builder", "init" + title, "unsigned int size", "unsigned int size",
                setDisc + "return " + list + "::initIn(_b.pointer(" + off + "), size);");
          }
          break;
        }
        case schema::Type::INTERFACE: {
          // A capability pointer: an index into the message's capability table, which the RPC
          // layer fills (sending) and decodes (receiving). Typed use: FooClient(getX()).
          writeHas(add, m, whichType, self);
          if (!builder) {
            add("::zcrpc::Capability", "get" + title, "", "",
                "return ::zcrpc::Capability(::zcrpc::wire::_::readCapability(_r.pointer(" + off + ")));");
          } else {
            add("::zcrpc::Capability", "get" + title, "", "",
                "return ::zcrpc::Capability(::zcrpc::wire::_::readBuiltCapability(_b.pointer(" + off +
                    ")));");
            add("void", "set" + title, "const ::zcrpc::Capability& value",
                "const ::zcrpc::Capability& value",
                setDisc + "::zcrpc::wire::_::writeCapability(_b.pointer(" + off + "), value.hook());");
          }
          break;
        }
        default:
          throw SchemaRefused("accessors: uncovered field type reached the writer");
      }
    }
    return out;
  }

  template <typename Add>
  static void writeHas(Add& add, const Member& m, const std::string& whichType,
                       const std::string& self) {
    const std::string check =
        m.discriminant != kNoDiscriminant
            ? "if (which() != static_cast<" + whichType + ">(" + std::to_string(m.discriminant) +
                  ")) return false;\n  "
            : "";
    add("bool", "has" + m.title, "", "",
        check + "return " + self + ".hasPointer(" + std::to_string(m.offset) + ");");
  }

  /// Statements that zero every field of group `id` (and its union's discriminant), as
  /// capnpc-c++'s initGroup() does.
  void zeroGroup(uint64_t id, std::string& out) const {
    schema::Node::Reader n = index.node(id, "accessors");
    const auto st = n.getStruct();
    if (st.getDiscriminantCount() > 0)
      out += "_b.setData<::uint16_t>(" + std::to_string(st.getDiscriminantOffset()) + ", 0);\n  ";
    for (const Member& m : members(n)) {
      if (m.isGroup) {
        zeroGroup(m.groupId, out);
        continue;
      }
      const std::string off = std::to_string(m.offset);
      if (const PrimitiveInfo* p = primitive(m.type.which())) {
        if (m.type.isVoid()) continue;
        if (m.type.isBool())
          out += "_b.setBit(" + off + ", false);\n  ";
        else
          out += std::string("_b.setData<") + p->maskType + ">(" + off + ", 0);\n  ";
      } else if (m.type.isEnum()) {
        out += "_b.setData<::uint16_t>(" + off + ", 0);\n  ";
      } else {
        out += "_b.pointer(" + off + ").clear();\n  ";
      }
    }
  }

  // ---------------------------------------------------------------------------------
  // Output

  void writeTag(std::ostream& out, uint64_t id) const {
    schema::Node::Reader n = index.node(id, "accessors");
    const std::string local = tagLocalName(id);
    out << "#ifndef ZCRPC_WIRE_TAG_" << macroId(id) << "\n#define ZCRPC_WIRE_TAG_" << macroId(id)
        << "\nnamespace " << namespaceOf(id) << " {\n"
        << "/// zcrpc's accessors of `" << display(id) << "` (capnpc-c++: `" << index.cppFullName(id)
        << "`).\n"
        << "struct " << local << " {\n"
        << "  using Capnp = " << index.cppFullName(id) << ";\n"
        << "  static constexpr ::uint16_t kDataWords = " << n.getStruct().getDataWordCount() << ";\n"
        << "  static constexpr ::uint16_t kPointers = " << n.getStruct().getPointerCount() << ";\n"
        << "  class Reader;\n  class Builder;\n";
    writeDefaults(out, n);
    out << "};\n}\n#endif\n";
  }

  void writeClasses(std::ostream& out, uint64_t id) const {
    const std::string local = tagLocalName(id);
    const std::string capnpName = index.cppFullName(id);
    out << "#ifndef ZCRPC_WIRE_CLASSES_" << macroId(id) << "\n#define ZCRPC_WIRE_CLASSES_"
        << macroId(id) << "\nnamespace " << namespaceOf(id) << " {\n";
    out << "/// Reads `" << display(id) << "` in place, checking every read (zcrpc/wire.h); cheap\n"
        << "/// to copy. Valid while the message it reads is (an IncomingMessage lease, or the\n"
        << "/// message being built). Threads: the message's, one at a time.\n"
        << "class " << local << "::Reader {\n public:\n"
        << "  using Reads = " << capnpName << ";\n"
        << "  Reader() = default;\n"
        << "  explicit Reader(const ::zcrpc::wire::StructReader& wire) noexcept : _r(wire) {}\n"
        << "  /// The untyped view, for zcrpc's runtime.\n"
        << "  const ::zcrpc::wire::StructReader& _wire() const noexcept { return _r; }\n\n";
    for (const Method& m : methods(id, false)) out << m.declaration;
    out << "\n private:\n  ::zcrpc::wire::StructReader _r;\n};\n\n";
    out << "/// Builds `" << display(id) << "` in place in the message's memory (zcrpc/wire.h);\n"
        << "/// cheap to copy. Valid while the message is open. Threads: the message's.\n"
        << "class " << local << "::Builder {\n public:\n"
        << "  using Builds = " << capnpName << ";\n"
        << "  Builder() = default;\n"
        << "  explicit Builder(const ::zcrpc::wire::StructBuilder& wire) noexcept : _b(wire) {}\n"
        << "  Reader asReader() const noexcept { return Reader(_b.asReader()); }\n"
        << "  operator Reader() const noexcept { return asReader(); }\n"
        << "  /// The untyped view, for zcrpc's runtime.\n"
        << "  const ::zcrpc::wire::StructBuilder& _wire() const noexcept { return _b; }\n\n";
    for (const Method& m : methods(id, true)) out << m.declaration;
    out << "\n private:\n  ::zcrpc::wire::StructBuilder _b;\n};\n}\n";
    out << "namespace zcrpc::wire {\ntemplate <>\nstruct Accessors<" << capnpName << "> {\n"
        << "  static constexpr bool kGenerated = true;\n"
        << "  using Wire = " << tagName(id) << ";\n"
        << "  using Reader = " << tagName(id) << "::Reader;\n"
        << "  using Builder = " << tagName(id) << "::Builder;\n"
        << "};\n}\n#endif\n";
  }

  void writeBodies(std::ostream& out, uint64_t id) const {
    out << "#ifndef ZCRPC_WIRE_BODIES_" << macroId(id) << "\n#define ZCRPC_WIRE_BODIES_"
        << macroId(id) << "\nnamespace " << namespaceOf(id) << " {\n";
    for (bool builder : {false, true})
      for (const Method& m : methods(id, builder)) out << m.definition;
    out << "}\n#endif\n";
  }
};

AccessorWriter::AccessorWriter(const SchemaIndex& index,
                               schema::CodeGeneratorRequest::RequestedFile::Reader file)
    : impl_(std::make_unique<Impl>(index, file)) {
  impl_->visitScope(impl_->file);
}

AccessorWriter::~AccessorWriter() = default;

void AccessorWriter::addRoot(uint64_t structId) { impl_->visit(structId); }

std::set<std::string> AccessorWriter::includes() const {
  std::set<std::string> out;
  for (auto import : impl_->requested.getImports())
    if (impl_->files.count(import.getId())) out.insert(includeFor(import.getName().cStr()));
  return out;
}

void AccessorWriter::write(std::ostream& out) const {
  impl_->settle();
  std::vector<uint64_t> covered;
  for (uint64_t id : impl_->order)
    if (!impl_->uncovered.count(id)) covered.push_back(id);
  out << "\n// " << std::string(86, '-') << "\n"
      << "// zcrpc's wire accessors (zcrpc/wire.h): what zcrpc::wire::Reader<T> and Builder<T> name\n"
      << "// for the structs below, with capnpc-c++'s method names. Each type's code is guarded by\n"
      << "// its id, so headers that share types can be included together.\n";
  bool any = false;
  for (uint64_t id : impl_->order) {
    auto it = impl_->uncovered.find(id);
    if (it == impl_->uncovered.end()) continue;
    if (!any) out << "// Structs that keep capnpc-c++'s Reader and Builder (no zcrpc accessors):\n";
    any = true;
    out << "//   " << impl_->display(id) << ": " << it->second << "\n";
  }
  out << "\n";
  for (uint64_t id : covered) impl_->writeTag(out, id);
  for (uint64_t id : covered) impl_->writeClasses(out, id);
  for (uint64_t id : covered) impl_->writeBodies(out, id);
}

}  // namespace zcrpc::codegen
