#pragma once
// fork's page-table copy (Linux's copy_page_range, called by dup_mmap for
// each VMA of the parent).
//
// The child's tables are populated and the parent's installed PTEs copied
// into them, one PTE table at a time:
//   private anonymous  the frame gains a reference, and a writable PTE is
//                      write-protected in the parent and in the child, so
//                      the first write on either side copies the frame
//                      (copy-on-write, see do_wp_page in fault.hpp).
//   shared anonymous   the frame gains a reference and both PTEs keep
//                      their protection, so writes reach both sides.
//   PFN-mapped         the entry is copied as it is: the pool does not own
//                      those frames, and Linux copies PFN maps without COW.
// The child's copy is marked old (accessed cleared), as Linux's is.
//
// Locking: the caller holds the parent's mmap_lock exclusively, so no fault
// changes the parent's PTEs meanwhile, and the child is not reachable by any
// other thread yet. For each pair of PTE tables the child's (destination)
// PTE lock is taken first and the parent's (source) second, as Linux's
// copy_pte_range takes them (the second with spin_lock_nested). The two
// locks belong to different address spaces, and the child's never guards a
// table that another thread can reach, so two forks cannot wait on each
// other in a cycle. In legacy mode the two locks are the two mms'
// page_table_locks, held in the same order across the pair's walk.

#include <ptl/mm/pte_lock.hpp>
#include <ptl/user/huge.hpp>
#include <ptl/user/mprotect.hpp>
#include <ptl/user/vma.hpp>
#include <ptl/user/zap.hpp>

namespace ptl::user {

// Counts of the PTEs that fork copied into the child.
struct copy_counts {
	uint64_t pages = 0;      // PTEs copied
	uint64_t anon_pages = 0; // of those, anonymous pages whose frame gained a reference
};

namespace detail {

// Whether fork write-protects the writable PTEs of vma (is_cow_mapping).
inline bool is_cow_mapping(const vm_area &vma)
{
	return vma.is_anonymous() && !(vma.flags & vm_shared);
}

// The parent's entry for the copy: write-protected in place when the VMA
// is copy-on-write and the entry writable (ptep_set_wrprotect).
template <class G>
typename G::entry_t wrprotect_source(const mm::pte_map<G> &src_map, unsigned index, const vm_area &vma)
	PTL_REQUIRES(src_map)
{
	const auto entry = src_map.pte[index].load(std::memory_order_relaxed);
	if (!is_cow_mapping(vma) || !pte_write<G>(entry))
		return entry;

#if defined(PTL_MUTANT_FORK_NO_WRPROTECT)
	// Broken on purpose: the parent's PTE stays writable, so the parent's
	// writes land in the frame that the child now maps too.
	return wrprotect_entry<G>(entry);
#else
	pte_modify(src_map, index, [](auto old) { return wrprotect_entry<G>(old); });
	return wrprotect_entry<G>(src_map.pte[index].load(std::memory_order_relaxed));
#endif
}

// Copies the parent's PTE at index into the child's empty slot at the same
// index (copy_present_pte).
template <class G>
void copy_one_pte(phys::frame_pool &pool, const vm_area &vma, const mm::pte_map<G> &dst_map,
		  const mm::pte_map<G> &src_map, unsigned index, copy_counts &counts) PTL_REQUIRES(dst_map, src_map)
{
	using format = typename G::format;

	if (format::none(src_map.pte[index].load(std::memory_order_relaxed)))
		return;

	const auto entry = wrprotect_source(src_map, index, vma);
	if (vma.is_anonymous()) {
		pool.get_page(format::pfn(entry));
		counts.anon_pages++;
	}
	counts.pages++;

	const uint64_t prot = format::prot(entry) & ~uint64_t{arch::prot_accessed};
	const auto copy = static_cast<typename G::entry_t>(format::make(format::pfn(entry), prot));

	assert(format::none(dst_map.pte[index].load(std::memory_order_relaxed)) && "the child's PTE is taken");
	// Release pairs with the acquire loads of lockless walkers of the child.
	dst_map.pte[index].store(copy, std::memory_order_release);
}

// Copies the PTEs of [addr, end), which lies inside one PTE table, from the
// parent's table below src_pmd to the child's below dst_pmd.
template <class G>
void copy_pte_range(mm::mm_struct<G> &dst, mm::mm_struct<G> &src, const vm_area &vma,
		    typename mm::mm_struct<G>::slot_t *dst_pmd, typename mm::mm_struct<G>::slot_t *src_pmd,
		    uint64_t addr, uint64_t end, copy_counts &counts)
{
	// The child's PTE lock first, then the parent's (see the file comment).
	mm::pte_map<G> dst_map;
	mm::pte_offset_map_lock(dst, dst_pmd, addr, dst_map);
	mm::pte_map<G> src_map;
	mm::pte_offset_map_lock(src, src_pmd, addr, src_map);

	for (unsigned i = 0; addr != end; addr += arch::page_size, i++)
		copy_one_pte(src.pool(), vma, dst_map, src_map, i, counts);

	mm::pte_unmap_unlock(src_map);
	mm::pte_unmap_unlock(dst_map);
}

// Populates the child's tables down to the PTE table for addr and copies
// the parent's PTEs of [addr, end) below src_pmd into it. Fails with
// no_memory, and no lock held, when the pool cannot supply a table.
template <class G>
result<void> copy_pmd_span(mm::mm_struct<G> &dst, mm::mm_struct<G> &src, const vm_area &vma,
			   typename mm::mm_struct<G>::slot_t *src_pmd, uint64_t addr, uint64_t end,
			   copy_counts &counts)
{
	// In legacy mode each guard holds its mm's page_table_lock: the
	// child's across its populate, then the parent's as well.
	mm::walk_guard<G> dst_walk(dst);

	auto dst_pmd = mm::pmd_alloc_walk(dst, addr);
	if (!dst_pmd)
		return fail(dst_pmd.error());
	auto table = mm::pte_alloc(dst, *dst_pmd, addr);
	if (!table)
		return table;

	mm::walk_guard<G> src_walk(src);
	copy_pte_range(dst, src, vma, *dst_pmd, src_pmd, addr, end, counts);
	return {};
}

// Splits the parent's huge leaf in *pmd into a PTE table of the same frames
// before the copy, so that each frame gets its own reference and its own
// copy-on-write fault (Linux shares the whole huge page instead).
template <class G>
result<void> split_source_leaf(mm::mm_struct<G> &src, typename mm::mm_struct<G>::slot_t *pmd, uint64_t addr)
{
	mm::walk_guard<G> walk(src);
	return split_huge_pmd(src, pmd, addr);
}

} // namespace detail

// Copies the installed PTEs of vma from the parent src to the child dst
// (copy_page_range), adding what it copied to counts. The caller holds
// src's mmap_lock exclusively and no page-table lock, and dst already has
// vma. Fails with no_memory when the pool cannot supply a child's table, or
// the parent's table that splitting a huge leaf needs.
// The PTEs copied until then stay in dst, for its teardown to zap.
template <class G>
result<void> copy_page_range(mm::mm_struct<G> &dst, mm::mm_struct<G> &src, const vm_area &vma, copy_counts &counts)
{
	uint64_t addr = vma.start;

	while (addr != vma.end) {
		// The parent's tables cannot change: its mmap_lock is held
		// exclusively, and only an unmap frees tables.
		const auto found = detail::find_pmd(src, addr);
		if (!found.pmd) {
			addr = arch::entry_end<G>(found.empty_level, addr, vma.end);
			continue;
		}

		if (G::format::huge(found.pmd->load(std::memory_order_acquire))) {
			auto split = detail::split_source_leaf(src, found.pmd, addr);
			if (!split)
				return split;
		}

		const uint64_t next = arch::entry_end<G>(level::pmd, addr, vma.end);
		auto copied = detail::copy_pmd_span(dst, src, vma, found.pmd, addr, next, counts);
		if (!copied)
			return copied;
		addr = next;
	}
	return {};
}

} // namespace ptl::user
