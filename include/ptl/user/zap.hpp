#pragma once
// Zapping: clearing the PTEs of part of a VMA (Linux's zap_page_range).
//
// Each PTE is cleared under the PTE lock. The data frames of an anonymous
// VMA go back to the pool once that lock is dropped. The frames of a
// PFN-mapped VMA are not the pool's, so they are left alone. Callers hold
// the mmap_lock exclusively, so no fault can refill the range meanwhile.

#include <ptl/base/hooks.hpp>
#include <ptl/mm/pte_lock.hpp>
#include <ptl/user/huge.hpp>
#include <ptl/user/vma.hpp>

#include <vector>

namespace ptl::user {

using arch::level;

// Counts of the pages a zap removed.
struct zap_counts {
	uint64_t pages = 0;      // PTEs cleared
	uint64_t anon_pages = 0; // of those, anonymous pages whose frames were freed
};

namespace detail {

// Clears the PTEs of [addr, end), which lies inside one PTE table, and
// collects the frames to free in gather.
template <class G>
void zap_pte_range(mm::mm_struct<G> &mm, const vm_area &vma, typename mm::mm_struct<G>::slot_t *pmd, uint64_t addr,
		   uint64_t end, zap_counts &counts, std::vector<pfn_t> &gather)
{
	using format = typename G::format;
	mm::pte_map<G> map;
	mm::pte_offset_map_lock(mm, pmd, addr, map);

	for (unsigned i = 0; addr != end; addr += arch::page_size, i++) {
		PTL_HOOK(hooks::point::zap_before_clear, arch::level_index(level::pte), addr, &mm);

		// An exchange, so that in lockless mode a racing fault's entry
		// is either cleared here or not there yet.
		const auto cleared = mm::pte_get_and_clear(map, i);
		if (format::none(cleared))
			continue;
		counts.pages++;

		if (vma.is_anonymous()) {
			gather.push_back(format::pfn(cleared));
			counts.anon_pages++;
		}
	}

	mm::pte_unmap_unlock(map);
}

// Clears the huge leaf in *pmd, which [addr, end) covers whole (the caller
// split the leaves that cross the range's ends), and gathers its frames.
template <class G>
void zap_huge_pmd(mm::mm_struct<G> &mm, const vm_area &vma, typename mm::mm_struct<G>::slot_t *pmd, uint64_t addr,
		  uint64_t end, zap_counts &counts, std::vector<pfn_t> &gather) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	assert(end - addr == huge_pmd_size<G>() && "a huge leaf crossing the zap's ends was not split");
	(void)addr;
	(void)end;

	sync::spinlock *lock = pmd_lock(mm, pmd);
	if (lock)
		lock->lock();
	const auto leaf = pmd->exchange(0, std::memory_order_acq_rel);
	if (lock)
		lock->unlock();

	counts.pages += huge_pmd_pages<G>();
	if (vma.is_anonymous()) {
		for (uint64_t i = 0; i < huge_pmd_pages<G>(); i++)
			gather.push_back(G::format::pfn(leaf) + i);
		counts.anon_pages += huge_pmd_pages<G>();
	}
}

inline void free_gathered(phys::frame_pool &pool, std::vector<pfn_t> &gather)
{
	// A frame that fork shared stays until its last PTE is zapped.
	for (pfn_t pfn : gather)
		pool.put_page(pfn);
	gather.clear();
}

} // namespace detail

// Clears every PTE of [start, end), a page-aligned part of vma, and frees the
// anonymous frames it mapped. Takes and drops the PTE lock once per PTE
// table, so the caller must hold no page-table lock.
template <class G>
zap_counts zap_page_range(mm::mm_struct<G> &mm, const vm_area &vma, uint64_t start, uint64_t end)
{
	zap_counts counts;
	std::vector<pfn_t> gather;
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
			detail::zap_huge_pmd(mm, vma, found.pmd, addr, next, counts, gather);
		else
			detail::zap_pte_range(mm, vma, found.pmd, addr, next, counts, gather);

		// The frames are freed after the PTE lock is dropped, as Linux
		// frees pages from its mmu_gather batch outside the lock.
		PTL_HOOK(hooks::point::zap_before_free, arch::level_index(level::pte), addr, &mm);
		detail::free_gathered(mm.pool(), gather);
		addr = next;
	}

	// The tables the zap leaves empty are the caller's to free, with
	// bounds only it has (see free_pgtables.hpp).
	return counts;
}

} // namespace ptl::user
