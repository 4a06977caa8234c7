#pragma once
// Page-table geometry: how many levels, how each level splits a virtual
// address, and which levels are folded away.
//
// A profile is a struct of constants; every function here is constexpr, so a
// folded level costs nothing at run time: its "table" is the entry of the
// level above, and the code that would walk it compiles to nothing.

#include <array>
#include <cstdint>
#include <string_view>
#include <utility>

namespace ptl::arch {

// Levels from the root down, as Linux names them.
enum class level : unsigned { pgd = 0, p4d = 1, pud = 2, pmd = 3, pte = 4 };

inline constexpr unsigned nr_levels = 5;
inline constexpr uint64_t page_size = 4096;
inline constexpr unsigned page_shift = 12;

constexpr std::string_view level_name(level l)
{
	constexpr std::array<std::string_view, nr_levels> names = {"pgd", "p4d", "pud", "pmd", "pte"};
	return names[static_cast<unsigned>(l)];
}

constexpr unsigned level_index(level l)
{
	return static_cast<unsigned>(l);
}

constexpr level next_level(level l)
{
	return static_cast<level>(level_index(l) + 1);
}

// A profile G provides:
//   entry_t           unsigned integer type of one entry
//   shift[level]      log2 of the bytes one entry of that level maps
//   bits[level]       index bits taken by that level; 0 means folded
//   sign_extended     whether addresses above va_bits copy the top bit
//                     (x86-64 canonical form)
//   task_size         end of the user half (exclusive)
//   vmalloc_start/end the kernel's vmalloc area [start, end)
//   format            the hardware entry format (see pte_format.hpp and
//                     arm64_format.hpp)

template <class G>
constexpr bool is_folded(level l)
{
	return G::bits[level_index(l)] == 0;
}

template <class G>
constexpr unsigned level_shift(level l)
{
	return G::shift[level_index(l)];
}

// Bytes of address space mapped by one entry at level l.
template <class G>
constexpr uint64_t entry_span(level l)
{
	return uint64_t{1} << level_shift<G>(l);
}

template <class G>
constexpr unsigned ptrs_per_table(level l)
{
	return 1u << G::bits[level_index(l)];
}

// Index of addr's entry inside its level-l table; 0 for a folded level.
template <class G>
constexpr unsigned table_index(level l, uint64_t addr)
{
	return static_cast<unsigned>((addr >> level_shift<G>(l)) & (ptrs_per_table<G>(l) - 1));
}

// End of the level-l entry that contains addr, clamped to end. Written as in
// Linux's pXd_addr_end: compare with "- 1" so an end of 0 (the top of the
// address space) does not wrap.
template <class G>
constexpr uint64_t entry_end(level l, uint64_t addr, uint64_t end)
{
	const uint64_t boundary = (addr + entry_span<G>(l)) & ~(entry_span<G>(l) - 1);
	return boundary - 1 < end - 1 ? boundary : end;
}

// Bytes of one table at level l. Every table of every profile fits one 4 KiB
// frame; the i386 PAE pgd uses 32 bytes of its frame.
template <class G>
constexpr uint64_t table_bytes(level l)
{
	return uint64_t{ptrs_per_table<G>(l)} * sizeof(typename G::entry_t);
}

// Number of index bits the geometry translates (the virtual address width).
template <class G>
constexpr unsigned va_bits()
{
	return level_shift<G>(level::pgd) + G::bits[0];
}

// The translated address ranges, as [start, end) pairs with end 0 meaning
// 2^64. A sign-extended geometry has a lower and an upper half with a
// non-canonical hole between them; walks over "everything" visit both.
// Only the first nr_address_halves entries are used.
template <class G>
constexpr unsigned nr_address_halves()
{
	return G::sign_extended ? 2 : 1;
}

template <class G>
constexpr std::array<std::pair<uint64_t, uint64_t>, 2> address_halves()
{
	if constexpr (G::sign_extended) {
		const uint64_t half = uint64_t{1} << (va_bits<G>() - 1);
		return {{{0, half}, {~uint64_t{0} - half + 1, 0}}};
	} else {
		return {{{0, uint64_t{1} << va_bits<G>()}, {0, 0}}};
	}
}

template <class G>
constexpr bool is_canonical(uint64_t addr)
{
	if constexpr (G::sign_extended) {
		const auto halves = address_halves<G>();
		return addr < halves[0].second || addr >= halves[1].first;
	} else {
		return addr < (uint64_t{1} << va_bits<G>());
	}
}

// Level of the next table below l that is not folded away.
template <class G>
constexpr level next_table_level(level l)
{
	level n = next_level(l);
	while (n != level::pte && is_folded<G>(n))
		n = next_level(n);
	return n;
}

// Level of the table whose entry points to a table of level l: the nearest
// level above l that is not folded (pgd never is).
template <class G>
constexpr level parent_table_level(level l)
{
	level p = static_cast<level>(level_index(l) - 1);
	while (p != level::pgd && is_folded<G>(p))
		p = static_cast<level>(level_index(p) - 1);
	return p;
}

// The entry that links a new table of level l into its parent, in the
// format's encoding for the parent's level.
template <class G>
constexpr typename G::entry_t make_table_entry(level l, uint64_t pfn, uint64_t prot)
{
	return static_cast<typename G::entry_t>(G::format::make_table(parent_table_level<G>(l), pfn, prot));
}

} // namespace ptl::arch
