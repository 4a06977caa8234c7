// The fault path must drop the PTE lock when its data-frame allocation
// fails. With PTL_BREAK defined, the broken variant that skips that unlock
// is compiled, and the thread-safety analysis must reject it.

#if defined(PTL_BREAK)
#define PTL_MUTANT_NO_UNLOCK_ON_FAIL 1
#endif

#include <ptl/user/fault.hpp>

using G = ptl::arch::x86_64;

ptl::result<ptl::user::fault_outcome> fault(ptl::mm::mm_struct<G> &mm, const ptl::user::vm_area &vma, uint64_t addr)
{
	return ptl::user::handle_pte_fault(mm, vma, addr, ptl::user::access_type::write);
}
