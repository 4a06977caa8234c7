// User address spaces: mmap, munmap, the fault path and insert_pfn on every
// geometry. Outcomes are read back from the tables with translate() and
// checked against the frame pool and the audit.
//
// This file is also built with PTL_MUTANT_NO_UNLOCK_ON_FAIL. In that build
// a fault whose data-frame allocation fails returns with the PTE lock held,
// and the build's tests must fail (see tests/CMakeLists.txt).

#include "geometries.hpp"
#include "lock_mode_env.hpp"
#include "race_support.hpp"

#include <ptl/check/audit.hpp>
#include <ptl/user/user_space.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

using namespace ptl;
using arch::level;
using phys::alloc_site;
using user::access_type;

namespace {

constexpr uint64_t page = arch::page_size;

constexpr unsigned prot_rw = user::prot_read | user::prot_write;
constexpr unsigned anon_private = user::map_private | user::map_anonymous;
constexpr unsigned anon_fixed = anon_private | user::map_fixed_noreplace;
constexpr unsigned pfnmap_shared = user::map_shared | user::map_pfnmap;

// Releases threads together: each waits, spinning, until all have arrived.
class spin_barrier {
public:
	explicit spin_barrier(int count) : count_(count) {}

	void arrive_and_wait()
	{
		arrived_.fetch_add(1);
		while (arrived_.load() < count_)
			std::this_thread::yield();
	}

private:
	const int count_;
	std::atomic<int> arrived_{0};
};

// Releases a lock that a failed fault left held, so that the rest of the
// test and the teardown do not spin forever on it. The analysis cannot know
// the lock is held, because the fault path that leaked it is broken.
void release_stray_lock(sync::spinlock &lock) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	lock.unlock();
}

// The value of the pmd entry that maps addr, which must exist.
template <class G>
typename G::entry_t detail_find_pmd(const mm::mm_struct<G> &mm, uint64_t addr)
{
	const auto found = user::detail::find_pmd(mm, addr);
	EXPECT_NE(found.pmd, nullptr);
	return found.pmd ? found.pmd->load() : 0;
}

} // namespace

template <class G>
class UserSpace : public ::testing::Test {
protected:
	using space_t = user::user_space<G>;
	using format = typename G::format;

	phys::frame_pool pool{8192};
	const uint64_t pool_before_create = pool.in_use();
	std::unique_ptr<space_t> space = *space_t::create(pool, test::lock_mode_under_test());
	const uint64_t base = sample_user_addr<G>();

	// Maps nr_pages of private anonymous memory exactly at addr.
	uint64_t map_anon(uint64_t addr, uint64_t nr_pages, unsigned prot = prot_rw)
	{
		auto start = space->mmap(addr, nr_pages * page, prot, anon_fixed);
		EXPECT_TRUE(start) << "mmap at " << std::hex << addr;
		return start ? *start : 0;
	}

	std::optional<mm::translation> translate(uint64_t addr) const { return mm::translate(space->mm(), addr); }

	bool frame_is_zeroed(phys::pfn_t pfn) const
	{
		const auto *bytes = static_cast<const unsigned char *>(pool.frame_address(pfn));
		return std::all_of(bytes, bytes + phys::frame_size, [](unsigned char b) { return b == 0; });
	}

	void expect_audit_ok() const
	{
		const auto report = check::audit<G>({&space->mm()});
		EXPECT_TRUE(report.ok()) << report.summary();
	}

	// Start of the n-th region (n >= 1), in the middle of a pgd entry of its
	// own, so a fault there populates every level below the pgd. i386 PAE
	// has only three pgd entries below task_size: from its fourth region on,
	// regions share a pgd entry with an earlier one, one pmd entry higher.
	static uint64_t fresh_region(uint64_t n)
	{
		const uint64_t span = arch::entry_span<G>(level::pgd);
		const uint64_t user_entries = G::task_size / span;
		const uint64_t round = (n - 1) / user_entries;
		return (n - 1) % user_entries * span + span / 2 + round * arch::entry_span<G>(level::pmd);
	}

	static unsigned unfolded_levels_below_pgd()
	{
		unsigned n = 0;
		for (level l : {level::p4d, level::pud, level::pmd, level::pte})
			n += arch::is_folded<G>(l) ? 0 : 1;
		return n;
	}

	// Counts that a failed fault must leave unchanged.
	struct snapshot {
		uint64_t data_frames;
		uint64_t pages_mapped;
	};

	snapshot take_snapshot() const
	{
		return {pool.in_use(alloc_site::data), space->counters().pages_mapped};
	}

	// Checks that a fault at addr that failed with an allocation fault
	// armed left no lock held, no frame leaked and nothing mapped.
	void expect_clean_failure(uint64_t addr, const result<void> &r, const snapshot &before)
	{
		ASSERT_FALSE(r);
		EXPECT_EQ(r.error(), errc::no_memory);

		const bool left_locked = space->mm().page_table_lock.is_locked();
		EXPECT_FALSE(left_locked) << "the failed fault returned with the PTE lock held";
		if (left_locked)
			release_stray_lock(space->mm().page_table_lock);

		EXPECT_EQ(pool.in_use(alloc_site::data), before.data_frames);
		EXPECT_EQ(space->counters().pages_mapped, before.pages_mapped);
		EXPECT_FALSE(translate(addr));
		expect_audit_ok();
	}

	// Clears the armed faults and checks that the fault at addr succeeds.
	void expect_retry_succeeds(uint64_t addr, const snapshot &before)
	{
		pool.clear_faults();
		ASSERT_TRUE(space->handle_mm_fault(addr, access_type::write));

		EXPECT_TRUE(translate(addr));
		EXPECT_EQ(pool.in_use(alloc_site::data), before.data_frames + 1);
		EXPECT_EQ(space->counters().pages_mapped, before.pages_mapped + 1);
		expect_audit_ok();
	}
};

TYPED_TEST_SUITE(UserSpace, all_geometries, geometry_names);

TYPED_TEST(UserSpace, AnonFaultMapsZeroedFrame)
{
	using G = TypeParam;
	const uint64_t addr = this->map_anon(this->base, 4);

	ASSERT_TRUE(this->space->handle_mm_fault(addr + page + 123, access_type::read));

	const auto t = this->translate(addr + page);
	ASSERT_TRUE(t);
	EXPECT_EQ(t->leaf_level, level::pte);
	EXPECT_EQ(this->pool.site_of(t->pfn), alloc_site::data);
	EXPECT_TRUE(this->frame_is_zeroed(t->pfn));
	EXPECT_TRUE(t->prot & arch::prot_present);
	EXPECT_TRUE(t->prot & arch::prot_user);
	EXPECT_TRUE(t->prot & arch::prot_write);
	EXPECT_TRUE(t->prot & arch::prot_accessed);
	EXPECT_FALSE(t->prot & arch::prot_dirty) << "a read fault must not dirty the page";
	if (G::format::has_nx) {
		EXPECT_TRUE(t->prot & arch::prot_nx) << "a VMA without exec must map no-execute";
	}

	EXPECT_FALSE(this->translate(addr)) << "only the faulting page is mapped";
	EXPECT_EQ(this->pool.in_use(alloc_site::data), 1u);

	const auto c = this->space->counters();
	EXPECT_EQ(c.faults, 1u);
	EXPECT_EQ(c.pages_mapped, 1u);
	EXPECT_EQ(c.anon_pages, 1u);
	this->expect_audit_ok();
}

TYPED_TEST(UserSpace, WriteFaultSetsDirty)
{
	const uint64_t addr = this->map_anon(this->base, 1);

	ASSERT_TRUE(this->space->handle_mm_fault(addr, access_type::write));

	const auto t = this->translate(addr);
	ASSERT_TRUE(t);
	EXPECT_TRUE(t->prot & arch::prot_write);
	EXPECT_TRUE(t->prot & arch::prot_dirty);
}

TYPED_TEST(UserSpace, ReadOnlyVmaMapsWithoutWrite)
{
	const uint64_t addr = this->map_anon(this->base, 2, user::prot_read);

	ASSERT_TRUE(this->space->handle_mm_fault(addr, access_type::read));
	const auto t = this->translate(addr);
	ASSERT_TRUE(t);
	EXPECT_FALSE(t->prot & arch::prot_write);

	auto write_mapped = this->space->handle_mm_fault(addr, access_type::write);
	ASSERT_FALSE(write_mapped);
	EXPECT_EQ(write_mapped.error(), errc::access_fault);

	auto write_unmapped = this->space->handle_mm_fault(addr + page, access_type::write);
	ASSERT_FALSE(write_unmapped);
	EXPECT_EQ(write_unmapped.error(), errc::access_fault);
	EXPECT_FALSE(this->translate(addr + page));
	EXPECT_EQ(this->space->counters().faults, 1u);
}

TYPED_TEST(UserSpace, ExecNeedsExecVma)
{
	const uint64_t data = this->map_anon(this->base, 1, prot_rw);
	const uint64_t code = this->map_anon(this->base + 16 * page, 1, user::prot_read | user::prot_exec);

	auto denied = this->space->handle_mm_fault(data, access_type::exec);
	ASSERT_FALSE(denied);
	EXPECT_EQ(denied.error(), errc::access_fault);
	EXPECT_FALSE(this->translate(data));

	ASSERT_TRUE(this->space->handle_mm_fault(code, access_type::exec));
	const auto t = this->translate(code);
	ASSERT_TRUE(t);
	EXPECT_FALSE(t->prot & arch::prot_nx);
	EXPECT_FALSE(t->prot & arch::prot_write);
}

TYPED_TEST(UserSpace, ProtNoneVmaRejectsEveryAccess)
{
	const uint64_t addr = this->map_anon(this->base, 1, user::prot_none);

	for (access_type a : {access_type::read, access_type::write, access_type::exec}) {
		auto r = this->space->handle_mm_fault(addr, a);
		ASSERT_FALSE(r);
		EXPECT_EQ(r.error(), errc::access_fault);
	}
	EXPECT_FALSE(this->translate(addr));
}

TYPED_TEST(UserSpace, FaultOutsideVmaIsNotFound)
{
	using G = TypeParam;
	const uint64_t addr = this->map_anon(this->base, 2);
	const uint64_t tables_before = this->pool.in_use();

	for (uint64_t outside : {addr - page, addr + 2 * page, uint64_t{0}, G::task_size, ~uint64_t{0}}) {
		auto r = this->space->handle_mm_fault(outside, access_type::read);
		ASSERT_FALSE(r) << std::hex << outside;
		EXPECT_EQ(r.error(), errc::not_found) << std::hex << outside;
	}

	EXPECT_EQ(this->pool.in_use(), tables_before) << "a rejected fault must allocate nothing";
	EXPECT_EQ(this->space->counters().faults, 0u);
}

TYPED_TEST(UserSpace, SecondFaultKeepsFrame)
{
	const uint64_t addr = this->map_anon(this->base, 1);

	ASSERT_TRUE(this->space->handle_mm_fault(addr, access_type::read));
	const auto first = this->translate(addr);
	ASSERT_TRUE(first);
	ASSERT_TRUE(this->space->handle_mm_fault(addr + 8, access_type::write));
	const auto second = this->translate(addr);
	ASSERT_TRUE(second);

	EXPECT_EQ(second->pfn, first->pfn);
	EXPECT_TRUE(second->prot & arch::prot_dirty) << "a write to a mapped page marks it dirty";
	EXPECT_EQ(this->pool.in_use(alloc_site::data), 1u);

	const auto c = this->space->counters();
	EXPECT_EQ(c.faults, 2u);
	EXPECT_EQ(c.faults_already_mapped, 1u);
	EXPECT_EQ(c.anon_pages, 1u);
}

TYPED_TEST(UserSpace, LinearPfnmapFaultMapsBasePlusIndex)
{
	constexpr phys::pfn_t pfn_base = 0x4000;
	auto start = this->space->mmap(0, 8 * page, prot_rw, pfnmap_shared, pfn_base);
	ASSERT_TRUE(start);

	for (uint64_t i : {0u, 5u, 7u})
		ASSERT_TRUE(this->space->handle_mm_fault(*start + i * page, access_type::write));

	for (uint64_t i = 0; i < 8; i++) {
		const auto t = this->translate(*start + i * page);
		if (i == 0 || i == 5 || i == 7) {
			ASSERT_TRUE(t) << "page " << i;
			EXPECT_EQ(t->pfn, pfn_base + i);
			EXPECT_TRUE(t->prot & arch::prot_user);
		} else {
			EXPECT_FALSE(t) << "page " << i;
		}
	}

	EXPECT_EQ(this->pool.in_use(alloc_site::data), 0u) << "PFN-mapped pages take no pool frames";
	EXPECT_EQ(this->space->counters().pages_mapped, 3u);
	EXPECT_EQ(this->space->counters().anon_pages, 0u);
	const auto vma = this->space->vma_lookup(*start);
	ASSERT_TRUE(vma);
	EXPECT_TRUE(vma->flags & user::vm_pfnmap);
	EXPECT_TRUE(vma->flags & user::vm_shared);
	this->expect_audit_ok();
}

TYPED_TEST(UserSpace, PfnmapWithoutBaseFaultIsNotFound)
{
	auto start = this->space->mmap(0, 4 * page, prot_rw, pfnmap_shared);
	ASSERT_TRUE(start);

	auto r = this->space->handle_mm_fault(*start, access_type::read);
	ASSERT_FALSE(r);
	EXPECT_EQ(r.error(), errc::not_found);
	EXPECT_FALSE(this->space->mm().page_table_lock.is_locked());
	EXPECT_FALSE(this->translate(*start));
}

TYPED_TEST(UserSpace, InsertPfnMapsFrame)
{
	using G = TypeParam;
	auto start = this->space->mmap(0, 4 * page, user::prot_read, pfnmap_shared);
	ASSERT_TRUE(start);
	const uint64_t addr = *start + 2 * page;

	ASSERT_TRUE(this->space->insert_pfn(addr, 0x777));
	const auto t = this->translate(addr);
	ASSERT_TRUE(t);
	EXPECT_EQ(t->pfn, 0x777u);
	EXPECT_FALSE(t->prot & arch::prot_write);
	EXPECT_TRUE(t->prot & arch::prot_user);

	EXPECT_TRUE(this->space->insert_pfn(addr, 0x777)) << "inserting the same frame again succeeds";
	auto other = this->space->insert_pfn(addr, 0x778);
	ASSERT_FALSE(other);
	EXPECT_EQ(other.error(), errc::exists);
	EXPECT_EQ(this->translate(addr)->pfn, 0x777u);

	// A fault on an inserted page finds it mapped.
	ASSERT_TRUE(this->space->handle_mm_fault(addr, access_type::read));
	EXPECT_EQ(this->space->counters().faults_already_mapped, 1u);
	EXPECT_EQ(this->space->counters().pages_mapped, 1u);

	auto unaligned = this->space->insert_pfn(addr + 1, 0x777);
	ASSERT_FALSE(unaligned);
	EXPECT_EQ(unaligned.error(), errc::invalid_argument);

	auto too_large = this->space->insert_pfn(*start, G::format::max_pfn + 1);
	ASSERT_FALSE(too_large);
	EXPECT_EQ(too_large.error(), errc::invalid_argument);

	auto outside = this->space->insert_pfn(*start + 4 * page, 0x10);
	ASSERT_FALSE(outside);
	EXPECT_EQ(outside.error(), errc::not_found);

	const uint64_t anon = this->map_anon(this->base, 1);
	auto into_anon = this->space->insert_pfn(anon, 0x10);
	ASSERT_FALSE(into_anon);
	EXPECT_EQ(into_anon.error(), errc::invalid_argument);
	EXPECT_FALSE(this->translate(anon));
	this->expect_audit_ok();
}

TYPED_TEST(UserSpace, MunmapMiddleSplitsVma)
{
	const uint64_t addr = this->map_anon(this->base, 16);
	std::vector<phys::pfn_t> frames;
	for (uint64_t i = 0; i < 16; i++) {
		ASSERT_TRUE(this->space->handle_mm_fault(addr + i * page, access_type::write));
		frames.push_back(this->translate(addr + i * page)->pfn);
	}
	ASSERT_EQ(this->pool.in_use(alloc_site::data), 16u);

	ASSERT_TRUE(this->space->munmap(addr + 4 * page, 4 * page));

	const auto vmas = this->space->vmas();
	ASSERT_EQ(vmas.size(), 2u);
	EXPECT_EQ(vmas[0].start, addr);
	EXPECT_EQ(vmas[0].end, addr + 4 * page);
	EXPECT_EQ(vmas[1].start, addr + 8 * page);
	EXPECT_EQ(vmas[1].end, addr + 16 * page);
	EXPECT_EQ(vmas[1].flags, vmas[0].flags);

	for (uint64_t i = 0; i < 16; i++) {
		const auto t = this->translate(addr + i * page);
		if (i >= 4 && i < 8) {
			EXPECT_FALSE(t) << "page " << i << " is in the hole";
		} else {
			ASSERT_TRUE(t) << "page " << i;
			EXPECT_EQ(t->pfn, frames[i]) << "page " << i;
		}
	}

	for (uint64_t i = 4; i < 8; i++)
		EXPECT_FALSE(this->pool.site_of(frames[i])) << "frame of page " << i << " was not freed";
	EXPECT_EQ(this->pool.in_use(alloc_site::data), 12u);
	EXPECT_EQ(this->space->counters().anon_pages, 12u);
	EXPECT_EQ(this->space->counters().pages_mapped, 12u);

	auto in_hole = this->space->handle_mm_fault(addr + 5 * page, access_type::read);
	ASSERT_FALSE(in_hole);
	EXPECT_EQ(in_hole.error(), errc::not_found);
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
	this->expect_audit_ok();
}

TYPED_TEST(UserSpace, MunmapAcrossVmasAndTables)
{
	using G = TypeParam;
	// Two VMAs that meet at a pmd boundary, so their pages sit in two PTE
	// tables.
	const uint64_t boundary = this->base + arch::entry_span<G>(level::pmd);
	const uint64_t low = this->map_anon(boundary - 8 * page, 8);
	const uint64_t high = this->map_anon(boundary, 8, user::prot_read);
	for (uint64_t i = 0; i < 8; i++) {
		ASSERT_TRUE(this->space->handle_mm_fault(low + i * page, access_type::write));
		ASSERT_TRUE(this->space->handle_mm_fault(high + i * page, access_type::read));
	}

	ASSERT_TRUE(this->space->munmap(boundary - 3 * page, 5 * page));

	for (uint64_t i = 0; i < 16; i++) {
		const uint64_t addr = low + i * page;
		const bool unmapped = addr >= boundary - 3 * page && addr < boundary + 2 * page;
		EXPECT_EQ(this->translate(addr).has_value(), !unmapped) << "page " << i;
		EXPECT_EQ(this->space->vma_lookup(addr).has_value(), !unmapped) << "page " << i;
	}
	EXPECT_EQ(this->pool.in_use(alloc_site::data), 11u);
	EXPECT_EQ(this->space->vmas().size(), 2u);
	this->expect_audit_ok();
}

TYPED_TEST(UserSpace, MunmapKeepsPfnmapFrames)
{
	auto start = this->space->mmap(0, 8 * page, prot_rw, pfnmap_shared, phys::pfn_t{0x5000});
	ASSERT_TRUE(start);
	for (uint64_t i = 0; i < 4; i++)
		ASSERT_TRUE(this->space->handle_mm_fault(*start + i * page, access_type::read));
	const auto frees_before = this->pool.stats().frees;

	ASSERT_TRUE(this->space->munmap(*start + 2 * page, 2 * page));

	EXPECT_FALSE(this->translate(*start + 2 * page));
	EXPECT_EQ(this->pool.stats().frees, frees_before) << "PFN-mapped frames are not the pool's to free";
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
	EXPECT_EQ(this->space->counters().pages_mapped, 2u);

	// The upper part still maps frame pfn_base + its page index in the
	// original area.
	const auto upper = this->space->vma_lookup(*start + 6 * page);
	ASSERT_TRUE(upper);
	EXPECT_EQ(upper->start, *start + 4 * page);
	ASSERT_TRUE(upper->pfn_base);
	EXPECT_EQ(*upper->pfn_base, 0x5004u);
	ASSERT_TRUE(this->space->handle_mm_fault(*start + 6 * page, access_type::read));
	EXPECT_EQ(this->translate(*start + 6 * page)->pfn, 0x5006u);
}

TYPED_TEST(UserSpace, FreedFrameComesBackZeroed)
{
	const uint64_t addr = this->map_anon(this->base, 1);
	ASSERT_TRUE(this->space->handle_mm_fault(addr, access_type::write));
	const auto pfn = this->translate(addr)->pfn;
	std::memset(this->pool.frame_address(pfn), 0xa5, phys::frame_size);

	ASSERT_TRUE(this->space->munmap(addr, page));
	ASSERT_EQ(this->map_anon(addr, 1), addr);
	ASSERT_TRUE(this->space->handle_mm_fault(addr, access_type::read));

	const auto t = this->translate(addr);
	ASSERT_TRUE(t);
	EXPECT_TRUE(this->frame_is_zeroed(t->pfn));
}

TYPED_TEST(UserSpace, MmapRejectsInvalidArguments)
{
	using G = TypeParam;
	struct bad_call {
		const char *description;
		uint64_t addr;
		uint64_t len;
		unsigned prot;
		unsigned flags;
		std::optional<phys::pfn_t> pfn_base;
	};
	const uint64_t b = this->base;
	const bad_call calls[] = {
		{"zero length", b, 0, prot_rw, anon_fixed, {}},
		{"unaligned fixed address", b + 1, page, prot_rw, anon_fixed, {}},
		{"unaligned hint", b + 12, page, prot_rw, anon_private, {}},
		{"length above task_size", 0, G::task_size + page, prot_rw, anon_private, {}},
		{"length that wraps when rounded up", 0, ~uint64_t{0}, prot_rw, anon_private, {}},
		{"fixed range wrapping past 2^64", ~uint64_t{0} & ~(page - 1), 2 * page, prot_rw, anon_fixed, {}},
		{"fixed range past task_size", G::task_size - page, 2 * page, prot_rw, anon_fixed, {}},
		{"fixed range below mmap_min_addr", 0, page, prot_rw, anon_private | user::map_fixed, {}},
		{"unknown prot bit", b, page, 0x8, anon_fixed, {}},
		{"unknown flag", b, page, prot_rw, anon_fixed | 0x4000, {}},
		{"neither shared nor private", b, page, prot_rw, user::map_anonymous | user::map_fixed, {}},
		{"both shared and private", b, page, prot_rw, anon_fixed | user::map_shared, {}},
		{"neither anonymous nor pfnmap", b, page, prot_rw, user::map_private | user::map_fixed, {}},
		{"both anonymous and pfnmap", b, page, prot_rw, anon_fixed | user::map_pfnmap, {}},
		{"fixed and fixed_noreplace", b, page, prot_rw, anon_fixed | user::map_fixed, {}},
		{"pfn_base on anonymous memory", b, page, prot_rw, anon_fixed, phys::pfn_t{1}},
		{"pfn_base past the maximum frame", b, 2 * page, prot_rw, pfnmap_shared, G::format::max_pfn},
	};

	for (const auto &call : calls) {
		SCOPED_TRACE(call.description);
		auto r = this->space->mmap(call.addr, call.len, call.prot, call.flags, call.pfn_base);
		ASSERT_FALSE(r);
		EXPECT_EQ(r.error(), errc::invalid_argument);
	}
	EXPECT_TRUE(this->space->vmas().empty());

	// The last frame of a linear area may be the format's maximum.
	EXPECT_TRUE(this->space->mmap(b, 2 * page, prot_rw, pfnmap_shared | user::map_fixed, G::format::max_pfn - 1));
}

TYPED_TEST(UserSpace, MmapPicksFreeRange)
{
	using G = TypeParam;
	auto first = this->space->mmap(0, 3 * page, prot_rw, anon_private);
	auto second = this->space->mmap(0, 5 * page - 100, prot_rw, anon_private);
	ASSERT_TRUE(first);
	ASSERT_TRUE(second);

	for (uint64_t start : {*first, *second}) {
		EXPECT_EQ(start % page, 0u);
		EXPECT_GE(start, user::mmap_min_addr);
		EXPECT_LE(start, G::task_size);
	}
	EXPECT_EQ(*first + 3 * page, G::task_size) << "the first area goes at the top of the user half";
	EXPECT_EQ(*second + 5 * page, *first) << "the length is rounded up to whole pages";
	EXPECT_EQ(this->space->vma_lookup(*second)->end, *first);

	auto hinted = this->space->mmap(this->base, page, prot_rw, anon_private);
	ASSERT_TRUE(hinted);
	EXPECT_EQ(*hinted, this->base) << "a free hint is used";

	auto hint_taken = this->space->mmap(this->base, page, prot_rw, anon_private);
	ASSERT_TRUE(hint_taken);
	EXPECT_NE(*hint_taken, this->base) << "a hint that overlaps a VMA is ignored";
	EXPECT_EQ(this->space->vmas().size(), 4u);
}

TYPED_TEST(UserSpace, MmapWithoutRoomIsNoSpace)
{
	using G = TypeParam;
	const uint64_t middle = (G::task_size / 2) & ~(page - 1);
	ASSERT_EQ(this->map_anon(middle, 1), middle);

	const uint64_t gap_below = middle - user::mmap_min_addr;
	const uint64_t gap_above = G::task_size - (middle + page);
	auto r = this->space->mmap(0, std::max(gap_below, gap_above) + page, prot_rw, anon_private);
	ASSERT_FALSE(r);
	EXPECT_EQ(r.error(), errc::no_space);

	EXPECT_TRUE(this->space->mmap(0, std::max(gap_below, gap_above), prot_rw, anon_private))
		<< "a gap of exactly the requested length is used";
}

TYPED_TEST(UserSpace, MapFixedReplacesPages)
{
	const uint64_t addr = this->map_anon(this->base, 8);
	for (uint64_t i = 0; i < 8; i++)
		ASSERT_TRUE(this->space->handle_mm_fault(addr + i * page, access_type::write));

	auto replaced = this->space->mmap(addr + 2 * page, 4 * page, user::prot_read, anon_private | user::map_fixed);
	ASSERT_TRUE(replaced);
	EXPECT_EQ(*replaced, addr + 2 * page);

	EXPECT_EQ(this->pool.in_use(alloc_site::data), 4u) << "the replaced pages' frames are freed";
	EXPECT_EQ(this->space->vmas().size(), 3u);
	EXPECT_FALSE(this->translate(addr + 3 * page));

	ASSERT_TRUE(this->space->handle_mm_fault(addr + 3 * page, access_type::read));
	EXPECT_FALSE(this->translate(addr + 3 * page)->prot & arch::prot_write);
	auto write = this->space->handle_mm_fault(addr + 3 * page, access_type::write);
	ASSERT_FALSE(write);
	EXPECT_EQ(write.error(), errc::access_fault);
	this->expect_audit_ok();
}

TYPED_TEST(UserSpace, MapFixedNoreplaceRejectsOverlap)
{
	const uint64_t addr = this->map_anon(this->base, 4);

	auto r = this->space->mmap(addr + 3 * page, 2 * page, prot_rw, anon_fixed);
	ASSERT_FALSE(r);
	EXPECT_EQ(r.error(), errc::exists);
	EXPECT_EQ(this->space->vmas().size(), 1u);

	EXPECT_TRUE(this->space->mmap(addr + 4 * page, 2 * page, prot_rw, anon_fixed)) << "an adjacent range is free";
}

TYPED_TEST(UserSpace, MunmapRejectsInvalidArguments)
{
	using G = TypeParam;
	const uint64_t addr = this->map_anon(this->base, 2);

	for (auto [start, len] : {std::pair{addr + 1, page}, std::pair{addr, uint64_t{0}},
				  std::pair{G::task_size - page, 2 * page}, std::pair{addr, ~uint64_t{0}}}) {
		auto r = this->space->munmap(start, len);
		ASSERT_FALSE(r) << std::hex << start << " + " << len;
		EXPECT_EQ(r.error(), errc::invalid_argument);
	}
	EXPECT_EQ(this->space->vmas().size(), 1u);

	EXPECT_TRUE(this->space->munmap(addr + 8 * page, page)) << "unmapping a free range is not an error";
	EXPECT_TRUE(this->space->munmap(addr, page + 1)) << "the length is rounded up";
	EXPECT_TRUE(this->space->vmas().empty());
}

TYPED_TEST(UserSpace, FindVmaAndVmaLookup)
{
	const uint64_t addr = this->map_anon(this->base, 2);

	const auto above = this->space->find_vma(addr - 10 * page);
	ASSERT_TRUE(above);
	EXPECT_EQ(above->start, addr);
	EXPECT_FALSE(this->space->vma_lookup(addr - 10 * page));

	const auto inside = this->space->vma_lookup(addr + page + 5);
	ASSERT_TRUE(inside);
	EXPECT_EQ(inside->start, addr);
	EXPECT_EQ(inside->end, addr + 2 * page);
	EXPECT_EQ(inside->flags, user::vm_read | user::vm_write);
	EXPECT_TRUE(inside->is_anonymous());

	EXPECT_FALSE(this->space->find_vma(addr + 2 * page));
}

TYPED_TEST(UserSpace, DestroyReturnsPoolToStart)
{
	using G = TypeParam;
	const uint64_t addr = this->map_anon(this->base, 4);
	for (uint64_t i = 0; i < 4; i++)
		ASSERT_TRUE(this->space->handle_mm_fault(addr + i * page, access_type::write));
	auto pfnmap = this->space->mmap(this->base + arch::entry_span<G>(level::pmd), 2 * page, prot_rw, pfnmap_shared,
				        phys::pfn_t{0x300});
	ASSERT_TRUE(pfnmap);
	ASSERT_TRUE(this->space->handle_mm_fault(*pfnmap, access_type::read));

	this->space.reset();

	EXPECT_EQ(this->pool.in_use(), this->pool_before_create);
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
}

// Allocation failure at each populate site, and at the data frame, during a
// fault in a region with no tables yet.
TYPED_TEST(UserSpace, FaultFailsCleanlyAtEachSite)
{
	using G = TypeParam;
	uint64_t region = 1;

	for (alloc_site site : {alloc_site::p4d, alloc_site::pud, alloc_site::pmd, alloc_site::pte, alloc_site::data}) {
		SCOPED_TRACE(phys::site_name(site));
		if (site != alloc_site::data && arch::is_folded<G>(static_cast<level>(site)))
			continue;

		const uint64_t addr = this->map_anon(this->fresh_region(region++), 1);
		const auto before = this->take_snapshot();
		this->pool.fail_site(site);

		auto r = this->space->handle_mm_fault(addr, access_type::write);
		this->expect_clean_failure(addr, r, before);
		this->expect_retry_succeeds(addr, before);
		if (this->HasFatalFailure())
			return;
	}
}

TYPED_TEST(UserSpace, FaultFailsCleanlyAtEachAllocation)
{
	unsigned failures = 0;

	for (uint64_t n = 1;; n++) {
		SCOPED_TRACE("failing allocation " + std::to_string(n));
		ASSERT_LE(n, 8u) << "the fault still fails with more allocations armed than levels";

		const uint64_t addr = this->map_anon(this->fresh_region(n), 1);
		const auto before = this->take_snapshot();
		this->pool.fail_nth(n);

		auto r = this->space->handle_mm_fault(addr, access_type::write);
		if (r) {
			this->pool.clear_faults();
			break;
		}

		failures++;
		this->expect_clean_failure(addr, r, before);
		this->expect_retry_succeeds(addr, before);
		if (this->HasFatalFailure())
			return;
	}

	// One allocation per table below the pgd, and one for the data frame.
	EXPECT_EQ(failures, this->unfolded_levels_below_pgd() + 1);
	this->expect_audit_ok();
}

// The faulting thread holds the PTE lock at the fault_locked hook, and the
// page is not yet mapped there.
TYPED_TEST(UserSpace, FaultHookRunsUnderPteLock)
{
#if !defined(PTL_TEST_HOOKS)
	GTEST_SKIP() << "needs a build with PTL_TEST_HOOKS";
#else
	const uint64_t addr = this->map_anon(this->base, 1);
	test::paused_thread held(hooks::point::fault_locked);

	std::thread faulting([&] {
		test::paused_thread::designate();
		EXPECT_TRUE(this->space->handle_mm_fault(addr, access_type::read));
	});

	const bool paused = held.wait_until_paused();
	EXPECT_TRUE(paused);
	auto &mm = this->space->mm();
	sync::spinlock *pte_lock = &mm.page_table_lock;
	if (mm.mode() == mm::lock_mode::split) {
		const auto pmd = detail_find_pmd(mm, addr);
		pte_lock = &mm::pte_table_lock(mm, pmd);
	}
	if (paused) {
		// Lockless mode has no PTE lock to hold.
		EXPECT_EQ(pte_lock->is_locked(), mm.mode() != mm::lock_mode::lockless);
		EXPECT_FALSE(this->translate(addr));
	}
	held.release();
	faulting.join();

	EXPECT_TRUE(this->translate(addr));
	EXPECT_FALSE(pte_lock->is_locked());
#endif
}

// Two faults on one page, forced to race: thread A is held after allocating
// the PTE table and before publishing it, while the main thread faults the
// page in completely. A must lose the table race, find the page mapped on
// its re-check, and allocate no second data frame.
TYPED_TEST(UserSpace, RacingFaultsMapOneFrame)
{
#if !defined(PTL_TEST_HOOKS)
	GTEST_SKIP() << "needs a build with PTL_TEST_HOOKS";
#else
	const uint64_t addr = this->map_anon(this->base, 1);
	test::paused_thread held(hooks::point::populate_after_alloc, static_cast<int>(arch::level_index(level::pte)));
	bool a_succeeded = false;

	std::thread a([&] {
		test::paused_thread::designate();
		a_succeeded = static_cast<bool>(this->space->handle_mm_fault(addr, access_type::write));
	});

	const bool paused = held.wait_until_paused();
	EXPECT_TRUE(paused);
	std::optional<mm::translation> winner;
	if (paused) {
		EXPECT_TRUE(this->space->handle_mm_fault(addr, access_type::read));
		winner = this->translate(addr);
		EXPECT_TRUE(winner);
		EXPECT_EQ(this->pool.in_use(alloc_site::pte), 2u) << "A's table and the published one";
	}
	held.release();
	a.join();

	EXPECT_TRUE(a_succeeded);
	const auto t = this->translate(addr);
	ASSERT_TRUE(t);
	ASSERT_TRUE(winner);
	EXPECT_EQ(t->pfn, winner->pfn);
	EXPECT_TRUE(t->prot & arch::prot_dirty) << "A's write marks the page it found dirty";

	EXPECT_EQ(this->pool.in_use(alloc_site::data), 1u);
	EXPECT_EQ(this->pool.in_use(alloc_site::pte), 1u) << "A's surplus table was not freed";
	EXPECT_EQ(this->space->mm().counters().races_lost, 1u);

	const auto c = this->space->counters();
	EXPECT_EQ(c.faults, 2u);
	EXPECT_EQ(c.faults_already_mapped, 1u);
	EXPECT_EQ(c.anon_pages, 1u);
	this->expect_audit_ok();
#endif
}

// Fault threads fill disjoint parts of one anonymous area while insert_pfn
// threads fill a PFN-mapped area, all released together. The parts are not
// table aligned, so neighbouring threads populate the same PTE tables.
TYPED_TEST(UserSpace, ConcurrentFaultsAndInserts)
{
	constexpr int nr_threads = 4;
	constexpr uint64_t pages_per_thread = 300;
	constexpr uint64_t nr_pages = nr_threads * pages_per_thread;
	constexpr phys::pfn_t first_pfn = 0x40000;

	const uint64_t anon = this->map_anon(this->base + 100 * page, nr_pages);
	auto pfnmap = this->space->mmap(0, nr_pages * page, prot_rw, pfnmap_shared);
	ASSERT_TRUE(pfnmap);
	const auto expected_pfn = [&](uint64_t i) { return first_pfn + 3 * i; };

	spin_barrier barrier(2 * nr_threads);
	std::vector<std::thread> threads;
	for (int t = 0; t < nr_threads; t++) {
		threads.emplace_back([&, t] {
			barrier.arrive_and_wait();
			for (uint64_t i = t * pages_per_thread; i < (t + 1) * pages_per_thread; i++)
				ASSERT_TRUE(this->space->handle_mm_fault(anon + i * page, access_type::write));
		});
		// Every inserting thread inserts every page, each starting at its
		// own quarter, so the same PTEs are contended.
		threads.emplace_back([&, t] {
			barrier.arrive_and_wait();
			for (uint64_t n = 0; n < nr_pages; n++) {
				const uint64_t i = (n + t * pages_per_thread) % nr_pages;
				ASSERT_TRUE(this->space->insert_pfn(*pfnmap + i * page, expected_pfn(i)));
			}
		});
	}
	for (auto &thread : threads)
		thread.join();

	std::set<phys::pfn_t> anon_frames;
	for (uint64_t i = 0; i < nr_pages; i++) {
		const auto a = this->translate(anon + i * page);
		ASSERT_TRUE(a) << "anonymous page " << i;
		EXPECT_EQ(this->pool.site_of(a->pfn), alloc_site::data) << "anonymous page " << i;
		EXPECT_TRUE(a->prot & arch::prot_dirty) << "anonymous page " << i;
		anon_frames.insert(a->pfn);

		const auto p = this->translate(*pfnmap + i * page);
		ASSERT_TRUE(p) << "PFN-mapped page " << i;
		EXPECT_EQ(p->pfn, expected_pfn(i)) << "PFN-mapped page " << i;
	}
	EXPECT_EQ(anon_frames.size(), nr_pages) << "two pages share a data frame";

	const auto c = this->space->counters();
	EXPECT_EQ(c.faults, nr_pages);
	EXPECT_EQ(c.faults_already_mapped, 0u);
	EXPECT_EQ(c.anon_pages, nr_pages);
	EXPECT_EQ(c.pages_mapped, 2 * nr_pages);

	uint64_t tables = 0;
	for (uint64_t n : this->space->mm().counters().nr_tables)
		tables += n;
	EXPECT_EQ(this->pool.in_use(alloc_site::data), nr_pages);
	EXPECT_EQ(this->pool.in_use(), this->pool_before_create + tables + nr_pages);
	this->expect_audit_ok();

	this->space.reset();
	EXPECT_EQ(this->pool.in_use(), this->pool_before_create);
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
}

// Every thread faults every page of one area; whatever the interleaving,
// each page gets exactly one data frame.
TYPED_TEST(UserSpace, ConcurrentFaultsOnSamePages)
{
	constexpr int nr_threads = 4;
	constexpr uint64_t nr_pages = 600;
	const uint64_t addr = this->map_anon(this->base + 7 * page, nr_pages);

	spin_barrier barrier(nr_threads);
	std::vector<std::thread> threads;
	for (int t = 0; t < nr_threads; t++) {
		threads.emplace_back([&] {
			barrier.arrive_and_wait();
			for (uint64_t i = 0; i < nr_pages; i++)
				ASSERT_TRUE(this->space->handle_mm_fault(addr + i * page, access_type::read));
		});
	}
	for (auto &thread : threads)
		thread.join();

	for (uint64_t i = 0; i < nr_pages; i++)
		ASSERT_TRUE(this->translate(addr + i * page)) << "page " << i;

	const auto c = this->space->counters();
	EXPECT_EQ(c.faults, nr_threads * nr_pages);
	EXPECT_EQ(c.faults_already_mapped, (nr_threads - 1) * nr_pages);
	EXPECT_EQ(c.anon_pages, nr_pages);
	EXPECT_EQ(this->pool.in_use(alloc_site::data), nr_pages);
	this->expect_audit_ok();
}
