#pragma once
// Populating a missing level: the pushed-down page_table_lock protocol.
//
//   1. Fast path: test the entry with no lock (pXd_alloc inline part).
//   2. Slow path (__pXd_alloc): allocate a zeroed table with no lock held,
//      because allocation may fail (or, in a kernel, sleep).
//   3. Take page_table_lock and re-check the entry: a racing task may have
//      populated it meanwhile. If so, the new table is surplus; otherwise
//      publish it with a release store.
//   4. Drop the lock, then free a surplus table. On allocation failure
//      return errc::no_memory with no lock held and nothing allocated.
//
// Callers never hold page_table_lock when they call these functions.

#include <ptl/base/hooks.hpp>
#include <ptl/mm/mm.hpp>

namespace ptl::mm {

namespace detail {

constexpr phys::alloc_site site_for(level l)
{
	return static_cast<phys::alloc_site>(arch::level_index(l));
}

// Installs the new table in *parent unless a racing task did so first.
// Returns whether the table was published.
template <class G>
bool publish_table(mm_struct<G> &mm, typename mm_struct<G>::slot_t *parent, level l, pfn_t new_table)
	PTL_EXCLUDES(mm.page_table_lock)
{
	using format = typename G::format;
	sync::spin_guard guard(mm.page_table_lock);

#if !defined(PTL_MUTANT_NO_RECHECK)
	// Another task may have populated the entry between our lockless
	// check and taking the lock; publishing now would orphan its table.
	if (!format::none(parent->load(std::memory_order_relaxed)))
		return false;
#endif

	mm.account_table(l, +1);
	mm.note_populate();

	// Release pairs with the acquire load of every walker (pXd_offset,
	// translate, the fast path above): it sees the zeroed table, and the
	// owner recorded in its page, before it sees the entry.
	parent->store(static_cast<typename G::entry_t>(format::make(new_table, mm.table_prot())),
		      std::memory_order_release);
	return true;
}

} // namespace detail

// Slow path: allocates a table of level l and installs it in *parent, the
// entry one level up that covers addr. Linux's __pud_alloc, __pmd_alloc and
// __pte_alloc.
template <class G>
result<void> populate(mm_struct<G> &mm, typename mm_struct<G>::slot_t *parent, level l, uint64_t addr)
	PTL_EXCLUDES(mm.page_table_lock)
{
	auto new_table = mm.pool().alloc(detail::site_for(l));
	if (!new_table)
		return fail(new_table.error());

	mm.pool().page_of(*new_table).owner.store(&mm, std::memory_order_relaxed);
	PTL_HOOK(hooks::point::populate_after_alloc, arch::level_index(l), addr, &mm);

	if (detail::publish_table(mm, parent, l, *new_table))
		return {};

	// Freed only after the lock is dropped: the pool needs no lock, and
	// nobody else ever saw this table.
	mm.pool().free(*new_table);
	mm.note_race_lost();
	return {};
}

// Entry at level l for addr, below the parent entry. A folded level's entry
// is its parent entry itself (Linux's p4d_offset on 4 levels, pmd_offset on
// i386), which costs nothing.
template <class G>
typename mm_struct<G>::slot_t *entry_offset(const mm_struct<G> &mm, typename mm_struct<G>::slot_t *parent, level l,
					     uint64_t addr)
{
	if (arch::is_folded<G>(l))
		return parent;

	// Acquire pairs with the release in publish_table: the table behind
	// the entry is zeroed before we index into it.
	const auto e = parent->load(std::memory_order_acquire);
	return &mm.table_of(e)[arch::table_index<G>(l, addr)];
}

// pXd_alloc: the entry at level l for addr, populating the table it lives in
// when the parent entry is empty.
template <class G>
result<typename mm_struct<G>::slot_t *> alloc_level(mm_struct<G> &mm, typename mm_struct<G>::slot_t *parent, level l,
						  uint64_t addr) PTL_EXCLUDES(mm.page_table_lock)
{
	using format = typename G::format;

	if (arch::is_folded<G>(l))
		return parent;

	if (format::none(parent->load(std::memory_order_acquire))) {
		auto r = populate(mm, parent, l, addr);
		if (!r)
			return fail(r.error());
	}
	return entry_offset(mm, parent, l, addr);
}

template <class G>
auto p4d_alloc(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pgd, uint64_t addr)
{
	return alloc_level(mm, pgd, level::p4d, addr);
}

template <class G>
auto pud_alloc(mm_struct<G> &mm, typename mm_struct<G>::slot_t *p4d, uint64_t addr)
{
	return alloc_level(mm, p4d, level::pud, addr);
}

template <class G>
auto pmd_alloc(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pud, uint64_t addr)
{
	return alloc_level(mm, pud, level::pmd, addr);
}

// Makes sure a PTE table exists below *pmd; does not map it.
template <class G>
result<void> pte_alloc(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pmd, uint64_t addr)
{
	using format = typename G::format;

	if (!format::none(pmd->load(std::memory_order_acquire)))
		return {};
	return populate(mm, pmd, level::pte, addr);
}

// The pmd entry for addr, populating p4d, pud and pmd tables on the way.
template <class G>
result<typename mm_struct<G>::slot_t *> pmd_alloc_walk(mm_struct<G> &mm, uint64_t addr)
{
	auto *pgd = mm.pgd_offset(addr);

	auto p4d = p4d_alloc(mm, pgd, addr);
	if (!p4d)
		return p4d;

	auto pud = pud_alloc(mm, *p4d, addr);
	if (!pud)
		return pud;

	return pmd_alloc(mm, *pud, addr);
}

// The kernel address space that owns the table holding this entry. The pool
// records each table's owner when it is allocated, so a kernel pmd entry is
// enough to find init_mm, as Linux's global does.
template <class G>
mm_struct<G> &owner_of_entry(const typename mm_struct<G>::slot_t *entry)
{
	phys::frame_pool *pool = phys::frame_pool::pool_of(entry);
	assert(pool && "entry is not inside any frame pool");

	void *owner = pool->page_of(pool->pfn_of(entry)).owner.load(std::memory_order_acquire);
	return *static_cast<mm_struct<G> *>(owner);
}

// pte_alloc_kernel: the PTE slot for a kernel address, populating the PTE
// table if needed. It takes no address-space argument because it always
// works on the kernel address space that owns *pmd.
template <class G>
result<typename mm_struct<G>::slot_t *> pte_alloc_kernel(typename mm_struct<G>::slot_t *pmd, uint64_t addr)
{
	mm_struct<G> &init_mm = owner_of_entry<G>(pmd);
	assert(init_mm.kind() == mm_kind::kernel && "pte_alloc_kernel on a user address space");

	auto r = pte_alloc(init_mm, pmd, addr);
	if (!r)
		return fail(r.error());
	return entry_offset(init_mm, pmd, level::pte, addr);
}

} // namespace ptl::mm
