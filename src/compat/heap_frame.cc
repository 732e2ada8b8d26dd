#include "compat/heap_frame.h"

#include <capnp/capability.h>

#include <algorithm>
#include <cstring>
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
  if (!frame->extensions_.empty()) {
    // Laid out as parseFrame lists a received frame's records (the session reads them so).
    const auto* area = reinterpret_cast<const std::byte*>(frame->extensions_.data());
    const auto bytes = static_cast<uint32_t>(frame->extensions_.size() * sizeof(capnp::word));
    f.header.flags |= kFlagExtended;
    f.extensionArea = area;
    f.extensionBytes = bytes;
    f.extensionCount = 0;
    for (uint32_t at = 0; at < bytes;) {
      if (f.extensionCount == kMaxExtensionRecords)
        throw InvalidArgument("a frame for the session needs more than " + std::to_string(kMaxExtensionRecords) +
                              " extension records");
      ExtensionHeader h;
      std::memcpy(&h, area + at, sizeof h);
      f.extensions[f.extensionCount++] = ExtensionRecord{h.type, at, h.bytes};
      at += h.bytes;
    }
  }
  built.markSent();
  return IncomingMessage(*frame.release(), 0);
}

void HeapFrame::appendRecord(RecordWords& records, uint16_t type,
                             kj::ArrayPtr<const kj::byte> payload) {
  const size_t words = 1 + (payload.size() + 7) / 8;
  const size_t at = records.size();
  records.resize(at + words);  // zeroed
  auto* bytes = reinterpret_cast<kj::byte*>(records.data() + at);
  const ExtensionHeader h{type, 0, static_cast<uint32_t>(words * sizeof(capnp::word))};
  std::memcpy(bytes, &h, sizeof h);
  if (payload.size()) std::memcpy(bytes + sizeof h, payload.begin(), payload.size());
}

IncomingMessage HeapFrame::copyOf(const FrameHeader& header, capnp::AnyPointer::Reader root,
                                  uint64_t maxMessageBytes, const ReaderLimits& limits, CapWriter* writer,
                                  RecordWords records) {
  const uint64_t words = root.targetSize().wordCount + 1;  // + the root pointer
  auto frame = std::make_unique<HeapFrame>(std::max<uint64_t>(maxMessageBytes, words * 8), limits);
  OutgoingMessage out;
  frame->open(out, static_cast<uint32_t>(std::min<uint64_t>(words, UINT32_MAX)));
  // Capabilities the copy meets land in `caps`, in the order its capability pointers index
  // them: the frame's capTable record says what each is (a handler or caller must not get
  // a message whose capability pointers lead nowhere).
  capnp::BuilderCapabilityTable caps;
  caps.imbue(out.getRoot<capnp::AnyPointer>()).set(root);
  if (caps.getTable().size() != 0) {
    if (!writer)
      throw InvalidArgument(std::to_string(caps.getTable().size()) + " capabilit" +
                            (caps.getTable().size() == 1 ? "y" : "ies") +
                            " in a message that cannot carry any");
    writer->writeCapTable(caps.getTable(), records);
  }
  frame->header_ = header;
  frame->extensions_ = std::move(records);
  return seal(std::move(frame), out);
}

IncomingMessage HeapFrame::release(uint32_t exportId, uint32_t refs, const ReaderLimits& limits) {
  FrameHeader h{};
  h.kind = static_cast<uint8_t>(FrameKind::kRelease);
  const uint32_t payload[4] = {1, 0, exportId, refs};  // count, 0, then {exportId, refs}
  RecordWords records;
  appendRecord(records, extension::kReleases,
               kj::arrayPtr(reinterpret_cast<const kj::byte*>(payload), sizeof payload));
  return copyOf(h, capnp::AnyPointer::Reader(), 1 << 10, limits, nullptr, std::move(records));
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
