#pragma once
// Statistics of every lock an address space uses, for reports: the
// mm-wide page_table_lock and, in split mode, the locks of its PTE tables
// (and of its pmd tables when PTE tables are populated under them), summed.

#include <ptl/mm/walk.hpp>

#include <string>
#include <vector>

namespace ptl::mm {

struct named_lock_stats {
	std::string name;
	uint64_t locks = 1; // how many locks were summed
	sync::lock_stats stats;
};

inline void add_stats(sync::lock_stats &sum, const sync::lock_stats &s)
{
	sum.acquisitions += s.acquisitions;
	sum.contended += s.contended;
	sum.wait_ns += s.wait_ns;
}

template <class G>
std::vector<named_lock_stats> lock_report(const mm_struct<G> &mm)
{
	std::vector<named_lock_stats> report;
	report.push_back({"page_table_lock", 1, mm.page_table_lock.stats()});

	if (mm.mode() != lock_mode::split)
		return report;

	named_lock_stats pte_locks{"pte table locks", 0, {}};
	named_lock_stats pmd_locks{"pmd table locks", 0, {}};
	const level pmd_table_level = arch::is_folded<G>(level::pmd) ? level::pgd : level::pmd;

	for_each_table(mm, [&](level l, pfn_t pfn) {
		const sync::lock_stats s = mm.pool().page_of(pfn).ptl.stats();
		if (l == level::pte) {
			pte_locks.locks++;
			add_stats(pte_locks.stats, s);
		} else if (l == pmd_table_level && mm.split_pmd()) {
			pmd_locks.locks++;
			add_stats(pmd_locks.stats, s);
		}
	});

	report.push_back(pte_locks);
	if (mm.split_pmd())
		report.push_back(pmd_locks);
	return report;
}

} // namespace ptl::mm
