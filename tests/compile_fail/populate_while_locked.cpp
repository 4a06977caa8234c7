// Calling a populate function while holding the lock it takes would
// deadlock on a spinlock. With PTL_BREAK defined this must not build.

#include <ptl/mm/populate.hpp>

using G = ptl::arch::x86_64;

void populate_unlocked(ptl::mm::mm_struct<G> &mm, uint64_t addr)
{
	(void)ptl::mm::pmd_alloc_walk(mm, addr);
}

#if defined(PTL_BREAK)
void populate_locked(ptl::mm::mm_struct<G> &mm, uint64_t addr)
{
	ptl::sync::spin_guard guard(mm.page_table_lock);
	(void)ptl::mm::pmd_alloc_walk(mm, addr);
}
#endif
