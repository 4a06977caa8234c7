#pragma once
// Mapping a PTE table together with the lock that guards its entries.
//
// In the push-down lock mode the PTE lock of a user address space is the
// mm-wide page_table_lock, held only while PTEs are read and changed.
// Kernel address spaces never use these: their PTEs belong to whoever owns
// the vmalloc area.

#include <ptl/mm/populate.hpp>

namespace ptl::mm {

// A PTE slot with its lock held. Release with pte_unmap_unlock.
template <class G>
struct pte_map {
	typename mm_struct<G>::slot_t *pte;
	sync::spinlock *ptl;
};

// The lock guarding the PTE table behind *pmd.
template <class G>
sync::spinlock &pte_lockptr(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pmd)
{
	(void)pmd;
	return mm.page_table_lock;
}

// pte_offset_map_lock: *pmd must point to a PTE table. Returns with the PTE
// lock held.
template <class G>
pte_map<G> pte_offset_map_lock(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pmd, uint64_t addr)
	PTL_NO_THREAD_SAFETY_ANALYSIS
{
	sync::spinlock &ptl = pte_lockptr(mm, pmd);
	ptl.lock();
	return pte_map<G>{entry_offset(mm, pmd, level::pte, addr), &ptl};
}

// pte_alloc_map_lock: populates the PTE table if needed (no lock held while
// allocating), then maps it locked. On failure no lock is held.
template <class G>
result<pte_map<G>> pte_alloc_map_lock(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pmd, uint64_t addr)
{
	auto r = pte_alloc(mm, pmd, addr);
	if (!r)
		return fail(r.error());
	return pte_offset_map_lock(mm, pmd, addr);
}

template <class G>
void pte_unmap_unlock(const pte_map<G> &map) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	map.ptl->unlock();
}

} // namespace ptl::mm
