#pragma once
// Text dump of an address space's tables and mappings.

#include <ptl/mm/walk.hpp>

#include <cinttypes>
#include <cstdio>
#include <string>

namespace ptl::mm {

// Flag letters of a leaf: r always (present), w, u, x unless NX, a, d, h
// for a huge leaf, c for cache-disabled.
inline std::string prot_letters(uint64_t prot, bool has_nx)
{
	std::string s;
	s += 'r';
	s += (prot & arch::prot_write) ? 'w' : '-';
	s += (prot & arch::prot_user) ? 'u' : '-';
	s += (has_nx && (prot & arch::prot_nx)) ? '-' : 'x';
	s += (prot & arch::prot_accessed) ? 'a' : '-';
	s += (prot & arch::prot_dirty) ? 'd' : '-';
	s += (prot & arch::prot_huge) ? 'h' : '-';
	s += (prot & arch::prot_pcd) ? 'c' : '-';
	return s;
}

namespace detail {

// A run of leaves: consecutive addresses, consecutive frames, one protection.
struct leaf_run {
	uint64_t start = 0;
	uint64_t end = 0;
	pfn_t first_pfn = 0;
	uint64_t next_pfn = 0;
	uint64_t prot = 0;
	bool open = false;
};

inline void print_run(std::ostream &out, const leaf_run &run, bool has_nx)
{
	char line[160];
	std::snprintf(line, sizeof(line), "  %016" PRIx64 "-%016" PRIx64 " %8" PRIu64 " KiB  pfn %#" PRIx64 "  %s\n",
		      run.start, run.end, (run.end - run.start) / 1024, run.first_pfn,
		      prot_letters(run.prot, has_nx).c_str());
	out << line;
}

} // namespace detail

template <class G>
void dump(const mm_struct<G> &mm, std::ostream &out)
{
	using format = typename G::format;

	const auto counts = count_tables(mm);
	out << (mm.kind() == mm_kind::kernel ? "kernel" : "user") << " address space, " << G::name << ", pgd pfn "
	    << mm.pgd_pfn() << "\n  tables:";
	for (level l : {level::pgd, level::p4d, level::pud, level::pmd, level::pte}) {
		if (l == level::pgd || !arch::is_folded<G>(l))
			out << ' ' << arch::level_name(l) << ' ' << counts[arch::level_index(l)];
	}
	out << "\n";

	detail::leaf_run run;
	walk_all(mm, [&](uint64_t addr, auto e, level l) {
		const uint64_t start = canonical_address<G>(addr);
		const uint64_t span = arch::entry_span<G>(l);
		const uint64_t prot = format::prot(e) & ~uint64_t{arch::prot_accessed | arch::prot_dirty};

		if (run.open && run.end == start && run.next_pfn == format::pfn(e) && run.prot == prot) {
			run.end += span;
			run.next_pfn += span >> arch::page_shift;
			return;
		}
		if (run.open)
			detail::print_run(out, run, format::has_nx);
		run = detail::leaf_run{start, start + span, format::pfn(e), format::pfn(e) + (span >> arch::page_shift),
				       prot, true};
	});
	if (run.open)
		detail::print_run(out, run, format::has_nx);
}

} // namespace ptl::mm
