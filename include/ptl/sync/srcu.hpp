#pragma once
// A grace-period domain for lockless walkers, in the manner of Linux's
// sleepable RCU (SRCU): readers mark themselves in a per-thread-shard
// counter, and a writer that has unlinked a table waits until every reader
// that could still hold a pointer into it has left.
//
// Readers never block and never write a shared cache line; a grace period
// costs the writer two passes over the counters. Page-table frames go back
// to the pool only after one, so a walker that loaded an entry just before
// the table behind it was unlinked still reads page-table memory, not a
// frame that was handed out again.
//
// Why two counter sets and two flips: a reader picks the set from the
// epoch and then increments it. A reader delayed between those two steps
// may increment the set that a writer has already found empty. One flip and
// one wait per synchronize() would then let the *next* writer skip that
// reader. Waiting once on each set, as synchronize() does, covers it.
//
// NOTE: this is written with C++ atomics rather than liburcu. Debian's
// liburcu is not built with ThreadSanitizer instrumentation, so the test
// suite's TSan build would see no ordering through its grace periods.

#include <ptl/sync/sharded_counter.hpp>

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>

namespace ptl::sync {

class srcu {
public:
	// Enters a read-side section; returns the index to pass to
	// read_unlock. Sections nest.
	unsigned read_lock()
	{
		const unsigned idx = static_cast<unsigned>(epoch_.load(std::memory_order_seq_cst) & 1);
		shards_[current_shard()].readers[idx].fetch_add(1, std::memory_order_seq_cst);

		// Orders the increment before every load of the section: a
		// writer that does not see the increment has its unlink seen
		// by those loads (the store-buffering pattern, with the fence
		// in synchronize()).
		std::atomic_thread_fence(std::memory_order_seq_cst);
		return idx;
	}

	// Leaves the section. Release: the section's loads happen before the
	// writer's acquire load that finds the counter drained, and so before
	// it frees what it unlinked.
	void read_unlock(unsigned idx) { shards_[current_shard()].readers[idx].fetch_sub(1, std::memory_order_release); }

	// Waits until every read-side section that began before this call has
	// ended. Must not be called from inside a read-side section of this
	// domain: it would wait for itself.
	void synchronize()
	{
		std::lock_guard guard(writer_);

		std::atomic_thread_fence(std::memory_order_seq_cst);
		for (int pass = 0; pass < 2; pass++) {
			const unsigned old = static_cast<unsigned>(epoch_.fetch_add(1, std::memory_order_seq_cst) & 1);
			wait_for_readers(old);
		}
		grace_periods_.fetch_add(1, std::memory_order_relaxed);
	}

	// Grace periods completed so far.
	uint64_t grace_periods() const { return grace_periods_.load(std::memory_order_relaxed); }

private:
	// Readers of one set, summed over the shards.
	int64_t readers(unsigned idx) const
	{
		int64_t sum = 0;
		for (const auto &s : shards_)
			sum += s.readers[idx].load(std::memory_order_acquire);
		return sum;
	}

	void wait_for_readers(unsigned idx) const
	{
		for (unsigned spins = 0; readers(idx) != 0; spins++) {
			if (spins > 64)
				std::this_thread::yield();
		}
	}

	struct alignas(64) shard {
		std::array<std::atomic<int64_t>, 2> readers{};
	};

	std::atomic<uint64_t> epoch_{0};
	std::array<shard, nr_shards> shards_{};
	std::mutex writer_;
	std::atomic<uint64_t> grace_periods_{0};
};

// A read-side section for as long as the object lives (rcu_read_lock and
// rcu_read_unlock). Lockless page-table walkers hold one so that the tables
// they walk are not freed under them.
class srcu_read_guard {
public:
	explicit srcu_read_guard(srcu &domain) : domain_(domain), idx_(domain.read_lock()) {}
	~srcu_read_guard() { domain_.read_unlock(idx_); }
	srcu_read_guard(const srcu_read_guard &) = delete;
	srcu_read_guard &operator=(const srcu_read_guard &) = delete;

private:
	srcu &domain_;
	unsigned idx_;
};

} // namespace ptl::sync
