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
#include <ptl/user/huge.hpp>
#include <ptl/user/vma.hpp>

#include <cstring>

namespace ptl::user {

using arch::level;

// Effect of a fault or insert_pfn on the PTE.
enum class fault_outcome {
	mapped_anon,    // installed a new anonymous data frame
	mapped_pfn,     // installed a frame of a PFN-mapped VMA
	already_mapped, // found the PTE installed (by a racing fault) and left it
	wp_reused,      // made a write-protected PTE writable, keeping its frame
	wp_copied,      // replaced a write-protected PTE's shared frame with a copy
	mapped_huge,    // installed a huge pmd leaf of new contiguous data frames
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

// Whether a present PTE allows writing.
template <class G>
bool pte_write(typename G::entry_t entry)
{
	return (G::format::prot(entry) & arch::prot_write) != 0;
}

// The entry that maps pfn with the protection of entry plus write,
// accessed and dirty (maybe_mkwrite(pte_mkdirty(pte_mkyoung(pte)))).
template <class G>
typename G::entry_t mkwrite_entry(typename G::entry_t entry, pfn_t pfn)
{
	const uint64_t prot = G::format::prot(entry) | arch::prot_write | arch::prot_accessed | arch::prot_dirty;
	return static_cast<typename G::entry_t>(G::format::make(pfn, prot));
}

// Legacy mode only: drops and retakes the page_table_lock that the caller's
// walk_guard holds, around a step that must run without it, as the fault
// path did before the push-down.
template <class G>
void legacy_walk_unlock(mm::mm_struct<G> &mm) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	if (mm.mode() == mm::lock_mode::legacy)
		mm.page_table_lock.unlock();
}

template <class G>
void legacy_walk_relock(mm::mm_struct<G> &mm) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	if (mm.mode() == mm::lock_mode::legacy)
		mm.page_table_lock.lock();
}

// Makes the write-protected PTE writable in place (wp_page_reuse). Called
// with the PTE lock held and entry read under it. Releases the lock. In
// lockless mode the compare-and-swap fails when a racing fault changed the
// PTE first, and that fault's entry is kept.
template <class G>
fault_outcome wp_page_reuse(mm::mm_struct<G> &mm, mm::pte_map<G> &map, typename G::entry_t entry) PTL_RELEASE(map)
{
	const bool installed = mm::pte_install(mm, map, entry, mkwrite_entry<G>(entry, G::format::pfn(entry)));

	mm::pte_unmap_unlock(map);
	return installed ? fault_outcome::wp_reused : fault_outcome::already_mapped;
}

// Sets the new PTE after the unlocked copy. Returns whether it was set.
template <class G>
bool install_wp_copy(mm::mm_struct<G> &mm, const mm::pte_map<G> &map, typename G::entry_t old_entry,
		     typename G::entry_t new_entry) PTL_REQUIRES(map)
{
#if defined(PTL_MUTANT_WP_NO_RECHECK)
	// Broken on purpose: the copy replaces whatever the PTE contains now,
	// even when a racing fault already replaced the shared frame.
	(void)mm;
	(void)old_entry;
	map.pte->store(new_entry, std::memory_order_release);
	return true;
#else
	// Re-check: while the lock was dropped, another thread of this address
	// space may have broken the sharing of this very PTE. Its frame then
	// stays, and our copy is surplus.
	return mm::pte_install(mm, map, old_entry, new_entry);
#endif
}

// Replaces the PTE's shared frame with a private copy (wp_page_copy).
// Called with the PTE lock held and entry read under it; releases it. The
// lock is dropped while the new frame is allocated and filled, as Linux
// drops it because allocation may sleep. A reference on the old frame keeps
// it from being freed meanwhile: the other address spaces that share it
// may zap it or copy it away.
template <class G>
result<fault_outcome> wp_page_copy(mm::mm_struct<G> &mm, slot_t<G> *pmd, uint64_t addr, mm::pte_map<G> &map,
				   typename G::entry_t entry) PTL_RELEASE(map)
{
	phys::frame_pool &pool = mm.pool();
	const pfn_t old_pfn = G::format::pfn(entry);

	pool.get_page(old_pfn);
	mm::pte_unmap_unlock(map);
	legacy_walk_unlock(mm);
	PTL_HOOK(hooks::point::wp_copy_unlocked, arch::level_index(level::pte), addr, &mm);

	auto frame = pool.alloc(phys::alloc_site::data);
	if (frame)
		std::memcpy(pool.frame_address(*frame), pool.frame_address(old_pfn), phys::frame_size);

	legacy_walk_relock(mm);
	if (!frame) {
		pool.put_page(old_pfn);
		return fail(errc::no_memory);
	}

	mm::pte_offset_map_lock(mm, pmd, addr, map);
	const bool installed = install_wp_copy(mm, map, entry, mkwrite_entry<G>(entry, *frame));
	mm::pte_unmap_unlock(map);

	// Frames are freed after the PTE lock is dropped, as zap frees them.
	pool.put_page(old_pfn);
	if (!installed) {
		pool.put_page(*frame);
		return fault_outcome::already_mapped;
	}
	pool.put_page(old_pfn); // the reference of the PTE just replaced
	return fault_outcome::wp_copied;
}

// Handles a write fault on a present, write-protected PTE of a VMA that
// permits writing (do_wp_page). Called with the PTE lock held and entry
// read under it; releases the lock. An anonymous page whose frame only this
// PTE maps is made writable in place. A frame that other PTEs still map
// (after fork) is copied first. A shared or PFN-mapped VMA's frame is never
// copied: writes there are meant to reach every mapping.
template <class G>
result<fault_outcome> do_wp_page(mm::mm_struct<G> &mm, const vm_area &vma, slot_t<G> *pmd, uint64_t addr,
				 mm::pte_map<G> &map, typename G::entry_t entry) PTL_RELEASE(map)
{
	if (vma.is_pfnmap() || (vma.flags & vm_shared))
		return wp_page_reuse(mm, map, entry);

	// Only a fork of this address space adds a reference, and fork holds
	// the mmap_lock exclusively, which this fault holds shared: a count
	// of 1 stays 1 until the lock is dropped.
	if (mm.pool().page_count(G::format::pfn(entry)) == 1)
		return wp_page_reuse(mm, map, entry);
	return wp_page_copy(mm, pmd, addr, map, entry);
}

// A fault in a block that a huge leaf maps (huge_pmd_fault reduced to the
// cases ptl has): a write to a leaf that mprotect made read-only in a VMA
// that is writable again makes it writable in place; otherwise the page is
// there, and the leaf gets its accessed and dirty bits. Huge leaves are
// never shared (fork splits them), so no copy is needed.
template <class G>
fault_outcome huge_pmd_fault(mm::mm_struct<G> &mm, slot_t<G> *pmd, access_type a)
{
	const auto leaf = pmd->load(std::memory_order_acquire);
	if (a == access_type::write && !pte_write<G>(leaf)) {
		const auto writable = mkwrite_entry<G>(leaf, G::format::pfn(leaf)) | arch::prot_huge;
		if (pmd_install(mm, pmd, leaf, static_cast<typename G::entry_t>(writable)))
			return fault_outcome::wp_reused;
		return fault_outcome::already_mapped;
	}

	// Accessed and dirty through the format, whose bits need not be the
	// neutral ones. A racing change of the leaf wins: the bits are hints.
	const uint64_t bits = arch::prot_accessed | (a == access_type::write ? uint64_t{arch::prot_dirty} : 0);
	const auto marked = G::format::make(G::format::pfn(leaf), G::format::prot(leaf) | bits);
	if (marked != leaf)
		pmd_install(mm, pmd, leaf, static_cast<typename G::entry_t>(marked));
	return fault_outcome::already_mapped;
}

} // namespace detail

// Installs the page of vma at the page-aligned addr, which the caller has
// checked vma permits for an access of kind a. A write to a present,
// write-protected page breaks its copy-on-write sharing (do_wp_page).
template <class G>
result<fault_outcome> handle_pte_fault(mm::mm_struct<G> &mm, const vm_area &vma, uint64_t addr, access_type a)
{
	mm::walk_guard<G> walk(mm);

	auto pmd = mm::pmd_alloc_walk(mm, addr);
	if (!pmd)
		return fail(pmd.error());

	if (huge_fault_allowed<G>(vma, addr) && do_huge_pmd_anonymous_page(mm, vma, *pmd, addr, a))
		return fault_outcome::mapped_huge;

	mm::pte_map<G> map;
	errc error{};
	if (!mm::pte_alloc_map_lock(mm, *pmd, addr, map, error)) {
		// A huge leaf maps the block, installed before this fault or
		// by a racing one.
		if (error == errc::busy)
			return detail::huge_pmd_fault(mm, *pmd, a);
		return fail(error);
	}
	PTL_HOOK(hooks::point::fault_locked, arch::level_index(level::pte), addr, &mm);

	// Re-check under the lock: another thread may have faulted the page in
	// since this one found it missing.
	const auto entry = mm::pte_read(map);
	if (a == access_type::write && G::format::present(entry) && !detail::pte_write<G>(entry))
		return detail::do_wp_page(mm, vma, *pmd, addr, map, entry);
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
