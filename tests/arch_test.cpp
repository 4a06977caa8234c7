// Index arithmetic and folding of each geometry.

#include <ptl/arch/profiles.hpp>
#include <ptl/arch/registry.hpp>

#include <gtest/gtest.h>

using namespace ptl::arch;

TEST(ArchX86_64, IndexesEachLevel)
{
	// 0x00007f12_3456_7000: pgd 254, pud 72, pmd 418, pte 359.
	const uint64_t addr = 0x00007f1234567000;
	EXPECT_EQ(table_index<x86_64>(level::pgd, addr), (addr >> 39) & 511);
	EXPECT_EQ(table_index<x86_64>(level::pgd, addr), 254u);
	EXPECT_EQ(table_index<x86_64>(level::pud, addr), 72u);
	EXPECT_EQ(table_index<x86_64>(level::pmd, addr), 418u);
	EXPECT_EQ(table_index<x86_64>(level::pte, addr), 359u);
}

TEST(ArchX86_64, FoldsP4dOnly)
{
	EXPECT_FALSE(is_folded<x86_64>(level::pgd));
	EXPECT_TRUE(is_folded<x86_64>(level::p4d));
	EXPECT_FALSE(is_folded<x86_64>(level::pud));
	EXPECT_FALSE(is_folded<x86_64>(level::pmd));
	EXPECT_EQ(table_index<x86_64>(level::p4d, 0x00007f1234567000), 0u);
	EXPECT_EQ(next_table_level<x86_64>(level::pgd), level::pud);
	EXPECT_EQ(next_table_level<x86_64>(level::pud), level::pmd);
	EXPECT_EQ(va_bits<x86_64>(), 48u);
}

TEST(ArchX86_64, SpansAndTableSize)
{
	EXPECT_EQ(entry_span<x86_64>(level::pgd), uint64_t{1} << 39);
	EXPECT_EQ(entry_span<x86_64>(level::pud), uint64_t{1} << 30);
	EXPECT_EQ(entry_span<x86_64>(level::pmd), uint64_t{2} << 20);
	EXPECT_EQ(entry_span<x86_64>(level::pte), 4096u);
	for (level l : {level::pgd, level::pud, level::pmd, level::pte})
		EXPECT_EQ(table_bytes<x86_64>(l), 4096u) << level_name(l);
}

TEST(ArchX86_64, EntryEndStopsAtBoundaryOrEnd)
{
	EXPECT_EQ(entry_end<x86_64>(level::pmd, 0x1000, 0x10000000), 0x200000u);
	EXPECT_EQ(entry_end<x86_64>(level::pmd, 0x1000, 0x5000), 0x5000u);
	// An end of 0 stands for 2^64 and must not wrap.
	EXPECT_EQ(entry_end<x86_64>(level::pgd, 0xffffff8000000000, 0), 0u);
	EXPECT_EQ(entry_end<x86_64>(level::pte, 0xfffffffffffff000, 0), 0u);
}

TEST(ArchX86_64, CanonicalHalves)
{
	EXPECT_TRUE(is_canonical<x86_64>(0x00007fffffffffff));
	EXPECT_FALSE(is_canonical<x86_64>(0x0000800000000000));
	EXPECT_FALSE(is_canonical<x86_64>(0xffff7fffffffffff));
	EXPECT_TRUE(is_canonical<x86_64>(0xffff800000000000));
	EXPECT_EQ(nr_address_halves<x86_64>(), 2u);
	EXPECT_EQ(address_halves<x86_64>()[1].first, 0xffff800000000000u);
}

TEST(ArchLa57, NothingFolded)
{
	const uint64_t addr = 0x00ab'cdef'1234'5000;
	for (level l : {level::pgd, level::p4d, level::pud, level::pmd, level::pte})
		EXPECT_FALSE(is_folded<x86_64_la57>(l)) << level_name(l);
	EXPECT_EQ(va_bits<x86_64_la57>(), 57u);
	EXPECT_EQ(table_index<x86_64_la57>(level::pgd, addr), (addr >> 48) & 511);
	EXPECT_EQ(table_index<x86_64_la57>(level::p4d, addr), (addr >> 39) & 511);
	EXPECT_EQ(next_table_level<x86_64_la57>(level::pgd), level::p4d);
	EXPECT_TRUE(is_canonical<x86_64_la57>(0xff00000000000000));
	EXPECT_FALSE(is_canonical<x86_64_la57>(0x0100000000000000));
}

TEST(ArchI386, TwoLevelsWithThreeFolded)
{
	const uint64_t addr = 0xbfff'e123;
	EXPECT_TRUE(is_folded<i386>(level::p4d));
	EXPECT_TRUE(is_folded<i386>(level::pud));
	EXPECT_TRUE(is_folded<i386>(level::pmd));
	EXPECT_EQ(table_index<i386>(level::pgd, addr), 0x2ffu);
	EXPECT_EQ(table_index<i386>(level::pud, addr), 0u);
	EXPECT_EQ(table_index<i386>(level::pmd, addr), 0u);
	EXPECT_EQ(table_index<i386>(level::pte, addr), 0x3feu);
	EXPECT_EQ(ptrs_per_table<i386>(level::pgd), 1024u);
	EXPECT_EQ(table_bytes<i386>(level::pte), 4096u);
	EXPECT_EQ(next_table_level<i386>(level::pgd), level::pte);
	// A pmd entry spans what a pgd entry spans: 4 MiB.
	EXPECT_EQ(entry_span<i386>(level::pmd), uint64_t{4} << 20);
	EXPECT_EQ(entry_end<i386>(level::pmd, 0x00001000, 0xffffffff), 0x400000u);
	EXPECT_EQ(va_bits<i386>(), 32u);
	EXPECT_EQ(nr_address_halves<i386>(), 1u);
}

TEST(PteFormat, X86_64EncodesHardwareBits)
{
	using f = x86_64::format;
	const auto e = f::make(0x12345, prot_present | prot_write | prot_user | prot_nx);
	EXPECT_EQ(e, 0x8000000012345007ull);
	EXPECT_EQ(f::pfn(e), 0x12345u);
	EXPECT_TRUE(f::present(e));
	EXPECT_FALSE(f::huge(e));
	EXPECT_EQ(f::prot(e), uint64_t{prot_present | prot_write | prot_user | prot_nx});
	// PFNs wider than 40 bits are cut to the 52-bit physical address width.
	EXPECT_EQ(f::pfn(f::make(uint64_t{1} << 40, prot_present)), 0u);
	EXPECT_EQ(f::max_pfn, (uint64_t{1} << 40) - 1);
}

TEST(PteFormat, I386HasNoNx)
{
	using f = i386::format;
	const auto e = f::make(0xabcde, prot_present | prot_write | prot_nx);
	static_assert(sizeof(e) == 4);
	EXPECT_EQ(e, 0xabcde003u);
	EXPECT_EQ(f::prot(e) & prot_nx, 0u);
	EXPECT_EQ(f::max_pfn, 0xfffffu);
}

TEST(PteFormat, X86TableEntryIsALeafEncoding)
{
	using f = x86_64::format;
	for (level l : {level::pgd, level::pud, level::pmd})
		EXPECT_EQ(f::make_table(l, 0x777, f::user_table_prot), f::make(0x777, f::user_table_prot)) << level_name(l);
	EXPECT_EQ(f::flag_bits(prot_accessed | prot_dirty | prot_write), uint64_t{prot_accessed | prot_dirty});
}

TEST(ArchI386Pae, ThreeLevelsWithFourEntryPgd)
{
	// 0xbfff'e123: pgd 2 (bits 31-30), pmd 0x1ff (bits 29-21), pte 0x1fe.
	const uint64_t addr = 0xbfff'e123;
	EXPECT_FALSE(is_folded<i386_pae>(level::pgd));
	EXPECT_TRUE(is_folded<i386_pae>(level::p4d));
	EXPECT_TRUE(is_folded<i386_pae>(level::pud));
	EXPECT_FALSE(is_folded<i386_pae>(level::pmd));
	EXPECT_EQ(ptrs_per_table<i386_pae>(level::pgd), 4u);
	EXPECT_EQ(ptrs_per_table<i386_pae>(level::pmd), 512u);
	EXPECT_EQ(ptrs_per_table<i386_pae>(level::pte), 512u);
	EXPECT_EQ(table_bytes<i386_pae>(level::pgd), 32u);
	EXPECT_EQ(table_bytes<i386_pae>(level::pmd), 4096u);
	EXPECT_EQ(table_index<i386_pae>(level::pgd, addr), 2u);
	EXPECT_EQ(table_index<i386_pae>(level::pud, addr), 0u);
	EXPECT_EQ(table_index<i386_pae>(level::pmd, addr), 0x1ffu);
	EXPECT_EQ(table_index<i386_pae>(level::pte, addr), 0x1feu);
	EXPECT_EQ(table_index<i386_pae>(level::pgd, 0xffff'ffff), 3u);
	EXPECT_EQ(next_table_level<i386_pae>(level::pgd), level::pmd);
	EXPECT_EQ(parent_table_level<i386_pae>(level::pmd), level::pgd);
	EXPECT_EQ(parent_table_level<i386_pae>(level::pte), level::pmd);
	EXPECT_EQ(entry_span<i386_pae>(level::pgd), uint64_t{1} << 30);
	EXPECT_EQ(entry_span<i386_pae>(level::pmd), uint64_t{2} << 20);
	EXPECT_EQ(va_bits<i386_pae>(), 32u);
	EXPECT_EQ(nr_address_halves<i386_pae>(), 1u);
	EXPECT_TRUE(is_canonical<i386_pae>(0xffff'ffff));
	EXPECT_FALSE(is_canonical<i386_pae>(0x1'0000'0000));
}

TEST(PteFormat, I386PaeHasNxAndWideFrames)
{
	using f = i386_pae::format;
	const auto e = f::make(0x12'3456'789a, prot_present | prot_write | prot_user | prot_nx);
	static_assert(sizeof(e) == 8);
	EXPECT_EQ(e, 0x8001'2345'6789'a007ull);
	EXPECT_EQ(f::pfn(e), 0x12'3456'789au);
	EXPECT_EQ(f::prot(e), uint64_t{prot_present | prot_write | prot_user | prot_nx});
	EXPECT_EQ(f::max_pfn, (uint64_t{1} << 40) - 1);
}

TEST(PteFormat, I386PaePdptEntryRestricted)
{
	using f = i386_pae::format;
	const uint64_t every_flag = 0x1ff | uint64_t{prot_nx};

	const auto pdpt = f::make_table(level::pgd, 0x4321, every_flag);
	EXPECT_EQ(pdpt, 0x4321019u) << "only P, PWT and PCD survive";
	EXPECT_EQ(f::make_table(level::pgd, 0x4321, f::user_table_prot), 0x4321001u);
	EXPECT_EQ(f::make_table(level::pgd, 0x4321, f::kernel_table_prot), 0x4321001u);
	EXPECT_TRUE(f::present(pdpt));
	EXPECT_FALSE(f::huge(pdpt));
	EXPECT_EQ(f::pfn(pdpt), 0x4321u);

	// pmd entries are ordinary x86 table entries.
	EXPECT_EQ(f::make_table(level::pmd, 0x4321, f::user_table_prot), 0x4321067u);
	EXPECT_EQ(make_table_entry<i386_pae>(level::pmd, 0x4321, f::user_table_prot), 0x4321001u);
	EXPECT_EQ(make_table_entry<i386_pae>(level::pte, 0x4321, f::user_table_prot), 0x4321067u);
}

TEST(ArchArm64_4k, FourLevelsWithP4dFolded)
{
	// 0x0000'7f12'3456'7000: level 0 254, level 1 72, level 2 418, level 3 359.
	const uint64_t addr = 0x0000'7f12'3456'7000;
	EXPECT_FALSE(is_folded<arm64_4k>(level::pgd));
	EXPECT_TRUE(is_folded<arm64_4k>(level::p4d));
	EXPECT_FALSE(is_folded<arm64_4k>(level::pud));
	EXPECT_FALSE(is_folded<arm64_4k>(level::pmd));
	EXPECT_EQ(table_index<arm64_4k>(level::pgd, addr), 254u);
	EXPECT_EQ(table_index<arm64_4k>(level::pud, addr), 72u);
	EXPECT_EQ(table_index<arm64_4k>(level::pmd, addr), 418u);
	EXPECT_EQ(table_index<arm64_4k>(level::pte, addr), 359u);
	EXPECT_EQ(table_index<arm64_4k>(level::pgd, 0xffff'8000'0000'0000), 256u);
	for (level l : {level::pgd, level::pud, level::pmd, level::pte})
		EXPECT_EQ(table_bytes<arm64_4k>(l), 4096u) << level_name(l);
	EXPECT_EQ(next_table_level<arm64_4k>(level::pgd), level::pud);
	EXPECT_EQ(parent_table_level<arm64_4k>(level::pud), level::pgd);
	EXPECT_EQ(va_bits<arm64_4k>(), 48u);
}

TEST(ArchArm64_4k, CanonicalHalvesSplitAtBit47)
{
	EXPECT_TRUE(is_canonical<arm64_4k>(0x0000'7fff'ffff'ffff));
	EXPECT_FALSE(is_canonical<arm64_4k>(0x0000'8000'0000'0000));
	EXPECT_FALSE(is_canonical<arm64_4k>(0xffff'7fff'ffff'ffff));
	EXPECT_TRUE(is_canonical<arm64_4k>(0xffff'8000'0000'0000));
	EXPECT_EQ(nr_address_halves<arm64_4k>(), 2u);
	EXPECT_LE(arm64_4k::task_size, address_halves<arm64_4k>()[0].second);
	EXPECT_TRUE(is_canonical<arm64_4k>(arm64_4k::vmalloc_start));
	EXPECT_TRUE(is_canonical<arm64_4k>(arm64_4k::vmalloc_end - 1));
}

TEST(PteFormat, Arm64EncodesDescriptorBits)
{
	using f = arm64_4k::format;
	const auto e = f::make(0x12345, prot_present | prot_write | prot_user | prot_accessed | prot_nx);
	// valid, page, AP[1] (EL0), SH inner, AF, nG, PXN and UXN; AP[2] clear.
	EXPECT_EQ(e, 0x0060'0000'1234'5f43ull);
	EXPECT_EQ(f::pfn(e), 0x12345u);
	EXPECT_TRUE(f::present(e));
	EXPECT_FALSE(f::huge(e));
	EXPECT_EQ(f::max_pfn, (uint64_t{1} << 36) - 1);
	EXPECT_EQ(f::pfn(f::make(uint64_t{1} << 36, prot_present)), 0u) << "output addresses are 48 bits";
}

TEST(PteFormat, Arm64ReadOnlyAndGlobalAreInvertedBits)
{
	using f = arm64_4k::format;
	const auto read_only = f::make(1, prot_present);
	EXPECT_NE(read_only & f::ap_readonly, 0u);
	EXPECT_NE(read_only & f::not_global, 0u);

	const auto kernel_rw = f::make(1, prot_present | prot_write | prot_global);
	EXPECT_EQ(kernel_rw & f::ap_readonly, 0u);
	EXPECT_EQ(kernel_rw & f::not_global, 0u);
	EXPECT_EQ(kernel_rw & f::ap_user, 0u);
}

TEST(PteFormat, Arm64ExecuteNeverFollowsPrivilege)
{
	using f = arm64_4k::format;
	const auto user_exec = f::make(1, prot_present | prot_user);
	EXPECT_NE(user_exec & f::pxn, 0u) << "the kernel never executes user pages";
	EXPECT_EQ(user_exec & f::uxn, 0u);

	const auto kernel_exec = f::make(1, prot_present);
	EXPECT_NE(kernel_exec & f::uxn, 0u) << "EL0 never executes kernel pages";
	EXPECT_EQ(kernel_exec & f::pxn, 0u);

	const auto kernel_nx = f::make(1, prot_present | prot_nx);
	EXPECT_NE(kernel_nx & f::pxn, 0u);
	EXPECT_EQ(f::prot(kernel_nx) & prot_nx, uint64_t{prot_nx});
}

TEST(PteFormat, Arm64CacheModesSelectMairIndexes)
{
	using f = arm64_4k::format;
	const auto attr = [](uint64_t prot) {
		return (f::make(1, prot_present | prot) & f::attr_index_mask) >> f::attr_index_shift;
	};
	EXPECT_EQ(attr(0), f::attr_normal);
	EXPECT_EQ(attr(prot_pcd), f::attr_normal_nc);
	EXPECT_EQ(attr(prot_pwt), f::attr_normal_wt);
	EXPECT_EQ(attr(prot_pcd | prot_pwt), f::attr_device_ngnre);
}

// Every combination of the pgprot bits comes back from prot() unchanged,
// for a page and for a block.
TEST(PteFormat, Arm64RoundTripsEveryPgprot)
{
	using f = arm64_4k::format;
	const uint64_t bits[] = {prot_present, prot_write,  prot_user, prot_pwt, prot_pcd,
				 prot_accessed, prot_dirty, prot_huge, prot_global, prot_nx};
	constexpr unsigned nr_bits = sizeof(bits) / sizeof(bits[0]);

	for (unsigned mask = 0; mask < (1u << nr_bits); mask++) {
		uint64_t prot = 0;
		for (unsigned i = 0; i < nr_bits; i++)
			prot |= (mask >> i) & 1 ? bits[i] : 0;

		const auto e = f::make(0xabcde, prot);
		ASSERT_EQ(f::prot(e), prot) << std::hex << "prot " << prot << " entry " << e;
		ASSERT_EQ(f::pfn(e), 0xabcdeu) << std::hex << "prot " << prot;
		ASSERT_EQ(f::present(e), (prot & prot_present) != 0) << std::hex << "prot " << prot;
	}
}

// Bit 1 is set in a table or page descriptor and clear in a block.
TEST(PteFormat, Arm64TableBlockAndPageBitOne)
{
	using f = arm64_4k::format;

	const auto table = f::make_table(level::pud, 0x500, f::user_table_prot);
	EXPECT_EQ(table & 3, 3u);
	EXPECT_FALSE(f::huge(table));
	EXPECT_EQ(f::pfn(table), 0x500u);
	EXPECT_EQ(table & ~f::output_mask, f::desc_valid | f::desc_table_or_page | f::table_pxn);
	EXPECT_EQ(f::make_table(level::pgd, 0x500, f::kernel_table_prot) & ~f::output_mask,
		  f::desc_valid | f::desc_table_or_page | f::table_uxn);

	const auto page = f::make(0x500, prot_present | prot_user);
	EXPECT_EQ(page & 3, 3u);
	EXPECT_FALSE(f::huge(page));

	const auto block = f::make(0x400, prot_present | prot_user | prot_huge);
	EXPECT_EQ(block & 3, 1u);
	EXPECT_TRUE(f::huge(block));
	EXPECT_FALSE(f::huge(f::make(0x400, prot_huge))) << "an invalid descriptor is no block";
}

TEST(PteFormat, Arm64FlagBitsAccessedDirty)
{
	using f = arm64_4k::format;
	EXPECT_EQ(f::flag_bits(prot_accessed), f::access_flag);
	EXPECT_EQ(f::flag_bits(prot_accessed | prot_dirty), f::access_flag | f::sw_dirty);

	const auto clean = f::make(7, prot_present | prot_user | prot_write);
	const auto touched = clean | f::flag_bits(prot_accessed | prot_dirty);
	EXPECT_EQ(f::prot(touched), f::prot(clean) | prot_accessed | prot_dirty);
}

TEST(ArchGeometry, ParentTableLevelSkipsFoldedLevels)
{
	EXPECT_EQ(parent_table_level<x86_64>(level::pud), level::pgd);
	EXPECT_EQ(parent_table_level<x86_64>(level::pmd), level::pud);
	EXPECT_EQ(parent_table_level<x86_64_la57>(level::pud), level::p4d);
	EXPECT_EQ(parent_table_level<i386>(level::pte), level::pgd);
}

TEST(ArchRegistry, DispatchesEveryProfileName)
{
	for (std::string_view name : profile_names) {
		const std::string_view dispatched =
			with_profile(name, [](auto profile) { return decltype(profile)::type::name; });
		EXPECT_EQ(dispatched, name);
		EXPECT_TRUE(is_profile_name(name));
	}
	EXPECT_EQ(profile_name_list(), "x86_64, x86_64_la57, i386, i386_pae, arm64_4k");
}

TEST(ArchRegistry, EmptyNameIsNative)
{
	const std::string_view dispatched = with_profile("", [](auto profile) { return decltype(profile)::type::name; });
	EXPECT_EQ(dispatched, native::name);
}

TEST(ArchRegistry, UnknownNameThrowsWithTheList)
{
	EXPECT_FALSE(is_profile_name("sparc"));
	try {
		with_profile("sparc", [](auto) { return 0; });
		ADD_FAILURE() << "no exception for an unknown name";
	} catch (const std::invalid_argument &e) {
		EXPECT_EQ(std::string(e.what()),
			  "unknown geometry 'sparc'; choose from x86_64, x86_64_la57, i386, i386_pae, arm64_4k");
	}
}
