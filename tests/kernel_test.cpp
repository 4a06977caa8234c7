// The kernel address space: the vmalloc area allocator, vmap and vunmap,
// vmalloc and vfree, ioremap and iounmap, on every geometry. Outcomes are
// checked with translate and the audit, failures with fault injection.

#include "geometries.hpp"
#include "lock_mode_env.hpp"

#include <ptl/check/audit.hpp>
#include <ptl/kernel/kernel_space.hpp>
#include <ptl/mm/walk.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <span>
#include <string>
#include <thread>
#include <vector>

using namespace ptl;
using namespace ptl::kernel;
using ptl::arch::level;
using ptl::mm::translate;

namespace {

constexpr uint64_t page = arch::page_size;

// Frame numbers that stand for a caller's pages. vmap never touches the
// frames, so they need no backing in the pool; all fit i386's 20-bit PFNs.
std::vector<pfn_t> bare_pfns(pfn_t first, uint64_t count)
{
	std::vector<pfn_t> pfns;
	for (uint64_t i = 0; i < count; i++)
		pfns.push_back(first + i * 3);
	return pfns;
}

// Tables that mapping [start, end) populates in an empty kernel tree: at
// each level below the pgd that is not folded, one table per entry of the
// level above that the range touches. A folded level has the shift of the
// level above it, so the level directly above always gives the right span.
template <class G>
uint64_t tables_for_range(uint64_t start, uint64_t end)
{
	uint64_t tables = 0;

	for (level l : {level::p4d, level::pud, level::pmd, level::pte}) {
		if (arch::is_folded<G>(l))
			continue;
		const unsigned parent_shift = arch::level_shift<G>(static_cast<level>(arch::level_index(l) - 1));
		tables += ((end - 1) >> parent_shift) - (start >> parent_shift) + 1;
	}
	return tables;
}

// Levels between the pgd and the PTE tables that are not folded.
template <class G>
uint64_t directory_levels()
{
	uint64_t levels = 0;
	for (level l : {level::p4d, level::pud, level::pmd})
		levels += arch::is_folded<G>(l) ? 0 : 1;
	return levels;
}

// Table frames in use in the pool, every level together.
uint64_t table_frames_in_use(const phys::frame_pool &pool)
{
	return pool.in_use() - pool.in_use(phys::alloc_site::data);
}

// The first boundary in the vmalloc area between two entries of the widest
// level that splits the area: the level below the pgd (p4d, or the pgd itself
// where p4d is folded) where the area spans several of its entries. i386
// PAE's area lies inside one pgd entry, so there it is a pmd boundary. A range
// that crosses it needs its own table at every level below.
template <class G>
constexpr uint64_t top_boundary()
{
	for (level l : {level::p4d, level::pud, level::pmd}) {
		const uint64_t span = arch::entry_span<G>(l);
		const uint64_t boundary = (G::vmalloc_start & ~(span - 1)) + span;
		if (boundary < G::vmalloc_end)
			return boundary;
	}
	return G::vmalloc_start + arch::entry_span<G>(level::pte);
}

// Reserves the bottom of an empty vmalloc area so that the next area starts
// pages_below pages under top_boundary(). One guard page follows the pad.
template <class G>
void reserve_pad(kernel_space<G> &ks, uint64_t pages_below)
{
	const uint64_t next_start = top_boundary<G>() - pages_below * page;
	const uint64_t pad_size = next_start - G::vmalloc_start - page;

	auto pad = ks.get_vm_area(pad_size, vm_map);
	ASSERT_TRUE(pad);
	ASSERT_EQ((*pad)->addr, G::vmalloc_start);
}

template <class G>
void expect_mapped(const kernel_space<G> &ks, uint64_t addr, const std::vector<pfn_t> &pfns)
{
	for (uint64_t i = 0; i < pfns.size(); i++) {
		auto t = translate(ks.init_mm(), addr + i * page);
		ASSERT_TRUE(t) << "page " << i << " is not mapped";
		EXPECT_EQ(t->pfn, pfns[i]) << "page " << i;
		EXPECT_EQ(t->leaf_level, level::pte) << "page " << i;
	}
}

template <class G>
void expect_unmapped(const kernel_space<G> &ks, uint64_t addr, uint64_t nr_pages)
{
	for (uint64_t i = 0; i < nr_pages; i++)
		EXPECT_FALSE(translate(ks.init_mm(), addr + i * page)) << "page " << i << " is still mapped";
}

// Whether [start, start + span) lies inside the vmalloc area. Tables that
// reach outside it are never freed: they cover the rest of the kernel.
template <class G>
constexpr bool inside_vmalloc_area(uint64_t start, uint64_t span)
{
	return start >= G::vmalloc_start && start + (span - 1) <= G::vmalloc_end - 1;
}

// Tables on the path to addr that reach outside the vmalloc area, and so
// stay after every area around addr is unmapped.
template <class G>
uint64_t tables_kept_at(uint64_t addr)
{
	uint64_t kept = 0;
	level parent = level::pgd;

	for (level l : {level::p4d, level::pud, level::pmd, level::pte}) {
		if (arch::is_folded<G>(l))
			continue;
		const uint64_t span = arch::entry_span<G>(parent);
		if (!inside_vmalloc_area<G>(addr & ~(span - 1), span))
			kept++;
		parent = l;
	}
	return kept;
}

namespace detail {

template <class G>
bool covers_live_area(const std::vector<vm_area_info> &areas, uint64_t start, uint64_t span)
{
	return std::any_of(areas.begin(), areas.end(), [&](const vm_area_info &a) {
		return a.addr < start + span && start < a.addr + a.size;
	});
}

// Counts the tables below the level-l table at pfn, which maps from base,
// that cover no live area.
template <class G>
uint64_t orphans_below(const mm::mm_struct<G> &mm, level l, pfn_t pfn, uint64_t base,
		       const std::vector<vm_area_info> &areas)
{
	uint64_t orphans = 0;
	const auto *slots = mm.table(pfn);
	const uint64_t span = arch::entry_span<G>(l);

	for (unsigned i = 0; i < arch::ptrs_per_table<G>(l); i++) {
		const auto e = slots[i].load();
		if (!G::format::present(e) || G::format::huge(e))
			continue;

		const uint64_t start = mm::canonical_address<G>(base + i * span);
		if (inside_vmalloc_area<G>(start, span) && !covers_live_area<G>(areas, start, span))
			orphans++;
		const level child = arch::next_table_level<G>(l);
		if (child != level::pte)
			orphans += orphans_below(mm, child, G::format::pfn(e), start, areas);
	}
	return orphans;
}

} // namespace detail

// Tables in the kernel tree that lie inside the vmalloc area and cover no
// live area. Unmapping frees every such table, so after each unmap there
// must be none.
template <class G>
uint64_t orphan_tables(const kernel_space<G> &ks)
{
	const auto areas = ks.areas().snapshot();
	return detail::orphans_below(ks.init_mm(), level::pgd, ks.init_mm().pgd_pfn(), 0, areas);
}

// The tree, its counters and the pool agree, no lock is held, the leaves
// are exactly the PTEs the kernel space counts as mapped, and no table is
// left that covers no area.
template <class G>
void expect_consistent(const kernel_space<G> &ks)
{
	EXPECT_EQ(orphan_tables(ks), 0u) << "tables left that cover no area";
	const auto report = check::audit<G>({&ks.init_mm()});
	EXPECT_TRUE(report.ok()) << report.summary();
	EXPECT_EQ(report.leaves, ks.counters().pages_mapped);
	EXPECT_FALSE(ks.init_mm().page_table_lock.is_locked());
}

} // namespace

template <class G>
class KernelSpace : public ::testing::Test {
protected:
	using format = typename G::format;

	phys::frame_pool pool{4096};
	std::unique_ptr<kernel_space<G>> ks = *kernel_space<G>::create(pool, test::lock_mode_under_test());
};

TYPED_TEST_SUITE(KernelSpace, all_geometries, geometry_names);

TYPED_TEST(KernelSpace, CreateAllocatesOnlyPgd)
{
	EXPECT_EQ(this->ks->init_mm().kind(), mm::mm_kind::kernel);
	EXPECT_EQ(this->pool.in_use(), 1u);
	EXPECT_EQ(this->ks->counters().areas_live, 0u);
	EXPECT_EQ(this->ks->counters().pages_mapped, 0u);
}

TYPED_TEST(KernelSpace, CreateFailsWhenPoolFails)
{
	using G = TypeParam;
	this->pool.fail_site(phys::alloc_site::pgd);

	auto ks = kernel_space<G>::create(this->pool);
	ASSERT_FALSE(ks);
	EXPECT_EQ(ks.error(), errc::no_memory);
}

TYPED_TEST(KernelSpace, VmapMapsEachPageToItsPfn)
{
	using G = TypeParam;
	const auto pfns = bare_pfns(0x4000, 5);

	auto addr = this->ks->vmap(pfns);
	ASSERT_TRUE(addr);
	EXPECT_GE(*addr, G::vmalloc_start);
	EXPECT_LT(*addr, G::vmalloc_end);
	EXPECT_EQ(*addr % page, 0u);

	expect_mapped(*this->ks, *addr, pfns);
	EXPECT_EQ(this->ks->counters().pages_mapped, 5u);
	EXPECT_EQ(this->ks->counters().maps, 1u);
	EXPECT_EQ(this->pool.in_use(phys::alloc_site::data), 0u);
	expect_consistent(*this->ks);
}

TYPED_TEST(KernelSpace, VmapDefaultsToKernelProt)
{
	using G = TypeParam;
	auto addr = this->ks->vmap(bare_pfns(0x4000, 1));
	ASSERT_TRUE(addr);

	auto t = translate(this->ks->init_mm(), *addr);
	ASSERT_TRUE(t);
	EXPECT_TRUE(t->prot & arch::prot_present);
	EXPECT_TRUE(t->prot & arch::prot_write);
	EXPECT_TRUE(t->prot & arch::prot_global);
	EXPECT_FALSE(t->prot & arch::prot_user);
	EXPECT_FALSE(t->prot & arch::prot_pcd);
	EXPECT_EQ((t->prot & arch::prot_nx) != 0, G::format::has_nx);
}

TYPED_TEST(KernelSpace, VmapUsesCallerProt)
{
	auto addr = this->ks->vmap(bare_pfns(0x4000, 2), arch::prot_present | arch::prot_global);
	ASSERT_TRUE(addr);

	auto t = translate(this->ks->init_mm(), *addr + page);
	ASSERT_TRUE(t);
	EXPECT_EQ(t->prot, arch::prot_present | arch::prot_global);
}

TYPED_TEST(KernelSpace, VmapRejectsInvalidArguments)
{
	using G = TypeParam;
	const auto pfns = bare_pfns(0x4000, 2);
	const std::vector<pfn_t> too_large = {1, G::format::max_pfn + 1};

	struct request {
		const char *what;
		std::span<const pfn_t> pages;
		uint64_t prot;
	};
	const request requests[] = {
		{"no pages", {}, page_kernel},
		{"user bit", pfns, page_kernel | arch::prot_user},
		{"not present", pfns, arch::prot_write},
		{"huge bit", pfns, page_kernel | arch::prot_huge},
		{"unknown bit", pfns, page_kernel | (uint64_t{1} << 40)},
		{"pfn above max", too_large, page_kernel},
	};

	for (const auto &req : requests) {
		auto addr = this->ks->vmap(req.pages, req.prot);
		ASSERT_FALSE(addr) << req.what;
		EXPECT_EQ(addr.error(), errc::invalid_argument) << req.what;
	}
	EXPECT_EQ(this->ks->counters().areas_live, 0u);
	EXPECT_EQ(this->pool.in_use(), 1u);
}

TYPED_TEST(KernelSpace, VunmapMakesPagesUntranslatable)
{
	const auto pfns = bare_pfns(0x4000, 7);
	auto addr = this->ks->vmap(pfns);
	ASSERT_TRUE(addr);
	const uint64_t tables = this->pool.in_use();

	ASSERT_TRUE(this->ks->vunmap(*addr));

	expect_unmapped(*this->ks, *addr, pfns.size());
	EXPECT_EQ(this->ks->counters().pages_mapped, 0u);
	EXPECT_EQ(this->ks->counters().areas_live, 0u);
	EXPECT_FALSE(this->ks->find_vm_area(*addr));
	// With no other area, every table below the pgd goes, except those
	// that reach outside the vmalloc area.
	const uint64_t kept = tables_kept_at<TypeParam>(*addr);
	EXPECT_GT(tables, 1 + kept);
	EXPECT_EQ(this->pool.in_use(), 1 + kept);
	expect_consistent(*this->ks);
}

TYPED_TEST(KernelSpace, VunmapRejectsUnalignedAddress)
{
	auto addr = this->ks->vmap(bare_pfns(0x4000, 2));
	ASSERT_TRUE(addr);

	auto r = this->ks->vunmap(*addr + 8);
	ASSERT_FALSE(r);
	EXPECT_EQ(r.error(), errc::invalid_argument);
	EXPECT_TRUE(translate(this->ks->init_mm(), *addr));
}

TYPED_TEST(KernelSpace, VunmapRejectsAddressWithoutArea)
{
	auto addr = this->ks->vmap(bare_pfns(0x4000, 2));
	ASSERT_TRUE(addr);

	auto inside = this->ks->vunmap(*addr + page);
	ASSERT_FALSE(inside);
	EXPECT_EQ(inside.error(), errc::not_found);
	EXPECT_TRUE(translate(this->ks->init_mm(), *addr + page));

	ASSERT_TRUE(this->ks->vunmap(*addr));
	auto twice = this->ks->vunmap(*addr);
	ASSERT_FALSE(twice);
	EXPECT_EQ(twice.error(), errc::not_found);
}

TYPED_TEST(KernelSpace, UnmapRejectsAreaOfOtherKind)
{
	auto mapped = this->ks->vmap(bare_pfns(0x4000, 1));
	auto allocated = this->ks->vmalloc(page);
	auto remapped = this->ks->ioremap(0x10000, page);
	ASSERT_TRUE(mapped);
	ASSERT_TRUE(allocated);
	ASSERT_TRUE(remapped);

	auto r = this->ks->vunmap(*allocated);
	ASSERT_FALSE(r);
	EXPECT_EQ(r.error(), errc::invalid_argument);
	r = this->ks->vfree(*remapped);
	ASSERT_FALSE(r);
	EXPECT_EQ(r.error(), errc::invalid_argument);
	r = this->ks->iounmap(*mapped);
	ASSERT_FALSE(r);
	EXPECT_EQ(r.error(), errc::invalid_argument);

	// Each area is still mapped and can be removed the right way.
	EXPECT_TRUE(translate(this->ks->init_mm(), *mapped));
	EXPECT_TRUE(translate(this->ks->init_mm(), *allocated));
	EXPECT_TRUE(translate(this->ks->init_mm(), *remapped));
	EXPECT_TRUE(this->ks->vunmap(*mapped));
	EXPECT_TRUE(this->ks->vfree(*allocated));
	EXPECT_TRUE(this->ks->iounmap(*remapped));
	EXPECT_EQ(this->ks->counters().areas_live, 0u);
	expect_consistent(*this->ks);
}

TYPED_TEST(KernelSpace, VmallocBacksEachPageWithDataFrame)
{
	auto addr = this->ks->vmalloc(3 * page + 1);
	ASSERT_TRUE(addr);

	EXPECT_EQ(this->pool.in_use(phys::alloc_site::data), 4u);
	std::vector<pfn_t> seen;
	for (uint64_t i = 0; i < 4; i++) {
		auto t = translate(this->ks->init_mm(), *addr + i * page);
		ASSERT_TRUE(t) << "page " << i;
		EXPECT_EQ(this->pool.site_of(t->pfn), phys::alloc_site::data) << "page " << i;
		EXPECT_TRUE(t->prot & arch::prot_write) << "page " << i;
		EXPECT_FALSE(t->prot & arch::prot_user) << "page " << i;
		seen.push_back(t->pfn);
	}
	std::sort(seen.begin(), seen.end());
	EXPECT_EQ(std::unique(seen.begin(), seen.end()), seen.end()) << "two pages share a frame";

	const vm_struct *area = this->ks->find_vm_area(*addr);
	ASSERT_TRUE(area);
	EXPECT_EQ(area->flags, vm_alloc);
	EXPECT_EQ(area->size, 4 * page);
	EXPECT_EQ(area->pages.size(), 4u);
	expect_consistent(*this->ks);
}

TYPED_TEST(KernelSpace, VfreeReturnsEveryDataFrame)
{
	auto addr = this->ks->vmalloc(10 * page);
	ASSERT_TRUE(addr);
	const uint64_t tables = table_frames_in_use(this->pool) - 1;

	ASSERT_TRUE(this->ks->vfree(*addr));

	EXPECT_EQ(this->pool.in_use(phys::alloc_site::data), 0u);
	const uint64_t kept = tables_kept_at<TypeParam>(*addr);
	EXPECT_EQ(this->pool.stats().frees, 10u + tables - kept) << "every data frame and every table it emptied";
	EXPECT_EQ(this->pool.in_use(), 1 + kept);
	expect_unmapped(*this->ks, *addr, 10);
	EXPECT_EQ(this->ks->counters().areas_live, 0u);
	expect_consistent(*this->ks);
}

TYPED_TEST(KernelSpace, VmallocRejectsBadSize)
{
	for (uint64_t size : {uint64_t{0}, ~uint64_t{0}, ~uint64_t{0} - page + 2}) {
		auto addr = this->ks->vmalloc(size);
		ASSERT_FALSE(addr) << size;
		EXPECT_EQ(addr.error(), errc::invalid_argument) << size;
	}
	EXPECT_EQ(this->pool.in_use(), 1u);
	EXPECT_EQ(this->ks->counters().areas_live, 0u);
}

TYPED_TEST(KernelSpace, VmallocLargerThanPoolTakesNoFrame)
{
	auto addr = this->ks->vmalloc((this->pool.nr_frames() + 1) * page);
	ASSERT_FALSE(addr);
	EXPECT_EQ(addr.error(), errc::no_memory);
	EXPECT_EQ(this->pool.stats().allocs_by_site[static_cast<size_t>(phys::alloc_site::data)], 0u);
	EXPECT_EQ(this->ks->counters().areas_live, 0u);
}

TYPED_TEST(KernelSpace, KernelSpaceTeardownFreesVmallocFrames)
{
	ASSERT_TRUE(this->ks->vmalloc(6 * page));
	ASSERT_TRUE(this->ks->vmap(bare_pfns(0x4000, 3)));
	EXPECT_GT(this->pool.in_use(), 6u);

	this->ks.reset();

	EXPECT_EQ(this->pool.in_use(), 0u);
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
}

TYPED_TEST(KernelSpace, IoremapUnalignedReturnsOffset)
{
	const uint64_t phys_addr = 0x12345678;

	auto addr = this->ks->ioremap(phys_addr, 0x2000);
	ASSERT_TRUE(addr);

	EXPECT_EQ(*addr % page, 0x678u);
	const uint64_t start = *addr - 0x678;
	// 0x12345678 + 0x2000 ends in frame 0x12347: three pages.
	for (uint64_t i = 0; i < 3; i++) {
		auto t = translate(this->ks->init_mm(), start + i * page);
		ASSERT_TRUE(t) << "page " << i;
		EXPECT_EQ(t->pfn, 0x12345 + i) << "page " << i;
		EXPECT_TRUE(t->prot & arch::prot_pcd) << "page " << i;
		EXPECT_TRUE(t->prot & arch::prot_pwt) << "page " << i;
		EXPECT_FALSE(t->prot & arch::prot_user) << "page " << i;
	}
	EXPECT_FALSE(translate(this->ks->init_mm(), start + 3 * page));

	const vm_struct *area = this->ks->find_vm_area(start);
	ASSERT_TRUE(area);
	EXPECT_EQ(area->flags, vm_ioremap);
	EXPECT_EQ(area->size, 3 * page);
	EXPECT_EQ(area->phys_addr, phys_addr);
	EXPECT_TRUE(area->pages.empty());
	EXPECT_EQ(this->pool.in_use(phys::alloc_site::data), 0u);
}

TYPED_TEST(KernelSpace, IounmapTakesReturnedAddress)
{
	auto addr = this->ks->ioremap(0x12345678, 0x100);
	ASSERT_TRUE(addr);
	const uint64_t start = *addr - 0x678;

	auto r = this->ks->iounmap(start);
	ASSERT_FALSE(r);
	EXPECT_EQ(r.error(), errc::invalid_argument);
	EXPECT_TRUE(translate(this->ks->init_mm(), start));
	EXPECT_TRUE(this->ks->find_vm_area(start));

	ASSERT_TRUE(this->ks->iounmap(*addr));
	EXPECT_FALSE(translate(this->ks->init_mm(), start));
	EXPECT_EQ(this->ks->counters().areas_live, 0u);

	auto twice = this->ks->iounmap(*addr);
	ASSERT_FALSE(twice);
	EXPECT_EQ(twice.error(), errc::not_found);
	expect_consistent(*this->ks);
}

TYPED_TEST(KernelSpace, IoremapRejectsInvalidRange)
{
	using G = TypeParam;
	const uint64_t top_frame = G::format::max_pfn << arch::page_shift;

	struct request {
		const char *what;
		uint64_t phys_addr;
		uint64_t size;
	};
	const request requests[] = {
		{"zero size", 0x1000, 0},
		{"wraps", ~uint64_t{0} - 10, 100},
		{"starts above max pfn", top_frame + page, page},
		{"ends above max pfn", top_frame, 2 * page},
	};

	for (const auto &req : requests) {
		auto addr = this->ks->ioremap(req.phys_addr, req.size);
		ASSERT_FALSE(addr) << req.what;
		EXPECT_EQ(addr.error(), errc::invalid_argument) << req.what;
	}
	EXPECT_EQ(this->ks->counters().areas_live, 0u);
	EXPECT_EQ(this->pool.in_use(), 1u);

	// The last frame the format can address is fine.
	auto last = this->ks->ioremap(top_frame, page);
	ASSERT_TRUE(last);
	EXPECT_EQ(translate(this->ks->init_mm(), *last)->pfn, G::format::max_pfn);
}

TYPED_TEST(KernelSpace, GuardPageFollowsEachArea)
{
	auto first = this->ks->vmap(bare_pfns(0x4000, 2));
	auto second = this->ks->vmap(bare_pfns(0x5000, 2));
	ASSERT_TRUE(first);
	ASSERT_TRUE(second);

	EXPECT_EQ(*second, *first + 3 * page);
	EXPECT_FALSE(translate(this->ks->init_mm(), *first + 2 * page));
	EXPECT_FALSE(translate(this->ks->init_mm(), *second + 2 * page));
}

TYPED_TEST(KernelSpace, AreaAllocatorReusesFreedRange)
{
	auto first = this->ks->vmap(bare_pfns(0x4000, 4));
	auto second = this->ks->vmap(bare_pfns(0x5000, 1));
	ASSERT_TRUE(first);
	ASSERT_TRUE(second);
	ASSERT_EQ(*second, *first + 5 * page);
	ASSERT_TRUE(this->ks->vunmap(*first));

	// First fit: the freed range is the lowest gap that fits.
	auto reused = this->ks->vmap(bare_pfns(0x6000, 2));
	ASSERT_TRUE(reused);
	EXPECT_EQ(*reused, *first);

	// Two pages are left of the gap after reused and its guard page: too
	// small for two pages and a guard, so the next area goes past second.
	auto beyond = this->ks->vmap(bare_pfns(0x7000, 2));
	ASSERT_TRUE(beyond);
	EXPECT_EQ(*beyond, *second + 2 * page);

	// A single page and its guard fill the gap exactly.
	auto filler = this->ks->vmap(bare_pfns(0x8000, 1));
	ASSERT_TRUE(filler);
	EXPECT_EQ(*filler, *first + 3 * page);

	expect_mapped(*this->ks, *reused, bare_pfns(0x6000, 2));
	expect_mapped(*this->ks, *filler, bare_pfns(0x8000, 1));
	expect_consistent(*this->ks);
}

TYPED_TEST(KernelSpace, ExhaustedAreaGivesNoSpace)
{
	using G = TypeParam;
	const uint64_t area_bytes = G::vmalloc_end - G::vmalloc_start;

	// The whole area leaves no room for the guard page.
	auto whole = this->ks->get_vm_area(area_bytes, vm_map);
	ASSERT_FALSE(whole);
	EXPECT_EQ(whole.error(), errc::no_space);

	auto huge = this->ks->vmalloc(area_bytes);
	ASSERT_FALSE(huge);
	EXPECT_EQ(huge.error(), errc::no_space);
	EXPECT_EQ(this->pool.in_use(phys::alloc_site::data), 0u);

	auto all_but_guard = this->ks->get_vm_area(area_bytes - page, vm_map);
	ASSERT_TRUE(all_but_guard);

	auto one_more = this->ks->vmap(bare_pfns(0x4000, 1));
	ASSERT_FALSE(one_more);
	EXPECT_EQ(one_more.error(), errc::no_space);
	auto io = this->ks->ioremap(0x10000, page);
	ASSERT_FALSE(io);
	EXPECT_EQ(io.error(), errc::no_space);

	EXPECT_EQ(this->ks->counters().areas_live, 1u);
	EXPECT_EQ(this->pool.in_use(), 1u);
}

TYPED_TEST(KernelSpace, GetVmAreaRoundsUpAndChecksFlags)
{
	auto area = this->ks->get_vm_area(1, vm_map);
	ASSERT_TRUE(area);
	EXPECT_EQ((*area)->size, page);

	for (uint32_t flags : {0u, vm_map | vm_alloc, 1u << 5}) {
		auto bad = this->ks->get_vm_area(page, flags);
		ASSERT_FALSE(bad) << flags;
		EXPECT_EQ(bad.error(), errc::invalid_argument) << flags;
	}
	auto zero = this->ks->get_vm_area(0, vm_map);
	ASSERT_FALSE(zero);
	EXPECT_EQ(zero.error(), errc::invalid_argument);
}

TYPED_TEST(KernelSpace, MapVmAreaThenRemoveVmArea)
{
	auto area = this->ks->get_vm_area(3 * page, vm_map);
	ASSERT_TRUE(area);
	const uint64_t addr = (*area)->addr;
	const auto pfns = bare_pfns(0x4000, 3);

	auto short_list = this->ks->map_vm_area(**area, page_kernel, std::span(pfns).first(2));
	ASSERT_FALSE(short_list);
	EXPECT_EQ(short_list.error(), errc::invalid_argument);

	ASSERT_TRUE(this->ks->map_vm_area(**area, page_kernel, pfns));
	expect_mapped(*this->ks, addr, pfns);
	EXPECT_EQ(this->ks->find_vm_area(addr), *area);

	auto removed = this->ks->remove_vm_area(addr);
	ASSERT_TRUE(removed);
	EXPECT_EQ((*removed)->addr, addr);
	EXPECT_EQ((*removed)->size, 3 * page);
	expect_unmapped(*this->ks, addr, 3);
	EXPECT_FALSE(this->ks->find_vm_area(addr));

	auto again = this->ks->remove_vm_area(addr);
	ASSERT_FALSE(again);
	EXPECT_EQ(again.error(), errc::not_found);
	expect_consistent(*this->ks);
}

TYPED_TEST(KernelSpace, SnapshotListsAreasInAddressOrder)
{
	auto io = this->ks->ioremap(0x20000, page);
	auto mem = this->ks->vmalloc(2 * page);
	auto map = this->ks->vmap(bare_pfns(0x4000, 1));
	ASSERT_TRUE(io);
	ASSERT_TRUE(mem);
	ASSERT_TRUE(map);

	const auto areas = this->ks->areas().snapshot();
	ASSERT_EQ(areas.size(), 3u);
	EXPECT_EQ(vm_flags_name(areas[0].flags), "ioremap");
	EXPECT_EQ(areas[0].phys_addr, 0x20000u);
	EXPECT_EQ(vm_flags_name(areas[1].flags), "vmalloc");
	EXPECT_EQ(areas[1].nr_pages, 2u);
	EXPECT_EQ(vm_flags_name(areas[2].flags), "vmap");
	EXPECT_LT(areas[0].addr, areas[1].addr);
	EXPECT_LT(areas[1].addr, areas[2].addr);
}

// Outside legacy mode, mapping takes page_table_lock only to populate a
// table, so a map that finds every table in place, and every unmap, runs
// without it. Legacy mode takes it once for each walk.
TYPED_TEST(KernelSpace, MapTakesLockOnlyToPopulate)
{
	using G = TypeParam;

	for (mm::lock_mode mode : mm::all_lock_modes) {
		SCOPED_TRACE(std::string(mm::lock_mode_name(mode)) + " mode");
		phys::frame_pool pool(256);
		auto ks = *kernel_space<G>::create(pool, mode);
		const auto &lock = ks->init_mm().page_table_lock;

		auto first = ks->vmap(bare_pfns(0x4000, 1));
		ASSERT_TRUE(first);
		const uint64_t acquisitions = lock.stats().acquisitions;

		auto second = ks->vmap(bare_pfns(0x5000, 1));
		ASSERT_TRUE(second);
		ASSERT_TRUE(ks->vunmap(*first));
		ASSERT_TRUE(ks->vunmap(*second));

		// One walk for the map, and for each unmap one that clears
		// its PTEs and one that frees the tables left empty.
		const uint64_t walks = mode == mm::lock_mode::legacy ? 5 : 0;
		EXPECT_EQ(lock.stats().acquisitions - acquisitions, walks);
		EXPECT_FALSE(lock.is_locked());
		expect_consistent(*ks);
	}
}

// Fault injection runs each case against a fresh pool, so that the kth
// allocation of the call is the kth allocation the pool serves. Each case
// runs in every lock mode, because the modes take and drop locks
// differently on failure.
template <class G>
class KernelFault : public ::testing::Test {
protected:
	// Pages of the test range on each side of top_boundary().
	static constexpr uint64_t pages_each_side = 8;

	static constexpr uint64_t range_start() { return top_boundary<G>() - pages_each_side * page; }
	static constexpr uint64_t range_end() { return top_boundary<G>() + pages_each_side * page; }

	// A kernel space whose next area is the test range.
	static std::unique_ptr<kernel_space<G>> create_padded(phys::frame_pool &pool, mm::lock_mode mode)
	{
		auto ks = *kernel_space<G>::create(pool, mode);
		reserve_pad(*ks, pages_each_side);
		return ks;
	}

	// The call fails with no_memory and leaves nothing of itself behind:
	// no lock, no mapping, and of the tables_populated it populated only
	// those that also cover the pad (expect_consistent finds no table
	// that covers no area).
	static void expect_clean_failure(const kernel_space<G> &ks, const result<uint64_t> &addr,
					 uint64_t tables_populated)
	{
		ASSERT_FALSE(addr);
		EXPECT_EQ(addr.error(), errc::no_memory);
		EXPECT_FALSE(ks.init_mm().page_table_lock.is_locked());
		EXPECT_EQ(ks.pool().in_use(phys::alloc_site::data), 0u);
		EXPECT_LE(table_frames_in_use(ks.pool()), 1 + tables_populated);
		EXPECT_EQ(ks.counters().areas_live, 1u) << "only the pad is left";
		EXPECT_EQ(ks.counters().pages_mapped, 0u);
		expect_unmapped(ks, range_start(), 2 * pages_each_side);
		expect_consistent(ks);
	}

	void vmap_fails_at_each_site(mm::lock_mode mode)
	{
		const auto pfns = bare_pfns(0x4000, 2 * pages_each_side);
		const uint64_t tables = tables_for_range<G>(range_start(), range_end());
		ASSERT_GE(tables, 2u);

		uint64_t failures = 0;
		for (uint64_t k = 1; k <= tables + 1; k++) {
			SCOPED_TRACE("allocation " + std::to_string(k) + " fails");
			phys::frame_pool pool(256);
			auto ks = create_padded(pool, mode);

			pool.fail_nth(k);
			auto addr = ks->vmap(pfns);
			if (addr) {
				// Every table was populated before the kth allocation.
				EXPECT_EQ(k, tables + 1);
				expect_mapped(*ks, range_start(), pfns);
				break;
			}
			failures++;
			expect_clean_failure(*ks, addr, k - 1);
			EXPECT_EQ(ks->counters().map_failures, 1u);

			pool.clear_faults();
			auto retry = ks->vmap(pfns);
			ASSERT_TRUE(retry);
			EXPECT_EQ(*retry, range_start());
			expect_mapped(*ks, *retry, pfns);
			EXPECT_EQ(table_frames_in_use(pool), 1 + tables);
			expect_consistent(*ks);
		}
		EXPECT_EQ(failures, tables);
	}

	void vmalloc_fails_at_each_allocation(mm::lock_mode mode)
	{
		const uint64_t nr_pages = 2 * pages_each_side;
		const uint64_t tables = tables_for_range<G>(range_start(), range_end());

		// vmalloc takes its data frames first, then populates tables.
		uint64_t failures = 0;
		for (uint64_t k = 1; k <= nr_pages + tables + 1; k++) {
			SCOPED_TRACE("allocation " + std::to_string(k) + " fails");
			phys::frame_pool pool(256);
			auto ks = create_padded(pool, mode);

			pool.fail_nth(k);
			auto addr = ks->vmalloc(nr_pages * page);
			if (addr) {
				EXPECT_EQ(k, nr_pages + tables + 1);
				break;
			}
			failures++;
			const uint64_t tables_populated = k > nr_pages ? k - nr_pages - 1 : 0;
			expect_clean_failure(*ks, addr, tables_populated);
			// Only a failed table allocation gets as far as mapping.
			EXPECT_EQ(ks->counters().map_failures, k > nr_pages ? 1u : 0u);

			pool.clear_faults();
			auto retry = ks->vmalloc(nr_pages * page);
			ASSERT_TRUE(retry);
			EXPECT_EQ(*retry, range_start());
			EXPECT_EQ(pool.in_use(phys::alloc_site::data), nr_pages);
			ASSERT_TRUE(ks->vfree(*retry));
			EXPECT_EQ(pool.in_use(phys::alloc_site::data), 0u);
			expect_consistent(*ks);
		}
		EXPECT_EQ(failures, nr_pages + tables);
	}

	void vmap_fails_at_site(mm::lock_mode mode, level l)
	{
		const auto site = static_cast<phys::alloc_site>(arch::level_index(l));
		const auto pfns = bare_pfns(0x4000, 2 * pages_each_side);
		phys::frame_pool pool(256);
		auto ks = create_padded(pool, mode);

		pool.fail_site(site);
		auto addr = ks->vmap(pfns);
		ASSERT_FALSE(addr);
		EXPECT_EQ(addr.error(), errc::no_memory);
		EXPECT_FALSE(ks->init_mm().page_table_lock.is_locked());
		EXPECT_EQ(pool.in_use(site), 0u);
		EXPECT_EQ(ks->counters().areas_live, 1u);
		expect_unmapped(*ks, range_start(), pfns.size());
		expect_consistent(*ks);

		pool.clear_faults();
		auto retry = ks->vmap(pfns);
		ASSERT_TRUE(retry);
		expect_mapped(*ks, *retry, pfns);
		expect_consistent(*ks);
	}

	void ioremap_fails_cleanly(mm::lock_mode mode)
	{
		const uint64_t phys_addr = 0x100000;
		const uint64_t size = 2 * pages_each_side * page;
		phys::frame_pool pool(256);
		auto ks = create_padded(pool, mode);

		pool.fail_site(phys::alloc_site::pte);
		auto addr = ks->ioremap(phys_addr, size);
		// The directories above the first PTE table are populated.
		expect_clean_failure(*ks, addr, directory_levels<G>());
		EXPECT_EQ(ks->counters().map_failures, 1u);

		pool.clear_faults();
		auto retry = ks->ioremap(phys_addr, size);
		ASSERT_TRUE(retry);
		EXPECT_EQ(*retry, range_start());
		EXPECT_EQ(translate(ks->init_mm(), range_end() - page)->pfn, (phys_addr + size) / page - 1);
	}

	// A large map fails at its third PTE table, after the PTEs of the
	// first two tables were set: every one of them is cleared again, and
	// both tables stay.
	void rollback_clears_ptes(mm::lock_mode mode)
	{
		const uint64_t pmd_span = arch::entry_span<G>(level::pmd);
		const auto pfns = bare_pfns(0x1000, 2 * (pmd_span / page) + 16);
		phys::frame_pool pool(256);
		auto ks = *kernel_space<G>::create(pool, mode);

		// Watch the second PTE table being populated: by then the
		// first table's PTEs must all be set.
		unsigned pte_populates = 0;
		uint64_t mapped_at_second_table = 0;
		hooks::scoped_handler watch([&](const hooks::event &e) {
			if (e.where != hooks::point::populate_after_alloc || e.level != arch::level_index(level::pte))
				return;
			if (++pte_populates == 2)
				mm::walk_range(ks->init_mm(), G::vmalloc_start, G::vmalloc_start + 2 * pmd_span,
					       [&](uint64_t, auto, level) { mapped_at_second_table++; });
		});

		// The area starts at vmalloc_start, which is aligned at every
		// level, so each directory above the PTE tables is populated
		// once, before the first PTE table.
		pool.fail_nth(directory_levels<G>() + 3);
		auto addr = ks->vmap(pfns);

		ASSERT_FALSE(addr);
		EXPECT_EQ(addr.error(), errc::no_memory);
		EXPECT_EQ(pte_populates, 2u);
		EXPECT_EQ(mapped_at_second_table, pmd_span / page);

		// The area is released with the tables it populated.
		EXPECT_EQ(pool.in_use(), 1 + tables_kept_at<G>(G::vmalloc_start));
		EXPECT_EQ(ks->counters().map_failures, 1u);
		EXPECT_EQ(ks->counters().pages_mapped, 0u);
		EXPECT_EQ(ks->counters().areas_live, 0u);
		EXPECT_FALSE(ks->init_mm().page_table_lock.is_locked());
		expect_unmapped(*ks, G::vmalloc_start, pfns.size());

		expect_consistent(*ks);
	}
};

TYPED_TEST_SUITE(KernelFault, all_geometries, geometry_names);

TYPED_TEST(KernelFault, VmapFailsCleanlyAtEachPopulateSite)
{
	for (mm::lock_mode mode : mm::all_lock_modes) {
		SCOPED_TRACE(std::string(mm::lock_mode_name(mode)) + " mode");
		this->vmap_fails_at_each_site(mode);
	}
}

TYPED_TEST(KernelFault, VmallocFailsCleanlyAtEachAllocation)
{
	for (mm::lock_mode mode : mm::all_lock_modes) {
		SCOPED_TRACE(std::string(mm::lock_mode_name(mode)) + " mode");
		this->vmalloc_fails_at_each_allocation(mode);
	}
}

TYPED_TEST(KernelFault, VmapFailsCleanlyWhenLevelFails)
{
	using G = TypeParam;

	for (mm::lock_mode mode : mm::all_lock_modes) {
		for (level l : {level::p4d, level::pud, level::pmd, level::pte}) {
			if (arch::is_folded<G>(l))
				continue;
			SCOPED_TRACE(std::string(mm::lock_mode_name(mode)) + " mode, " +
				     std::string(arch::level_name(l)) + " tables fail");
			this->vmap_fails_at_site(mode, l);
		}
	}
}

TYPED_TEST(KernelFault, IoremapFailureLeavesNothingMapped)
{
	for (mm::lock_mode mode : mm::all_lock_modes) {
		SCOPED_TRACE(std::string(mm::lock_mode_name(mode)) + " mode");
		this->ioremap_fails_cleanly(mode);
	}
}

TYPED_TEST(KernelFault, RollbackClearsPtesSetBeforeFailure)
{
#if !defined(PTL_TEST_HOOKS)
	GTEST_SKIP() << "needs a build with PTL_TEST_HOOKS";
#endif
	for (mm::lock_mode mode : mm::all_lock_modes) {
		SCOPED_TRACE(std::string(mm::lock_mode_name(mode)) + " mode");
		this->rollback_clears_ptes(mode);
	}
}

// Threads released together map and unmap many small disjoint ranges next
// to each other, so they populate and share the same directory and PTE
// tables. Whatever the interleaving, each thread reads back its own frames,
// and the tree, the counters and the pool agree at the end.
template <class G>
void race_vmap_vunmap(mm::lock_mode mode)
{
	constexpr unsigned nr_threads = 4;
	constexpr unsigned rounds = 300;

	struct kept_area {
		uint64_t addr;
		std::vector<pfn_t> pfns;
	};

	phys::frame_pool pool(1024);
	auto ks = *kernel_space<G>::create(pool, mode);
	std::vector<std::vector<kept_area>> kept(nr_threads);
	std::atomic<unsigned> ready{0};
	std::atomic<unsigned> errors{0};
	std::vector<std::thread> threads;

	for (unsigned t = 0; t < nr_threads; t++) {
		threads.emplace_back([&, t] {
			ready.fetch_add(1);
			while (ready.load() < nr_threads)
				std::this_thread::yield();

			for (unsigned i = 0; i < rounds; i++) {
				auto pfns = bare_pfns(0x10000 * (t + 1) + i * 16, 1 + i % 4);
				auto addr = ks->vmap(pfns);
				if (!addr) {
					errors.fetch_add(1);
					continue;
				}
				for (uint64_t p = 0; p < pfns.size(); p++) {
					auto tr = translate(ks->init_mm(), *addr + p * page);
					if (!tr || tr->pfn != pfns[p])
						errors.fetch_add(1);
				}

				if (i % 3 == 0)
					kept[t].push_back({*addr, std::move(pfns)});
				else if (!ks->vunmap(*addr))
					errors.fetch_add(1);
			}
		});
	}
	for (auto &thread : threads)
		thread.join();

	EXPECT_EQ(errors.load(), 0u);

	uint64_t kept_areas = 0;
	uint64_t kept_pages = 0;
	for (const auto &areas : kept) {
		for (const auto &area : areas) {
			expect_mapped(*ks, area.addr, area.pfns);
			kept_areas++;
			kept_pages += area.pfns.size();
		}
	}

	const auto counters = ks->counters();
	EXPECT_EQ(counters.areas_live, kept_areas);
	EXPECT_EQ(counters.pages_mapped, kept_pages);
	EXPECT_EQ(counters.maps, uint64_t{nr_threads} * rounds);

	const auto report = check::audit<G>({&ks->init_mm()});
	EXPECT_TRUE(report.ok()) << report.summary();
	EXPECT_EQ(report.leaves, kept_pages);
	uint64_t tables = 0;
	for (uint64_t n : report.tables)
		tables += n;
	EXPECT_EQ(pool.in_use(), tables) << "only table frames are in use";
	EXPECT_FALSE(ks->init_mm().page_table_lock.is_locked());
}

TYPED_TEST(KernelSpace, ConcurrentVmapVunmapShareTables)
{
	for (mm::lock_mode mode : mm::all_lock_modes) {
		SCOPED_TRACE(std::string(mm::lock_mode_name(mode)) + " mode");
		race_vmap_vunmap<TypeParam>(mode);
	}
}

TYPED_TEST(KernelSpace, ConcurrentVmallocVfreeReturnsFrames)
{
	constexpr unsigned nr_threads = 4;
	constexpr unsigned rounds = 200;
	std::atomic<unsigned> ready{0};
	std::atomic<unsigned> errors{0};
	std::vector<std::thread> threads;

	for (unsigned t = 0; t < nr_threads; t++) {
		threads.emplace_back([&, t] {
			ready.fetch_add(1);
			while (ready.load() < nr_threads)
				std::this_thread::yield();

			std::vector<uint64_t> live;
			for (unsigned i = 0; i < rounds; i++) {
				auto addr = this->ks->vmalloc((1 + (i + t) % 3) * page);
				if (!addr) {
					errors.fetch_add(1);
					continue;
				}
				live.push_back(*addr);
				if (live.size() > 4) {
					if (!this->ks->vfree(live.front()))
						errors.fetch_add(1);
					live.erase(live.begin());
				}
			}
			for (uint64_t addr : live) {
				if (!this->ks->vfree(addr))
					errors.fetch_add(1);
			}
		});
	}
	for (auto &thread : threads)
		thread.join();

	EXPECT_EQ(errors.load(), 0u);
	EXPECT_EQ(this->pool.in_use(phys::alloc_site::data), 0u);
	EXPECT_EQ(this->ks->counters().areas_live, 0u);
	EXPECT_EQ(this->ks->counters().pages_mapped, 0u);
	expect_consistent(*this->ks);
}

TYPED_TEST(KernelSpace, VmMapRamMapsAndUnmaps)
{
	const std::vector<pfn_t> pfns = {0x4000, 0x4001, 0x7777};
	auto addr = this->ks->vm_map_ram(pfns);
	ASSERT_TRUE(addr);
	expect_mapped(*this->ks, *addr, pfns);
	EXPECT_EQ(this->ks->counters().pages_mapped, 3u);

	auto wrong_count = this->ks->vm_unmap_ram(*addr, 2);
	ASSERT_FALSE(wrong_count);
	EXPECT_EQ(wrong_count.error(), errc::invalid_argument);
	expect_mapped(*this->ks, *addr, pfns);

	ASSERT_TRUE(this->ks->vm_unmap_ram(*addr, 3));
	expect_unmapped(*this->ks, *addr, 3);
	EXPECT_EQ(this->ks->counters().pages_mapped, 0u);

	auto twice = this->ks->vm_unmap_ram(*addr, 3);
	ASSERT_FALSE(twice);
	EXPECT_EQ(twice.error(), errc::not_found);
	expect_consistent(*this->ks);
}

TYPED_TEST(KernelSpace, VmMapRamRejectsBadArguments)
{
	EXPECT_EQ(this->ks->vm_map_ram({}).error(), errc::invalid_argument);
	EXPECT_EQ(this->ks->vm_unmap_ram(0x1000, 0).error(), errc::invalid_argument);
	EXPECT_EQ(this->ks->vm_unmap_ram(0x1001, 1).error(), errc::invalid_argument);
	EXPECT_EQ(this->ks->vm_unmap_ram(0x1000, 1).error(), errc::not_found);
}

TYPED_TEST(KernelSpace, VmMapRamLargeGoesToVmap)
{
	std::vector<pfn_t> pfns(vmap_blocks::max_pages + 1);
	for (uint64_t i = 0; i < pfns.size(); i++)
		pfns[i] = 0x9000 + i;

	auto addr = this->ks->vm_map_ram(pfns);
	ASSERT_TRUE(addr);
	expect_mapped(*this->ks, *addr, pfns);
	EXPECT_TRUE(this->ks->find_vm_area(*addr));
	ASSERT_TRUE(this->ks->vm_unmap_ram(*addr, pfns.size()));
	expect_unmapped(*this->ks, *addr, pfns.size());
}

// Threads map and unmap far more pages than the block region holds, so
// blocks are retired and reused while other threads use theirs.
TYPED_TEST(KernelSpace, VmMapRamConcurrentReusesBlocks)
{
	constexpr unsigned nr_threads = 4;
	constexpr unsigned rounds = 3000;
	std::atomic<unsigned> ready{0};
	std::atomic<uint64_t> failures{0};
	std::vector<std::thread> threads;

	for (unsigned t = 0; t < nr_threads; t++) {
		threads.emplace_back([&, t] {
			ready.fetch_add(1);
			while (ready.load() < nr_threads)
				std::this_thread::yield();

			std::vector<std::pair<uint64_t, std::vector<pfn_t>>> live;
			for (unsigned round = 0; round < rounds; round++) {
				std::vector<pfn_t> pfns(1 + (round * 7 + t) % 24);
				for (uint64_t i = 0; i < pfns.size(); i++)
					pfns[i] = 0x10000 * (t + 1) + (round * 32 + i) % 0x10000;

				auto addr = this->ks->vm_map_ram(pfns);
				if (!addr) {
					failures.fetch_add(1);
					continue;
				}
				for (uint64_t i = 0; i < pfns.size(); i++) {
					const auto tr = translate(this->ks->init_mm(), *addr + i * page);
					if (!tr || tr->pfn != pfns[i])
						failures.fetch_add(1);
				}
				live.emplace_back(*addr, std::move(pfns));
				if (live.size() > 8) {
					if (!this->ks->vm_unmap_ram(live.front().first, live.front().second.size()))
						failures.fetch_add(1);
					live.erase(live.begin());
				}
			}
			for (const auto &[addr, pfns] : live) {
				if (!this->ks->vm_unmap_ram(addr, pfns.size()))
					failures.fetch_add(1);
			}
		});
	}
	for (auto &t : threads)
		t.join();

	EXPECT_EQ(failures.load(), 0u);
	EXPECT_EQ(this->ks->counters().pages_mapped, 0u);
	expect_consistent(*this->ks);
}
