// capnpc-zcrpc: zcrpc's own readers and builders of the Cap'n Proto wire format
// (zcrpc/wire.h), generated for the structs one header needs. docs/codegen.md,
// "Generated accessors", describes what is generated and what is not covered.
#pragma once

#include <memory>
#include <ostream>
#include <set>
#include <string>

#include "schema_index.h"

namespace zcrpc::codegen {

/// Writes the accessors of one requested file's header: for every struct the file declares,
/// the params and results of its interfaces, and every struct, list, enum, union and group
/// they reach (also from other files). Each type's code is guarded by macros named after its
/// id, so headers that share a type can be included together; the code for a type depends on
/// the type alone. A struct that reaches a type the accessors do not cover (AnyPointer,
/// capabilities, generics) gets none, and zcrpc::wire::Reader<T> / Builder<T> stay
/// capnpc-c++'s for it; the header says which and why.
class AccessorWriter final {
 public:
  /// `file` is a requested file; `index` must outlive the writer.
  AccessorWriter(const SchemaIndex& index, schema::CodeGeneratorRequest::RequestedFile::Reader file);
  ~AccessorWriter();
  AccessorWriter(const AccessorWriter&) = delete;
  AccessorWriter& operator=(const AccessorWriter&) = delete;

  /// Adds a method's params or results struct (already checked not to be generic).
  void addRoot(uint64_t structId);
  /// The includes (`<a/b.capnp.h>` / `"b.capnp.h"`) of the files whose types the accessors
  /// name that the requested file imports directly; the others come in through those.
  std::set<std::string> includes() const;
  /// Writes every type's code at file scope (the text opens and closes its namespaces).
  void write(std::ostream& out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace zcrpc::codegen
