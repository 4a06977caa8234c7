#pragma once
// Mapping a PTE table together with the lock that guards its entries, and
// changing PTEs under it.
//
// Which lock guards a user PTE depends on the lock mode:
//   legacy    page_table_lock, already held by the caller's walk_guard
//   pushdown  page_table_lock, taken here and held only for the update
//   split     the lock in the PTE table page's own struct page
//   lockless  none: pte_install and pte_get_and_clear use atomic operations
// Kernel address spaces never use these: their PTEs belong to whoever owns
// the vmalloc area.

#include <ptl/mm/populate.hpp>

namespace ptl::mm {

// A PTE slot with its lock held (ptl is null when nothing was taken here).
// Release with pte_unmap_unlock.
template <class G>
struct pte_map {
	typename mm_struct<G>::slot_t *pte;
	sync::spinlock *ptl;
};

// The lock of the PTE table whose entry is pmd_value (split mode).
template <class G>
sync::spinlock &pte_table_lock(mm_struct<G> &mm, typename G::entry_t pmd_value)
{
	return mm.pool().page_of(G::format::pfn(pmd_value)).ptl;
}

namespace detail {

// Split mode: lock the PTE table's own lock, then re-read the pmd entry that
// led there. If it changed (the table was freed or replaced), the lock we
// hold guards the wrong table: drop it and start over.
template <class G>
sync::spinlock *lock_split_pte_table(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pmd)
	PTL_NO_THREAD_SAFETY_ANALYSIS
{
	for (;;) {
		const auto pmd_value = pmd->load(std::memory_order_acquire);
		sync::spinlock &ptl = pte_table_lock(mm, pmd_value);
		ptl.lock();
		if (pmd->load(std::memory_order_relaxed) == pmd_value)
			return &ptl;
		ptl.unlock();
	}
}

} // namespace detail

// pte_offset_map_lock: *pmd must point to a PTE table. Returns with the PTE
// lock of this lock mode held.
template <class G>
pte_map<G> pte_offset_map_lock(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pmd, uint64_t addr)
	PTL_NO_THREAD_SAFETY_ANALYSIS
{
	sync::spinlock *ptl = nullptr;

	switch (mm.mode()) {
	case lock_mode::legacy:
	case lock_mode::lockless:
		break;
	case lock_mode::pushdown:
		ptl = &mm.page_table_lock;
		ptl->lock();
		break;
	case lock_mode::split:
		ptl = detail::lock_split_pte_table(mm, pmd);
		break;
	}
	return pte_map<G>{entry_offset(mm, pmd, level::pte, addr), ptl};
}

// pte_alloc_map_lock: populates the PTE table if needed (no lock held while
// allocating, except the legacy walk's), then maps it locked. On failure no
// lock is taken.
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
	if (map.ptl)
		map.ptl->unlock();
}

// Sets the PTE to new_value if it still holds expected. Under a lock this is
// the re-check and a release store; in lockless mode it is one
// compare-and-swap. Returns false when the PTE held something else.
template <class G>
bool pte_install(mm_struct<G> &mm, const pte_map<G> &map, typename G::entry_t expected, typename G::entry_t new_value)
{
	if (mm.mode() == lock_mode::lockless)
		return map.pte->compare_exchange_strong(expected, new_value, std::memory_order_release,
							std::memory_order_relaxed);

	if (map.pte->load(std::memory_order_relaxed) != expected)
		return false;
	// Release pairs with the acquire loads of lockless walkers (translate).
	map.pte->store(new_value, std::memory_order_release);
	return true;
}

// Clears the PTE and returns what it held (ptep_get_and_clear).
template <class G>
typename G::entry_t pte_get_and_clear(const pte_map<G> &map)
{
	return map.pte->exchange(0, std::memory_order_acq_rel);
}

} // namespace ptl::mm
