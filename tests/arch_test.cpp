// Index arithmetic and folding of each geometry.

#include <ptl/arch/profiles.hpp>

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
