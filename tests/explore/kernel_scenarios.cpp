// Kernel mappings under every schedule of their yield points, in each lock
// mode. Two vmaps of neighbouring one-page areas populate the same tables of
// an empty kernel tree, and a vmap races vunmap of its neighbour in the same
// PTE table.
//
// Neighbouring one-page areas share a PTE table because the area allocator
// places them first fit, one guard page apart, from the start of the
// vmalloc area, which is aligned to a pmd entry's span.

#include "scenario_support.hpp"

#include <ptl/kernel/kernel_space.hpp>
#include <ptl/mm/walk.hpp>

#include <gtest/gtest.h>

#include <array>

using namespace ptl;
using mm::lock_mode;
using phys::pfn_t;

namespace {

using G = arch::x86_64;
using space_t = kernel::kernel_space<G>;

constexpr unsigned pool_frames = 64;

// Frames the areas map. vmap maps the caller's frames, so they need not
// be the pool's.
constexpr std::array<pfn_t, 2> frames = {0x4000, 0x4003};

std::string scenario_name(std::string_view what, lock_mode mode)
{
	return std::string(what) + " " + std::string(mm::lock_mode_name(mode));
}

class kernel_fixture {
public:
	explicit kernel_fixture(lock_mode mode) { space_ = *space_t::create(pool_, mode); }

	~kernel_fixture() { explore::release_stray_locks(space_->init_mm()); }

protected:
	// Maps frames[index] at a fresh address and returns it, or 0 when vmap
	// failed.
	uint64_t map_one(size_t index)
	{
		auto addr = space_->vmap(std::span<const pfn_t>(&frames[index], 1));
		explore::expect(bool(addr), "vmap of frame " + std::to_string(frames[index]) + " failed");
		return addr ? *addr : 0;
	}

	void expect_maps(uint64_t addr, pfn_t pfn)
	{
		const auto t = mm::translate(space_->init_mm(), addr);

		if (!explore::expect(t.has_value(), "nothing is mapped at a vmap's address"))
			return;
		explore::expect(t->pfn == pfn, "a vmap's address maps pfn " + std::to_string(t->pfn) + ", expected " +
						       std::to_string(pfn));
	}

	void expect_consistent(uint64_t pages_mapped, uint64_t areas_live)
	{
		const auto c = space_->counters();

		explore::expect(c.pages_mapped == pages_mapped,
				std::to_string(c.pages_mapped) + " kernel pages counted as mapped, expected " +
					std::to_string(pages_mapped));
		explore::expect(c.areas_live == areas_live,
				std::to_string(c.areas_live) + " areas live, expected " + std::to_string(areas_live));
		explore::expect_no_lock_held(space_->init_mm());
		explore::expect_audit_ok<G>({&space_->init_mm()});
	}

	phys::frame_pool pool_{pool_frames};
	std::unique_ptr<space_t> space_;
};

// Two threads each vmap one page into an empty kernel tree. Both populate
// the pud, pmd and PTE tables that their neighbouring areas share.
class two_vmaps : public explore::instance, kernel_fixture {
public:
	explicit two_vmaps(lock_mode mode) : kernel_fixture(mode) {}

	unsigned nr_threads() const override { return 2; }
	void run_thread(unsigned index) override { addrs_[index] = map_one(index); }

	void check() override
	{
		explore::expect(addrs_[0] != addrs_[1], "two vmaps returned the same address");
		expect_maps(addrs_[0], frames[0]);
		expect_maps(addrs_[1], frames[1]);
		expect_consistent(2, 2);
	}

private:
	std::array<uint64_t, 2> addrs_{};
};

// One area is mapped before the threads start. Thread 0 vmaps a second area
// next to it, in the same PTE table, while thread 1 vunmaps the first. If
// the vunmap released its range first, the new area may reuse it.
class vmap_vs_vunmap : public explore::instance, kernel_fixture {
public:
	explicit vmap_vs_vunmap(lock_mode mode) : kernel_fixture(mode)
	{
		auto addr = space_->vmap(std::span<const pfn_t>(&frames[0], 1));
		explore::require(bool(addr), "vmap of the area to unmap");
		old_addr_ = *addr;
	}

	unsigned nr_threads() const override { return 2; }

	void run_thread(unsigned index) override
	{
		if (index == 0) {
			new_addr_ = map_one(1);
			return;
		}
		explore::expect(bool(space_->vunmap(old_addr_)), "vunmap failed");
	}

	void check() override
	{
		expect_maps(new_addr_, frames[1]);
		if (new_addr_ != old_addr_)
			explore::expect(!mm::translate(space_->init_mm(), old_addr_),
					"the unmapped area is still mapped");
		expect_consistent(1, 1);
	}

private:
	uint64_t old_addr_ = 0;
	uint64_t new_addr_ = 0;
};

// Each minimum is about a third of the fewest schedules measured in any
// lock mode (docs/TESTING.md lists them), and at least 2, so an explorer
// that stops branching fails. A new yield point only adds schedules.
constexpr uint64_t min_two_vmaps = 70;
constexpr uint64_t min_vmap_vs_vunmap = 2;

} // namespace

TEST(ExploreKernel, TwoVmapsPopulateSharedTables)
{
	explore::options bounded;
	bounded.preemption_bound = 3;

	for (lock_mode mode : mm::all_lock_modes) {
		explore::run_and_expect({scenario_name("two vmaps, empty tree", mode), bounded, min_two_vmaps},
					[=] { return std::make_unique<two_vmaps>(mode); });
	}
}

TEST(ExploreKernel, VmapVsVunmapOfNeighbour)
{
	for (lock_mode mode : mm::all_lock_modes) {
		explore::run_and_expect({scenario_name("vmap vs vunmap of neighbour", mode), {}, min_vmap_vs_vunmap},
					[=] { return std::make_unique<vmap_vs_vunmap>(mode); });
	}
}
