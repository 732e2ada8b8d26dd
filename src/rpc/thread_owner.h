// Which thread uses an object that belongs to one thread at a time (a Channel).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "os/os.h"

namespace zcrpc {

/// Remembers the thread that uses an object (a Channel and its requests, or a server
/// connection), so that use from another thread is refused with an error that says so,
/// instead of failing later with a puzzling one ("a message is already open") or
/// corrupting state silently.
///
/// How. The owning thread, on entering one of the object's API functions, writes which to
/// `activity_` (a plain store) and then checks that it still owns the object (a plain
/// load); a compiler fence keeps the two in order. When its outermost function returns it
/// writes "in none" (a plain store). Another thread takes the object over in three steps:
/// it marks `owner_` as being claimed, makes every thread of the process pass a memory
/// barrier (os::barrierOtherThreads(), membarrier(2)), and reads `activity_`. The barrier
/// pairs with the owner's compiler fence: either the claimer sees what the owner wrote, or
/// the owner sees the claim. The claimer takes the object only when the owner is in none
/// of its functions and left nothing in progress (no request open, no call outstanding:
/// it may read that state, as the owner's last function happened before), and otherwise
/// gives the object back and refuses. An owner that finds a claim waits for its outcome
/// and goes on (the claimer saw it busy) or is refused (the claimer took it). Two threads
/// that use the object at once are therefore always detected by at least one of them,
/// before either touches its state, at a cost to the owner of two plain loads, two plain
/// stores and a counter per function (no atomic read-modify-write, no fence); taking over
/// costs a system call.
///
/// After such a race a thread that lost it may have written `activity_` after the new
/// owner did (its store was on its way when it was refused). A takeover that finds another
/// thread's store there cannot tell what the owner does, and refuses ("used from two
/// threads at once a moment ago") until the owner enters one of its functions again.
///
/// A Channel may thus be handed from thread to thread between uses (through a queue, or a
/// mutex that orders the hand-over); doing so while a request is open or calls are
/// outstanding is refused. Without membarrier (Linux before 4.3, or a seccomp filter that
/// refuses it) a takeover reads `activity_` unfenced, and use at once is detected only
/// when the owner has something in progress that the claimer can see.
///
/// Threads: enter() from any thread (it throws on all but the owner); leave() and
/// leaveBusy() on the thread whose enter() returned; settle() any thread (it does nothing
/// on others); pin() on the thread that is to own the object for good.
class alignas(os::kCacheLine) ThreadOwner final {
 public:
  /// Which API function a thread is in. Names in name().
  enum Doing : uint8_t {
    kNothing,
    kNewRequest,      // and, after it returns: a request is being built
    kCapabilityCall,  // a new request on a capability, likewise
    kCall,
    kCallAsync,
    kSendOneWay,
    kStreamSend,
    kStreamFinish,
    kDone,
    kWait,
    kCancel,
    kPoll,
    kPollUntil,
    kPing,
    kDoingCount,
  };
  /// The API function `d` names, as errors print it ("call()", "new request").
  static const char* name(Doing d) noexcept;

  /// What a refusal asks of the object: its name ("channel to shm://kv"), or what its
  /// owner left in progress ("a request is being built", "3 calls outstanding"; "" for
  /// nothing). kInProgress is asked only while the owner is in none of the object's
  /// functions and held off from entering one, after its last one (so the object's state
  /// may be read).
  enum class Ask : uint8_t { kName, kInProgress };
  /// The object, for refusals: `ask(object, what)`.
  struct Subject {
    const void* object;
    std::string (*ask)(const void* object, Ask what);
    std::string operator()(Ask a) const { return ask(object, a); }
  };

  /// Entry of an API function (`what`) by the calling thread, to be matched by leave() (or
  /// leaveBusy()) when it returns or throws. Returns when the calling thread owns the object
  /// and has said that it is in `what`: it was the owner, or took the object over (no owner
  /// yet, or the owner has nothing in progress). Otherwise throws InvalidArgument naming
  /// both threads, `what`, what the owner is doing (asked of `subject`) and what to do.
  [[gnu::always_inline]] void enter(Doing what, Subject subject) {
    const uintptr_t me = token();
    if (owner_.load(std::memory_order_relaxed) != me) [[unlikely]]
      takeOver(what, subject);
    activity_.store(me | what, std::memory_order_relaxed);
    // Pairs with barrierOtherThreads() in takeOver(): the claimer sees the store above, or
    // the load below sees the claim. The compiler must not sink the store below the load.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (owner_.load(std::memory_order_relaxed) != me) [[unlikely]]
      waitOutClaim(what, subject);
    ++depth_;
  }

  /// The API function entered last returns (or throws); after the outermost one the owner
  /// is in none. Release pairs with the acquire load in takeOver(): a thread that takes the
  /// object over sees everything this one did with it.
  [[gnu::always_inline]] void leave() noexcept {
    if (--depth_ == 0) activity_.store(token(), std::memory_order_release);
  }
  /// leave() for a function that returns with a request open (a new request): the owner
  /// stays busy, as what it wrote on entry says (or, if it re-entered the object's
  /// functions meanwhile, what the last of those wrote: busy too).
  [[gnu::always_inline]] void leaveBusy() noexcept { --depth_; }
  /// The owner's request was dropped unsent outside its functions: when the calling thread
  /// owns the object and is in none of them, it is idle again.
  void settle() noexcept {
    if (owner_.load(std::memory_order_relaxed) == token() && depth_ == 0)
      activity_.store(token(), std::memory_order_release);
  }

  /// The calling thread owns the object for good: no other thread takes it over (a server
  /// connection belongs to the worker thread that serves it).
  void pin() noexcept;

 private:
  // activity_: the token of the thread that wrote it | the Doing it is in (bits 0-5).
  // Tokens are 64-byte aligned addresses of a thread-local.
  static constexpr uint64_t kDoingMask = 63;
  static constexpr uintptr_t kClaiming = 1;  // in owner_: a takeover is deciding
  static_assert(kDoingCount <= kDoingMask + 1);

  static uintptr_t token() noexcept { return reinterpret_cast<uintptr_t>(&tlsToken); }
  void takeOver(Doing what, Subject subject);
  void waitOutClaim(Doing what, Subject subject);
  /// owner_ once no takeover is deciding (or after kClaimWait, still claimed).
  uintptr_t afterClaims() const noexcept;
  [[noreturn]] void refuse(Doing what, const std::string& object, const std::string& ownerDoing) const;

  alignas(os::kCacheLine) [[gnu::tls_model("initial-exec")]] static inline constinit thread_local char tlsToken = 0;
  std::atomic<uintptr_t> owner_{0};    // the owner's token, | kClaiming during a takeover
  std::atomic<uint64_t> activity_{0};  // written by the owner (see above)
  uint32_t depth_ = 0;                 // the owner's API functions in progress (owner only)
  std::atomic<long> ownerTid_{0};      // the owner's kernel thread id, for messages
  std::atomic<bool> pinned_{false};
};

}  // namespace zcrpc
