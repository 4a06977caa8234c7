#pragma once
// The invariant audit: the tree, the counters and the frame pool agree.
//
// For each address space it checks that every table is reachable exactly
// once, is allocated in the pool for its own level and owned by that
// address space, that the walked counts equal the mm's counters, and that no
// lock is held. Across all address spaces of one pool it checks that the
// pool's table frames are exactly the reachable ones (nothing leaked) and
// that nothing was freed twice.

#include <ptl/mm/walk.hpp>

#include <string>
#include <unordered_set>
#include <vector>

namespace ptl::check {

using arch::level;

struct audit_report {
	std::vector<std::string> problems;
	std::array<uint64_t, arch::nr_levels> tables{}; // reachable tables per level, all spaces
	uint64_t leaves = 0;                             // base pages mapped by present leaves, all spaces

	bool ok() const { return problems.empty(); }
	std::string summary() const
	{
		std::string s;
		for (const auto &p : problems)
			s += p + "\n";
		return s;
	}
};

namespace detail {

template <class G>
void audit_one(const mm::mm_struct<G> &mm, std::unordered_set<phys::pfn_t> &seen, audit_report &report)
{
	const phys::frame_pool &pool = mm.pool();
	std::array<uint64_t, arch::nr_levels> walked{};

	mm::for_each_table(mm, [&](level l, phys::pfn_t pfn) {
		walked[arch::level_index(l)]++;
		report.tables[arch::level_index(l)]++;

		if (!seen.insert(pfn).second)
			report.problems.push_back(std::string(arch::level_name(l)) + " table pfn " + std::to_string(pfn) +
						  " is reachable more than once");

		const auto site = pool.site_of(pfn);
		if (!site)
			report.problems.push_back(std::string(arch::level_name(l)) + " table pfn " + std::to_string(pfn) +
						  " is in the tree but free in the pool");
		else if (static_cast<unsigned>(*site) != arch::level_index(l))
			report.problems.push_back(std::string(arch::level_name(l)) + " table pfn " + std::to_string(pfn) +
						  " was allocated as " + std::string(phys::site_name(*site)));

		if (pool.page_of(pfn).owner.load(std::memory_order_acquire) != &mm)
			report.problems.push_back(std::string(arch::level_name(l)) + " table pfn " + std::to_string(pfn) +
						  " is owned by another address space");
	});

	const auto counters = mm.counters();
	for (unsigned i = 0; i < arch::nr_levels; i++) {
		if (walked[i] != counters.nr_tables[i])
			report.problems.push_back(std::string(arch::level_name(static_cast<level>(i))) + " tables: walk found " +
						  std::to_string(walked[i]) + ", counter says " +
						  std::to_string(counters.nr_tables[i]));
	}

	// A huge leaf counts as the base pages it maps.
	mm::walk_all(mm, [&](uint64_t, auto, level l) { report.leaves += arch::entry_span<G>(l) / arch::page_size; });

	if (mm.page_table_lock.is_locked())
		report.problems.push_back("page_table_lock is still held");
}

} // namespace detail

// Audits address spaces that share one pool and are the only users of its
// table frames. Data frames are not checked here; their owners count them.
template <class G>
audit_report audit(std::initializer_list<const mm::mm_struct<G> *> spaces)
{
	audit_report report;
	std::unordered_set<phys::pfn_t> seen;
	const phys::frame_pool *pool = nullptr;

	for (const auto *mm : spaces) {
		pool = &mm->pool();
		detail::audit_one(*mm, seen, report);
	}
	if (!pool)
		return report;

	const auto stats = pool->stats();
	for (unsigned i = 0; i < arch::nr_levels; i++) {
		if (stats.in_use_by_site[i] != report.tables[i])
			report.problems.push_back(std::to_string(stats.in_use_by_site[i]) + " " +
						  std::string(arch::level_name(static_cast<level>(i))) +
						  " frames in use in the pool, but " + std::to_string(report.tables[i]) +
						  " reachable: " + (stats.in_use_by_site[i] > report.tables[i] ? "leaked" : "lost"));
	}
	if (stats.double_frees != 0)
		report.problems.push_back(std::to_string(stats.double_frees) + " frames were freed twice");

	return report;
}

} // namespace ptl::check
