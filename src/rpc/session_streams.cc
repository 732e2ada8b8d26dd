// Streams (`-> stream` methods) in a Session: a stream's chunks and the flow whose window
// they use (docs/wire-format.md, "Streams"). Threads: the session's driver.
//
// Most chunks go as stream requests, which the peer answers only when one fails (or its
// handler deferred): a chunk costs the sender what a one-way message costs, and nothing
// comes back for it. A few chunks go as ordinary requests, marks: the peer handles a
// connection's calls in order, so the answer to a mark says that every chunk sent before
// it was handled too, and confirms them in the flow. The chunk that takes the flow to half
// its window is a mark (a sender that keeps going gets its room back while it sends the
// second half), and so is the one that fills it (a sender that has to wait, waits for
// that answer); finish() sends a ping as a mark.
#include <string>

#include "rpc/frames.h"
#include "rpc/session.h"

namespace zcrpc {

bool Session::sendChunk(OutgoingMessage& msg, const std::shared_ptr<StreamFlow>& flow,
                        std::string_view methodName, uint32_t target, SendHint hint) {
  StreamFlow& f = *flow;
  const uint64_t bytes = sentPayloadBytes(msg);
  const uint64_t calls = f.sentCalls_ - f.doneCalls_ + 1;  // in flight with this one
  const uint64_t before = f.sentBytes_ - f.doneBytes_, after = before + bytes;
  const uint32_t limit = streamWindowCalls(options_);
  const uint64_t halfBytes = options_.streamWindowBytes / 2;
  const bool full = calls >= limit || after >= options_.streamWindowBytes;
  const bool mark = full || calls == (limit + 1) / 2 || (before < halfBytes && after >= halfBytes);
  const uint64_t id = send(msg, mark ? FrameKind::kRequest : FrameKind::kStreamRequest, {},
                           methodName, target, hint);
  f.session_ = this;
  f.sentCalls_ += 1;
  f.sentBytes_ += bytes;
  if (mark) {
    Slot& slot = slots_[id & mask_];
    slot.stream = flow;
    slot.streamCalls = f.sentCalls_;
    slot.streamBytes = f.sentBytes_;
    return full;
  }
  ChunkRun* last =
      chunkRunsEnd_ ? &chunkRuns_[(chunkRunsEnd_ - 1) & (chunkRuns_.size() - 1)] : nullptr;
  if (last && last->key == &f && last->last < id) [[likely]] {
    last->last = id;  // the same flow as the last chunk: its run grows
    return false;
  }
  ChunkRun& run = newChunkRun();
  run.first = run.last = id;
  run.key = &f;
  run.flow = flow;
  return false;
}

Session::ChunkRun& Session::newChunkRun() {
  const size_t size = chunkRuns_.size();
  if (size == 0) {
    chunkRuns_.resize(kFirstChunkRuns);
  } else if (chunkRunsEnd_ >= size) {
    // The oldest run goes, unless its flow may still hear of one of its chunks (a chunk
    // not yet confirmed): then the ring doubles. Interleaved streams thus never lose an
    // error; the ring stays as large as the runs in flight ever were.
    const ChunkRun& oldest = chunkRuns_[chunkRunsEnd_ & (size - 1)];
    if (auto flow = oldest.flow.lock(); flow && oldest.last >= flow->doneBelowId_) {
      std::vector<ChunkRun> grown(size * 2);
      for (uint64_t i = chunkRunsEnd_ - size; i < chunkRunsEnd_; ++i)
        grown[i & (grown.size() - 1)] = std::move(chunkRuns_[i & (size - 1)]);
      chunkRuns_.swap(grown);
    }
  }
  return chunkRuns_[chunkRunsEnd_++ & (chunkRuns_.size() - 1)];
}

void Session::confirmChunks(StreamFlow& flow) {
  OutgoingMessage m;
  startMessage(m, 1, options_.defaultTimeout);
  m.initRoot<capnp::AnyPointer>();
  const uint64_t id = send(m, FrameKind::kPing, {});
  Slot& slot = slots_[id & mask_];
  slot.stream = flow.shared_from_this();
  slot.streamCalls = flow.sentCalls_;
  slot.streamBytes = flow.sentBytes_;
}

void Session::endMark(Slot& slot, const CallResult* failure) {
  std::shared_ptr<StreamFlow> flow = std::move(slot.stream);
  slot.state = SlotState::kFree;
  // Answered, with success or not, the chunks before it are no longer in flight: a
  // failure (its own, a deadline, the connection) is the flow's error from now on.
  if (failure) flow->fail(*failure);
  flow->confirm(slot.streamCalls, slot.streamBytes, slot.callId);
}

void Session::noteChunkError(IncomingMessage& msg) {
  const uint64_t id = msg.header().callId;
  const uint64_t kept = std::min<uint64_t>(chunkRunsEnd_, chunkRuns_.size());
  for (uint64_t i = 0; i < kept; ++i) {  // the latest first
    const ChunkRun& run = chunkRuns_[(chunkRunsEnd_ - 1 - i) & (chunkRuns_.size() - 1)];
    if (id < run.first || id > run.last) continue;
    if (auto flow = run.flow.lock()) flow->fail(readError(msg));
    return;
  }
}

}  // namespace zcrpc
