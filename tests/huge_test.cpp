// Huge leaves: pmd leaves for anonymous VMAs created with map_huge, split
// into PTE tables by a partial munmap; a fault that finds a huge leaf where
// it expected a table; pmd and pud leaves for contiguous kernel ranges.
// Every test runs on every geometry (those without a pmd level skip the
// huge cases), and CTest runs the file once per lock mode.

#include "geometries.hpp"
#include "lock_mode_env.hpp"

#include <ptl/check/audit.hpp>
#include <ptl/kernel/kernel_space.hpp>
#include <ptl/mm/walk.hpp>
#include <ptl/user/user_space.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

using namespace ptl;
using arch::level;
using phys::alloc_site;
using user::access_type;

namespace {

constexpr uint64_t page = arch::page_size;
constexpr unsigned prot_rw = user::prot_read | user::prot_write;
constexpr unsigned huge_fixed =
	user::map_private | user::map_anonymous | user::map_fixed_noreplace | user::map_huge;
constexpr unsigned small_fixed = user::map_private | user::map_anonymous | user::map_fixed_noreplace;

} // namespace

template <class G>
class HugeLeaves : public ::testing::Test {
protected:
	static constexpr uint64_t block = user::huge_pmd_size<G>();
	static constexpr uint64_t block_pages = user::huge_pmd_pages<G>();

	void SetUp() override
	{
		if (!user::huge_pmd_supported<G>())
			GTEST_SKIP() << G::name << " has no pmd level for huge leaves";
	}

	phys::frame_pool pool{1 << 14};
	std::unique_ptr<user::user_space<G>> space = *user::user_space<G>::create(pool, test::lock_mode_under_test());
	// An address aligned to a block, with blocks free on both sides.
	const uint64_t base = (sample_user_addr<G>() + 4 * block) & ~(block - 1);

	std::optional<mm::translation> translate(uint64_t addr) const { return mm::translate(space->mm(), addr); }

	void expect_consistent() const
	{
		const auto report = check::audit<G>({&space->mm()});
		EXPECT_TRUE(report.ok()) << report.summary();
		EXPECT_EQ(report.leaves, space->counters().pages_mapped);
		EXPECT_EQ(pool.in_use(alloc_site::data), space->counters().anon_pages);
	}
};

TYPED_TEST_SUITE(HugeLeaves, all_geometries, geometry_names);

// A fault inside a block that a map_huge VMA wholly contains maps the block
// with one pmd leaf of contiguous zeroed frames; a fault in the ragged end
// gets a base page.
TYPED_TEST(HugeLeaves, FaultMapsWholeBlockWithOneLeaf)
{
	const uint64_t block = this->block;
	const uint64_t start = this->base - 3 * page;
	ASSERT_TRUE(this->space->mmap(start, block + 3 * page, prot_rw, huge_fixed));

	ASSERT_TRUE(this->space->handle_mm_fault(this->base + 5 * page, access_type::write));
	const auto leaf = this->translate(this->base);
	ASSERT_TRUE(leaf);
	EXPECT_EQ(leaf->leaf_level, level::pmd);
	EXPECT_EQ(leaf->pfn % this->block_pages, 0u) << "the frames are aligned to the block";
	for (uint64_t i : {uint64_t{1}, this->block_pages / 2, this->block_pages - 1})
		EXPECT_EQ(this->translate(this->base + i * page)->pfn, leaf->pfn + i);
	EXPECT_EQ(this->pool.in_use(alloc_site::pte), 0u) << "no PTE table under a huge leaf";
	EXPECT_EQ(this->space->counters().anon_pages, this->block_pages);

	ASSERT_TRUE(this->space->handle_mm_fault(start, access_type::write));
	EXPECT_EQ(this->translate(start)->leaf_level, level::pte) << "the ragged end is not a whole block";
	this->expect_consistent();

	ASSERT_TRUE(this->space->munmap(start, block + 3 * page));
	EXPECT_EQ(this->pool.in_use(), 1u);
}

// Unmapping one page inside a huge leaf splits it into a PTE table of the
// same frames with the same protection, and unmaps only that page.
TYPED_TEST(HugeLeaves, PartialUnmapSplitsLeaf)
{
	ASSERT_TRUE(this->space->mmap(this->base, this->block, prot_rw, huge_fixed));
	ASSERT_TRUE(this->space->handle_mm_fault(this->base, access_type::write));
	const auto leaf = *this->translate(this->base);
	ASSERT_EQ(leaf.leaf_level, level::pmd);

	const uint64_t hole = this->base + 7 * page;
	ASSERT_TRUE(this->space->munmap(hole, page));

	EXPECT_FALSE(this->translate(hole));
	for (uint64_t i = 0; i < this->block_pages; i++) {
		if (i == 7)
			continue;
		const auto t = this->translate(this->base + i * page);
		ASSERT_TRUE(t) << "page " << i;
		EXPECT_EQ(t->leaf_level, level::pte);
		EXPECT_EQ(t->pfn, leaf.pfn + i);
		EXPECT_EQ(t->prot & arch::prot_write, leaf.prot & arch::prot_write);
	}
	EXPECT_EQ(this->pool.in_use(alloc_site::pte), 1u);
	EXPECT_EQ(this->pool.in_use(alloc_site::data), this->block_pages - 1) << "only the hole's frame is freed";
	EXPECT_EQ(this->space->vmas().size(), 2u);
	this->expect_consistent();
}

// munmap of whole blocks clears their leaves and frees every frame.
TYPED_TEST(HugeLeaves, WholeUnmapFreesEveryFrame)
{
	ASSERT_TRUE(this->space->mmap(this->base, 2 * this->block, prot_rw, huge_fixed));
	ASSERT_TRUE(this->space->handle_mm_fault(this->base, access_type::read));
	ASSERT_TRUE(this->space->handle_mm_fault(this->base + this->block, access_type::write));
	EXPECT_EQ(this->pool.in_use(alloc_site::data), 2 * this->block_pages);

	ASSERT_TRUE(this->space->munmap(this->base, 2 * this->block));
	EXPECT_EQ(this->pool.in_use(), 1u);
	EXPECT_EQ(this->space->counters().pages_mapped, 0u);
	this->expect_consistent();
}

// A fault that populated a PTE table for a block, then found that a racing
// fault had mapped the block with a huge leaf, retries on the leaf instead
// of writing a PTE through it. The broken variant without that check
// writes into the huge page's first frame.
TYPED_TEST(HugeLeaves, FaultThatFindsHugeLeafRetries)
{
#if !defined(PTL_TEST_HOOKS)
	GTEST_SKIP() << "needs a build with PTL_TEST_HOOKS";
#else
	using G = TypeParam;
	// A small VMA in the same pmd table, so the tables above exist.
	ASSERT_TRUE(this->space->mmap(this->base - this->block, page, prot_rw, small_fixed));
	ASSERT_TRUE(this->space->handle_mm_fault(this->base - this->block, access_type::write));
	ASSERT_TRUE(this->space->mmap(this->base, this->block, prot_rw, huge_fixed));

	std::atomic<bool> small_paused{false};
	std::atomic<bool> small_may_go{false};
	const auto main_thread = std::this_thread::get_id();
	hooks::scoped_handler pause([&](const hooks::event &e) {
		if (std::this_thread::get_id() == main_thread || e.where != hooks::point::populate_after_alloc ||
		    e.level != arch::level_index(level::pte))
			return;
		small_paused.store(true);
		while (!small_may_go.load())
			std::this_thread::yield();
	});

	// The small fault's contiguous allocation fails, so it takes the
	// PTE path and pauses with its new table not yet published.
	this->pool.fail_nth(1);
	result<void> small_fault = fail(errc::busy);
	std::thread small([&] { small_fault = this->space->handle_mm_fault(this->base + page, access_type::write); });
	while (!small_paused.load())
		std::this_thread::yield();

	ASSERT_TRUE(this->space->handle_mm_fault(this->base, access_type::read));
	small_may_go.store(true);
	small.join();

	ASSERT_TRUE(small_fault);
	const auto leaf = this->translate(this->base + page);
	ASSERT_TRUE(leaf);
	EXPECT_EQ(leaf->leaf_level, level::pmd);
	EXPECT_EQ(this->pool.in_use(alloc_site::pte), 1u) << "only the small VMA's table; the loser's is freed";
	EXPECT_EQ(this->space->counters().anon_pages, 1 + this->block_pages);

	const auto *bytes = static_cast<const unsigned char *>(this->pool.frame_address(leaf->pfn - 1));
	EXPECT_TRUE(std::all_of(bytes, bytes + phys::frame_size, [](unsigned char b) { return b == 0; }))
		<< "a PTE was written into the huge page";
	this->expect_consistent();
	(void)sizeof(G);
#endif
}

// Many threads fault random pages of a map_huge VMA while the pool can
// supply only some blocks contiguously, so huge and small faults race for
// the same pmd entries. Every page ends up mapped once, and the tree, the
// counters and the pool agree.
TYPED_TEST(HugeLeaves, HugeAndSmallFaultsRace)
{
	using G = TypeParam;
	constexpr unsigned nr_threads = 4;
	const uint64_t blocks = 6;
	phys::frame_pool pool(3 * this->block_pages + 512);
	auto space = *user::user_space<G>::create(pool, test::lock_mode_under_test());
	ASSERT_TRUE(space->mmap(this->base, blocks * this->block, prot_rw, huge_fixed));

	std::atomic<unsigned> errors{0};
	std::vector<std::thread> threads;
	for (unsigned t = 0; t < nr_threads; t++) {
		threads.emplace_back([&, t] {
			for (uint64_t b = 0; b < blocks; b++) {
				const uint64_t addr = this->base + b * this->block + ((t * 37 + b * 11) % 64) * page;
				const auto r = space->handle_mm_fault(addr, access_type::write);
				if (!r && r.error() != errc::no_memory)
					errors.fetch_add(1);
			}
		});
	}
	for (auto &t : threads)
		t.join();

	EXPECT_EQ(errors.load(), 0u);
	const auto report = check::audit<G>({&space->mm()});
	EXPECT_TRUE(report.ok()) << report.summary();
	EXPECT_EQ(report.leaves, space->counters().pages_mapped);
	EXPECT_EQ(pool.in_use(alloc_site::data), space->counters().anon_pages);

	space.reset();
	EXPECT_EQ(pool.in_use(), 0u);
	EXPECT_EQ(pool.stats().double_frees, 0u);
}

template <class G>
class KernelHugeLeaves : public ::testing::Test {};

TYPED_TEST_SUITE(KernelHugeLeaves, all_geometries, geometry_names);

// A contiguous, aligned run of frames is mapped with the largest leaves the
// geometry has; the unaligned ends get PTEs; unmapping clears them all and
// frees the tables.
TYPED_TEST(KernelHugeLeaves, ContiguousRangeUsesHugeLeaves)
{
	using G = TypeParam;
	if (!user::huge_pmd_supported<G>())
		GTEST_SKIP() << G::name << " has no pmd level for huge leaves";

	phys::frame_pool pool(256);
	auto ks = *kernel::kernel_space<G>::create(pool, test::lock_mode_under_test());
	const uint64_t pmd_frames = arch::entry_span<G>(level::pmd) / page;
	const phys::pfn_t first = 4 * pmd_frames;
	const uint64_t nr_pages = 3 * pmd_frames + 5;

	auto addr = ks->vmap_pfn_range(first, nr_pages);
	ASSERT_TRUE(addr);
	EXPECT_EQ(*addr % arch::entry_span<G>(level::pmd), 0u) << "the area is aligned for huge leaves";

	for (uint64_t i : {uint64_t{0}, pmd_frames + 1, 3 * pmd_frames - 1, 3 * pmd_frames + 4}) {
		const auto t = mm::translate(ks->init_mm(), *addr + i * page);
		ASSERT_TRUE(t) << "page " << i;
		EXPECT_EQ(t->pfn, first + i);
		EXPECT_EQ(t->leaf_level, i < 3 * pmd_frames ? level::pmd : level::pte) << "page " << i;
	}
	EXPECT_EQ(ks->counters().pages_mapped, nr_pages);
	EXPECT_EQ(pool.in_use(alloc_site::pte), 1u) << "only the ragged end has a PTE table";
	auto report = check::audit<G>({&ks->init_mm()});
	EXPECT_TRUE(report.ok()) << report.summary();
	EXPECT_EQ(report.leaves, nr_pages);

	const uint64_t tables_before = pool.in_use();
	ASSERT_TRUE(ks->vunmap(*addr));
	EXPECT_FALSE(mm::translate(ks->init_mm(), *addr));
	EXPECT_EQ(ks->counters().pages_mapped, 0u);
	EXPECT_LT(pool.in_use(), tables_before);
	EXPECT_EQ(pool.in_use(alloc_site::pte), 0u);
	report = check::audit<G>({&ks->init_mm()});
	EXPECT_TRUE(report.ok()) << report.summary();
}

// Where the geometry has a pud level, an aligned gigantic run is one pud
// leaf. ioremap of an aligned physical range takes the same path.
TYPED_TEST(KernelHugeLeaves, IoremapUsesPudLeafWhereAligned)
{
	using G = TypeParam;
	if (arch::is_folded<G>(level::pud))
		GTEST_SKIP() << G::name << " has no pud level for huge leaves";

	phys::frame_pool pool(64);
	auto ks = *kernel::kernel_space<G>::create(pool, test::lock_mode_under_test());
	const uint64_t pud_span = arch::entry_span<G>(level::pud);

	auto addr = ks->ioremap(8 * pud_span, pud_span);
	ASSERT_TRUE(addr);
	const auto t = mm::translate(ks->init_mm(), *addr + pud_span / 2);
	ASSERT_TRUE(t);
	EXPECT_EQ(t->leaf_level, level::pud);
	EXPECT_EQ(t->pfn, (8 * pud_span + pud_span / 2) / page);
	EXPECT_NE(t->prot & arch::prot_pcd, 0u) << "ioremap maps uncached";
	EXPECT_EQ(pool.in_use(alloc_site::pmd), 0u);

	ASSERT_TRUE(ks->iounmap(*addr));
	EXPECT_FALSE(mm::translate(ks->init_mm(), *addr));
	const auto report = check::audit<G>({&ks->init_mm()});
	EXPECT_TRUE(report.ok()) << report.summary();
	EXPECT_EQ(report.leaves, 0u);
}
