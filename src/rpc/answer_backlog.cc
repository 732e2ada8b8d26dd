#include "rpc/answer_backlog.h"

#include <algorithm>
#include <string>

#include <capnp/serialize.h>
#include <kj/common.h>

namespace zcrpc {

void AnswerBacklog::SpillSource::open(OutgoingMessage& msg, uint32_t words,
                                      uint64_t maxMessageBytes) {
  segments_.reset(maxMessageBytes);
  header_ = FrameHeader{};
  open_ = &msg;
  msg.open(*this, header_, segments_.take(words, "answer"));
}

kj::ArrayPtr<capnp::word> AnswerBacklog::SpillSource::allocateMore(uint32_t minWords) {
  return segments_.take(std::max<uint64_t>(minWords, segments_.allocated() / 8), "answer");
}

void AnswerBacklog::push(OutgoingMessage& msg) {
  const FrameHeader& h = msg.header();
  queue_.push_back({h.kind, h.callId, capnp::messageToFlatArray(msg.segmentsForSend())});
  msg.markSent();
  spill_.sent();
}

size_t AnswerBacklog::drain(Connection& connection, bool& disconnected) {
  size_t n = 0;
  while (!queue_.empty() && !disconnected) {
    Queued& q = queue_.front();
    OutgoingMessage out;
    Status s = connection.tryStartMessage(out, static_cast<uint32_t>(q.flat.size()));
    if (s == Status::kWouldBlock) break;
    if (s != Status::kOk) {
      disconnected = true;
      break;
    }
    capnp::ReaderOptions options;
    options.traversalLimitInWords = kj::maxValue;  // our own handler's answer
    options.nestingLimit = 1024;
    capnp::FlatArrayMessageReader reader(q.flat, options);
    out.getRoot<capnp::AnyPointer>().set(reader.getRoot<capnp::AnyPointer>());
    out.header().kind = q.kind;
    out.header().callId = q.callId;
    (void)connection.send(out, false);
    queue_.pop_front();
    ++n;
  }
  if (disconnected) queue_.clear();
  if (queue_.empty()) spill_.reset();
  return n;
}

}  // namespace zcrpc
