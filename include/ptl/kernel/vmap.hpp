#pragma once
// Setting and clearing the PTEs of a kernel range: Linux's vmap_page_range
// and vunmap_page_range, one short function per level over the same range
// loop.
//
// No page-table lock is taken here. The caller owns the range through the
// vmalloc area allocator, so no other task sets or clears these PTEs. Only
// populating a missing table synchronises, inside p4d_alloc, pud_alloc,
// pmd_alloc and pte_alloc_kernel. The exception is lock_mode::legacy: there
// map_kernel_range and unmap_kernel_range keep init_mm's page_table_lock
// across the whole walk, and the allocators drop it around each allocation.

#include <ptl/base/hooks.hpp>
#include <ptl/mm/populate.hpp>

#include <cassert>
#include <span>

namespace ptl::kernel {

using arch::level;
using phys::pfn_t;

// Linux's PAGE_KERNEL: read-write, global, not executable. The x86 format
// drops NX where entries have no NX bit (i386 without PAE), as Linux does.
inline constexpr uint64_t page_kernel = arch::prot_present | arch::prot_write | arch::prot_global | arch::prot_nx;

// Linux's PAGE_KERNEL_NOCACHE, for device memory: caching disabled and
// write-through.
inline constexpr uint64_t page_kernel_nocache = page_kernel | arch::prot_pcd | arch::prot_pwt;

// Whether prot may be used for a kernel PTE: present, no user bit, no
// huge-page bit, and only bits the x86 entry format defines.
constexpr bool valid_kernel_prot(uint64_t prot)
{
	constexpr uint64_t known = 0x1ff | arch::prot_nx;

	return (prot & ~known) == 0 && (prot & arch::prot_present) != 0 && (prot & arch::prot_user) == 0 &&
	       (prot & arch::prot_huge) == 0;
}

// Progress of one kernel map: the frame behind each page of the range, and
// how far PTEs have been set, so that a failed map clears exactly what it
// set.
class map_cursor {
public:
	// Page i of the range maps pages[i].
	map_cursor(uint64_t start, std::span<const pfn_t> pages) : start_(start), mapped_end_(start), pages_(pages) {}

	// Page i of the range maps first_pfn + i, a physically contiguous run.
	map_cursor(uint64_t start, pfn_t first_pfn) : start_(start), mapped_end_(start), first_pfn_(first_pfn) {}

	pfn_t pfn_at(uint64_t addr) const
	{
		const uint64_t index = (addr - start_) >> arch::page_shift;
		return pages_.empty() ? first_pfn_ + index : pages_[index];
	}

	// Whether the frames are one physically contiguous run, which huge
	// leaves can map.
	bool contiguous() const { return pages_.empty(); }

	// Records that [addr, addr + bytes) is mapped. Entries are set in
	// address order, so [start, mapped_end) is exactly what this map has
	// set.
	void note_mapped(uint64_t addr, uint64_t bytes = arch::page_size)
	{
		assert(addr == mapped_end_);
		mapped_end_ = addr + bytes;
	}

	uint64_t start() const { return start_; }
	uint64_t mapped_end() const { return mapped_end_; }

private:
	uint64_t start_;
	uint64_t mapped_end_;
	std::span<const pfn_t> pages_;
	pfn_t first_pfn_ = 0;
};

namespace detail {

template <class G>
using slot_t = typename mm::mm_struct<G>::slot_t;

template <class G>
result<void> set_kernel_pte(slot_t<G> *pte, pfn_t pfn, uint64_t prot)
{
	using format = typename G::format;

	// Every owner clears its PTEs before it releases its range, so a PTE
	// found set here means two owners were given the same range.
	const auto old = pte->load(std::memory_order_relaxed);
	assert(format::none(old) && "kernel PTE is already set");
	if (!format::none(old))
		return fail(errc::exists);

	// Release pairs with the acquire load of a lockless walker
	// (translate, walk_range): a walker that finds this PTE also sees what
	// was written to the frame before it was mapped.
	pte->store(static_cast<typename G::entry_t>(format::make(pfn, prot)), std::memory_order_release);
	return {};
}

// Whether [addr, end) can be one huge leaf at level l (vmap_try_huge_pmd
// and vmap_try_huge_pud): the geometry has the level, the range is exactly
// one aligned entry, the frames are contiguous and aligned as well, and
// the entry is empty. The caller owns the range, so an empty entry stays
// empty until it sets it.
template <class G>
bool can_map_huge(level l, const slot_t<G> *entry, uint64_t addr, uint64_t end, const map_cursor &cursor)
{
	if (arch::is_folded<G>(l) || !cursor.contiguous())
		return false;

	const uint64_t span = arch::entry_span<G>(l);
	const uint64_t frames = span >> arch::page_shift;
	return (addr & (span - 1)) == 0 && end - addr == span && cursor.pfn_at(addr) % frames == 0 &&
	       G::format::none(entry->load(std::memory_order_acquire));
}

template <class G>
void set_kernel_huge(slot_t<G> *entry, level l, uint64_t addr, uint64_t prot, map_cursor &cursor)
{
	PTL_HOOK(hooks::point::vmap_before_set, arch::level_index(l), addr, nullptr);

	// Release, as for a PTE: a walker that finds the leaf reads the frames' contents.
	const auto leaf = G::format::make(cursor.pfn_at(addr), prot | arch::prot_huge);
	entry->store(static_cast<typename G::entry_t>(leaf), std::memory_order_release);
	cursor.note_mapped(addr, arch::entry_span<G>(l));
}

template <class G>
result<void> vmap_pte_range(mm::kernel_pmd<G> pmd, uint64_t addr, uint64_t end, uint64_t prot, map_cursor &cursor)
{
	auto pte = mm::pte_alloc_kernel(pmd, addr);
	if (!pte)
		return fail(pte.error());

	slot_t<G> *slot = *pte;
	do {
		PTL_HOOK(hooks::point::vmap_before_set, arch::level_index(level::pte), addr, nullptr);
		auto r = set_kernel_pte<G>(slot, cursor.pfn_at(addr), prot);
		if (!r)
			return r;
		cursor.note_mapped(addr);
	} while (slot++, addr += arch::page_size, addr != end);
	return {};
}

template <class G>
result<void> vmap_pmd_range(mm::kernel_mm<G> &init_mm, slot_t<G> *pud, uint64_t addr, uint64_t end, uint64_t prot,
			    map_cursor &cursor)
{
	auto pmd = mm::pmd_alloc(init_mm, pud, addr);
	if (!pmd)
		return fail(pmd.error());

	slot_t<G> *slot = *pmd;
	do {
		const uint64_t next = arch::entry_end<G>(level::pmd, addr, end);
		if (can_map_huge<G>(level::pmd, slot, addr, next, cursor)) {
			set_kernel_huge<G>(slot, level::pmd, addr, prot, cursor);
		} else {
			auto r = vmap_pte_range<G>(mm::kernel_pmd<G>(init_mm, slot), addr, next, prot, cursor);
			if (!r)
				return r;
		}
		addr = next;
	} while (slot++, addr != end);
	return {};
}

template <class G>
result<void> vmap_pud_range(mm::kernel_mm<G> &init_mm, slot_t<G> *p4d, uint64_t addr, uint64_t end, uint64_t prot,
			    map_cursor &cursor)
{
	auto pud = mm::pud_alloc(init_mm, p4d, addr);
	if (!pud)
		return fail(pud.error());

	slot_t<G> *slot = *pud;
	do {
		const uint64_t next = arch::entry_end<G>(level::pud, addr, end);
		if (can_map_huge<G>(level::pud, slot, addr, next, cursor)) {
			set_kernel_huge<G>(slot, level::pud, addr, prot, cursor);
		} else {
			auto r = vmap_pmd_range(init_mm, slot, addr, next, prot, cursor);
			if (!r)
				return r;
		}
		addr = next;
	} while (slot++, addr != end);
	return {};
}

template <class G>
result<void> vmap_p4d_range(mm::kernel_mm<G> &init_mm, slot_t<G> *pgd, uint64_t addr, uint64_t end, uint64_t prot,
			    map_cursor &cursor)
{
	auto p4d = mm::p4d_alloc(init_mm, pgd, addr);
	if (!p4d)
		return fail(p4d.error());

	slot_t<G> *slot = *p4d;
	do {
		const uint64_t next = arch::entry_end<G>(level::p4d, addr, end);
		auto r = vmap_pud_range(init_mm, slot, addr, next, prot, cursor);
		if (!r)
			return r;
		addr = next;
	} while (slot++, addr != end);
	return {};
}

// Clears a huge leaf that [addr, end) covers whole, and returns how many
// base pages it mapped. A kernel range is always unmapped whole, so its
// leaves never need a split.
template <class G>
uint64_t vunmap_huge(slot_t<G> *entry, level l, uint64_t addr, uint64_t end)
{
	assert(end - addr == arch::entry_span<G>(l) && "a kernel huge leaf is unmapped in part");
	(void)addr;
	(void)end;

	entry->exchange(0, std::memory_order_relaxed);
	return arch::entry_span<G>(l) >> arch::page_shift;
}

// Clears the PTEs of [addr, end) below *pmd and returns how many were set.
template <class G>
uint64_t vunmap_pte_range(mm::kernel_mm<G> &init_mm, slot_t<G> *pmd, uint64_t addr, uint64_t end)
{
	using format = typename G::format;
	uint64_t cleared = 0;

	slot_t<G> *slot = mm::entry_offset(init_mm, pmd, level::pte, addr);
	do {
		PTL_HOOK(hooks::point::vunmap_before_clear, arch::level_index(level::pte), addr, &init_mm);

		// Relaxed is enough: the range stays reserved until its owner
		// releases it under the area allocator's lock, and that lock
		// orders this store before the next owner's map.
		const auto old = slot->exchange(0, std::memory_order_relaxed);
		if (format::present(old))
			cleared++;
	} while (slot++, addr += arch::page_size, addr != end);
	return cleared;
}

// The unmap walk skips empty directory entries: a map that failed before
// populating them set nothing below them.
template <class G>
uint64_t vunmap_pmd_range(mm::kernel_mm<G> &init_mm, slot_t<G> *pud, uint64_t addr, uint64_t end)
{
	using format = typename G::format;
	uint64_t cleared = 0;

	slot_t<G> *slot = mm::entry_offset(init_mm, pud, level::pmd, addr);
	do {
		const uint64_t next = arch::entry_end<G>(level::pmd, addr, end);
		const auto e = slot->load(std::memory_order_acquire);
		if (format::huge(e))
			cleared += vunmap_huge<G>(slot, level::pmd, addr, next);
		else if (!format::none(e))
			cleared += vunmap_pte_range(init_mm, slot, addr, next);
		addr = next;
	} while (slot++, addr != end);
	return cleared;
}

template <class G>
uint64_t vunmap_pud_range(mm::kernel_mm<G> &init_mm, slot_t<G> *p4d, uint64_t addr, uint64_t end)
{
	using format = typename G::format;
	uint64_t cleared = 0;

	slot_t<G> *slot = mm::entry_offset(init_mm, p4d, level::pud, addr);
	do {
		const uint64_t next = arch::entry_end<G>(level::pud, addr, end);
		const auto e = slot->load(std::memory_order_acquire);
		if (format::huge(e))
			cleared += vunmap_huge<G>(slot, level::pud, addr, next);
		else if (!format::none(e))
			cleared += vunmap_pmd_range(init_mm, slot, addr, next);
		addr = next;
	} while (slot++, addr != end);
	return cleared;
}

template <class G>
uint64_t vunmap_p4d_range(mm::kernel_mm<G> &init_mm, slot_t<G> *pgd, uint64_t addr, uint64_t end)
{
	using format = typename G::format;
	uint64_t cleared = 0;

	slot_t<G> *slot = mm::entry_offset(init_mm, pgd, level::p4d, addr);
	do {
		const uint64_t next = arch::entry_end<G>(level::p4d, addr, end);
		if (!format::none(slot->load(std::memory_order_acquire)))
			cleared += vunmap_pud_range(init_mm, slot, addr, next);
		addr = next;
	} while (slot++, addr != end);
	return cleared;
}

} // namespace detail

// Sets the PTEs of [start, end) to the frames the cursor names, populating
// missing tables. Stops at the first error and returns it, leaving the PTEs
// it set in place: map_kernel_range is the caller that undoes them.
template <class G>
result<void> vmap_page_range(mm::kernel_mm<G> &init_mm, uint64_t start, uint64_t end, uint64_t prot,
			     map_cursor &cursor)
{
	detail::slot_t<G> *pgd = init_mm.pgd_offset(start);
	uint64_t addr = start;

	do {
		const uint64_t next = arch::entry_end<G>(level::pgd, addr, end);
		auto r = detail::vmap_p4d_range(init_mm, pgd, addr, next, prot, cursor);
		if (!r)
			return r;
		addr = next;
	} while (pgd++, addr != end);
	return {};
}

// Clears every PTE and huge leaf of [start, end) and returns how many base
// pages were mapped. Tables stay in the tree: the caller frees those left
// empty when it releases the area (free_pgd_range).
template <class G>
uint64_t vunmap_page_range(mm::kernel_mm<G> &init_mm, uint64_t start, uint64_t end)
{
	using format = typename G::format;
	uint64_t cleared = 0;

	if (start == end)
		return 0;

	detail::slot_t<G> *pgd = init_mm.pgd_offset(start);
	uint64_t addr = start;
	do {
		const uint64_t next = arch::entry_end<G>(level::pgd, addr, end);
		if (!format::none(pgd->load(std::memory_order_acquire)))
			cleared += detail::vunmap_p4d_range(init_mm, pgd, addr, next);
		addr = next;
	} while (pgd++, addr != end);
	return cleared;
}

// Clears the PTEs a map has set when it goes out of scope without commit(),
// so a map that fails halfway leaves nothing mapped. Tables populated on the
// way stay: they are in the tree and counted, so they are not leaked.
template <class G>
class map_rollback {
public:
	map_rollback(mm::kernel_mm<G> &init_mm, const map_cursor &cursor) : init_mm_(init_mm), cursor_(cursor) {}

	~map_rollback()
	{
		if (!committed_)
			vunmap_page_range(init_mm_, cursor_.start(), cursor_.mapped_end());
	}

	map_rollback(const map_rollback &) = delete;
	map_rollback &operator=(const map_rollback &) = delete;

	void commit() { committed_ = true; }

private:
	mm::kernel_mm<G> &init_mm_;
	const map_cursor &cursor_;
	bool committed_ = false;
};

// Maps [start, end) as vmap_page_range does, but all or nothing: on error
// every PTE this call set is cleared again before it returns.
template <class G>
result<void> map_kernel_range(mm::kernel_mm<G> &init_mm, uint64_t start, uint64_t end, uint64_t prot,
			      map_cursor &cursor) PTL_EXCLUDES(init_mm.page_table_lock)
{
	// Declared first so that in legacy mode the rollback, too, runs with
	// page_table_lock held.
	mm::walk_guard<G> guard(init_mm);
	map_rollback<G> rollback(init_mm, cursor);

	auto r = vmap_page_range(init_mm, start, end, prot, cursor);
	if (!r)
		return r;

	rollback.commit();
	return {};
}

// Clears every PTE of [start, end), taking page_table_lock across the walk
// in legacy mode only, and returns how many were set.
template <class G>
uint64_t unmap_kernel_range(mm::kernel_mm<G> &init_mm, uint64_t start, uint64_t end)
	PTL_EXCLUDES(init_mm.page_table_lock)
{
	mm::walk_guard<G> guard(init_mm);

	return vunmap_page_range(init_mm, start, end);
}

} // namespace ptl::kernel
