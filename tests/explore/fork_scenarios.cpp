// Copy-on-write faults after a fork under every schedule of their yield
// points, in each lock mode: two write faults of the parent on one shared
// page, and a write fault of the parent while the child unmaps the page.
//
// The fork itself runs in the setup, before the threads start. It holds the
// parent's mmap_lock exclusively, so no fault can overlap it. The faults
// here hold that lock shared, so they never wait on each other for it.

#include "../geometries.hpp"
#include "scenario_support.hpp"

#include <ptl/mm/walk.hpp>
#include <ptl/user/user_space.hpp>

#include <gtest/gtest.h>

using namespace ptl;
using mm::lock_mode;
using phys::alloc_site;
using user::access_type;

namespace {

using G = arch::x86_64;
using space_t = user::user_space<G>;

constexpr unsigned pool_frames = 64;
constexpr uint64_t page = arch::page_size;

std::string scenario_name(std::string_view what, lock_mode mode)
{
	return std::string(what) + " " + std::string(mm::lock_mode_name(mode));
}

// A parent with one private anonymous page, faulted in for writing, and a
// child forked from it, so that both map the page's frame write-protected.
// Split mode uses split pmd locks.
class forked_fixture {
public:
	explicit forked_fixture(lock_mode mode)
	{
		parent_ = *space_t::create(pool_, mode, mode == lock_mode::split);

		const unsigned flags = user::map_private | user::map_anonymous | user::map_fixed_noreplace;
		auto start = parent_->mmap(addr_, page, user::prot_read | user::prot_write, flags);
		explore::require(start && *start == addr_, "mmap of the scenario's page");
		explore::require(bool(parent_->handle_mm_fault(addr_, access_type::write)), "the parent's first fault");

		auto child = parent_->fork();
		explore::require(bool(child), "fork");
		child_ = std::move(*child);
		shared_ = mm::translate(parent_->mm(), addr_)->pfn;
	}

	~forked_fixture()
	{
		explore::release_stray_locks(parent_->mm());
		explore::release_stray_locks(child_->mm());
	}

protected:
	// The parent's page after its write fault: writable, and on a frame
	// only the parent maps.
	void expect_parent_private()
	{
		const auto t = mm::translate(parent_->mm(), addr_);

		explore::expect(t.has_value(), "the parent's page is not mapped");
		if (!t)
			return;
		explore::expect((t->prot & arch::prot_write) != 0, "the parent's page is not writable after its write");
		explore::expect(pool_.page_count(t->pfn) == 1,
				"the parent's frame has " + std::to_string(pool_.page_count(t->pfn)) +
					" references, expected 1");
	}

	// The locks, the audits, and no frame freed twice.
	void expect_consistent()
	{
		explore::expect(pool_.stats().double_frees == 0, "a frame was freed twice");
		explore::expect_no_lock_held(parent_->mm());
		explore::expect_no_lock_held(child_->mm());
		explore::expect_audit_ok<G>({&parent_->mm(), &child_->mm()});
	}

	const uint64_t addr_ = sample_user_addr<G>();
	phys::frame_pool pool_{pool_frames};
	std::unique_ptr<space_t> parent_;
	std::unique_ptr<space_t> child_;
	phys::pfn_t shared_ = 0;
};

// Two threads of the parent write to the shared page. Exactly one copies the
// frame. The other either finds the copy installed or loses the re-check
// and frees its own copy, and the child keeps the old frame alone.
class wp_vs_wp : public explore::instance, forked_fixture {
public:
	explicit wp_vs_wp(lock_mode mode) : forked_fixture(mode) {}

	unsigned nr_threads() const override { return 2; }

	void run_thread(unsigned index) override
	{
		auto r = parent_->handle_mm_fault(addr_, access_type::write);
		explore::expect(bool(r), "write fault " + std::to_string(index) + " failed");
	}

	void check() override
	{
		const auto c = parent_->counters();
		const auto in_child = mm::translate(child_->mm(), addr_);

		explore::expect(c.wp_copies == 1, std::to_string(c.wp_copies) + " copies installed, expected 1");
		explore::expect(c.faults_already_mapped == 1,
				std::to_string(c.faults_already_mapped) + " faults found the copy, expected 1");
		explore::expect(in_child && in_child->pfn == shared_, "the child lost its frame");
		explore::expect(pool_.page_count(shared_) == 1,
				"the child's frame has " + std::to_string(pool_.page_count(shared_)) +
					" references, expected 1");
		explore::expect(pool_.in_use(alloc_site::data) == 2,
				std::to_string(pool_.in_use(alloc_site::data)) + " data frames in use, expected 2");
		expect_parent_private();
		expect_consistent();
	}
};

// A write fault of the parent while the child unmaps the page. Whichever
// runs first, the parent ends with one writable frame that only it maps,
// copied or reused, and no other data frame stays in use.
class wp_vs_child_munmap : public explore::instance, forked_fixture {
public:
	explicit wp_vs_child_munmap(lock_mode mode) : forked_fixture(mode) {}

	unsigned nr_threads() const override { return 2; }

	void run_thread(unsigned index) override
	{
		if (index == 1) {
			explore::expect(bool(child_->munmap(addr_, page)), "the child's munmap failed");
			return;
		}
		explore::expect(bool(parent_->handle_mm_fault(addr_, access_type::write)), "the write fault failed");
	}

	void check() override
	{
		const auto c = parent_->counters();

		explore::expect(c.wp_copies + c.wp_reuses == 1,
				std::to_string(c.wp_copies) + " copies and " + std::to_string(c.wp_reuses) +
					" reuses, expected one in all");
		explore::expect(!mm::translate(child_->mm(), addr_), "the child still maps the page");
		explore::expect(pool_.in_use(alloc_site::data) == 1,
				std::to_string(pool_.in_use(alloc_site::data)) + " data frames in use, expected 1");
		expect_parent_private();
		expect_consistent();
	}
};

// About a third of the fewest schedules measured in any lock mode
// (docs/TESTING.md lists them), so an explorer that stops branching fails.
constexpr uint64_t min_wp_vs_wp = 10;
constexpr uint64_t min_wp_vs_munmap = 5;

} // namespace

TEST(ExploreFork, TwoWriteFaultsOnSharedPage)
{
	for (lock_mode mode : mm::all_lock_modes) {
		explore::run_and_expect({scenario_name("write fault vs write fault after fork", mode), {}, min_wp_vs_wp},
					[=] { return std::make_unique<wp_vs_wp>(mode); });
	}
}

TEST(ExploreFork, WriteFaultVsChildMunmap)
{
	for (lock_mode mode : mm::all_lock_modes) {
		explore::run_and_expect({scenario_name("write fault vs child munmap", mode), {}, min_wp_vs_munmap},
					[=] { return std::make_unique<wp_vs_child_munmap>(mode); });
	}
}
