#pragma once
// mprotect's work below the argument checks (Linux's mprotect_fixup and
// change_protection): give each VMA of a range its new protection, splitting
// the VMAs that cross the range's ends, and rewrite the PTEs already
// installed there in place.
//
// The caller holds the mmap_lock exclusively, so no fault installs or
// changes a PTE of this address space meanwhile. Each PTE table is changed
// under its PTE lock (pte_offset_map_lock, as zap takes it), and the walk
// populates nothing. Each entry is rewritten with a compare-and-swap loop,
// so that a bit that something else sets in the entry meanwhile (a processor
// walking the tables sets accessed and dirty without any lock) is kept.

#include <ptl/mm/pte_lock.hpp>
#include <ptl/user/huge.hpp>
#include <ptl/user/vma.hpp>
#include <ptl/user/vma_set.hpp>
#include <ptl/user/zap.hpp>

#include <algorithm>
#include <cassert>

namespace ptl::user {

// The vm_flags bits that mprotect sets.
inline constexpr uint32_t vm_prot_mask = vm_read | vm_write | vm_exec;

namespace detail {

// The entry bits that a VMA's protection decides. mprotect replaces them
// and keeps the frame, accessed, dirty and caching bits (pte_modify).
inline constexpr uint64_t vma_prot_bits = arch::prot_present | arch::prot_write | arch::prot_user | arch::prot_nx;

// Replaces the non-empty PTE at index of the mapped table with
// change(old) by compare-and-swap until it holds, as
// ptep_modify_prot_start and ptep_modify_prot_commit do together. Returns
// the value it replaced, or the empty entry it left alone.
template <class G, class Change>
typename G::entry_t pte_modify(const mm::pte_map<G> &map, unsigned index, Change change) PTL_REQUIRES(map)
{
	auto old = map.pte[index].load(std::memory_order_relaxed);

	for (;;) {
		if (G::format::none(old))
			return old;

		const auto new_value = change(old);
		if (new_value == old)
			return old;
		// Release pairs with the acquire loads of lockless walkers.
		if (map.pte[index].compare_exchange_weak(old, new_value, std::memory_order_release,
							 std::memory_order_relaxed))
			return old;
	}
}

// The entry with its write bit cleared (pte_wrprotect).
template <class G>
typename G::entry_t wrprotect_entry(typename G::entry_t entry)
{
	const uint64_t prot = G::format::prot(entry) & ~uint64_t{arch::prot_write};
	return static_cast<typename G::entry_t>(G::format::make(G::format::pfn(entry), prot));
}

// The entry that mprotect leaves for old, an entry of vma, which already
// carries its new flags. A VMA with no access at all keeps the frame in a
// PTE that is not present, so that the data survives until the protection
// is raised again (Linux keeps such PTEs as PROT_NONE entries). A private
// anonymous page stays write-protected while another PTE maps its frame,
// so that the first write still copies it.
template <class G>
typename G::entry_t change_pte_prot(const phys::frame_pool &pool, const vm_area &vma, typename G::entry_t old)
{
	using format = typename G::format;
	const pfn_t pfn = format::pfn(old);
	uint64_t prot = (format::prot(old) & ~vma_prot_bits) | vm_page_prot<G>(vma);

	if ((vma.flags & vm_prot_mask) == 0)
		prot &= ~uint64_t{arch::prot_present};

	const bool cow = vma.is_anonymous() && !(vma.flags & vm_shared);
	if (cow && pool.page_count(pfn) != 1)
		prot &= ~uint64_t{arch::prot_write};

	return static_cast<typename G::entry_t>(format::make(pfn, prot));
}

// Applies vma's protection to the PTEs of [addr, end), which lies inside
// one PTE table below the pmd entry pmd.
template <class G>
void change_pte_range(mm::mm_struct<G> &mm, const vm_area &vma, typename mm::mm_struct<G>::slot_t *pmd,
		      uint64_t addr, uint64_t end)
{
	mm::pte_map<G> map;
	mm::pte_offset_map_lock(mm, pmd, addr, map);

	for (unsigned i = 0; addr != end; addr += arch::page_size, i++)
		pte_modify(map, i, [&](auto old) { return change_pte_prot<G>(mm.pool(), vma, old); });

	mm::pte_unmap_unlock(map);
}

// Applies vma's protection to the huge leaf in *pmd, which the range covers
// whole (change_huge_pmd). The leaf stays one leaf: its frames are never
// shared, because fork splits huge leaves. Under pmd_lock or by
// compare-and-swap, retried when a bit changed meanwhile.
template <class G>
void change_huge_pmd(mm::mm_struct<G> &mm, const vm_area &vma, typename mm::mm_struct<G>::slot_t *pmd)
{
	for (;;) {
		const auto leaf = pmd->load(std::memory_order_acquire);
		const auto changed = change_pte_prot<G>(mm.pool(), vma, leaf);
		if (changed == leaf || pmd_install(mm, pmd, leaf, changed))
			return;
	}
}

} // namespace detail

// Splits every huge leaf in [start, end) into a PTE table of the same frames
// (split_huge_pmd). Called with the mmap_lock held exclusively. Fails with
// no_memory when a split cannot get a table. The leaves split until then
// stay split, and they map what they mapped before.
template <class G>
result<void> split_huge_range(mm::mm_struct<G> &mm, uint64_t start, uint64_t end)
{
	if constexpr (!huge_pmd_supported<G>()) {
		return {};
	} else {
		uint64_t addr = start;
		mm::walk_guard<G> walk(mm);

		while (addr != end) {
			const auto found = detail::find_pmd(mm, addr);
			if (!found.pmd) {
				addr = arch::entry_end<G>(found.empty_level, addr, end);
				continue;
			}

			auto split = split_huge_pmd(mm, found.pmd, addr);
			if (!split)
				return split;
			addr = arch::entry_end<G>(level::pmd, addr, end);
		}
		return {};
	}
}

// Rewrites the installed PTEs of [start, end), a page-aligned part of vma,
// with vma's protection (change_protection). Takes and drops the PTE lock
// once per PTE table, so the caller must hold no page-table lock. A huge
// leaf in the range must lie wholly inside it, and must not be asked for
// PROT_NONE: the caller splits such leaves first.
template <class G>
void change_protection(mm::mm_struct<G> &mm, const vm_area &vma, uint64_t start, uint64_t end)
{
	uint64_t addr = start;
	mm::walk_guard<G> walk(mm);

	while (addr != end) {
		const auto found = detail::find_pmd(mm, addr);
		if (!found.pmd) {
			addr = arch::entry_end<G>(found.empty_level, addr, end);
			continue;
		}

		const uint64_t next = arch::entry_end<G>(level::pmd, addr, end);
		if (G::format::huge(found.pmd->load(std::memory_order_acquire)))
			detail::change_huge_pmd(mm, vma, found.pmd);
		else
			detail::change_pte_range(mm, vma, found.pmd, addr, next);
		addr = next;
	}
}

// Gives every VMA of [start, end) the protection prot_flags (vm_read,
// vm_write and vm_exec bits) and changes its installed PTEs to match
// (mprotect_fixup for each VMA). A VMA that crosses either end is split
// there first, and a VMA that already has the protection is left as it is.
// The caller holds the mmap_lock exclusively and has checked that VMAs
// cover the whole range.
template <class G>
void mprotect_range(mm::mm_struct<G> &mm, vma_set &vmas, uint64_t start, uint64_t end, uint32_t prot_flags)
{
	assert((prot_flags & ~vm_prot_mask) == 0);
	assert(vmas.covers(start, end));
	uint64_t addr = start;

	while (addr != end) {
		const vm_area *vma = vmas.lookup(addr);
		const uint64_t piece_end = std::min(vma->end, end);
		const uint32_t new_flags = (vma->flags & ~vm_prot_mask) | prot_flags;

		if (new_flags != vma->flags) {
			vmas.split_at(addr);
			vmas.split_at(piece_end);
			vmas.set_flags(addr, new_flags);
			change_protection(mm, *vmas.lookup(addr), addr, piece_end);
		}
		addr = piece_end;
	}
}

} // namespace ptl::user
