// Changing a PTE needs its PTE lock. With PTL_BREAK defined this must not
// build.

#include <ptl/mm/pte_lock.hpp>

using G = ptl::arch::x86_64;

bool install_locked(ptl::mm::mm_struct<G> &mm, ptl::mm::mm_struct<G>::slot_t *pmd, uint64_t addr, uint64_t entry)
{
	ptl::mm::pte_map<G> map;
	ptl::mm::pte_offset_map_lock(mm, pmd, addr, map);
	const bool installed = ptl::mm::pte_install(mm, map, 0, entry);
	ptl::mm::pte_unmap_unlock(map);
	return installed;
}

#if defined(PTL_BREAK)
bool install_after_unlock(ptl::mm::mm_struct<G> &mm, ptl::mm::mm_struct<G>::slot_t *pmd, uint64_t addr,
			  uint64_t entry)
{
	ptl::mm::pte_map<G> map;
	ptl::mm::pte_offset_map_lock(mm, pmd, addr, map);
	ptl::mm::pte_unmap_unlock(map);
	return ptl::mm::pte_install(mm, map, 0, entry);
}
#endif
