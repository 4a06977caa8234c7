// Frame pool: allocation, zeroing, accounting and fault injection.

#include <ptl/phys/frame_pool.hpp>

#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <thread>
#include <vector>

using namespace ptl;
using namespace ptl::phys;

TEST(FramePool, AllocatesZeroedDistinctFrames)
{
	frame_pool pool(64);
	std::set<pfn_t> seen;

	for (int i = 0; i < 64; i++) {
		auto pfn = pool.alloc(alloc_site::pte);
		ASSERT_TRUE(pfn) << "allocation " << i;
		EXPECT_TRUE(seen.insert(*pfn).second);
		const auto *bytes = static_cast<const unsigned char *>(pool.frame_address(*pfn));
		EXPECT_EQ(std::count(bytes, bytes + frame_size, 0), static_cast<long>(frame_size));
	}
	EXPECT_EQ(pool.in_use(), 64u);
}

TEST(FramePool, ExhaustionReturnsNoMemory)
{
	frame_pool pool(2);
	ASSERT_TRUE(pool.alloc(alloc_site::data));
	ASSERT_TRUE(pool.alloc(alloc_site::data));
	auto third = pool.alloc(alloc_site::data);
	ASSERT_FALSE(third);
	EXPECT_EQ(third.error(), errc::no_memory);
	EXPECT_EQ(pool.stats().failed_allocs, 1u);
}

TEST(FramePool, ReusedFrameIsZeroed)
{
	frame_pool pool(1);
	auto pfn = pool.alloc(alloc_site::data);
	ASSERT_TRUE(pfn);
	std::memset(pool.frame_address(*pfn), 0xab, frame_size);
	pool.free(*pfn);

	auto again = pool.alloc(alloc_site::pmd);
	ASSERT_TRUE(again);
	EXPECT_EQ(*again, *pfn);
	const auto *bytes = static_cast<const unsigned char *>(pool.frame_address(*again));
	EXPECT_EQ(std::count(bytes, bytes + frame_size, 0), static_cast<long>(frame_size));
	EXPECT_EQ(pool.site_of(*again), alloc_site::pmd);
}

TEST(FramePool, CountsPerSite)
{
	frame_pool pool(16);
	auto a = pool.alloc(alloc_site::pud);
	auto b = pool.alloc(alloc_site::pmd);
	auto c = pool.alloc(alloc_site::pmd);
	ASSERT_TRUE(a);
	ASSERT_TRUE(b);
	ASSERT_TRUE(c);

	EXPECT_EQ(pool.in_use(alloc_site::pud), 1u);
	EXPECT_EQ(pool.in_use(alloc_site::pmd), 2u);
	pool.free(*b);
	EXPECT_EQ(pool.in_use(alloc_site::pmd), 1u);
	EXPECT_EQ(pool.stats().allocs_by_site[static_cast<size_t>(alloc_site::pmd)], 2u);
	EXPECT_EQ(pool.stats().frees, 1u);
}

TEST(FramePool, DoubleFreeIsCountedNotReused)
{
	frame_pool pool(4);
	auto pfn = pool.alloc(alloc_site::pte);
	ASSERT_TRUE(pfn);
	pool.free(*pfn);
	pool.free(*pfn);
	EXPECT_EQ(pool.stats().double_frees, 1u);
	EXPECT_EQ(pool.in_use(), 0u);

	// The frame is on the free list once, so two allocations get two frames.
	auto x = pool.alloc(alloc_site::pte);
	auto y = pool.alloc(alloc_site::pte);
	ASSERT_TRUE(x);
	ASSERT_TRUE(y);
	EXPECT_NE(*x, *y);
}

TEST(FramePool, FailsNthAllocationOnce)
{
	frame_pool pool(16);
	pool.fail_nth(3);
	EXPECT_TRUE(pool.alloc(alloc_site::pte));
	EXPECT_TRUE(pool.alloc(alloc_site::pte));
	EXPECT_FALSE(pool.alloc(alloc_site::pte));
	EXPECT_TRUE(pool.alloc(alloc_site::pte));
	EXPECT_EQ(pool.in_use(), 3u);
}

TEST(FramePool, FailsEveryAllocationAtSite)
{
	frame_pool pool(16);
	pool.fail_site(alloc_site::pmd);
	EXPECT_FALSE(pool.alloc(alloc_site::pmd));
	EXPECT_FALSE(pool.alloc(alloc_site::pmd));
	EXPECT_TRUE(pool.alloc(alloc_site::pte));
	pool.clear_faults();
	EXPECT_TRUE(pool.alloc(alloc_site::pmd));
}

TEST(FramePool, FailsWithProbabilityReproducibly)
{
	auto failures = [](uint64_t seed) {
		frame_pool pool(2000);
		pool.fail_probability(0.25, seed);
		std::vector<bool> out;
		for (int i = 0; i < 1000; i++)
			out.push_back(!pool.alloc(alloc_site::data));
		return out;
	};
	const auto first = failures(7);
	EXPECT_EQ(first, failures(7));
	const auto count = std::count(first.begin(), first.end(), true);
	EXPECT_GT(count, 180);
	EXPECT_LT(count, 320);
}

TEST(FramePool, RejectsBadSizesAndProbabilities)
{
	EXPECT_THROW(frame_pool(0), std::invalid_argument);
	frame_pool pool(1);
	EXPECT_THROW(pool.fail_probability(1.5, 1), std::invalid_argument);
}

TEST(FramePool, FindsPoolOfAddress)
{
	frame_pool a(8), b(8);
	auto pfn = b.alloc(alloc_site::pte);
	ASSERT_TRUE(pfn);
	const auto *inside = static_cast<const char *>(b.frame_address(*pfn)) + 100;
	EXPECT_EQ(frame_pool::pool_of(inside), &b);
	EXPECT_EQ(b.pfn_of(inside), *pfn);
	int local = 0;
	EXPECT_EQ(frame_pool::pool_of(&local), nullptr);
}

TEST(FramePool, ConcurrentAllocAndFreeKeepCounts)
{
	frame_pool pool(4096);
	std::vector<std::thread> threads;

	for (int t = 0; t < 4; t++) {
		threads.emplace_back([&pool] {
			std::vector<pfn_t> mine;
			for (int round = 0; round < 200; round++) {
				for (int i = 0; i < 16; i++) {
					auto pfn = pool.alloc(alloc_site::data);
					ASSERT_TRUE(pfn);
					*static_cast<pfn_t *>(pool.frame_address(*pfn)) = *pfn;
					mine.push_back(*pfn);
				}
				for (pfn_t p : mine) {
					ASSERT_EQ(*static_cast<pfn_t *>(pool.frame_address(p)), p) << "frame shared by two owners";
					pool.free(p);
				}
				mine.clear();
			}
		});
	}
	for (auto &t : threads)
		t.join();

	EXPECT_EQ(pool.in_use(), 0u);
	EXPECT_EQ(pool.stats().double_frees, 0u);
	EXPECT_LE(pool.stats().allocs_by_site[static_cast<size_t>(alloc_site::data)], 4u * 200 * 16);
}
