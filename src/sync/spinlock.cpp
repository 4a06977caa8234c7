#include <ptl/sync/spinlock.hpp>

#include <ptl/base/hooks.hpp>

#include <cassert>
#include <chrono>
#include <thread>

namespace ptl::sync {

uint32_t current_thread_tag()
{
	static std::atomic<uint32_t> next_tag{1};
	thread_local const uint32_t tag = next_tag.fetch_add(1, std::memory_order_relaxed);
	return tag;
}

void spinlock::lock_contended()
{
	const auto start = std::chrono::steady_clock::now();
	unsigned spins = 0;

	do {
		while (locked_.load(std::memory_order_relaxed)) {
			// In test builds a scheduler that runs one thread at a
			// time switches away here, or the holder, which it has
			// paused, could never release the lock.
			PTL_HOOK_LOCK_SPIN(this);

			// Yield now and then so a preempted holder on a machine
			// with few cores can run and release the lock.
			if (++spins % 128 == 0)
				std::this_thread::yield();
			else
				__builtin_ia32_pause();
		}
	} while (locked_.exchange(true, std::memory_order_acquire));

	const auto waited = std::chrono::steady_clock::now() - start;
	note_acquired(true, static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(waited).count()));
}

void spinlock::note_acquired(bool contended, uint64_t waited_ns)
{
	owner_.store(current_thread_tag(), std::memory_order_relaxed);
	acquisitions_.store(acquisitions_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
	if (contended) {
		contended_.store(contended_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
		wait_ns_.store(wait_ns_.load(std::memory_order_relaxed) + waited_ns, std::memory_order_relaxed);
	}
}

void spinlock::assert_held() const
{
	assert(held_by_current_thread());
}

lock_stats spinlock::stats() const
{
	return lock_stats{
		acquisitions_.load(std::memory_order_relaxed),
		contended_.load(std::memory_order_relaxed),
		wait_ns_.load(std::memory_order_relaxed),
	};
}

void spinlock::reset_stats()
{
	acquisitions_.store(0, std::memory_order_relaxed);
	contended_.store(0, std::memory_order_relaxed);
	wait_ns_.store(0, std::memory_order_relaxed);
}

} // namespace ptl::sync
