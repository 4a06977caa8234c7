// Two threads race to populate the same entry, with the race forced: the
// first thread is held after it allocated its table and before it takes the
// lock (or tries its compare-and-swap), while the second populates the
// entry. Exactly one table must be published and the loser's freed. Every
// case runs in every lock mode.
//
// This file is also built against deliberately broken variants of the
// protocol (see tests/CMakeLists.txt); those builds must fail.

#include "geometries.hpp"
#include "race_support.hpp"

#include <ptl/check/audit.hpp>
#include <ptl/mm/populate.hpp>
#include <ptl/mm/pte_lock.hpp>

#include <gtest/gtest.h>

#include <thread>

using namespace ptl;
using namespace ptl::mm;
using ptl::arch::level;

template <class G>
class PopulateRace : public ::testing::Test {
protected:
	const uint64_t addr = sample_user_addr<G>();

	// The entry one level above a table of level l, with every table above
	// it already populated.
	typename mm_struct<G>::slot_t *parent_of(mm_struct<G> &mm, level l)
	{
		walk_guard<G> walk(mm);
		auto *entry = mm.pgd_offset(addr);
		for (level above = level::p4d; above != l; above = arch::next_level(above)) {
			auto next = alloc_level(mm, entry, above, addr);
			EXPECT_TRUE(next);
			entry = *next;
		}
		return entry;
	}

	// populate() as a walk calls it: in legacy mode under the walk's lock.
	static result<void> populate_in_walk(mm_struct<G> &mm, typename mm_struct<G>::slot_t *parent, level l,
					     uint64_t addr)
	{
		walk_guard<G> walk(mm);
		return populate(mm, parent, l, addr);
	}

	// Races two populates of the table of level l in one lock mode.
	void race_in_mode(level l, lock_mode mode)
	{
		SCOPED_TRACE(std::string(lock_mode_name(mode)));
		phys::frame_pool pool(256);
		auto mm = *mm_struct<G>::create(pool, mm_kind::user, mode);
		auto *parent = parent_of(*mm, l);
		const auto tables_before = pool.in_use();
		test::paused_thread held(hooks::point::populate_after_alloc, static_cast<int>(arch::level_index(l)));

		std::thread loser([&] {
			test::paused_thread::designate();
			EXPECT_TRUE(populate_in_walk(*mm, parent, l, addr));
		});
		ASSERT_TRUE(held.wait_until_paused());

		// The winner runs the whole protocol while the loser holds its
		// allocated, unpublished table.
		ASSERT_TRUE(populate_in_walk(*mm, parent, l, addr));
		const auto winner_entry = parent->load();
		EXPECT_EQ(pool.in_use(), tables_before + 2);

		held.release();
		loser.join();

		EXPECT_EQ(parent->load(), winner_entry) << "the loser replaced the winner's table";
		EXPECT_EQ(mm->counters().nr_tables[arch::level_index(l)], 1u);
		EXPECT_EQ(mm->counters().races_lost, 1u);
		EXPECT_EQ(mm->counters().populates, 1u + (tables_before - 1));
		EXPECT_EQ(pool.in_use(), tables_before + 1);
		EXPECT_EQ(pool.stats().frees, 1u);
		EXPECT_FALSE(mm->page_table_lock.is_locked());

		const auto report = check::audit<G>({mm.get()});
		EXPECT_TRUE(report.ok()) << report.summary();
	}

	void race_at(level l)
	{
		if (arch::is_folded<G>(l))
			GTEST_SKIP() << arch::level_name(l) << " is folded in " << G::name;
#if !defined(PTL_TEST_HOOKS)
		GTEST_SKIP() << "needs a build with PTL_TEST_HOOKS";
#endif
		for (lock_mode mode : all_lock_modes)
			race_in_mode(l, mode);
	}
};

TYPED_TEST_SUITE(PopulateRace, all_geometries, geometry_names);

TYPED_TEST(PopulateRace, PudEntry)
{
	this->race_at(level::pud);
}

TYPED_TEST(PopulateRace, PmdEntry)
{
	this->race_at(level::pmd);
}

TYPED_TEST(PopulateRace, PteEntry)
{
	this->race_at(level::pte);
}

// Many threads released together populate the same entries; whatever the
// interleaving, the tree has one table per entry and the audit agrees.
TYPED_TEST(PopulateRace, ManyThreadsOneTablePerEntry)
{
	using G = TypeParam;
	constexpr int nr_threads = 8;

	for (lock_mode mode : all_lock_modes) {
		SCOPED_TRACE(std::string(lock_mode_name(mode)));
		phys::frame_pool pool(1024);
		auto mm = *mm_struct<G>::create(pool, mm_kind::user, mode, true);
		std::atomic<int> ready{0};
		std::vector<std::thread> threads;

		for (int t = 0; t < nr_threads; t++) {
			threads.emplace_back([&] {
				ready.fetch_add(1);
				while (ready.load() < nr_threads)
					std::this_thread::yield();
				for (uint64_t i = 0; i < 64; i++) {
					const uint64_t a = this->addr + i * arch::entry_span<G>(level::pmd);
					walk_guard<G> walk(*mm);
					auto pmd = pmd_alloc_walk(*mm, a);
					ASSERT_TRUE(pmd);
					ASSERT_TRUE(pte_alloc(*mm, *pmd, a));
				}
			});
		}
		for (auto &t : threads)
			t.join();

		EXPECT_EQ(mm->counters().nr_tables[arch::level_index(level::pte)], 64u);
		const auto report = check::audit<G>({mm.get()});
		EXPECT_TRUE(report.ok()) << report.summary();
	}
}
