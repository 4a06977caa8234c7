// mprotect and fork on huge pmd leaves. A leaf that mprotect's range covers
// whole changes in place. A leaf that crosses an end of the range, or must
// become PROT_NONE, is split first. fork splits the parent's leaves, so each
// frame is shared and copied on its own. Geometries without a pmd level
// skip every test.

#include "geometries.hpp"
#include "lock_mode_env.hpp"

#include <ptl/check/audit.hpp>
#include <ptl/mm/walk.hpp>
#include <ptl/user/user_space.hpp>

#include <gtest/gtest.h>

using namespace ptl;
using arch::level;
using phys::alloc_site;
using user::access_type;

namespace {

constexpr uint64_t page = arch::page_size;
constexpr unsigned prot_rw = user::prot_read | user::prot_write;
constexpr unsigned huge_fixed =
	user::map_private | user::map_anonymous | user::map_fixed_noreplace | user::map_huge;

} // namespace

template <class G>
class HugeForkMprotect : public ::testing::Test {
protected:
	using space_t = user::user_space<G>;
	static constexpr uint64_t block = user::huge_pmd_size<G>();
	static constexpr uint64_t block_pages = user::huge_pmd_pages<G>();

	void SetUp() override
	{
		if (!user::huge_pmd_supported<G>())
			GTEST_SKIP() << G::name << " has no pmd level for huge leaves";
	}

	phys::frame_pool pool{1 << 14};
	const uint64_t pool_before_create = pool.in_use();
	std::unique_ptr<space_t> space = *space_t::create(pool, test::lock_mode_under_test());
	const uint64_t base = (sample_user_addr<G>() + 4 * block) & ~(block - 1);

	// Maps one block at base and faults it in as one huge leaf. Returns the
	// leaf's first frame.
	phys::pfn_t map_huge_block()
	{
		EXPECT_TRUE(space->mmap(base, block, prot_rw, huge_fixed));
		EXPECT_TRUE(space->handle_mm_fault(base, access_type::write));

		const auto t = translate(*space, base);
		EXPECT_TRUE(t);
		if (!t)
			return 0;
		EXPECT_EQ(t->leaf_level, level::pmd) << "the fault did not map a huge leaf";
		return t->pfn;
	}

	static std::optional<mm::translation> translate(const space_t &s, uint64_t addr)
	{
		return mm::translate(s.mm(), addr);
	}

	static bool writable(const space_t &s, uint64_t addr)
	{
		const auto t = translate(s, addr);
		return t && (t->prot & arch::prot_write);
	}

	void expect_audit_ok(std::initializer_list<const mm::mm_struct<G> *> spaces) const
	{
		const auto report = check::audit<G>(spaces);
		EXPECT_TRUE(report.ok()) << report.summary();
	}
};

TYPED_TEST_SUITE(HugeForkMprotect, all_geometries, geometry_names);

TYPED_TEST(HugeForkMprotect, MprotectWholeLeafInPlace)
{
	const phys::pfn_t first = this->map_huge_block();
	const uint64_t tables = this->pool.in_use(alloc_site::pte);

	ASSERT_TRUE(this->space->mprotect(this->base, this->block, user::prot_read));

	const auto t = this->translate(*this->space, this->base + 5 * page);
	ASSERT_TRUE(t);
	EXPECT_EQ(t->leaf_level, level::pmd) << "a leaf the range covers whole stays one leaf";
	EXPECT_EQ(t->pfn, first + 5);
	EXPECT_FALSE(t->prot & arch::prot_write);
	EXPECT_EQ(this->pool.in_use(alloc_site::pte), tables);
	auto denied = this->space->handle_mm_fault(this->base, access_type::write);
	ASSERT_FALSE(denied);
	EXPECT_EQ(denied.error(), errc::access_fault);

	ASSERT_TRUE(this->space->mprotect(this->base, this->block, prot_rw));
	EXPECT_TRUE(this->writable(*this->space, this->base));
	this->expect_audit_ok({&this->space->mm()});
}

TYPED_TEST(HugeForkMprotect, MprotectPartSplitsLeaf)
{
	const phys::pfn_t first = this->map_huge_block();

	ASSERT_TRUE(this->space->mprotect(this->base + 2 * page, 3 * page, user::prot_read));

	for (uint64_t i : {uint64_t{0}, uint64_t{1}, uint64_t{2}, uint64_t{4}, uint64_t{5}, this->block_pages - 1}) {
		SCOPED_TRACE(i);
		const auto t = this->translate(*this->space, this->base + i * page);
		ASSERT_TRUE(t);
		EXPECT_EQ(t->leaf_level, level::pte) << "a leaf crossing the range's ends must be split";
		EXPECT_EQ(t->pfn, first + i) << "the split must keep the frames";
		EXPECT_EQ((t->prot & arch::prot_write) != 0, i < 2 || i >= 5);
	}
	EXPECT_EQ(this->space->vmas().size(), 3u);
	this->expect_audit_ok({&this->space->mm()});
}

TYPED_TEST(HugeForkMprotect, MprotectNoneSplitsAndKeepsFrames)
{
	const phys::pfn_t first = this->map_huge_block();

	ASSERT_TRUE(this->space->mprotect(this->base, this->block, user::prot_none));
	EXPECT_FALSE(this->translate(*this->space, this->base));
	EXPECT_EQ(this->pool.in_use(alloc_site::data), this->block_pages);

	ASSERT_TRUE(this->space->mprotect(this->base, this->block, prot_rw));
	const auto t = this->translate(*this->space, this->base + 7 * page);
	ASSERT_TRUE(t);
	EXPECT_EQ(t->pfn, first + 7);
	EXPECT_TRUE(t->prot & arch::prot_write);

	this->space.reset();
	EXPECT_EQ(this->pool.in_use(), this->pool_before_create);
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
}

TYPED_TEST(HugeForkMprotect, ForkSplitsLeafAndSharesFrames)
{
	const phys::pfn_t first = this->map_huge_block();

	auto child = this->space->fork();
	ASSERT_TRUE(child);

	for (uint64_t i : {uint64_t{0}, uint64_t{9}, this->block_pages - 1}) {
		SCOPED_TRACE(i);
		const uint64_t at = this->base + i * page;
		const auto in_parent = this->translate(*this->space, at);
		const auto in_child = this->translate(**child, at);
		ASSERT_TRUE(in_parent);
		ASSERT_TRUE(in_child);
		EXPECT_EQ(in_parent->leaf_level, level::pte) << "fork must split the parent's leaf";
		EXPECT_EQ(in_parent->pfn, first + i);
		EXPECT_EQ(in_child->pfn, first + i);
		EXPECT_FALSE(in_parent->prot & arch::prot_write);
		EXPECT_FALSE(in_child->prot & arch::prot_write);
		EXPECT_EQ(this->pool.page_count(first + i), 2u);
	}
	EXPECT_EQ((*child)->counters().anon_pages, this->block_pages);

	ASSERT_TRUE((*child)->handle_mm_fault(this->base + 9 * page, access_type::write));
	EXPECT_NE(this->translate(**child, this->base + 9 * page)->pfn, first + 9);
	EXPECT_EQ(this->pool.page_count(first + 9), 1u);
	this->expect_audit_ok({&this->space->mm(), &(*child)->mm()});

	child->reset();
	this->space.reset();
	EXPECT_EQ(this->pool.in_use(), this->pool_before_create);
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
}
