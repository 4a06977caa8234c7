#pragma once
// Lockless walkers: translate one address, visit every present leaf of a
// range, count the tables, and dump the tree. Each step is an acquire load
// that pairs with the release store that published the entry, so a walker
// racing with populate sees either nothing or a fully zeroed table.

#include <ptl/mm/mm.hpp>

#include <optional>
#include <ostream>

namespace ptl::mm {

struct translation {
	pfn_t pfn;        // frame of the 4 KiB page that holds addr
	uint64_t prot;    // arch::pgprot bits of the leaf
	level leaf_level; // pte, or pmd/pud for a huge leaf
	uint64_t entry;   // the raw leaf entry
};

namespace detail {

template <class G, level L, class Visit>
void walk_entries(const mm_struct<G> &mm, const typename mm_struct<G>::slot_t *table, uint64_t addr, uint64_t end,
		  Visit &visit)
{
	using format = typename G::format;

	do {
		const uint64_t next = arch::entry_end<G>(L, addr, end);
		const auto e = table[arch::table_index<G>(L, addr)].load(std::memory_order_acquire);

		if (format::present(e)) {
			if constexpr (L == level::pte) {
				visit(addr, e, L);
			} else {
				if (format::huge(e))
					visit(addr, e, L);
				else
					walk_entries<G, arch::next_table_level<G>(L)>(mm, mm.table_of(e), addr, next,
										      visit);
			}
		}
		addr = next;
	} while (addr != end);
}

} // namespace detail

// Calls visit(addr, entry, level) for each present leaf in [start, end), in
// address order. end 0 means the top of the address space. The range must
// not cross the non-canonical hole of a sign-extended geometry.
template <class G, class Visit>
void walk_range(const mm_struct<G> &mm, uint64_t start, uint64_t end, Visit &&visit)
{
	if (start == end)
		return;

	// visit must not unmap from mm: that would wait for this section.
	sync::srcu_read_guard rcu(mm.table_rcu);
	detail::walk_entries<G, level::pgd>(mm, mm.table(mm.pgd_pfn()), start, end, visit);
}

// walk_range over every translated address.
template <class G, class Visit>
void walk_all(const mm_struct<G> &mm, Visit &&visit)
{
	const auto halves = arch::address_halves<G>();
	for (unsigned i = 0; i < arch::nr_address_halves<G>(); i++)
		walk_range(mm, halves[i].first, halves[i].second, visit);
}

namespace detail {

template <class G>
std::optional<translation> translate_walk(const mm_struct<G> &mm, uint64_t addr)
{
	using format = typename G::format;

	const typename mm_struct<G>::slot_t *table = mm.table(mm.pgd_pfn());
	level l = level::pgd;

	for (;;) {
		const auto e = table[arch::table_index<G>(l, addr)].load(std::memory_order_acquire);
		if (!format::present(e))
			return std::nullopt;

		if (l == level::pte || format::huge(e)) {
			const uint64_t offset_pages = (addr & (arch::entry_span<G>(l) - 1)) >> arch::page_shift;
			return translation{format::pfn(e) + offset_pages, format::prot(e), l, uint64_t{e}};
		}

		table = mm.table_of(e);
		l = arch::next_table_level<G>(l);
	}
}

} // namespace detail

// The leaf that maps addr, or nothing. A lockless walk: it runs inside a
// read-side section of the mm's table_rcu, so that an unmap racing with it
// does not free a table it is reading. Callers that translate many
// addresses in a row can hold one srcu_read_guard and pass it.
template <class G>
std::optional<translation> translate(const mm_struct<G> &mm, uint64_t addr)
{
	sync::srcu_read_guard rcu(mm.table_rcu);
	return detail::translate_walk(mm, addr);
}

template <class G>
std::optional<translation> translate(const mm_struct<G> &mm, uint64_t addr, const sync::srcu_read_guard &)
{
	return detail::translate_walk(mm, addr);
}

// A translator for many addresses in a row (a page-walk cache, like the
// one a processor keeps next to its TLB). It remembers the PTE table of its
// last walk and the pmd entry that led there. A later address under the
// same PTE table then costs one check of that pmd entry and one PTE load
// instead of a walk from the pgd. Re-reading the pmd entry every time keeps the
// result current: a table that was unlinked and replaced, or turned into a
// huge leaf, no longer matches, and the cursor walks again.
//
// The cursor holds a read-side section of the mm's table_rcu for as long as
// it lives, so the remembered table cannot be freed under it. An unmap of
// this mm waits for the cursor to be destroyed: never unmap from the thread
// that holds one, and keep its life to a batch of lookups.
template <class G>
class walk_cursor {
public:
	explicit walk_cursor(const mm_struct<G> &mm) : mm_(mm), rcu_(mm.table_rcu) {}

	walk_cursor(const walk_cursor &) = delete;
	walk_cursor &operator=(const walk_cursor &) = delete;

	std::optional<translation> translate(uint64_t addr)
	{
		if (pmd_ && addr - base_ < arch::entry_span<G>(level::pmd) &&
		    pmd_->load(std::memory_order_acquire) == pmd_value_)
			return read_pte(addr);
		return walk(addr);
	}

private:
	using slot_t = typename mm_struct<G>::slot_t;

	std::optional<translation> read_pte(uint64_t addr) const
	{
		const auto e = ptes_[arch::table_index<G>(level::pte, addr)].load(std::memory_order_acquire);
		if (!G::format::present(e))
			return std::nullopt;
		return translation{G::format::pfn(e), G::format::prot(e), level::pte, uint64_t{e}};
	}

	// A full walk, as translate() does, that remembers the PTE table it
	// passes through.
	std::optional<translation> walk(uint64_t addr)
	{
		using format = typename G::format;
		const slot_t *table = mm_.table(mm_.pgd_pfn());
		level l = level::pgd;
		pmd_ = nullptr;

		for (;;) {
			const slot_t *entry = &table[arch::table_index<G>(l, addr)];
			const auto e = entry->load(std::memory_order_acquire);
			if (!format::present(e))
				return std::nullopt;

			if (l == level::pte || format::huge(e)) {
				const uint64_t offset_pages = (addr & (arch::entry_span<G>(l) - 1)) >> arch::page_shift;
				return translation{format::pfn(e) + offset_pages, format::prot(e), l, uint64_t{e}};
			}

			table = mm_.table_of(e);
			l = arch::next_table_level<G>(l);
			if (l == level::pte)
				remember(entry, e, table, addr);
		}
	}

	void remember(const slot_t *pmd, typename G::entry_t pmd_value, const slot_t *ptes, uint64_t addr)
	{
		pmd_ = pmd;
		pmd_value_ = pmd_value;
		ptes_ = ptes;
		base_ = addr & ~(arch::entry_span<G>(level::pmd) - 1);
	}

	const mm_struct<G> &mm_;
	sync::srcu_read_guard rcu_;
	const slot_t *pmd_ = nullptr; // the pmd entry of the remembered table, or null
	typename G::entry_t pmd_value_{};
	const slot_t *ptes_ = nullptr;
	uint64_t base_ = 0; // first address the remembered table maps
};

// Tables per level found by walking the tree; the audit compares this with
// the mm's counters.
template <class G>
std::array<uint64_t, arch::nr_levels> count_tables(const mm_struct<G> &mm);

namespace detail {

template <class G, class Visit>
void walk_tables(const mm_struct<G> &mm, level l, pfn_t pfn, Visit &visit)
{
	using format = typename G::format;

	visit(l, pfn);
	if (l == level::pte)
		return;

	const auto *t = mm.table(pfn);
	for (unsigned i = 0; i < arch::ptrs_per_table<G>(l); i++) {
		const auto e = t[i].load(std::memory_order_acquire);
		if (format::present(e) && !format::huge(e))
			walk_tables(mm, arch::next_table_level<G>(l), format::pfn(e), visit);
	}
}

} // namespace detail

// Calls visit(level, pfn) for every table of the tree, parents first.
template <class G, class Visit>
void for_each_table(const mm_struct<G> &mm, Visit &&visit)
{
	detail::walk_tables(mm, level::pgd, mm.pgd_pfn(), visit);
}

template <class G>
std::array<uint64_t, arch::nr_levels> count_tables(const mm_struct<G> &mm)
{
	std::array<uint64_t, arch::nr_levels> counts{};
	for_each_table(mm, [&](level l, pfn_t) { counts[arch::level_index(l)]++; });
	return counts;
}

// Sign-extends an address that a walk computed from table indices.
template <class G>
uint64_t canonical_address(uint64_t addr)
{
	if constexpr (G::sign_extended) {
		const unsigned unused = 64 - arch::va_bits<G>();
		return static_cast<uint64_t>(static_cast<int64_t>(addr << unused) >> unused);
	} else {
		return addr;
	}
}

// Writes the tree: one line per table, then the present leaves of each PTE
// table as runs of consecutive addresses mapping consecutive frames with the
// same protection.
template <class G>
void dump(const mm_struct<G> &mm, std::ostream &out);

} // namespace ptl::mm

#include <ptl/mm/dump.hpp>
