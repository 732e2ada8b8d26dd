// Capabilities: references to objects that one end of a connection serves, passed in
// messages (Cap'n Proto interface fields) and called like the bootstrap services.
// See docs/capabilities.md for ownership, lifetimes and threads.
#pragma once

#include <memory>
#include <type_traits>

#include "zcrpc/wire.h"

namespace zcrpc {

class Service;

/// A reference to an object: either one this process serves (local(): passed in a message,
/// it is exported on that message's connection), or one the peer of a connection serves
/// (read from a received message's interface field: an import, whose calls go to the peer
/// on that connection). Generated clients (`FooClient(Capability)`) make typed calls on it.
///
/// Copies share one reference. An import is released (the peer is told, with a release
/// frame) when its last copy, and every received message holding it, is gone; its
/// connection closing ends it too (calls then fail with Disconnected).
///
/// Threads: copy and destroy from any thread. Calls on an import only from the thread that
/// drives its connection (the Channel's thread; on a server, the worker thread that runs
/// the connection's handlers): from another, they throw InvalidArgument saying so.
class Capability final {
 public:
  /// A null capability (what an unset interface field reads as).
  Capability() noexcept = default;
  /// For the RPC layer and generated accessors.
  explicit Capability(std::shared_ptr<wire::CapabilityHook> hook) noexcept : hook_(std::move(hook)) {}

  /// How the handlers of a local object get their requests (Capability::local).
  enum class Requests : uint8_t {
    /// Copied out of transport memory before the handler runs (the default). The handler
    /// may then wait on the connection its call came on (a synchronous call, poll(),
    /// pollUntil()) for as long as it likes: that connection frees what it receives in
    /// arrival order, so a request held in place through such a wait would hold back
    /// everything that arrives after it.
    kCopied,
    /// Read in place in transport memory, as an ordinary server's requests are: no copy,
    /// which matters for large requests (a 64 KiB callback costs a copy of 64 KiB
    /// otherwise). The handler must not wait on the connection its call came on while it
    /// runs; if it tries, that wait throws InvalidArgument (callAsync() and defer() work).
    kInPlace,
  };
  /// `object`, served by this process, its handlers getting their requests as `requests`
  /// says (an object exported on one connection both ways takes kCopied there). Throws
  /// InvalidArgument for a null object.
  static Capability local(std::shared_ptr<Service> object, Requests requests = Requests::kCopied);

  explicit operator bool() const noexcept { return hook_ != nullptr; }
  /// The object, when this is a local capability (also when it came back from the peer it
  /// was passed to); null otherwise.
  std::shared_ptr<Service> localObject() const noexcept;
  /// True for a reference to an object of the peer of a connection.
  bool isImport() const noexcept;
  /// Same reference (copies of one capability, or the same import of one connection).
  bool operator==(const Capability& other) const noexcept { return hook_ == other.hook_; }

  const std::shared_ptr<wire::CapabilityHook>& hook() const noexcept { return hook_; }

 private:
  std::shared_ptr<wire::CapabilityHook> hook_;
};

namespace wire {

/// Whether T is an interface capnpc-c++ generated.
template <typename T, typename = void>
struct IsInterface : std::false_type {};
template <typename T>
struct IsInterface<T, std::void_t<typename T::_capnpPrivate::IsInterface>> : std::true_type {};

/// List(Interface) elements: capability pointers, read and set as zcrpc::Capability (as an
/// interface field is). T is the interface's capnpc-c++ class.
template <typename T>
struct Element<T, std::enable_if_t<IsInterface<T>::value>> {
  static constexpr ElementSize kSize = ElementSize::kPointer;
  using Reader = Capability;
  using Builder = Capability;
  static Capability get(const ListReader& l, uint32_t i) {
    return Capability(_::readCapability(l.pointerElement(i)));
  }
  static Capability get(const ListBuilder& l, uint32_t i) {
    return Capability(_::readBuiltCapability(l.pointerElement(i)));
  }
  static void set(ListBuilder& l, uint32_t i, const Capability& value) {
    _::writeCapability(l.pointerElement(i), value.hook());
  }
};

}  // namespace wire
}  // namespace zcrpc
