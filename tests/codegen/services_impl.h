// The services of the codegen test schemas (common.capnp, services.capnp), as codegen_test
// serves them over zcrpc's own transports and compat_test to Cap'n Proto's own client:
// each answers from its params alone; greet says "hello NAME from derived" (or "both");
// nothing, outer and tag count their calls. Test code only.
#pragma once

#include <atomic>
#include <cctype>
#include <string>

#include "common.capnp.zcrpc.h"
#include "services.capnp.zcrpc.h"

namespace zcrpc::codegen_test {

inline void greetInto(wire::Builder<common::Greeter::GreetResults> results, capnp::Text::Reader name,
                      const char* who) {
  results.setGreeting(std::string("hello ") + name.cStr() + " from " + who);
}

class DerivedImpl final : public DerivedService {
 public:
  std::atomic<int> nothingCalls{0};

  void mirror(MirrorCall& call) override {
    wire::Reader<common::Point> in = call.params();
    wire::Builder<common::Point> out = call.results();
    out.setX(-in.getX());
    out.setY(-in.getY());
  }
  void scale(ScaleCall& call) override {
    wire::Reader<common::Point> in = call.params();
    wire::Builder<Scaled> out = call.results();
    out.setFactor(3);
    out.initPoint().setX(in.getX() * 3);
    out.getPoint().setY(in.getY() * 3);
  }
  void nothing(NothingCall&) override { nothingCalls.fetch_add(1, std::memory_order_relaxed); }
  void delete_(DeleteCall& call) override {
    call.results().setDeleted(call.params().getKey() == "present");
  }
  void dispatch_(DispatchCall& call) override { call.results().setN(call.params().getN() + 1); }
  void shout(ShoutCall& call) override {
    std::string text = call.params().getText().cStr();
    for (char& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    call.results().setText(text);
  }
  void greet(GreetCall& call) override {
    greetInto(call.results(), call.params().getName(), "derived");
  }
};

class BothImpl final : public BothService {
 public:
  void both(BothCall& call) override { call.results().setCount(2); }
  void left(LeftCall& call) override { call.results().setSide("left"); }
  void right(RightCall& call) override { call.results().setSide("right"); }
  void greet(GreetCall& call) override {
    greetInto(call.results(), call.params().getName(), "both");
  }
};

class NestedImpl final : public Holder_NestedService {
 public:
  void get(GetCall& call) override { call.results().setValue(42); }
};

class OuterImpl final : public OuterService {
 public:
  std::atomic<int> calls{0};
  void outer(OuterCall&) override { calls.fetch_add(1, std::memory_order_relaxed); }
};

class InnerImpl final : public Outer_InnerService {
 public:
  void inner(InnerCall& call) override { call.results().setX(call.params().getX() * 2); }
};

class TaggedImpl final : public TaggedService {
 public:
  std::atomic<int> calls{0};
  void tag(TagCall&) override { calls.fetch_add(1, std::memory_order_relaxed); }
};

}  // namespace zcrpc::codegen_test
