// Which thread uses an object that belongs to one thread at a time (a Channel).
#pragma once

#include <atomic>
#include <string>

namespace zcrpc {

/// Remembers the thread that uses an object (a Channel and its requests), so that a call
/// from another thread is refused with an error that says so, instead of failing later
/// with a puzzling one ("a message is already open") or corrupting state silently.
///
/// check() is the fast path: the calling thread's token (the address of a thread-local,
/// initial-exec: no call) compared with the owner's, one relaxed load, no read-modify-write
/// and no store. Another thread takes the object over when the owner has nothing in
/// progress (the caller's `inUse` says so): a Channel may be handed from thread to thread
/// between uses, e.g. through a queue or a mutex that orders the hand-over.
///
/// Threads: check() from any thread. `inUse` runs on the calling (non-owning) thread and
/// reads the owner's state: after a proper hand-over that is ordered; when two threads
/// really use the object at once it is a race, which the refusal is there to report. The
/// detection is certain when the owner has a request open or calls outstanding while the
/// other thread calls; two threads that each make whole calls in an unlucky interleaving
/// may both pass (the check adds no fence to the fast path).
class ThreadOwner final {
 public:
  /// What a refusal names: the object ("channel to shm://kv") and what its owner has in
  /// progress ("a request is being built", "3 calls outstanding"; empty: nothing).
  struct Use {
    std::string object;
    std::string inProgress;
  };

  /// Returns when the calling thread may go on: it is the owner, or it takes the object
  /// over (no owner yet, or the owner has nothing in progress). Otherwise throws
  /// InvalidArgument naming both threads, `where` (the operation, "poll()") and what to do.
  /// `use()` -> Use is called only on the slow path.
  template <typename UseFn>
  [[gnu::always_inline]] void check(const char* where, UseFn&& use) {
    if (owner_.load(std::memory_order_relaxed) == token()) [[likely]]
      return;
    takeOver(where, use());
  }

  /// The calling thread owns the object for good: no other thread takes it over (a server
  /// connection belongs to the worker thread that serves it).
  void pin() noexcept;

 private:
  static const void* token() noexcept { return &tlsToken; }
  void takeOver(const char* where, const Use& use);

  [[gnu::tls_model("initial-exec")]] static inline constinit thread_local char tlsToken = 0;
  std::atomic<const void*> owner_{nullptr};
  std::atomic<long> ownerTid_{0};  // the owner's kernel thread id, for the message
  std::atomic<bool> pinned_{false};
};

}  // namespace zcrpc
