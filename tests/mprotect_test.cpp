// mprotect on user address spaces, on every geometry: the VMA splits, the
// PTE bits read back with translate(), and the faults that follow.

#include "geometries.hpp"
#include "lock_mode_env.hpp"

#include <ptl/check/audit.hpp>
#include <ptl/mm/walk.hpp>
#include <ptl/user/user_space.hpp>

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

using namespace ptl;
using arch::level;
using phys::alloc_site;
using user::access_type;

namespace {

constexpr uint64_t page = arch::page_size;

constexpr unsigned prot_rw = user::prot_read | user::prot_write;
constexpr unsigned anon_fixed = user::map_private | user::map_anonymous | user::map_fixed_noreplace;
constexpr unsigned pfnmap_fixed = user::map_shared | user::map_pfnmap | user::map_fixed_noreplace;

} // namespace

template <class G>
class Mprotect : public ::testing::Test {
protected:
	using space_t = user::user_space<G>;

	phys::frame_pool pool{8192};
	const uint64_t pool_before_create = pool.in_use();
	std::unique_ptr<space_t> space = *space_t::create(pool, test::lock_mode_under_test());
	const uint64_t base = sample_user_addr<G>();

	// Maps nr_pages of private anonymous memory at addr and faults every
	// page in for writing.
	uint64_t map_faulted(uint64_t addr, uint64_t nr_pages, unsigned prot = prot_rw)
	{
		auto start = space->mmap(addr, nr_pages * page, prot, anon_fixed);
		EXPECT_TRUE(start) << "mmap at " << std::hex << addr;
		if (!start)
			return 0;

		const access_type a = (prot & user::prot_write) ? access_type::write : access_type::read;
		for (uint64_t i = 0; i < nr_pages; i++)
			EXPECT_TRUE(space->handle_mm_fault(*start + i * page, a)) << "fault at page " << i;
		return *start;
	}

	std::optional<mm::translation> translate(uint64_t addr) const { return mm::translate(space->mm(), addr); }

	void expect_audit_ok() const
	{
		const auto report = check::audit<G>({&space->mm()});
		EXPECT_TRUE(report.ok()) << report.summary();
	}
};

TYPED_TEST_SUITE(Mprotect, all_geometries, geometry_names);

TYPED_TEST(Mprotect, MiddleSplitsVmaAndChangesPtes)
{
	const uint64_t addr = this->map_faulted(this->base, 4);
	std::vector<phys::pfn_t> frames;
	for (uint64_t i = 0; i < 4; i++)
		frames.push_back(this->translate(addr + i * page)->pfn);

	ASSERT_TRUE(this->space->mprotect(addr + page, 2 * page, user::prot_read));

	const auto vmas = this->space->vmas();
	ASSERT_EQ(vmas.size(), 3u);
	EXPECT_EQ(vmas[0].start, addr);
	EXPECT_EQ(vmas[0].end, addr + page);
	EXPECT_EQ(vmas[0].flags, user::vm_read | user::vm_write);
	EXPECT_EQ(vmas[1].start, addr + page);
	EXPECT_EQ(vmas[1].end, addr + 3 * page);
	EXPECT_EQ(vmas[1].flags, user::vm_read);
	EXPECT_EQ(vmas[2].start, addr + 3 * page);
	EXPECT_EQ(vmas[2].end, addr + 4 * page);
	EXPECT_EQ(vmas[2].flags, user::vm_read | user::vm_write);

	for (uint64_t i = 0; i < 4; i++) {
		SCOPED_TRACE(i);
		const auto t = this->translate(addr + i * page);
		ASSERT_TRUE(t);
		EXPECT_EQ(t->pfn, frames[i]) << "mprotect must keep the frame";
		EXPECT_TRUE(t->prot & arch::prot_present);
		EXPECT_TRUE(t->prot & arch::prot_user);
		EXPECT_TRUE(t->prot & arch::prot_accessed) << "mprotect must keep the accessed bit";
		EXPECT_TRUE(t->prot & arch::prot_dirty) << "mprotect must keep the dirty bit";
		const bool writable = i == 0 || i == 3;
		EXPECT_EQ((t->prot & arch::prot_write) != 0, writable);
	}

	EXPECT_EQ(this->pool.in_use(alloc_site::data), 4u);
	EXPECT_EQ(this->space->counters().pages_mapped, 4u);
	this->expect_audit_ok();
}

TYPED_TEST(Mprotect, ReadOnlyRejectsWriteFault)
{
	const uint64_t addr = this->map_faulted(this->base, 2);

	ASSERT_TRUE(this->space->mprotect(addr, 2 * page, user::prot_read));

	auto mapped = this->space->handle_mm_fault(addr, access_type::write);
	ASSERT_FALSE(mapped);
	EXPECT_EQ(mapped.error(), errc::access_fault);
	EXPECT_TRUE(this->space->handle_mm_fault(addr, access_type::read));

	const auto t = this->translate(addr);
	ASSERT_TRUE(t);
	EXPECT_FALSE(t->prot & arch::prot_write) << "the rejected write must not make the PTE writable";
	EXPECT_EQ(this->space->counters().wp_reuses, 0u);
	EXPECT_EQ(this->space->counters().wp_copies, 0u);
}

TYPED_TEST(Mprotect, ReadWriteRestoresWrite)
{
	const uint64_t addr = this->map_faulted(this->base, 1);
	const auto before = this->translate(addr);
	ASSERT_TRUE(before);

	ASSERT_TRUE(this->space->mprotect(addr, page, user::prot_read));
	ASSERT_TRUE(this->space->mprotect(addr, page, prot_rw));

	const auto t = this->translate(addr);
	ASSERT_TRUE(t);
	EXPECT_TRUE(t->prot & arch::prot_write) << "a frame only this PTE maps gets its write bit back";
	EXPECT_EQ(t->pfn, before->pfn);
	EXPECT_EQ(t->entry, before->entry) << "the round trip must restore the entry exactly";
	EXPECT_TRUE(this->space->handle_mm_fault(addr, access_type::write));
	EXPECT_EQ(this->pool.in_use(alloc_site::data), 1u);
}

TYPED_TEST(Mprotect, NoExecSetsNx)
{
	using G = TypeParam;
	const unsigned rwx = prot_rw | user::prot_exec;
	const uint64_t addr = this->map_faulted(this->base, 1, rwx);

	const auto exec = this->translate(addr);
	ASSERT_TRUE(exec);
	EXPECT_FALSE(exec->prot & arch::prot_nx);

	ASSERT_TRUE(this->space->mprotect(addr, page, prot_rw));
	const auto no_exec = this->translate(addr);
	ASSERT_TRUE(no_exec);
	EXPECT_EQ((no_exec->prot & arch::prot_nx) != 0, G::format::has_nx);
	auto denied = this->space->handle_mm_fault(addr, access_type::exec);
	ASSERT_FALSE(denied);
	EXPECT_EQ(denied.error(), errc::access_fault);

	ASSERT_TRUE(this->space->mprotect(addr, page, user::prot_read | user::prot_exec));
	const auto read_exec = this->translate(addr);
	ASSERT_TRUE(read_exec);
	EXPECT_FALSE(read_exec->prot & arch::prot_nx);
	EXPECT_FALSE(read_exec->prot & arch::prot_write);
	EXPECT_TRUE(this->space->handle_mm_fault(addr, access_type::exec));
}

TYPED_TEST(Mprotect, NoneHidesPagesAndKeepsData)
{
	const uint64_t addr = this->map_faulted(this->base, 2);
	const auto before = this->translate(addr + page);
	ASSERT_TRUE(before);
	const char text[] = "kept across PROT_NONE";
	std::memcpy(this->pool.frame_address(before->pfn), text, sizeof(text));

	ASSERT_TRUE(this->space->mprotect(addr, 2 * page, user::prot_none));

	EXPECT_FALSE(this->translate(addr)) << "a PROT_NONE page must not be present";
	EXPECT_FALSE(this->translate(addr + page));
	for (access_type a : {access_type::read, access_type::write, access_type::exec}) {
		auto r = this->space->handle_mm_fault(addr + page, a);
		ASSERT_FALSE(r);
		EXPECT_EQ(r.error(), errc::access_fault);
	}
	EXPECT_EQ(this->pool.in_use(alloc_site::data), 2u) << "PROT_NONE must keep the frames";
	EXPECT_EQ(this->space->counters().pages_mapped, 2u);

	ASSERT_TRUE(this->space->mprotect(addr, 2 * page, user::prot_read));
	const auto after = this->translate(addr + page);
	ASSERT_TRUE(after);
	EXPECT_EQ(after->pfn, before->pfn);
	EXPECT_FALSE(after->prot & arch::prot_write);
	char read_back[sizeof(text)] = {};
	ASSERT_TRUE(this->space->copy_from_user(read_back, addr + page, sizeof(text)));
	EXPECT_STREQ(read_back, text);
	this->expect_audit_ok();
}

TYPED_TEST(Mprotect, SameProtectionKeepsVma)
{
	const uint64_t addr = this->map_faulted(this->base, 4);

	ASSERT_TRUE(this->space->mprotect(addr + page, page, prot_rw));

	EXPECT_EQ(this->space->vmas().size(), 1u) << "an unchanged VMA must not be split";
}

TYPED_TEST(Mprotect, RangeAcrossVmasAndTables)
{
	using G = TypeParam;
	const uint64_t span = arch::entry_span<G>(level::pmd);
	const uint64_t table_end = (this->base + span) & ~(span - 1);
	const uint64_t low = this->map_faulted(table_end - 2 * page, 2);
	const uint64_t high = this->map_faulted(table_end, 2);
	const uint64_t tables_before = this->pool.in_use() - this->pool.in_use(alloc_site::data);

	ASSERT_TRUE(this->space->mprotect(low + page, 2 * page, user::prot_read));

	EXPECT_TRUE(this->translate(low)->prot & arch::prot_write);
	EXPECT_FALSE(this->translate(low + page)->prot & arch::prot_write);
	EXPECT_FALSE(this->translate(high)->prot & arch::prot_write);
	EXPECT_TRUE(this->translate(high + page)->prot & arch::prot_write);
	EXPECT_EQ(this->space->vmas().size(), 4u);
	EXPECT_EQ(this->pool.in_use() - this->pool.in_use(alloc_site::data), tables_before)
		<< "mprotect must populate no table";
	this->expect_audit_ok();
}

TYPED_TEST(Mprotect, UnfaultedPagesFaultWithNewProtection)
{
	auto start = this->space->mmap(this->base, 2 * page, user::prot_read, anon_fixed);
	ASSERT_TRUE(start);

	ASSERT_TRUE(this->space->mprotect(*start, 2 * page, prot_rw));
	ASSERT_TRUE(this->space->handle_mm_fault(*start, access_type::write));

	const auto t = this->translate(*start);
	ASSERT_TRUE(t);
	EXPECT_TRUE(t->prot & arch::prot_write);
	EXPECT_TRUE(t->prot & arch::prot_dirty);
}

TYPED_TEST(Mprotect, PfnmapChangesEntries)
{
	auto start = this->space->mmap(this->base, 2 * page, prot_rw, pfnmap_fixed, phys::pfn_t{0x400});
	ASSERT_TRUE(start);
	ASSERT_TRUE(this->space->handle_mm_fault(*start, access_type::write));

	ASSERT_TRUE(this->space->mprotect(*start, 2 * page, user::prot_read));

	const auto t = this->translate(*start);
	ASSERT_TRUE(t);
	EXPECT_EQ(t->pfn, 0x400u);
	EXPECT_FALSE(t->prot & arch::prot_write);
	auto denied = this->space->handle_mm_fault(*start, access_type::write);
	ASSERT_FALSE(denied);
	EXPECT_EQ(denied.error(), errc::access_fault);
	EXPECT_EQ(this->pool.page_count(0x400), 0u) << "mprotect must not reference PFN-mapped frames";
}

TYPED_TEST(Mprotect, RejectsInvalidArguments)
{
	using G = TypeParam;
	const uint64_t addr = this->map_faulted(this->base, 2);
	const auto before = this->translate(addr);

	struct bad_call {
		uint64_t addr;
		uint64_t len;
		unsigned prot;
		errc error;
	};
	const bad_call calls[] = {
		{addr + 1, page, user::prot_read, errc::invalid_argument},
		{addr, page, 0x8, errc::invalid_argument},
		{addr, G::task_size + page, user::prot_read, errc::invalid_argument},
		{G::task_size - page, 2 * page, user::prot_read, errc::invalid_argument},
		{addr - page, 2 * page, user::prot_read, errc::not_found},
		{addr + page, 2 * page, user::prot_read, errc::not_found},
		{addr + 8 * page, page, user::prot_read, errc::not_found},
	};
	for (const bad_call &c : calls) {
		SCOPED_TRACE(testing::Message() << std::hex << c.addr << " + " << c.len << " prot " << c.prot);
		auto r = this->space->mprotect(c.addr, c.len, c.prot);
		ASSERT_FALSE(r);
		EXPECT_EQ(r.error(), c.error);
	}

	EXPECT_TRUE(this->space->mprotect(addr, 0, user::prot_read)) << "a zero length changes nothing";
	EXPECT_EQ(this->space->vmas().size(), 1u) << "a failed mprotect must change no VMA";
	EXPECT_EQ(this->space->vmas()[0].flags, user::vm_read | user::vm_write);
	const auto after = this->translate(addr);
	ASSERT_TRUE(after);
	EXPECT_EQ(after->entry, before->entry) << "a failed mprotect must change no PTE";
}

TYPED_TEST(Mprotect, DestroyAfterSplitReturnsPool)
{
	const uint64_t addr = this->map_faulted(this->base, 8);
	ASSERT_TRUE(this->space->mprotect(addr + 2 * page, 3 * page, user::prot_none));
	ASSERT_TRUE(this->space->mprotect(addr + 3 * page, page, user::prot_read));

	this->space.reset();

	EXPECT_EQ(this->pool.in_use(), this->pool_before_create);
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
}
