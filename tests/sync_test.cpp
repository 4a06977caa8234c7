// Spinlock: mutual exclusion, owner tracking and statistics.

#include <ptl/sync/spinlock.hpp>

#include <gtest/gtest.h>

#include <thread>
#include <vector>

using namespace ptl::sync;

TEST(Spinlock, CountsAcquisitionsAndOwner)
{
	spinlock lock;
	EXPECT_FALSE(lock.is_locked());
	lock.lock();
	EXPECT_TRUE(lock.held_by_current_thread());
	bool other_sees_owner = true;
	std::thread([&] { other_sees_owner = lock.held_by_current_thread(); }).join();
	EXPECT_FALSE(other_sees_owner);
	lock.unlock();
	EXPECT_FALSE(lock.is_locked());
	EXPECT_EQ(lock.stats().acquisitions, 1u);
	EXPECT_EQ(lock.stats().contended, 0u);
}

TEST(Spinlock, TryLockFailsWhenHeld)
{
	spinlock lock;
	spin_guard guard(lock);
	bool got = true;
	std::thread([&] { got = lock.try_lock(); }).join();
	EXPECT_FALSE(got);
}

TEST(Spinlock, ExcludesAndCountsContention)
{
	spinlock lock;
	uint64_t counter = 0;
	std::vector<std::thread> threads;

	for (int t = 0; t < 4; t++) {
		threads.emplace_back([&] {
			for (int i = 0; i < 20000; i++) {
				spin_guard guard(lock);
				counter++;
			}
		});
	}
	for (auto &t : threads)
		t.join();

	EXPECT_EQ(counter, 80000u);
	EXPECT_EQ(lock.stats().acquisitions, 80000u);
	EXPECT_LE(lock.stats().contended, 80000u);
}
