#pragma once
// Hardware entry formats. ptl stores entries exactly as the processor reads
// them, so a real page walker can use the tables (see the KVM check).
//
// A format F provides:
//   entry_t               unsigned integer type of one entry
//   make(pfn, prot)       a leaf entry (a huge leaf when prot has prot_huge)
//   make_table(l, pfn, p) an entry of a level-l table that points to a
//                         table below it
//   flag_bits(prot)       the entry bits of prot's accessed and dirty flags
//   pfn, prot, present, none, huge   decoders of an entry
//   max_pfn, has_nx, user_table_prot, kernel_table_prot

#include <ptl/arch/geometry.hpp>

#include <cstdint>

namespace ptl::arch {

// Architecture-neutral protection and state bits. The x86 format uses the
// same bit positions as the hardware, so encoding is a mask.
enum pgprot : uint64_t {
	prot_none = 0,
	prot_present = 1ull << 0,
	prot_write = 1ull << 1,
	prot_user = 1ull << 2,
	prot_pwt = 1ull << 3, // write-through
	prot_pcd = 1ull << 4, // cache disabled
	prot_accessed = 1ull << 5,
	prot_dirty = 1ull << 6,
	prot_huge = 1ull << 7, // PS: a leaf above the pte level
	prot_global = 1ull << 8,
	prot_nx = 1ull << 63, // no execute
};

// x86 entry: P, R/W, U/S, PWT, PCD, A, D, PS, G in bits 0-8, the frame
// number in bits 12 up to the physical address width, NX in bit 63 where
// the format has it (64-bit entries only).
template <class Entry, unsigned PhysBits, bool HasNx>
struct x86_format {
	using entry_t = Entry;

	static constexpr uint64_t flag_mask = 0x1ff | (HasNx ? uint64_t{prot_nx} : 0);
	static constexpr uint64_t pfn_mask = ((uint64_t{1} << PhysBits) - 1) & ~uint64_t{0xfff};
	static constexpr uint64_t max_pfn = pfn_mask >> 12;
	static constexpr bool has_nx = HasNx;

	static constexpr entry_t make(uint64_t pfn, uint64_t prot)
	{
		return static_cast<entry_t>(((pfn << 12) & pfn_mask) | (prot & flag_mask));
	}

	static constexpr uint64_t pfn(entry_t e) { return (uint64_t{e} & pfn_mask) >> 12; }
	static constexpr uint64_t prot(entry_t e) { return uint64_t{e} & flag_mask; }
	static constexpr bool present(entry_t e) { return (e & prot_present) != 0; }
	static constexpr bool none(entry_t e) { return e == 0; }
	static constexpr bool huge(entry_t e) { return (e & prot_huge) != 0; }

	// Table entries use the same bits as leaves at every level.
	static constexpr entry_t make_table(level, uint64_t pfn, uint64_t prot) { return make(pfn, prot); }

	static constexpr entry_t flag_bits(uint64_t prot)
	{
		return static_cast<entry_t>(prot & (prot_accessed | prot_dirty));
	}

	// Entry flags of a table that maps user pages (Linux's _PAGE_TABLE)
	// and of a kernel-only table (_KERNPG_TABLE).
	static constexpr uint64_t user_table_prot = prot_present | prot_write | prot_user | prot_accessed | prot_dirty;
	static constexpr uint64_t kernel_table_prot = prot_present | prot_write | prot_accessed | prot_dirty;
};

// x86 PAE entry: the 64-bit x86 entry, with a 52-bit physical address
// (MAXPHYADDR's architectural limit; the first PAE processors had 36).
// Entries of the top table, the 4-entry page-directory-pointer table (PDPT),
// may set only P, PWT and PCD: R/W, U/S, A, D, PS and NX are reserved there,
// and loading CR3 with a PDPT entry that sets one raises #GP.
struct x86_pae_format : x86_format<uint64_t, 52, true> {
	static constexpr uint64_t pdpt_flag_mask = prot_present | prot_pwt | prot_pcd;

	static constexpr entry_t make_table(level l, uint64_t pfn, uint64_t prot)
	{
		if (l == level::pgd)
			prot &= pdpt_flag_mask;
		return make(pfn, prot);
	}
};

} // namespace ptl::arch
