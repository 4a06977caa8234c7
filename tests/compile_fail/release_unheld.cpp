// Releasing a lock that is not held. With PTL_BREAK defined this must not
// build.

#include <ptl/mm/pte_lock.hpp>

using G = ptl::arch::x86_64;

void lock_and_release(ptl::sync::spinlock &lock)
{
	lock.lock();
	lock.unlock();
}

void map_and_unmap(ptl::mm::mm_struct<G> &mm, ptl::mm::mm_struct<G>::slot_t *pmd, uint64_t addr)
{
	ptl::mm::pte_map<G> map;
	ptl::mm::pte_offset_map_lock(mm, pmd, addr, map);
	ptl::mm::pte_unmap_unlock(map);
}

#if defined(PTL_BREAK)
void release_without_lock(ptl::sync::spinlock &lock)
{
	lock.unlock();
}

void release_twice(ptl::mm::mm_struct<G> &mm, ptl::mm::mm_struct<G>::slot_t *pmd, uint64_t addr)
{
	ptl::mm::pte_map<G> map;
	ptl::mm::pte_offset_map_lock(mm, pmd, addr, map);
	ptl::mm::pte_unmap_unlock(map);
	ptl::mm::pte_unmap_unlock(map);
}
#endif
