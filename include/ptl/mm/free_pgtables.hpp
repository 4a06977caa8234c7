#pragma once
// Freeing the tables that an unmap leaves empty (Linux's free_pgd_range).
//
// After a range's PTEs are cleared, every table below it that now maps
// nothing can go, at every level, but only where nothing else can be mapped.
// A table whose span reaches past the unmapped range may still cover a live
// neighbour. The caller gives bounds: floor, the end of the mapping below
// the range, and ceiling, the start of the mapping above it. A table is
// freed only when the whole span it covers lies inside [floor, ceiling).
//
// Freeing happens in two steps:
//   1. free_pgd_range unlinks the tables: it clears the entry that points
//      at each one and collects it in a table_batch. No populate can race
//      on such an entry, because every address under it lies inside the
//      bounds, where the caller guarantees nobody maps (the mmap_lock held
//      exclusively for a user space, the vmalloc area's lock for the
//      kernel's).
//   2. free_table_batch waits for a grace period of the mm's table_rcu and
//      only then returns the frames to the pool, so that a lockless walker
//      that loaded an entry just before it was cleared still reads a table,
//      not a frame that was handed out again. Callers drop every
//      page-table lock before this step.

#include <ptl/base/hooks.hpp>
#include <ptl/mm/mm.hpp>

#include <cassert>
#include <vector>

namespace ptl::mm {

// Tables unlinked from a tree and not yet returned to the pool (the table
// part of Linux's mmu_gather).
struct table_batch {
	std::vector<pfn_t> tables;

	bool empty() const { return tables.empty(); }
	size_t size() const { return tables.size(); }
};

namespace detail {

// Whether the whole span of the level-l entry that covers addr lies inside
// [floor, ceiling). A ceiling of 0 means the top of the address space, as
// Linux's USER_PGTABLES_CEILING does.
template <class G>
constexpr bool span_inside(level l, uint64_t addr, uint64_t floor, uint64_t ceiling)
{
	const uint64_t span = arch::entry_span<G>(l);
	const uint64_t first = addr & ~(span - 1);
	const uint64_t last = first + (span - 1);
	return first >= floor && last <= ceiling - 1;
}

template <class G>
bool table_empty(const mm_struct<G> &mm, pfn_t table, level l)
{
	const auto *slots = mm.table(table);
	for (unsigned i = 0; i < arch::ptrs_per_table<G>(l); i++) {
		if (!G::format::none(slots[i].load(std::memory_order_relaxed)))
			return false;
	}
	return true;
}

// Clears *entry, which points at an empty table of level l, and batches
// that table for freeing.
template <class G>
void unlink_table(mm_struct<G> &mm, typename mm_struct<G>::slot_t *entry, level l, table_batch &batch)
{
	const pfn_t table = G::format::pfn(entry->load(std::memory_order_relaxed));

	// Inside the bounds every entry was cleared before this runs. A table
	// that still maps something means the caller's bounds are wrong;
	// keeping it leaks nothing.
	if (!table_empty(mm, table, l)) {
		assert(!"the bounds cover a table that still maps something");
		return;
	}

	// Release orders the clearing of the table's own entries before the
	// unlink for a walker that loads this entry with acquire.
	entry->store(0, std::memory_order_release);
	mm.account_table(l, -1);
	batch.tables.push_back(table);
}

// Unlinks the empty tables below the entries of a level-L table that cover
// [addr, end), children first, so that a table emptied by unlinking its
// children goes too.
template <class G, level L>
void free_entries(mm_struct<G> &mm, typename mm_struct<G>::slot_t *table, uint64_t addr, uint64_t end, uint64_t floor,
		  uint64_t ceiling, table_batch &batch)
{
	constexpr level child = arch::next_table_level<G>(L);

	do {
		const uint64_t next = arch::entry_end<G>(L, addr, end);
		auto *entry = &table[arch::table_index<G>(L, addr)];
		const auto e = entry->load(std::memory_order_relaxed);

		if (G::format::present(e) && !G::format::huge(e)) {
			if constexpr (child != level::pte)
				free_entries<G, child>(mm, mm.table_of(e), addr, next, floor, ceiling, batch);
			if (span_inside<G>(L, addr, floor, ceiling))
				unlink_table(mm, entry, child, batch);
		}
		addr = next;
	} while (addr != end);
}

} // namespace detail

// Unlinks every table below [addr, end) whose span lies inside [floor,
// ceiling) and that maps nothing, and collects it in batch. Every PTE of
// [floor, ceiling) must already be clear, and the caller must keep other
// tasks from mapping there until this returns (see the top of this file).
// end and ceiling of 0 mean the top of the address space. In legacy mode
// the caller holds a walk_guard.
template <class G>
void free_pgd_range(mm_struct<G> &mm, uint64_t addr, uint64_t end, uint64_t floor, uint64_t ceiling,
		    table_batch &batch)
{
	if (addr == end)
		return;
	detail::free_entries<G, level::pgd>(mm, mm.table(mm.pgd_pfn()), addr, end, floor, ceiling, batch);
}

// Returns the batched tables to the pool after a grace period. Must be
// called with no page-table lock held and outside any read-side section of
// mm.table_rcu.
template <class G>
void free_table_batch(mm_struct<G> &mm, table_batch &batch)
{
	if (batch.empty())
		return;

	PTL_HOOK(hooks::point::tables_before_grace, 0, 0, &mm);
#if !defined(PTL_MUTANT_NO_GRACE_PERIOD)
	mm.table_rcu.synchronize();
#endif

	for (pfn_t table : batch.tables)
		mm.pool().free(table);
	batch.tables.clear();
}

} // namespace ptl::mm
