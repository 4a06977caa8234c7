#pragma once
// arm64 VMSAv8-64 stage 1 descriptors with a 4 KiB granule and 48-bit output
// addresses, as Linux's arm64 port writes them.
//
// The engine speaks pgprot (pte_format.hpp). make() encodes it into
// descriptor bits and prot() decodes them back, exactly for every pgprot bit. Differences from x86 that the encoding absorbs:
// read-only (AP[2]) and not-global (nG) are inverted bits; no-execute is two
// bits, UXN for EL0 and PXN for EL1; the cache mode is an index into MAIR_EL1;
// and bit 1 tells a table or page (set) from a block, a huge leaf (clear).

#include <ptl/arch/pte_format.hpp>

#include <cstdint>

namespace ptl::arch {

struct arm64_format {
	using entry_t = uint64_t;

	static constexpr uint64_t desc_valid = 1ull << 0;
	// Set in table descriptors (levels 0-2) and page descriptors (level 3);
	// clear in a block descriptor, a leaf at level 1 or 2.
	static constexpr uint64_t desc_table_or_page = 1ull << 1;
	static constexpr unsigned attr_index_shift = 2; // AttrIndx, bits 4-2
	static constexpr uint64_t attr_index_mask = 7ull << attr_index_shift;
	static constexpr uint64_t ap_user = 1ull << 6;     // AP[1]: EL0 may access
	static constexpr uint64_t ap_readonly = 1ull << 7; // AP[2]
	static constexpr uint64_t sh_inner = 3ull << 8;    // SH: inner shareable
	static constexpr uint64_t access_flag = 1ull << 10;
	static constexpr uint64_t not_global = 1ull << 11; // nG
	static constexpr uint64_t output_mask = 0x0000fffffffff000; // bits 47-12
	static constexpr uint64_t pxn = 1ull << 53;
	static constexpr uint64_t uxn = 1ull << 54;
	// Software bit that Linux calls PTE_DIRTY. The hardware dirty-bit
	// management (DBM, bit 51) is not modelled: write permission is AP[2]
	// alone, and dirty is only this bit.
	static constexpr uint64_t sw_dirty = 1ull << 55;
	// Hierarchical attributes of table descriptors: no privileged execution
	// below a user table, no unprivileged execution below a kernel table,
	// as Linux's arm64 populate functions set them.
	static constexpr uint64_t table_pxn = 1ull << 59;
	static constexpr uint64_t table_uxn = 1ull << 60;

	// ptl's MAIR_EL1 layout, one index per x86 cache mode so that pcd and
	// pwt round-trip: normal write-back, normal non-cacheable (pcd), normal
	// write-through (pwt), and Device-nGnRE (pcd and pwt, as ioremap maps).
	// NOTE: Linux orders its MAIR_EL1 attributes differently and has no
	// write-through index in recent versions; only the encoding is modelled.
	static constexpr uint64_t attr_normal = 0;
	static constexpr uint64_t attr_normal_nc = 1;
	static constexpr uint64_t attr_normal_wt = 2;
	static constexpr uint64_t attr_device_ngnre = 3;

	static constexpr uint64_t max_pfn = output_mask >> 12;
	static constexpr bool has_nx = true;

	static constexpr uint64_t user_table_prot = prot_present | prot_user;
	static constexpr uint64_t kernel_table_prot = prot_present;

	static constexpr entry_t make(uint64_t pfn, uint64_t prot)
	{
		entry_t e = (pfn << 12) & output_mask;

		if (prot & prot_present)
			e |= desc_valid;
		if (!(prot & prot_huge))
			e |= desc_table_or_page;
		e |= attr_index(prot) << attr_index_shift;
		e |= sh_inner;
		return e | encode_access(prot) | encode_exec(prot);
	}

	static constexpr entry_t make_table(level, uint64_t pfn, uint64_t prot)
	{
		entry_t e = ((pfn << 12) & output_mask) | desc_table_or_page;

		if (prot & prot_present)
			e |= desc_valid;
		return e | ((prot & prot_user) ? table_pxn : table_uxn);
	}

	static constexpr entry_t flag_bits(uint64_t prot)
	{
		entry_t e = 0;

		if (prot & prot_accessed)
			e |= access_flag;
		if (prot & prot_dirty)
			e |= sw_dirty;
		return e;
	}

	static constexpr uint64_t pfn(entry_t e) { return (e & output_mask) >> 12; }
	static constexpr bool present(entry_t e) { return (e & desc_valid) != 0; }
	static constexpr bool none(entry_t e) { return e == 0; }

	// Whether e is a valid block descriptor. The engine calls it above level
	// 3 only, because at level 3 a valid descriptor with bit 1 clear is
	// reserved, and make() never writes one there.
	static constexpr bool huge(entry_t e) { return (e & (desc_valid | desc_table_or_page)) == desc_valid; }

	// The pgprot bits of a leaf. A table descriptor decodes as a leaf
	// would, so only its present bit means anything.
	static constexpr uint64_t prot(entry_t e)
	{
		uint64_t prot = decode_access(e) | decode_exec(e) | decode_attr_index(e);

		if (e & desc_valid)
			prot |= prot_present;
		if (!(e & desc_table_or_page))
			prot |= prot_huge;
		return prot;
	}

private:
	static constexpr uint64_t attr_index(uint64_t prot)
	{
		const bool pcd = (prot & prot_pcd) != 0;
		const bool pwt = (prot & prot_pwt) != 0;

		if (pcd && pwt)
			return attr_device_ngnre;
		if (pcd)
			return attr_normal_nc;
		if (pwt)
			return attr_normal_wt;
		return attr_normal;
	}

	static constexpr uint64_t decode_attr_index(entry_t e)
	{
		switch ((e & attr_index_mask) >> attr_index_shift) {
		case attr_device_ngnre:
			return prot_pcd | prot_pwt;
		case attr_normal_nc:
			return prot_pcd;
		case attr_normal_wt:
			return prot_pwt;
		default:
			return 0;
		}
	}

	// AP[2:1], AF, nG and the software dirty bit.
	static constexpr entry_t encode_access(uint64_t prot)
	{
		entry_t e = flag_bits(prot);

		if (prot & prot_user)
			e |= ap_user;
		if (!(prot & prot_write))
			e |= ap_readonly;
		if (!(prot & prot_global))
			e |= not_global;
		return e;
	}

	static constexpr uint64_t decode_access(entry_t e)
	{
		uint64_t prot = 0;

		if (e & ap_user)
			prot |= prot_user;
		if (!(e & ap_readonly))
			prot |= prot_write;
		if (!(e & not_global))
			prot |= prot_global;
		if (e & access_flag)
			prot |= prot_accessed;
		if (e & sw_dirty)
			prot |= prot_dirty;
		return prot;
	}

	// A user page is never executable at EL1 (PXN), and a kernel page never
	// at EL0 (UXN), as Linux maps them. prot_nx sets the other bit too.
	static constexpr entry_t encode_exec(uint64_t prot)
	{
		const bool nx = (prot & prot_nx) != 0;

		if (prot & prot_user)
			return pxn | (nx ? uxn : 0);
		return uxn | (nx ? pxn : 0);
	}

	static constexpr uint64_t decode_exec(entry_t e)
	{
		const uint64_t own_xn = (e & ap_user) ? uxn : pxn;
		return (e & own_xn) ? uint64_t{prot_nx} : 0;
	}
};

} // namespace ptl::arch
