#pragma once
// A counter that many threads update often and few read: each thread adds
// to its own cache line, and a read sums the lines, as Linux's percpu
// counters do. One shared atomic would bounce its cache line between the
// CPUs on every update.

#include <ptl/sync/spinlock.hpp>

#include <array>
#include <atomic>
#include <cstdint>

namespace ptl::sync {

inline constexpr unsigned nr_shards = 16;

// Shard of the calling thread. Thread tags are handed out in order, so up
// to nr_shards threads get a shard each.
inline unsigned current_shard()
{
	return current_thread_tag() % nr_shards;
}

class sharded_counter {
public:
	void add(int64_t delta) { shards_[current_shard()].value.fetch_add(delta, std::memory_order_relaxed); }

	// The sum of every shard: exact once the updating threads are done,
	// a snapshot while they run.
	int64_t read() const
	{
		int64_t sum = 0;
		for (const auto &s : shards_)
			sum += s.value.load(std::memory_order_relaxed);
		return sum;
	}

private:
	struct alignas(64) shard {
		std::atomic<int64_t> value{0};
	};
	std::array<shard, nr_shards> shards_{};
};

} // namespace ptl::sync
