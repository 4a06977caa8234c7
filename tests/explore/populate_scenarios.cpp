// Populate races under every schedule of the populate protocol's yield
// points. Two populates of one entry run at each level and in each lock
// mode, and three populates run with a preemption bound. A populate also
// races a lockless walker, which must never read an entry of a table that
// was published before it was zeroed.
//
// The x86-64 5-level geometry is used because it folds no level, so every
// level from p4d to pte has a populate of its own.

#include "../geometries.hpp"
#include "scenario_support.hpp"

#include <ptl/mm/populate.hpp>
#include <ptl/mm/walk.hpp>

#include <gtest/gtest.h>

using namespace ptl;
using arch::level;
using mm::lock_mode;

namespace {

using G = arch::x86_64_la57;
using slot_t = mm::mm_struct<G>::slot_t;

constexpr unsigned pool_frames = 64;

std::string scenario_name(std::string_view what, level l, lock_mode mode)
{
	return std::string(what) + " " + std::string(arch::level_name(l)) + " " + std::string(mm::lock_mode_name(mode));
}

// An address space whose tables above level l are populated, and the entry
// where a table of level l goes. Split mode uses split pmd locks, so a PTE
// table is populated under its pmd table's lock.
class populate_fixture {
public:
	populate_fixture(level l, lock_mode mode) : level_(l)
	{
		mm_ = *mm::mm_struct<G>::create(pool_, mm::mm_kind::user, mode, mode == lock_mode::split);
		parent_ = parent_of(l);
		frames_before_ = pool_.in_use();
		populates_before_ = mm_->counters().populates;
	}

	~populate_fixture() { explore::release_stray_locks(*mm_); }

protected:
	slot_t *parent_of(level l)
	{
		mm::walk_guard<G> walk(*mm_);
		slot_t *entry = mm_->pgd_offset(addr_);

		for (level above = level::p4d; above != l; above = arch::next_level(above)) {
			auto next = mm::alloc_level(*mm_, entry, above, addr_);
			explore::require(bool(next), "populating the tables above the raced one");
			entry = *next;
		}
		return entry;
	}

	// populate() as a walk calls it: in legacy mode under the walk's lock.
	void populate_once()
	{
		mm::walk_guard<G> walk(*mm_);

		auto r = mm::populate(*mm_, parent_, level_, addr_);
		explore::expect(bool(r), "populate failed");
	}

	// One table of level l published at the entry, counted once, and the
	// pool back to one frame more than before the race.
	void expect_one_table(unsigned nr_populates)
	{
		const auto counters = mm_->counters();
		const auto stats = pool_.stats();

		explore::expect(!G::format::none(parent_->load()), "the entry is empty after every populate finished");
		explore::expect(counters.nr_tables[arch::level_index(level_)] == 1,
				std::to_string(counters.nr_tables[arch::level_index(level_)]) + " " +
					std::string(arch::level_name(level_)) + " tables counted, expected 1");
		explore::expect(counters.populates == populates_before_ + 1,
				std::to_string(counters.populates - populates_before_) + " tables published, expected 1");
		explore::expect(counters.races_lost == nr_populates - 1,
				std::to_string(counters.races_lost) + " races lost, expected " +
					std::to_string(nr_populates - 1));
		explore::expect(stats.in_use == frames_before_ + 1,
				std::to_string(stats.in_use) + " frames in use, expected " +
					std::to_string(frames_before_ + 1));
		explore::expect(stats.double_frees == 0, std::to_string(stats.double_frees) + " frames freed twice");
		explore::expect_no_lock_held(*mm_);
		explore::expect_audit_ok<G>({mm_.get()});
	}

	const uint64_t addr_ = sample_user_addr<G>();
	const level level_;
	phys::frame_pool pool_{pool_frames};
	std::unique_ptr<mm::mm_struct<G>> mm_;
	slot_t *parent_ = nullptr;
	uint64_t frames_before_ = 0;
	uint64_t populates_before_ = 0;
};

// nr_threads threads each run the slow path of populating one entry, as
// threads that all found it empty do.
class populate_race : public explore::instance, populate_fixture {
public:
	populate_race(level l, lock_mode mode, unsigned nr_threads) : populate_fixture(l, mode), nr_threads_(nr_threads)
	{
	}

	unsigned nr_threads() const override { return nr_threads_; }
	void run_thread(unsigned) override { populate_once(); }
	void check() override { expect_one_table(nr_threads_); }

private:
	const unsigned nr_threads_;
};

// Thread 0 populates the entry while thread 1 translates addr twice. Nothing
// maps addr, so every walk must come back empty: a walk that finds a leaf
// read an entry of the new table before the table was zeroed.
class populate_vs_walker : public explore::instance, populate_fixture {
public:
	populate_vs_walker(level l, lock_mode mode) : populate_fixture(l, mode) {}

	unsigned nr_threads() const override { return 2; }

	void run_thread(unsigned index) override
	{
		if (index == 0) {
			populate_once();
			return;
		}

		for (int i = 0; i < 2; i++) {
			explore::yield();
			walk();
		}
	}

	void check() override { expect_one_table(1); }

private:
	void walk()
	{
		const auto t = mm::translate(*mm_, addr_);
		if (t)
			explore::note_problem("a lockless walk found pfn " + std::to_string(t->pfn) + " mapped at the " +
					      std::string(arch::level_name(t->leaf_level)) +
					      " level, but nothing is mapped: it read a table that was not zeroed");
	}
};

constexpr level populated_levels[] = {level::p4d, level::pud, level::pmd, level::pte};

// Each minimum is about a third of the fewest schedules measured in any
// lock mode (docs/TESTING.md lists them), and at least 2, so an explorer
// that stops branching fails. A new yield point only adds schedules.
constexpr uint64_t min_two_populates = 6;
constexpr uint64_t min_walker = 10;
constexpr uint64_t min_three_populates = 100;

void explore_two_populates(level l)
{
	for (lock_mode mode : mm::all_lock_modes) {
		explore::run_and_expect({scenario_name("two populates", l, mode), {}, min_two_populates},
					[=] { return std::make_unique<populate_race>(l, mode, 2); });
	}
}

} // namespace

TEST(ExplorePopulate, TwoPopulatesP4dEntry)
{
	explore_two_populates(level::p4d);
}

TEST(ExplorePopulate, TwoPopulatesPudEntry)
{
	explore_two_populates(level::pud);
}

TEST(ExplorePopulate, TwoPopulatesPmdEntry)
{
	explore_two_populates(level::pmd);
}

TEST(ExplorePopulate, TwoPopulatesPteEntry)
{
	explore_two_populates(level::pte);
}

TEST(ExplorePopulate, PopulateVsLocklessWalker)
{
	for (level l : populated_levels) {
		for (lock_mode mode : mm::all_lock_modes) {
			explore::run_and_expect({scenario_name("populate vs walker", l, mode), {}, min_walker},
						[=] { return std::make_unique<populate_vs_walker>(l, mode); });
		}
	}
}

TEST(ExplorePopulate, ThreePopulatesBounded)
{
	explore::options bounded;
	bounded.preemption_bound = 2;

	for (level l : {level::pmd, level::pte}) {
		for (lock_mode mode : mm::all_lock_modes) {
			explore::run_and_expect({scenario_name("three populates", l, mode), bounded, min_three_populates},
						[=] { return std::make_unique<populate_race>(l, mode, 3); });
		}
	}
}
