// Faults under every schedule of their yield points, in each lock mode. The
// scenarios are two faults on one page, and faults whose data-frame
// allocation fails. A fault or insert_pfn races a zap of the same page, and
// through a user_space, munmap of the same page.
//
// Scenarios that start from an empty tree populate three levels per fault,
// which gives each thread about fifteen yield points, so they run with a
// preemption bound. The others populate every level but the PTE table
// first and run every schedule.

#include "../geometries.hpp"
#include "scenario_support.hpp"

#include <ptl/mm/walk.hpp>
#include <ptl/user/user_space.hpp>

#include <gtest/gtest.h>

#include <mutex>
#include <shared_mutex>

using namespace ptl;
using arch::level;
using mm::lock_mode;
using phys::alloc_site;
using user::access_type;

namespace {

using G = arch::x86_64;
using space_t = user::user_space<G>;

constexpr unsigned pool_frames = 64;
constexpr uint64_t page = arch::page_size;
constexpr unsigned prot_rw = user::prot_read | user::prot_write;

// A frame number that a PFN-mapped area maps. The pool need not own it.
constexpr phys::pfn_t device_pfn = 0x12345;

std::string scenario_name(std::string_view what, lock_mode mode)
{
	return std::string(what) + " " + std::string(mm::lock_mode_name(mode));
}

// Tables present before the threads start.
enum class start_tree {
	empty,      // only the pgd: each fault populates pud, pmd and PTE tables
	upper_only, // every table above the PTE table is populated
	with_pte,   // the PTE table is populated too, but the PTE is empty
};

// A user address space with one VMA of one page at addr_. Split mode uses
// split pmd locks.
class user_fixture {
public:
	user_fixture(lock_mode mode, start_tree tree, bool pfnmap)
	{
		space_ = *space_t::create(pool_, mode, mode == lock_mode::split);

		const unsigned flags = pfnmap ? (user::map_shared | user::map_pfnmap)
					      : (user::map_private | user::map_anonymous);
		auto start = space_->mmap(addr_, page, prot_rw, flags | user::map_fixed_noreplace);
		explore::require(start && *start == addr_, "mmap of the scenario's page");
		vma_ = *space_->vma_lookup(addr_);

		if (tree != start_tree::empty)
			populate_upper(tree == start_tree::with_pte);
	}

	~user_fixture() { explore::release_stray_locks(space_->mm()); }

protected:
	mm::mm_struct<G> &mm() { return space_->mm(); }

	void populate_upper(bool with_pte)
	{
		mm::walk_guard<G> walk(mm());

		auto pmd = mm::pmd_alloc_walk(mm(), addr_);
		explore::require(bool(pmd), "populating the tables above the PTE table");
		if (with_pte)
			explore::require(bool(mm::pte_alloc(mm(), *pmd, addr_)), "populating the PTE table");
	}

	// The locks, the audit, and the data frames against what is mapped:
	// an anonymous page is mapped exactly when one data frame is in use.
	void expect_consistent(bool anonymous)
	{
		const auto t = mm::translate(mm(), addr_);
		const uint64_t data_frames = pool_.in_use(alloc_site::data);

		if (anonymous) {
			explore::expect(data_frames == (t ? 1u : 0u),
					std::to_string(data_frames) + " data frames in use with the page " +
						(t ? "mapped" : "not mapped"));
			if (t)
				explore::expect(pool_.site_of(t->pfn) == alloc_site::data,
						"the page maps pfn " + std::to_string(t->pfn) + ", which is not a data frame");
		} else {
			explore::expect(data_frames == 0, "a PFN-mapped page took a data frame");
			if (t)
				explore::expect(t->pfn == device_pfn, "the page maps pfn " + std::to_string(t->pfn));
		}

		explore::expect(pool_.stats().double_frees == 0, "a frame was freed twice");
		explore::expect_no_lock_held(mm());
		explore::expect_audit_ok<G>({&mm()});
	}

	bool mapped() { return mm::translate(mm(), addr_).has_value(); }

	const uint64_t addr_ = sample_user_addr<G>();
	phys::frame_pool pool_{pool_frames};
	std::unique_ptr<space_t> space_;
	user::vm_area vma_;
};

// nr_threads threads fault the same anonymous page through the user_space:
// exactly one installs a data frame and the others find it installed.
class fault_vs_fault : public explore::instance, user_fixture {
public:
	fault_vs_fault(lock_mode mode, start_tree tree, unsigned nr_threads)
		: user_fixture(mode, tree, false), nr_threads_(nr_threads)
	{
	}

	unsigned nr_threads() const override { return nr_threads_; }

	void run_thread(unsigned index) override
	{
		const auto a = index == 0 ? access_type::write : access_type::read;
		auto r = space_->handle_mm_fault(addr_, a);
		explore::expect(bool(r), "fault " + std::to_string(index) + " failed");
	}

	void check() override
	{
		const auto c = space_->counters();

		explore::expect(mapped(), "the page is not mapped after every fault finished");
		explore::expect(c.anon_pages == 1, std::to_string(c.anon_pages) + " anonymous pages mapped, expected 1");
		explore::expect(c.faults_already_mapped == nr_threads_ - 1,
				std::to_string(c.faults_already_mapped) + " faults found the page mapped, expected " +
					std::to_string(nr_threads_ - 1));
		expect_consistent(true);
	}

private:
	const unsigned nr_threads_;
};

// Two faults on one page while every data-frame allocation fails: both
// return no_memory, and neither leaves a lock held or a frame behind.
class fault_no_memory : public explore::instance, user_fixture {
public:
	explicit fault_no_memory(lock_mode mode) : user_fixture(mode, start_tree::upper_only, false)
	{
		pool_.fail_site(alloc_site::data);
	}

	unsigned nr_threads() const override { return 2; }

	void run_thread(unsigned index) override
	{
		auto r = space_->handle_mm_fault(addr_, access_type::write);
		explore::expect(!r && r.error() == errc::no_memory,
				"fault " + std::to_string(index) + " did not fail with no_memory");
	}

	void check() override
	{
		explore::expect(!mapped(), "a fault mapped the page although no data frame could be allocated");
		expect_consistent(true);
	}
};

// A fault (or insert_pfn) and a zap of the same page with no mmap_lock
// between them, as Linux's MADV_DONTNEED zaps under a shared mmap_lock. The
// PTE lock alone must keep them apart: the page ends mapped exactly when the
// zap ran first, and a frame the zap cleared is freed.
class map_vs_zap : public explore::instance, user_fixture {
public:
	map_vs_zap(lock_mode mode, start_tree tree, bool pfnmap) : user_fixture(mode, tree, pfnmap), pfnmap_(pfnmap) {}

	unsigned nr_threads() const override { return 2; }

	void run_thread(unsigned index) override
	{
		if (index == 1) {
			zapped_ = user::zap_page_range(mm(), vma_, addr_, addr_ + page).pages;
			return;
		}

		auto r = pfnmap_ ? user::insert_pfn(mm(), vma_, addr_, device_pfn)
				 : user::handle_pte_fault(mm(), vma_, addr_, access_type::write);
		explore::expect(r && *r != user::fault_outcome::already_mapped, "the fault did not map the page");
	}

	void check() override
	{
		const uint64_t still_mapped = mapped() ? 1 : 0;

		explore::expect(zapped_ + still_mapped == 1,
				"the zap cleared " + std::to_string(zapped_) + " pages and " +
					std::to_string(still_mapped) + " is still mapped, expected one in all");
		expect_consistent(!pfnmap_);
	}

private:
	const bool pfnmap_;
	uint64_t zapped_ = 0;
};

// A fault (or insert_pfn) and munmap of the same page through the
// user_space. Its mmap_lock serialises them: the scenario takes a model of
// it around each call, because the real one blocks in the operating system
// where the explorer cannot see it. The page ends unmapped either way, and
// the fault fails with not_found exactly when munmap ran first.
class map_vs_munmap : public explore::instance, user_fixture {
public:
	map_vs_munmap(lock_mode mode, bool pfnmap) : user_fixture(mode, start_tree::empty, pfnmap), pfnmap_(pfnmap) {}

	unsigned nr_threads() const override { return 2; }

	void run_thread(unsigned index) override
	{
		if (index == 1) {
			std::unique_lock guard(mmap_lock_model_);
			explore::expect(bool(space_->munmap(addr_, page)), "munmap failed");
			munmap_step_ = ++steps_;
			return;
		}

		std::shared_lock guard(mmap_lock_model_);
		auto r = pfnmap_ ? space_->insert_pfn(addr_, device_pfn) : space_->handle_mm_fault(addr_, access_type::write);
		fault_step_ = ++steps_;
		fault_mapped_ = bool(r);
		if (!r)
			explore::expect(r.error() == errc::not_found, "the fault failed with something other than not_found");
	}

	void check() override
	{
		const auto c = space_->counters();
		const bool fault_first = fault_step_ < munmap_step_;

		explore::expect(fault_mapped_ == fault_first,
				fault_first ? "the fault before munmap failed" : "the fault after munmap mapped the page");
		explore::expect(!mapped(), "the page is mapped after munmap");
		explore::expect(c.pages_mapped == 0, std::to_string(c.pages_mapped) + " pages counted as mapped");
		expect_consistent(!pfnmap_);
	}

private:
	const bool pfnmap_;
	explore::model_rwlock mmap_lock_model_;
	// The order in which the two calls returned, counted from 1.
	unsigned steps_ = 0;
	unsigned fault_step_ = 0;
	unsigned munmap_step_ = 0;
	bool fault_mapped_ = false;
};

// Each minimum is about a third of the fewest schedules measured in any
// lock mode (docs/TESTING.md lists them), and at least 2, so an explorer
// that stops branching fails. A new yield point only adds schedules.
constexpr uint64_t min_fault_vs_fault = 10;
constexpr uint64_t min_fault_vs_fault_empty = 80;
constexpr uint64_t min_three_faults = 150;
constexpr uint64_t min_no_memory = 8;
constexpr uint64_t min_map_vs_zap = 2;
constexpr uint64_t min_map_vs_zap_pte = 2;
constexpr uint64_t min_map_vs_munmap = 5;

explore::options bounded(unsigned preemptions)
{
	explore::options opts;
	opts.preemption_bound = preemptions;
	return opts;
}

} // namespace

TEST(ExploreFault, FaultVsFaultSamePage)
{
	for (lock_mode mode : mm::all_lock_modes) {
		explore::run_and_expect({scenario_name("fault vs fault", mode), {}, min_fault_vs_fault}, [=] {
			return std::make_unique<fault_vs_fault>(mode, start_tree::upper_only, 2);
		});
	}
}

TEST(ExploreFault, FaultVsFaultFromEmptyTree)
{
	for (lock_mode mode : mm::all_lock_modes) {
		explore::run_and_expect({scenario_name("fault vs fault, empty tree", mode), bounded(3),
					 min_fault_vs_fault_empty},
					[=] { return std::make_unique<fault_vs_fault>(mode, start_tree::empty, 2); });
	}
}

TEST(ExploreFault, ThreeFaultsSamePageBounded)
{
	for (lock_mode mode : mm::all_lock_modes) {
		explore::run_and_expect({scenario_name("three faults", mode), bounded(2), min_three_faults}, [=] {
			return std::make_unique<fault_vs_fault>(mode, start_tree::upper_only, 3);
		});
	}
}

TEST(ExploreFault, FaultsWithoutMemoryLeaveNoLock)
{
	for (lock_mode mode : mm::all_lock_modes) {
		explore::run_and_expect({scenario_name("faults without memory", mode), {}, min_no_memory},
					[=] { return std::make_unique<fault_no_memory>(mode); });
	}
}

// Without a PTE table the zap finds nothing to clear and has no yield point,
// so the runs with the PTE table populated are the ones where the two
// contend for the PTE lock.
void explore_map_vs_zap(std::string_view what, bool pfnmap)
{
	for (start_tree tree : {start_tree::upper_only, start_tree::with_pte}) {
		const std::string tables = tree == start_tree::with_pte ? ", PTE table" : ", no PTE table";
		const uint64_t minimum = tree == start_tree::with_pte ? min_map_vs_zap_pte : min_map_vs_zap;

		for (lock_mode mode : mm::all_lock_modes) {
			explore::run_and_expect({scenario_name(std::string(what) + tables, mode), {}, minimum},
						[=] { return std::make_unique<map_vs_zap>(mode, tree, pfnmap); });
		}
	}
}

TEST(ExploreFault, FaultVsZapSamePage)
{
	explore_map_vs_zap("fault vs zap", false);
}

TEST(ExploreFault, InsertPfnVsZapSamePage)
{
	explore_map_vs_zap("insert_pfn vs zap", true);
}

TEST(ExploreFault, FaultVsMunmapSamePage)
{
	for (lock_mode mode : mm::all_lock_modes) {
		explore::run_and_expect({scenario_name("fault vs munmap", mode), {}, min_map_vs_munmap},
					[=] { return std::make_unique<map_vs_munmap>(mode, false); });
	}
}

TEST(ExploreFault, InsertPfnVsMunmapSamePage)
{
	for (lock_mode mode : mm::all_lock_modes) {
		explore::run_and_expect({scenario_name("insert_pfn vs munmap", mode), {}, min_map_vs_munmap},
					[=] { return std::make_unique<map_vs_munmap>(mode, true); });
	}
}
