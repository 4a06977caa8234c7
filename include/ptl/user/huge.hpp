#pragma once
// Huge pmd leaves in user address spaces: an anonymous VMA created with
// map_huge maps each aligned pmd-sized block it wholly contains with one pmd
// leaf and a physically contiguous run of frames (transparent huge pages,
// reduced to their page-table part). A block the VMA does not wholly
// contain, or one the pool cannot supply contiguously, falls back to small
// pages, as Linux's THP does.
//
// Locking: a pmd entry changes between none, a PTE table and a huge leaf
// only under pmd_lock, the lock that populating it with a PTE table takes,
// or by compare-and-swap in lockless mode. pmd_lock is page_table_lock, or
// the pmd table's own lock in split mode with split pmd locks, or in legacy
// mode the walk's page_table_lock. So a fault that populates a PTE table
// and a fault that installs a huge leaf in the same entry race like two
// populates: one wins, the other finds the winner's entry and retries.
//
// A huge leaf is split into a PTE table of the same frames (split_huge_pmd)
// before anything changes part of it: munmap and mprotect split the leaves
// that cross their ends, under the mmap_lock held exclusively.

#include <ptl/mm/populate.hpp>
#include <ptl/mm/pte_lock.hpp>
#include <ptl/user/vma.hpp>

#include <optional>

namespace ptl::user {

using arch::level;

// Whether the geometry has a pmd level of its own to hold huge leaves. On
// i386 without PAE the pmd is folded into the pgd.
// NOTE: i386's 4 MiB PSE leaves in the page directory are not modelled.
template <class G>
constexpr bool huge_pmd_supported()
{
	return !arch::is_folded<G>(level::pmd);
}

// Bytes and base pages one huge pmd leaf maps.
template <class G>
constexpr uint64_t huge_pmd_size()
{
	return arch::entry_span<G>(level::pmd);
}

template <class G>
constexpr uint64_t huge_pmd_pages()
{
	return huge_pmd_size<G>() / arch::page_size;
}

namespace detail {

// The lock that guards changes of *pmd, or null where the mode takes none
// here (lockless) or the caller's walk already holds it (legacy).
template <class G>
sync::spinlock *pmd_lock(mm::mm_struct<G> &mm, typename mm::mm_struct<G>::slot_t *pmd)
{
	switch (mm.mode()) {
	case mm::lock_mode::legacy:
	case mm::lock_mode::lockless:
		return nullptr;
	case mm::lock_mode::pushdown:
	case mm::lock_mode::split:
		break;
	}
	return &mm::detail::populate_lock(mm, pmd, level::pte);
}

// Replaces *pmd with value if it still holds expected, under pmd_lock or by
// compare-and-swap. Returns whether it did.
template <class G>
bool pmd_install(mm::mm_struct<G> &mm, typename mm::mm_struct<G>::slot_t *pmd, typename G::entry_t expected,
		 typename G::entry_t value) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	if (mm.mode() == mm::lock_mode::lockless)
		return pmd->compare_exchange_strong(expected, value, std::memory_order_release,
						    std::memory_order_relaxed);

	sync::spinlock *lock = pmd_lock(mm, pmd);
	if (lock)
		lock->lock();

	// Re-check under the lock; release pairs with the walkers' acquire.
	const bool same = pmd->load(std::memory_order_relaxed) == expected;
	if (same)
		pmd->store(value, std::memory_order_release);

	if (lock)
		lock->unlock();
	return same;
}

template <class G>
uint64_t huge_fault_prot(const vm_area &vma, access_type a)
{
	uint64_t prot = vm_page_prot<G>(vma) | arch::prot_accessed | arch::prot_huge;
	if (a == access_type::write)
		prot |= arch::prot_dirty;
	return prot;
}

} // namespace detail

// Whether a fault at addr in vma may be served with a huge pmd leaf: the
// VMA asked for one, is anonymous and private, and wholly contains the
// aligned block around addr.
template <class G>
bool huge_fault_allowed(const vm_area &vma, uint64_t addr)
{
	if constexpr (!huge_pmd_supported<G>()) {
		return false;
	} else {
		const uint64_t block = addr & ~(huge_pmd_size<G>() - 1);
		return vma.is_huge() && vma.is_anonymous() && !(vma.flags & vm_shared) && block >= vma.start &&
		       vma.end - block >= huge_pmd_size<G>();
	}
}

// do_huge_pmd_anonymous_page: maps the block around addr with one huge leaf
// of freshly allocated contiguous frames, if *pmd is still empty. Returns
// false when the caller must fall back to small pages: no contiguous run
// was free, or a racing fault populated the entry first (its PTE table or
// its huge leaf then remains).
template <class G>
bool do_huge_pmd_anonymous_page(mm::mm_struct<G> &mm, const vm_area &vma, typename mm::mm_struct<G>::slot_t *pmd,
				uint64_t addr, access_type a)
{
	if (!G::format::none(pmd->load(std::memory_order_acquire)))
		return false;

	auto frames = mm.pool().alloc_contig(huge_pmd_pages<G>(), phys::alloc_site::data);
	if (!frames)
		return false;

	const auto leaf = static_cast<typename G::entry_t>(G::format::make(*frames, detail::huge_fault_prot<G>(vma, a)));
	if (detail::pmd_install(mm, pmd, 0, leaf))
		return true;

	// Lost the entry to a racing fault, so no other thread saw these frames.
	for (uint64_t i = 0; i < huge_pmd_pages<G>(); i++)
		mm.pool().free(*frames + i);
	(void)addr;
	return false;
}

// split_huge_pmd: replaces the huge leaf in *pmd with a PTE table that maps
// the same frames with the same protection, one PTE per base page. Called
// with the mmap_lock held exclusively, and in legacy mode inside a
// walk_guard. Fails with no_memory, leaving the leaf, when no table can be
// allocated.
template <class G>
result<void> split_huge_pmd(mm::mm_struct<G> &mm, typename mm::mm_struct<G>::slot_t *pmd, uint64_t addr)
{
	using format = typename G::format;
	const auto leaf = pmd->load(std::memory_order_acquire);
	if (!format::present(leaf) || !format::huge(leaf))
		return {};

	auto table = mm::detail::alloc_table(mm, level::pte, addr);
	if (!table)
		return fail(table.error());

	// Fill the table before it is published, while no other thread can see it.
	auto *ptes = mm.table(*table);
	const uint64_t prot = format::prot(leaf) & ~uint64_t{arch::prot_huge};
	for (uint64_t i = 0; i < huge_pmd_pages<G>(); i++)
		ptes[i].store(static_cast<typename G::entry_t>(format::make(format::pfn(leaf) + i, prot)),
			      std::memory_order_relaxed);

	if (!detail::pmd_install(mm, pmd, leaf, mm::detail::table_entry(mm, level::pte, *table))) {
		// Only an exclusive mmap_lock holder changes a huge leaf.
		assert(!"a huge leaf changed under the mmap_lock held exclusively");
		mm.pool().free(*table);
		return fail(errc::busy);
	}

	mm.account_table(level::pte, +1);
	mm.note_populate();
	return {};
}

namespace detail {

// The pmd entry that maps addr, or the level of the first empty entry on
// the way down. A walk over a range skips the span of that empty entry.
template <class G>
struct pmd_lookup {
	typename mm::mm_struct<G>::slot_t *pmd;
	level empty_level;
};

// Walks down to the pmd entry without populating anything (pmd_offset after
// checking each level above). The pmd entry it returns is not empty: a PTE
// table or a huge leaf.
template <class G>
pmd_lookup<G> find_pmd(const mm::mm_struct<G> &mm, uint64_t addr)
{
	using format = typename G::format;
	auto *entry = mm.pgd_offset(addr);
	level entry_level = level::pgd;

	for (level l : {level::p4d, level::pud, level::pmd}) {
		if (arch::is_folded<G>(l))
			continue;
		if (format::none(entry->load(std::memory_order_acquire)))
			return {nullptr, entry_level};
		entry = mm::entry_offset(mm, entry, l, addr);
		entry_level = l;
	}

	const auto pmd = entry->load(std::memory_order_acquire);
	if (format::none(pmd))
		return {nullptr, level::pmd};
	return {entry, level::pmd};
}

} // namespace detail

// Splits the huge leaf that maps addr, if there is one and addr is not at
// its start: the step before changing [addr, ...) or [..., addr) only.
template <class G>
result<void> split_huge_pmd_address(mm::mm_struct<G> &mm, uint64_t addr)
{
	if constexpr (!huge_pmd_supported<G>()) {
		return {};
	} else {
		if ((addr & (huge_pmd_size<G>() - 1)) == 0)
			return {};

		auto *pmd = detail::find_pmd(mm, addr).pmd;
		if (!pmd)
			return {};
		return split_huge_pmd(mm, pmd, addr);
	}
}

} // namespace ptl::user
