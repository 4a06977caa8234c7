#pragma once
// The fault path below the VMA checks (Linux's handle_pte_fault,
// do_anonymous_page and vmf_insert_pfn).
//
// handle_pte_fault and insert_pfn are called with the mmap_lock held shared,
// so the VMA cannot change, and with no page-table lock held. Each walks
// down with pmd_alloc_walk, takes the PTE lock with pte_alloc_map_lock,
// installs at most one PTE, and returns with no lock held, on success and
// on failure. In legacy mode a walk_guard holds page_table_lock across the
// whole walk instead; in lockless mode there is no PTE lock and the PTE is
// installed with compare-and-swap.

#include <ptl/base/hooks.hpp>
#include <ptl/mm/pte_lock.hpp>
#include <ptl/user/vma.hpp>

namespace ptl::user {

using arch::level;

// Effect of a fault or insert_pfn on the PTE.
enum class fault_outcome {
	mapped_anon,    // installed a new anonymous data frame
	mapped_pfn,     // installed a frame of a PFN-mapped VMA
	already_mapped, // found the PTE installed (by a racing fault) and left it
};

namespace detail {

template <class G>
using slot_t = typename mm::mm_struct<G>::slot_t;

// PTE flags for a page of vma that is installed on an access of kind a.
template <class G>
uint64_t fault_prot(const vm_area &vma, access_type a)
{
	uint64_t prot = vm_page_prot<G>(vma) | arch::prot_accessed;

	if (a == access_type::write)
		prot |= arch::prot_dirty;
	return prot;
}

// Publishes a new PTE in the empty slot. Under a PTE lock it cannot fail;
// in lockless mode it fails when a racing fault installed the PTE first.
// Release pairs with the acquire loads of lockless walkers (translate,
// walk_range), so a walker that sees the entry also sees the zeroed data
// frame behind it.
template <class G>
bool set_pte(mm::mm_struct<G> &mm, const mm::pte_map<G> &map, pfn_t pfn, uint64_t prot) PTL_REQUIRES(map)
{
	using format = typename G::format;
	return mm::pte_install(mm, map, typename G::entry_t{0},
			       static_cast<typename G::entry_t>(format::make(pfn, prot)));
}

// Sets accessed, and dirty for a write, on a PTE that is already installed,
// as Linux's ptep_set_access_flags does. An atomic OR, so it cannot undo a
// change that a lockless fault made meanwhile.
template <class G>
void mark_accessed(const mm::pte_map<G> &map, typename G::entry_t entry, access_type a) PTL_REQUIRES(map)
{
	uint64_t prot = arch::prot_accessed;

	if (a == access_type::write)
		prot |= arch::prot_dirty;

	const auto bits = G::format::flag_bits(prot);
	if ((entry & bits) != bits)
		mm::pte_set_flags(map, bits);
}

// Allocates a zeroed data frame and maps it. Called with the PTE lock held
// and the PTE empty. Releases the lock, also on failure.
template <class G>
result<fault_outcome> do_anonymous_page(mm::mm_struct<G> &mm, const vm_area &vma, mm::pte_map<G> &map, access_type a)
	PTL_RELEASE(map)
{
	// The frame is allocated under the PTE lock, after the re-check, so a
	// fault that lost the race allocates nothing. This is safe only
	// because the pool never sleeps or takes a lock.
	auto frame = mm.pool().alloc(phys::alloc_site::data);
	if (!frame) {
#if !defined(PTL_MUTANT_NO_UNLOCK_ON_FAIL)
		mm::pte_unmap_unlock(map);
#endif
		return fail(errc::no_memory);
	}

	if (!set_pte(mm, map, *frame, fault_prot<G>(vma, a))) {
		// Lockless mode only: a racing fault won the slot.
		mm.pool().free(*frame);
		mark_accessed<G>(map, mm::pte_read(map), a);
		mm::pte_unmap_unlock(map);
		return fault_outcome::already_mapped;
	}
	mm::pte_unmap_unlock(map);
	return fault_outcome::mapped_anon;
}

// Maps the frame a linear PFN-mapped VMA has at addr. Called with the PTE
// lock held and the PTE empty. Releases the lock. Fails with not_found when
// the VMA has no pfn_base, because its pages come only from insert_pfn.
template <class G>
result<fault_outcome> do_linear_pfn_page(mm::mm_struct<G> &mm, const vm_area &vma, mm::pte_map<G> &map,
					  uint64_t addr, access_type a) PTL_RELEASE(map)
{
	const auto pfn = vma.linear_pfn(addr);
	if (!pfn) {
		mm::pte_unmap_unlock(map);
		return fail(errc::not_found);
	}

	const bool installed = set_pte(mm, map, *pfn, fault_prot<G>(vma, a));
	mm::pte_unmap_unlock(map);
	return installed ? fault_outcome::mapped_pfn : fault_outcome::already_mapped;
}

} // namespace detail

// Installs the page of vma at the page-aligned addr, which the caller has
// checked vma permits for an access of kind a.
template <class G>
result<fault_outcome> handle_pte_fault(mm::mm_struct<G> &mm, const vm_area &vma, uint64_t addr, access_type a)
{
	mm::walk_guard<G> walk(mm);

	auto pmd = mm::pmd_alloc_walk(mm, addr);
	if (!pmd)
		return fail(pmd.error());

	mm::pte_map<G> map;
	errc error{};
	if (!mm::pte_alloc_map_lock(mm, *pmd, addr, map, error))
		return fail(error);
	PTL_HOOK(hooks::point::fault_locked, arch::level_index(level::pte), addr, &mm);

	// Re-check under the lock: another thread may have faulted the page in
	// since this one found it missing.
	const auto entry = mm::pte_read(map);
	if (!G::format::none(entry)) {
		detail::mark_accessed<G>(map, entry, a);
		mm::pte_unmap_unlock(map);
		return fault_outcome::already_mapped;
	}

	if (vma.is_anonymous())
		return detail::do_anonymous_page(mm, vma, map, a);
	return detail::do_linear_pfn_page(mm, vma, map, addr, a);
}

// Maps pfn at the page-aligned addr of a PFN-mapped vma (vmf_insert_pfn).
// Inserting the frame that is already there succeeds and changes nothing.
// Fails with exists when a different frame is mapped at addr.
template <class G>
result<fault_outcome> insert_pfn(mm::mm_struct<G> &mm, const vm_area &vma, uint64_t addr, pfn_t pfn)
{
	mm::walk_guard<G> walk(mm);

	auto pmd = mm::pmd_alloc_walk(mm, addr);
	if (!pmd)
		return fail(pmd.error());

	mm::pte_map<G> map;
	errc error{};
	if (!mm::pte_alloc_map_lock(mm, *pmd, addr, map, error))
		return fail(error);

	const bool installed = detail::set_pte(mm, map, pfn, vm_page_prot<G>(vma) | arch::prot_accessed);
	const auto entry = mm::pte_read(map);
	mm::pte_unmap_unlock(map);

	if (installed)
		return fault_outcome::mapped_pfn;
	if (G::format::pfn(entry) != pfn)
		return fail(errc::exists);
	return fault_outcome::already_mapped;
}

} // namespace ptl::user
