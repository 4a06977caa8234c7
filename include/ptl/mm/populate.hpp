#pragma once
// Populating a missing level: the pushed-down page_table_lock protocol.
//
//   1. Fast path: test the entry with no lock (pXd_alloc inline part).
//   2. Slow path (__pXd_alloc): allocate a zeroed table with no lock held,
//      because allocation may fail (or, in a kernel, sleep).
//   3. Take the populate lock and re-check the entry: a racing task may
//      have populated it meanwhile. If so, the new table is surplus;
//      otherwise publish it with a release store.
//   4. Drop the lock, then free a surplus table. On allocation failure
//      return errc::no_memory with no lock held and nothing allocated.
//
// The other lock modes differ only in step 3 and in who holds the lock:
//   legacy    the caller holds page_table_lock across its whole walk (see
//             walk_guard); populate drops it around the allocation and
//             returns with it held again, on failure too.
//   split     PTE tables may be populated under the pmd table's own lock.
//   lockless  step 3 is a compare-and-swap; no lock at all.
//
// Outside legacy mode callers never hold page_table_lock when they call
// these functions.

#include <ptl/base/hooks.hpp>
#include <ptl/mm/mm.hpp>

namespace ptl::mm {

namespace detail {

constexpr phys::alloc_site site_for(level l)
{
	return static_cast<phys::alloc_site>(arch::level_index(l));
}

// The entry that links a new table of level l into its parent. The format
// encodes it for the parent's level (i386 PAE restricts the pgd's entries).
template <class G>
typename G::entry_t table_entry(const mm_struct<G> &mm, level l, pfn_t table)
{
	return arch::make_table_entry<G>(l, table, mm.table_prot());
}

// The lock that serialises populating *parent with a table of level l.
template <class G>
sync::spinlock &populate_lock(mm_struct<G> &mm, typename mm_struct<G>::slot_t *parent, level l)
{
	if (l == level::pte && mm.split_pmd()) {
		// pmd_lock(): the lock of the pmd table page that holds *parent.
		phys::frame_pool &pool = mm.pool();
		return pool.page_of(pool.pfn_of(parent)).ptl;
	}
	return mm.page_table_lock;
}

// Re-checks *parent and publishes the new table unless a racing task did so
// first. The caller holds the populate lock. Returns whether the table was
// published.
template <class G>
bool publish_locked(mm_struct<G> &mm, typename mm_struct<G>::slot_t *parent, level l, pfn_t new_table)
{
#if !defined(PTL_MUTANT_NO_RECHECK)
	// Another task may have populated the entry between our lockless
	// check and taking the lock; publishing now would orphan its table.
	if (!G::format::none(parent->load(std::memory_order_relaxed)))
		return false;
#endif
	PTL_HOOK(hooks::point::populate_before_publish, arch::level_index(l), 0, &mm);

	mm.account_table(l, +1);
	mm.note_populate();

	// Release pairs with the acquire load of every walker (pXd_offset,
	// translate, the fast path of alloc_level): it sees the zeroed table,
	// and the owner recorded in its page, before it sees the entry.
	parent->store(table_entry(mm, l, new_table), std::memory_order_release);
	PTL_HOOK(hooks::point::populate_published, arch::level_index(l), 0, &mm);
	return true;
}

// Lockless publication: the compare-and-swap is the re-check.
template <class G>
bool publish_cas(mm_struct<G> &mm, typename mm_struct<G>::slot_t *parent, level l, pfn_t new_table)
{
	typename G::entry_t expected = 0;
	PTL_HOOK(hooks::point::populate_before_publish, arch::level_index(l), 0, &mm);

	// Release on success pairs with the walkers' acquire loads, as in
	// publish_locked; on failure we only learn that someone else won.
	if (!parent->compare_exchange_strong(expected, table_entry(mm, l, new_table), std::memory_order_release,
					     std::memory_order_relaxed))
		return false;

	mm.account_table(l, +1);
	mm.note_populate();
	PTL_HOOK(hooks::point::populate_published, arch::level_index(l), 0, &mm);
	return true;
}

template <class G>
bool publish_table(mm_struct<G> &mm, typename mm_struct<G>::slot_t *parent, level l, pfn_t new_table)
	PTL_NO_THREAD_SAFETY_ANALYSIS
{
	switch (mm.mode()) {
	case lock_mode::lockless:
		return publish_cas(mm, parent, l, new_table);
	case lock_mode::legacy:
		// The caller's walk already holds page_table_lock again.
		return publish_locked(mm, parent, l, new_table);
	case lock_mode::pushdown:
	case lock_mode::split:
		break;
	}

#if defined(PTL_MUTANT_WRONG_LOCK)
	// Broken on purpose: in split mode a PTE table is populated under its
	// own new table's lock, which no racing populate of the same pmd entry
	// takes, instead of the lock of the pmd table that holds the entry.
	sync::spin_guard guard(l == level::pte && mm.split_pmd() ? mm.pool().page_of(new_table).ptl
								   : populate_lock(mm, parent, l));
#else
	sync::spin_guard guard(populate_lock(mm, parent, l));
#endif
	PTL_HOOK(hooks::point::populate_locked, arch::level_index(l), 0, &mm);
	return publish_locked(mm, parent, l, new_table);
}

#if defined(PTL_MUTANT_ZERO_AFTER_PUBLISH)
// Broken on purpose: the new table contains stale entries until populate
// zeroes it, after publishing it. Each stale entry is present and points at the
// table itself, so a walker that reads one stays inside the pool.
template <class G>
void fill_table(mm_struct<G> &mm, pfn_t table, typename G::entry_t value)
{
	typename mm_struct<G>::slot_t *slots = mm.table(table);

	for (size_t i = 0; i < phys::frame_size / sizeof(value); i++)
		slots[i].store(value, std::memory_order_relaxed);
}
#endif

// Allocates a table for level l and records its owner. In legacy mode the
// caller's page_table_lock is dropped around the allocation, as Linux's
// allocators did before the push-down, and held again on return, on
// failure too.
template <class G>
result<pfn_t> alloc_table(mm_struct<G> &mm, level l, uint64_t addr) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	const bool legacy = mm.mode() == lock_mode::legacy;
	(void)addr;

	if (legacy) {
		assert(mm.page_table_lock.held_by_current_thread() && "legacy walk without walk_guard");
		mm.page_table_lock.unlock();
	}

	auto table = mm.pool().alloc(site_for(l));
	if (table) {
		mm.pool().page_of(*table).owner.store(&mm, std::memory_order_relaxed);
#if defined(PTL_MUTANT_ZERO_AFTER_PUBLISH)
		fill_table(mm, *table, table_entry(mm, l, *table));
#endif
		PTL_HOOK(hooks::point::populate_after_alloc, arch::level_index(l), addr, &mm);
	}

	if (legacy)
		mm.page_table_lock.lock();
	return table;
}

} // namespace detail

// Slow path: allocates a table of level l and installs it in *parent, the
// entry one level up that covers addr. Linux's __pud_alloc, __pmd_alloc and
// __pte_alloc.
template <class G>
result<void> populate(mm_struct<G> &mm, typename mm_struct<G>::slot_t *parent, level l, uint64_t addr)
	PTL_EXCLUDES(mm.page_table_lock)
{
	auto new_table = detail::alloc_table(mm, l, addr);
	if (!new_table)
		return fail(new_table.error());

	if (detail::publish_table(mm, parent, l, *new_table)) {
#if defined(PTL_MUTANT_ZERO_AFTER_PUBLISH)
		detail::fill_table(mm, *new_table, typename G::entry_t{0});
#endif
		return {};
	}

	// Outside legacy mode this runs after the lock is dropped. No other
	// thread ever read this table, so it needs no grace period.
	PTL_HOOK(hooks::point::populate_free_loser, arch::level_index(l), addr, &mm);
#if !defined(PTL_MUTANT_LEAK_LOSER)
	mm.pool().free(*new_table);
#endif
#if defined(PTL_MUTANT_DOUBLE_FREE_LOSER)
	mm.pool().free(*new_table);
#endif
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
auto p4d_alloc(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pgd, uint64_t addr) PTL_EXCLUDES(mm.page_table_lock)
{
	return alloc_level(mm, pgd, level::p4d, addr);
}

template <class G>
auto pud_alloc(mm_struct<G> &mm, typename mm_struct<G>::slot_t *p4d, uint64_t addr) PTL_EXCLUDES(mm.page_table_lock)
{
	return alloc_level(mm, p4d, level::pud, addr);
}

template <class G>
auto pmd_alloc(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pud, uint64_t addr) PTL_EXCLUDES(mm.page_table_lock)
{
	return alloc_level(mm, pud, level::pmd, addr);
}

// Makes sure a PTE table exists below *pmd; does not map it.
template <class G>
result<void> pte_alloc(mm_struct<G> &mm, typename mm_struct<G>::slot_t *pmd, uint64_t addr)
	PTL_EXCLUDES(mm.page_table_lock)
{
	using format = typename G::format;

	if (!format::none(pmd->load(std::memory_order_acquire)))
		return {};
	return populate(mm, pmd, level::pte, addr);
}

// The pmd entry for addr, populating p4d, pud and pmd tables on the way.
template <class G>
result<typename mm_struct<G>::slot_t *> pmd_alloc_walk(mm_struct<G> &mm, uint64_t addr)
	PTL_EXCLUDES(mm.page_table_lock)
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

// The address space that owns the table holding this entry. The pool records
// each table's owner when it is allocated, so a kernel pmd entry is enough to
// find init_mm, as Linux's global does.
template <class G>
mm_struct<G> &owner_of_entry(const typename mm_struct<G>::slot_t *entry)
{
	phys::frame_pool *pool = phys::frame_pool::pool_of(entry);
	assert(pool && "entry is not inside any frame pool");

	void *owner = pool->page_of(pool->pfn_of(entry)).owner.load(std::memory_order_acquire);
	return *static_cast<mm_struct<G> *>(owner);
}

// A pmd entry of the kernel address space. It can only be made from the
// kernel_mm whose walk found it, so a user address space's entry never
// reaches pte_alloc_kernel.
template <class G>
class kernel_pmd {
public:
	kernel_pmd(const kernel_mm<G> &init_mm, typename mm_struct<G>::slot_t *entry) : entry_(entry)
	{
		assert(&owner_of_entry<G>(entry) == &init_mm);
		(void)init_mm;
	}

	typename mm_struct<G>::slot_t *get() const { return entry_; }

private:
	typename mm_struct<G>::slot_t *entry_;
};

// pte_alloc_kernel: the PTE slot for a kernel address, populating the PTE
// table if needed. It takes no address-space argument because it always
// works on the kernel address space that owns the pmd entry.
template <class G>
result<typename mm_struct<G>::slot_t *> pte_alloc_kernel(kernel_pmd<G> pmd, uint64_t addr)
{
	mm_struct<G> &init_mm = owner_of_entry<G>(pmd.get());

	auto r = pte_alloc(init_mm, pmd.get(), addr);
	if (!r)
		return fail(r.error());
	return entry_offset(init_mm, pmd.get(), level::pte, addr);
}

// Holds page_table_lock across a walk in legacy mode and does nothing in
// the other modes. Every walk that may populate or change entries starts
// with one.
template <class G>
class walk_guard {
public:
	explicit walk_guard(mm_struct<G> &mm) PTL_NO_THREAD_SAFETY_ANALYSIS
		: lock_(mm.mode() == lock_mode::legacy ? &mm.page_table_lock : nullptr)
	{
		if (lock_)
			lock_->lock();
	}
	~walk_guard() PTL_NO_THREAD_SAFETY_ANALYSIS
	{
		if (lock_)
			lock_->unlock();
	}
	walk_guard(const walk_guard &) = delete;
	walk_guard &operator=(const walk_guard &) = delete;

private:
	sync::spinlock *lock_;
};

} // namespace ptl::mm
