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

// A PTE slot together with the lock of this lock mode that guards it. The
// map is a capability for Clang's thread-safety analysis: functions that
// read or change the PTE require it, pte_offset_map_lock acquires it and
// pte_unmap_unlock releases it, so a path that forgets to unlock, or
// touches the PTE after unlocking, does not build with -Werror. In lockless
// mode the capability stands for no real lock (ptl is null).
template <class G>
class PTL_CAPABILITY("pte lock") pte_map {
public:
	typename mm_struct<G>::slot_t *pte = nullptr;
	sync::spinlock *ptl = nullptr;
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

// The real lock of this mode, taken; null where the mode takes none here.
template <class G>
sync::spinlock *lock_pte_table(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pmd) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	switch (mm.mode()) {
	case lock_mode::legacy:
	case lock_mode::lockless:
		return nullptr;
	case lock_mode::pushdown:
		mm.page_table_lock.lock();
		return &mm.page_table_lock;
	case lock_mode::split:
		return lock_split_pte_table(mm, pmd);
	}
	return nullptr;
}

} // namespace detail

// pte_offset_map_lock: *pmd must point to a PTE table. Returns with the PTE
// lock of this lock mode held in map.
template <class G>
void pte_offset_map_lock(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pmd, uint64_t addr, pte_map<G> &map)
	PTL_ACQUIRE(map) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	map.ptl = detail::lock_pte_table(mm, pmd);
	map.pte = entry_offset(mm, pmd, level::pte, addr);
}

// pte_alloc_map_lock: populates the PTE table if needed (no lock held while
// allocating, except the legacy walk's), then maps it locked. Returns true
// with map held, or false with error set and no lock taken. The error is
// busy when *pmd contains a huge leaf, which a racing fault may have installed
// where this one expected a table: the caller must not index into it.
template <class G>
bool pte_alloc_map_lock(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pmd, uint64_t addr, pte_map<G> &map,
			errc &error) PTL_TRY_ACQUIRE(true, map) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	auto r = pte_alloc(mm, pmd, addr);
	if (!r) {
		error = r.error();
		return false;
	}

	// A huge leaf never turns back into a table under a fault: only a
	// split does that, under the mmap_lock held exclusively.
#if !defined(PTL_MUTANT_NO_HUGE_RECHECK)
	if (G::format::huge(pmd->load(std::memory_order_acquire))) {
		error = errc::busy;
		return false;
	}
#endif
	pte_offset_map_lock(mm, pmd, addr, map);
	return true;
}

template <class G>
void pte_unmap_unlock(pte_map<G> &map) PTL_RELEASE(map) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	if (map.ptl)
		map.ptl->unlock();
}

// The PTE's current value (a relaxed load: the lock orders it).
template <class G>
typename G::entry_t pte_read(const pte_map<G> &map) PTL_REQUIRES(map)
{
	return map.pte->load(std::memory_order_relaxed);
}

// Sets the PTE to new_value if it still holds expected. Under a lock this is
// the re-check and a release store; in lockless mode it is one
// compare-and-swap. Returns false when the PTE held something else.
template <class G>
bool pte_install(mm_struct<G> &mm, const pte_map<G> &map, typename G::entry_t expected,
		 typename G::entry_t new_value) PTL_REQUIRES(map)
{
	PTL_HOOK(hooks::point::pte_before_install, arch::level_index(level::pte), 0, &mm);
	if (mm.mode() == lock_mode::lockless)
		return map.pte->compare_exchange_strong(expected, new_value, std::memory_order_release,
							std::memory_order_relaxed);

	if (map.pte->load(std::memory_order_relaxed) != expected)
		return false;
	// Release pairs with the acquire loads of lockless walkers (translate).
	map.pte->store(new_value, std::memory_order_release);
	return true;
}

// Sets bits in the PTE with an atomic OR (accessed and dirty, as
// ptep_set_access_flags does), which cannot undo a lockless update.
template <class G>
void pte_set_flags(const pte_map<G> &map, typename G::entry_t bits) PTL_REQUIRES(map)
{
	map.pte->fetch_or(bits, std::memory_order_release);
}

// Clears the PTE at index in the mapped table and returns what it held
// (ptep_get_and_clear). An exchange, so that in lockless mode a racing
// fault's entry is either cleared here or not there yet.
template <class G>
typename G::entry_t pte_get_and_clear(const pte_map<G> &map, unsigned index = 0) PTL_REQUIRES(map)
{
	return map.pte[index].exchange(0, std::memory_order_acq_rel);
}

} // namespace ptl::mm
