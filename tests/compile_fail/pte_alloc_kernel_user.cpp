// pte_alloc_kernel works only on the kernel address space: an entry of a
// user address space cannot be passed to it. With PTL_BREAK defined this
// must not build.

#include <ptl/mm/populate.hpp>

using G = ptl::arch::x86_64;

void populate_kernel(ptl::mm::kernel_mm<G> &init_mm, uint64_t addr)
{
	auto pmd = ptl::mm::pmd_alloc_walk(init_mm, addr);
	if (pmd)
		(void)ptl::mm::pte_alloc_kernel(ptl::mm::kernel_pmd<G>(init_mm, *pmd), addr);
}

#if defined(PTL_BREAK)
void populate_user(ptl::mm::mm_struct<G> &user_mm, uint64_t addr)
{
	auto pmd = ptl::mm::pmd_alloc_walk(user_mm, addr);
	if (pmd)
		(void)ptl::mm::pte_alloc_kernel(ptl::mm::kernel_pmd<G>(user_mm, *pmd), addr);
}
#endif
