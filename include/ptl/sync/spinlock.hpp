#pragma once
// A test-and-test-and-set spinlock that counts its acquisitions, its
// contended acquisitions and the time spent waiting, and records its owner
// so that assertions can check "held by this thread".

#include <ptl/sync/thread_safety.hpp>

#include <atomic>
#include <cstdint>

namespace ptl::sync {

struct lock_stats {
	uint64_t acquisitions = 0;
	uint64_t contended = 0; // acquisitions that found the lock taken
	uint64_t wait_ns = 0;   // time spent spinning in contended acquisitions
};

// Small per-thread number, never 0, used as the owner tag.
uint32_t current_thread_tag();

class PTL_CAPABILITY("spinlock") spinlock {
public:
	spinlock() = default;
	spinlock(const spinlock &) = delete;
	spinlock &operator=(const spinlock &) = delete;

	void lock() PTL_ACQUIRE()
	{
		if (!locked_.exchange(true, std::memory_order_acquire)) {
			note_acquired(false, 0);
			return;
		}
		lock_contended();
	}

	bool try_lock() PTL_TRY_ACQUIRE(true)
	{
		if (locked_.load(std::memory_order_relaxed) || locked_.exchange(true, std::memory_order_acquire))
			return false;
		note_acquired(false, 0);
		return true;
	}

	void unlock() PTL_RELEASE()
	{
		owner_.store(0, std::memory_order_relaxed);
		locked_.store(false, std::memory_order_release);
	}

	bool is_locked() const { return locked_.load(std::memory_order_relaxed); }
	bool held_by_current_thread() const { return owner_.load(std::memory_order_relaxed) == current_thread_tag(); }

	// Tells the thread-safety analysis the caller holds the lock; checked
	// at run time in debug builds.
	void assert_held() const PTL_ASSERT_CAPABILITY(this);

	lock_stats stats() const;
	void reset_stats();

private:
	void lock_contended();
	void note_acquired(bool contended, uint64_t waited_ns);

	std::atomic<bool> locked_{false};
	std::atomic<uint32_t> owner_{0};

	// Written only by the holder; read at any time for reports, hence the
	// relaxed atomics rather than plain fields.
	std::atomic<uint64_t> acquisitions_{0};
	std::atomic<uint64_t> contended_{0};
	std::atomic<uint64_t> wait_ns_{0};
};

// Scoped holder of a spinlock.
class PTL_SCOPED_CAPABILITY spin_guard {
public:
	explicit spin_guard(spinlock &lock) PTL_ACQUIRE(lock) : lock_(lock) { lock_.lock(); }
	~spin_guard() PTL_RELEASE() { lock_.unlock(); }
	spin_guard(const spin_guard &) = delete;
	spin_guard &operator=(const spin_guard &) = delete;

private:
	spinlock &lock_;
};

} // namespace ptl::sync
