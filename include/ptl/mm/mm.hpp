#pragma once
// The address space: Linux's mm_struct, reduced to what the page tables need.
//
// An mm owns its pgd and every table below it, counts them per level, and
// holds page_table_lock. Entries at every level are std::atomic of the
// profile's entry type, laid over pool frames, so a walker can read them
// without a lock (acquire) while a populate publishes them (release).

#include <ptl/arch/profiles.hpp>
#include <ptl/base/result.hpp>
#include <ptl/phys/frame_pool.hpp>
#include <ptl/sync/spinlock.hpp>
#include <ptl/sync/srcu.hpp>

#include <array>
#include <atomic>
#include <memory>
#include <optional>
#include <string_view>

namespace ptl::mm {

using arch::level;
using phys::pfn_t;

enum class mm_kind { kernel, user };

// The synchronisation scheme an address space uses for table population and
// PTE updates.
enum class lock_mode {
	// Linux before the push-down: the caller holds page_table_lock across
	// the whole walk, and the allocators drop and retake it around each
	// allocation.
	legacy,
	// The push-down: allocate unlocked, lock, re-check, publish or free.
	// PTE updates take the mm-wide page_table_lock.
	pushdown,
	// As pushdown, but PTE updates take a lock of their own PTE table
	// page, and optionally PTE tables are populated under a lock of the
	// pmd table page instead of page_table_lock.
	split,
	// No locks: tables and PTEs are published with compare-and-swap, and
	// a loser frees its table.
	lockless,
};

struct mm_counters {
	std::array<uint64_t, arch::nr_levels> nr_tables{}; // tables in the tree, per level
	uint64_t populates = 0;                           // tables published
	uint64_t races_lost = 0;                          // tables freed because another task won
};

inline std::string_view lock_mode_name(lock_mode mode)
{
	switch (mode) {
	case lock_mode::legacy:
		return "legacy";
	case lock_mode::pushdown:
		return "pushdown";
	case lock_mode::split:
		return "split";
	case lock_mode::lockless:
		return "lockless";
	}
	return "unknown";
}

inline std::optional<lock_mode> parse_lock_mode(std::string_view name)
{
	for (lock_mode m : {lock_mode::legacy, lock_mode::pushdown, lock_mode::split, lock_mode::lockless}) {
		if (lock_mode_name(m) == name)
			return m;
	}
	return std::nullopt;
}

inline constexpr lock_mode all_lock_modes[] = {lock_mode::legacy, lock_mode::pushdown, lock_mode::split,
					       lock_mode::lockless};

template <class G>
class mm_struct {
public:
	using entry_t = typename G::entry_t;
	using format = typename G::format;
	// One entry of any level: pgd_t, p4d_t, pud_t, pmd_t and pte_t alike.
	using slot_t = std::atomic<entry_t>;

	static_assert(sizeof(slot_t) == sizeof(entry_t), "entries must be laid out as the hardware reads them");
	static_assert(slot_t::is_always_lock_free);

	// Allocates the pgd; fails with errc::no_memory when the pool cannot.
	// split_pmd applies to lock_mode::split only.
	static result<std::unique_ptr<mm_struct>> create(phys::frame_pool &pool, mm_kind kind,
							  lock_mode mode = lock_mode::pushdown, bool split_pmd = false)
	{
		auto pgd = pool.alloc(phys::alloc_site::pgd);
		if (!pgd)
			return fail(pgd.error());
		return std::unique_ptr<mm_struct>(new mm_struct(pool, kind, mode, split_pmd, *pgd));
	}

	// Frees every table of the tree (free_pgtables over the whole space).
	// Data pages are not the mm's: their owners free them before this.
	~mm_struct()
	{
		free_tables(level::pgd, pgd_pfn_);
	}

	mm_struct(const mm_struct &) = delete;
	mm_struct &operator=(const mm_struct &) = delete;

	phys::frame_pool &pool() const { return pool_; }
	mm_kind kind() const { return kind_; }
	lock_mode mode() const { return mode_; }
	bool split_pmd() const { return split_pmd_; }
	pfn_t pgd_pfn() const { return pgd_pfn_; }

	// Entry flags of a table in this address space.
	uint64_t table_prot() const
	{
		return kind_ == mm_kind::user ? format::user_table_prot : format::kernel_table_prot;
	}

	slot_t *table(pfn_t pfn) const { return static_cast<slot_t *>(pool_.frame_address(pfn)); }
	slot_t *table_of(entry_t e) const { return table(format::pfn(e)); }

	slot_t *pgd_offset(uint64_t addr) const
	{
		return &table(pgd_pfn_)[arch::table_index<G>(level::pgd, addr)];
	}

	// Counters. Tables are counted under the populate lock when published
	// and when unlinked; reads are snapshots.
	void account_table(level l, int delta)
	{
		nr_tables_[arch::level_index(l)].fetch_add(static_cast<uint64_t>(delta), std::memory_order_relaxed);
	}
	void note_populate() { populates_.fetch_add(1, std::memory_order_relaxed); }
	void note_race_lost() { races_lost_.fetch_add(1, std::memory_order_relaxed); }

	mm_counters counters() const
	{
		mm_counters c;
		for (unsigned i = 0; i < arch::nr_levels; i++)
			c.nr_tables[i] = nr_tables_[i].load(std::memory_order_relaxed);
		c.populates = populates_.load(std::memory_order_relaxed);
		c.races_lost = races_lost_.load(std::memory_order_relaxed);
		return c;
	}

	// Bytes of pud, pmd and PTE tables: what Linux (4.15 and later) adds
	// up in mm->pgtables_bytes and shows as VmPTE in /proc/PID/status.
	// Linux counts neither the pgd nor p4d tables.
	uint64_t pgtables_bytes() const
	{
		uint64_t bytes = 0;
		for (level l : {level::pud, level::pmd, level::pte})
			bytes += nr_tables_[arch::level_index(l)].load(std::memory_order_relaxed) * phys::frame_size;
		return bytes;
	}

	// Serialises table population in the legacy, pushdown and split
	// modes, and PTE updates of user address spaces in legacy and
	// pushdown. Never held across an allocation.
	sync::spinlock page_table_lock;

	// Grace periods for the lockless walkers (translate, walk_range): a
	// table unlinked from this tree goes back to the pool only after every
	// walker that was inside a read-side section when it was unlinked has
	// left it. Mutable because walking is a read of the mm.
	mutable sync::srcu table_rcu;

protected:
	mm_struct(phys::frame_pool &pool, mm_kind kind, lock_mode mode, bool split_pmd, pfn_t pgd)
		: pool_(pool), kind_(kind), mode_(mode), split_pmd_(split_pmd && mode == lock_mode::split), pgd_pfn_(pgd)
	{
		pool_.page_of(pgd).owner.store(this, std::memory_order_release);
		nr_tables_[arch::level_index(level::pgd)].store(1, std::memory_order_relaxed);
	}

private:
	// Frees the table at pfn and every table below it. Runs with no other
	// user of the tree left, so plain relaxed loads suffice.
	void free_tables(level l, pfn_t pfn)
	{
		if (l != level::pte) {
			slot_t *t = table(pfn);
			for (unsigned i = 0; i < arch::ptrs_per_table<G>(l); i++) {
				const entry_t e = t[i].load(std::memory_order_relaxed);
				if (format::present(e) && !format::huge(e))
					free_tables(arch::next_table_level<G>(l), format::pfn(e));
			}
		}
		pool_.free(pfn);
		account_table(l, -1);
	}

	phys::frame_pool &pool_;
	const mm_kind kind_;
	const lock_mode mode_;
	const bool split_pmd_;
	const pfn_t pgd_pfn_;

	std::array<std::atomic<uint64_t>, arch::nr_levels> nr_tables_{};
	std::atomic<uint64_t> populates_{0};
	std::atomic<uint64_t> races_lost_{0};
};

// The kernel address space (Linux's init_mm) as a type of its own, so that
// code that must only ever touch the kernel's tables, such as
// pte_alloc_kernel, cannot be handed a user address space: that does not
// compile.
template <class G>
class kernel_mm : public mm_struct<G> {
public:
	static result<std::unique_ptr<kernel_mm>> create(phys::frame_pool &pool, lock_mode mode = lock_mode::pushdown)
	{
		auto pgd = pool.alloc(phys::alloc_site::pgd);
		if (!pgd)
			return fail(pgd.error());
		return std::unique_ptr<kernel_mm>(new kernel_mm(pool, mode, *pgd));
	}

private:
	kernel_mm(phys::frame_pool &pool, lock_mode mode, pfn_t pgd)
		: mm_struct<G>(pool, mm_kind::kernel, mode, false, pgd)
	{
	}
};

} // namespace ptl::mm
