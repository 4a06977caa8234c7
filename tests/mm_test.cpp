// Address space: populate, translate, range walk, dump and teardown, on
// every geometry.

#include "geometries.hpp"
#include "lock_mode_env.hpp"

#include <ptl/check/audit.hpp>
#include <ptl/mm/populate.hpp>
#include <ptl/mm/pte_lock.hpp>
#include <ptl/mm/walk.hpp>

#include <gtest/gtest.h>

#include <sstream>

using namespace ptl;
using namespace ptl::mm;
using ptl::arch::level;

template <class G>
class MmTest : public ::testing::Test {
protected:
	using format = typename G::format;

	phys::frame_pool pool{4096};
	std::unique_ptr<mm_struct<G>> mm = *mm_struct<G>::create(pool, mm_kind::user, test::lock_mode_under_test());

	// Installs one PTE the way a fault does: populate, lock, set, unlock.
	void map_page(uint64_t addr, pfn_t pfn, uint64_t prot = arch::prot_present | arch::prot_write | arch::prot_user)
	{
		walk_guard<G> walk(*mm);
		auto pmd = pmd_alloc_walk(*mm, addr);
		ASSERT_TRUE(pmd);
		pte_map<G> map;
		errc error{};
		if (!pte_alloc_map_lock(*mm, *pmd, addr, map, error)) {
			ADD_FAILURE() << "pte_alloc_map_lock failed: " << errc_name(error);
			return;
		}
		EXPECT_TRUE(pte_install(*mm, map, 0, format::make(pfn, prot)));
		pte_unmap_unlock(map);
	}
};

TYPED_TEST_SUITE(MmTest, all_geometries, geometry_names);

TYPED_TEST(MmTest, NewSpaceHasOnlyPgd)
{
	const auto c = this->mm->counters();
	EXPECT_EQ(c.nr_tables[0], 1u);
	EXPECT_EQ(this->mm->pgtables_bytes(), 0u);
	EXPECT_EQ(this->pool.in_use(), 1u);
	EXPECT_FALSE(translate(*this->mm, sample_user_addr<TypeParam>()));
}

TYPED_TEST(MmTest, FirstPagePopulatesEachUnfoldedLevel)
{
	using G = TypeParam;
	const uint64_t addr = sample_user_addr<G>();
	this->map_page(addr, 0x1234);

	const auto c = this->mm->counters();
	uint64_t expected_bytes = 0;
	for (level l : {level::p4d, level::pud, level::pmd, level::pte}) {
		const uint64_t expected = arch::is_folded<G>(l) ? 0 : 1;
		EXPECT_EQ(c.nr_tables[arch::level_index(l)], expected) << arch::level_name(l);
		if (l != level::p4d)
			expected_bytes += expected * 4096;
	}
	EXPECT_EQ(this->mm->pgtables_bytes(), expected_bytes);

	auto t = translate(*this->mm, addr + 123);
	ASSERT_TRUE(t);
	EXPECT_EQ(t->pfn, 0x1234u);
	EXPECT_EQ(t->leaf_level, level::pte);
	EXPECT_TRUE(t->prot & arch::prot_write);
}

TYPED_TEST(MmTest, NeighbourPagesShareTables)
{
	using G = TypeParam;
	const uint64_t addr = sample_user_addr<G>();
	this->map_page(addr, 10);
	const auto before = this->pool.in_use();
	this->map_page(addr + arch::page_size, 11);
	EXPECT_EQ(this->pool.in_use(), before);
	EXPECT_EQ(translate(*this->mm, addr + arch::page_size)->pfn, 11u);
}

TYPED_TEST(MmTest, WalkRangeVisitsLeavesInOrder)
{
	using G = TypeParam;
	const uint64_t base = sample_user_addr<G>();
	// Straddle a pmd boundary so the walk crosses two PTE tables.
	const uint64_t start = base + arch::entry_span<G>(level::pmd) - 2 * arch::page_size;
	for (uint64_t i = 0; i < 4; i++)
		this->map_page(start + i * arch::page_size, 100 + i);

	std::vector<std::pair<uint64_t, uint64_t>> seen;
	walk_range(*this->mm, start - arch::page_size, start + 8 * arch::page_size,
		   [&](uint64_t a, auto e, level) { seen.emplace_back(a, TypeParam::format::pfn(e)); });

	ASSERT_EQ(seen.size(), 4u);
	for (uint64_t i = 0; i < 4; i++) {
		EXPECT_EQ(seen[i].first, start + i * arch::page_size);
		EXPECT_EQ(seen[i].second, 100 + i);
	}
	EXPECT_EQ(this->mm->counters().nr_tables[arch::level_index(level::pte)], 2u);
}

TYPED_TEST(MmTest, DumpShowsRunsAndTables)
{
	using G = TypeParam;
	const uint64_t addr = sample_user_addr<G>();
	for (uint64_t i = 0; i < 3; i++)
		this->map_page(addr + i * arch::page_size, 0x50 + i);
	this->map_page(addr + 10 * arch::page_size, 0x90, arch::prot_present | arch::prot_user);

	std::ostringstream out;
	dump(*this->mm, out);
	const std::string text = out.str();

	EXPECT_NE(text.find("pte 1"), std::string::npos) << text;
	EXPECT_NE(text.find("12 KiB  pfn 0x50  rwu"), std::string::npos) << text;
	EXPECT_NE(text.find("4 KiB  pfn 0x90  r-u"), std::string::npos) << text;
}

TYPED_TEST(MmTest, AuditAgreesAfterMapping)
{
	using G = TypeParam;
	for (uint64_t i = 0; i < 600; i++)
		this->map_page(sample_user_addr<G>() + i * 7 * arch::page_size, i);

	const auto report = check::audit<G>({this->mm.get()});
	EXPECT_TRUE(report.ok()) << report.summary();
	EXPECT_EQ(report.leaves, 600u);
}

TYPED_TEST(MmTest, AuditReportsLeakedTable)
{
	using G = TypeParam;
	this->map_page(sample_user_addr<G>(), 1);
	ASSERT_TRUE(this->pool.alloc(phys::alloc_site::pte));

	const auto report = check::audit<G>({this->mm.get()});
	EXPECT_FALSE(report.ok());
	EXPECT_NE(report.summary().find("leaked"), std::string::npos) << report.summary();
}

TYPED_TEST(MmTest, TeardownFreesEveryTable)
{
	using G = TypeParam;
	for (uint64_t i = 0; i < 100; i++)
		this->map_page(sample_user_addr<G>() + i * arch::entry_span<G>(level::pmd), i);
	EXPECT_GT(this->pool.in_use(), 100u);

	this->mm.reset();
	EXPECT_EQ(this->pool.in_use(), 0u);
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
}

TYPED_TEST(MmTest, PopulateFailureLeavesEntryEmpty)
{
	using G = TypeParam;
	const uint64_t addr = sample_user_addr<G>();
	typename mm_struct<G>::slot_t *pmd = nullptr;
	{
		walk_guard<G> walk(*this->mm);
		auto r = pmd_alloc_walk(*this->mm, addr);
		ASSERT_TRUE(r);
		pmd = *r;
	}
	const auto before = this->pool.in_use();

	this->pool.fail_site(phys::alloc_site::pte);
	{
		walk_guard<G> walk(*this->mm);
		pte_map<G> map;
		errc error{};
		ASSERT_FALSE(pte_alloc_map_lock(*this->mm, pmd, addr, map, error));
		EXPECT_EQ(error, errc::no_memory);
	}
	EXPECT_FALSE(this->mm->page_table_lock.is_locked());
	EXPECT_EQ(this->pool.in_use(), before);
	EXPECT_EQ(pmd->load(), 0u);

	this->pool.clear_faults();
	walk_guard<G> walk(*this->mm);
	pte_map<G> retry;
	errc error{};
	if (!pte_alloc_map_lock(*this->mm, pmd, addr, retry, error)) {
		ADD_FAILURE() << "retry failed: " << errc_name(error);
		return;
	}
	pte_unmap_unlock(retry);
}

TEST(PteAllocKernel, FindsKernelSpaceFromEntry)
{
	using G = arch::x86_64;
	phys::frame_pool pool(64);
	auto kernel = *kernel_mm<G>::create(pool);
	const uint64_t addr = G::vmalloc_start + 0x5000;

	auto pmd = pmd_alloc_walk(*kernel, addr);
	ASSERT_TRUE(pmd);
	auto pte = pte_alloc_kernel(kernel_pmd<G>(*kernel, *pmd), addr);
	ASSERT_TRUE(pte);
	EXPECT_EQ(kernel->counters().nr_tables[arch::level_index(level::pte)], 1u);
	(*pte)->store(G::format::make(77, arch::prot_present), std::memory_order_release);
	EXPECT_EQ(translate(*kernel, addr)->pfn, 77u);
	EXPECT_FALSE(kernel->page_table_lock.is_locked());
	// Kernel tables carry no user bit.
	EXPECT_EQ(G::format::prot((*pmd)->load()) & arch::prot_user, 0u);
}

// The entry that populate writes into a PAE pgd (the PDPT) carries only the
// present bit and the address: R/W, U/S, A and D are reserved there.
TEST(PaePopulate, PdptEntryHasOnlyPresentBit)
{
	using G = arch::i386_pae;
	phys::frame_pool pool(64);
	auto mm = *mm_struct<G>::create(pool, mm_kind::user);
	const uint64_t addr = 0x4020'0000;

	auto pmd = pmd_alloc_walk(*mm, addr);
	ASSERT_TRUE(pmd);
	ASSERT_TRUE(pte_alloc(*mm, *pmd, addr));

	const auto pgd_entry = mm->pgd_offset(addr)->load();
	EXPECT_EQ(pgd_entry & 0xfff, uint64_t{arch::prot_present});
	EXPECT_EQ(pgd_entry >> 63, 0u) << "NX is reserved in a PDPT entry";
	EXPECT_EQ(G::format::pfn(pgd_entry), pool.pfn_of(*pmd));

	const auto pmd_entry = (*pmd)->load();
	EXPECT_EQ(pmd_entry & 0xfff, G::format::user_table_prot) << "a pmd entry is an ordinary table entry";
}

// Populate writes arm64 table descriptors: valid, bit 1 set, and the
// hierarchical execute-never bit for the address space's side.
TEST(Arm64Populate, TableDescriptorsAtEveryLevel)
{
	using G = arch::arm64_4k;
	using f = G::format;
	phys::frame_pool pool(64);
	auto user = *mm_struct<G>::create(pool, mm_kind::user);
	auto kernel = *kernel_mm<G>::create(pool);

	for (auto *mm : {user.get(), static_cast<mm_struct<G> *>(kernel.get())}) {
		const bool is_user = mm->kind() == mm_kind::user;
		const uint64_t addr = is_user ? sample_user_addr<G>() : G::vmalloc_start;
		SCOPED_TRACE(is_user ? "user" : "kernel");

		auto pmd = pmd_alloc_walk(*mm, addr);
		ASSERT_TRUE(pmd);
		ASSERT_TRUE(pte_alloc(*mm, *pmd, addr));

		const uint64_t table_xn = is_user ? f::table_pxn : f::table_uxn;
		mm_struct<G>::slot_t *pud = entry_offset(*mm, mm->pgd_offset(addr), level::pud, addr);
		for (const mm_struct<G>::slot_t *entry : {mm->pgd_offset(addr), pud, *pmd}) {
			const auto e = entry->load();
			EXPECT_EQ(e & ~f::output_mask, f::desc_valid | f::desc_table_or_page | table_xn);
			EXPECT_FALSE(f::huge(e));
		}
	}
}
