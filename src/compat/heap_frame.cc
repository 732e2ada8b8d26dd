#include "compat/heap_frame.h"

#include <capnp/capability.h>

#include <algorithm>
#include <string>

#include "rpc/frames.h"

namespace zcrpc::compat {

void HeapFrame::open(OutgoingMessage& msg, uint32_t words) {
  header_ = FrameHeader{};
  msg.open(*this, header_, segments_.take(std::max<uint32_t>(words, 1), "message"));
}

kj::ArrayPtr<capnp::word> HeapFrame::allocateMore(uint32_t minWords) {
  return segments_.take(std::max<uint64_t>(minWords, segments_.allocated() / 2), "message");
}

IncomingMessage HeapFrame::seal(std::unique_ptr<HeapFrame> frame, OutgoingMessage& built) {
  auto segments = built.segmentsForSend();
  if (segments.size() > kMaxSegments)
    throw InvalidArgument("message of " + std::to_string(segments.size()) + " segments (at most " +
                          std::to_string(kMaxSegments) + ")");
  ParsedFrame& f = frame->frame_;
  f.header = frame->header_;
  f.segmentCount = segments.size();
  f.payloadBytes = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    f.segments[i] = segments[i];
    f.payloadBytes += segments[i].size() * sizeof(capnp::word);
  }
  f.header.segmentCount = static_cast<uint16_t>(segments.size());
  built.markSent();
  return IncomingMessage(*frame.release(), 0);
}

IncomingMessage HeapFrame::copyOf(const FrameHeader& header, capnp::AnyPointer::Reader root,
                                  uint64_t maxMessageBytes, const ReaderLimits& limits) {
  const uint64_t words = root.targetSize().wordCount + 1;  // + the root pointer
  auto frame = std::make_unique<HeapFrame>(std::max<uint64_t>(maxMessageBytes, words * 8), limits);
  OutgoingMessage out;
  frame->open(out, static_cast<uint32_t>(std::min<uint64_t>(words, UINT32_MAX)));
  // Capabilities the copy meets land in `caps` instead of the message's own table, so we
  // can tell: zcrpc frames carry none yet (issue 18), and a handler or caller must not get
  // a message whose capability pointers lead nowhere.
  capnp::BuilderCapabilityTable caps;
  caps.imbue(out.getRoot<capnp::AnyPointer>()).set(root);
  if (caps.getTable().size() != 0)
    throw Unimplemented(std::to_string(caps.getTable().size()) +
                        " capabilit" + (caps.getTable().size() == 1 ? "y" : "ies") +
                        " in the message: zcrpc does not pass capabilities over standard Cap'n Proto "
                        "connections yet");
  frame->header_ = header;
  return seal(std::move(frame), out);
}

IncomingMessage HeapFrame::error(uint64_t callId, ErrorKind kind, int32_t code, const std::string& message,
                                 const ReaderLimits& limits) {
  auto frame = std::make_unique<HeapFrame>(uint64_t{1} << 20, limits);
  OutgoingMessage out;
  frame->open(out, static_cast<uint32_t>(16 + std::min<size_t>(message.size(), 4000) / 8));
  writeError(out, kind, code, message);
  frame->header_.kind = static_cast<uint8_t>(FrameKind::kError);
  frame->header_.callId = callId;
  return seal(std::move(frame), out);
}

}  // namespace zcrpc::compat
