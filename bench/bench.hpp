#pragma once
// `ptl bench`: the scalability workbench.
//
// Each scenario runs under every selected lock mode and thread count, and
// once more as the store limit: the same entries stored into tables that
// already exist, with no allocation and no lock. Runs are interleaved (for
// each repeat: every thread count, then the limit and every mode), so a
// slow patch of the machine hits all modes alike, and each result is the
// median over the repeats.

#include <ptl/mm/lock_report.hpp>
#include <ptl/mm/mm.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ptl::bench {

enum class scenario_kind {
	// T threads vmap and vunmap batches of pages in one kernel address
	// space, so their areas share directory and PTE tables.
	kernel_map,
	// T threads fault in disjoint parts of one anonymous area.
	fault,
	// T threads rebuild a live process's page tables (ptl replay).
	replay,
};

inline constexpr scenario_kind all_scenarios[] = {scenario_kind::kernel_map, scenario_kind::fault,
						  scenario_kind::replay};

std::string_view scenario_name(scenario_kind kind);
std::optional<scenario_kind> parse_scenario(std::string_view name);

// What one unit of a scenario's throughput counts.
std::string_view scenario_unit(scenario_kind kind);

// Pages per run when --pages is not given, sized so that one run takes tens
// of milliseconds or more on a current core. kernel-map needs no memory
// behind its pages and is fast. fault commits a 4 KiB data frame per page,
// and replay's demo child touches every page it reports, so both use less.
constexpr uint64_t default_pages(scenario_kind kind)
{
	return kind == scenario_kind::kernel_map ? uint64_t{1} << 22 : uint64_t{1} << 18;
}

struct bench_options {
	std::vector<scenario_kind> scenarios{std::begin(all_scenarios), std::end(all_scenarios)};
	std::vector<mm::lock_mode> modes{std::begin(mm::all_lock_modes), std::end(mm::all_lock_modes)};
	std::vector<unsigned> threads{1, 2, 4}; // ascending, no duplicates
	// Work per run: pages mapped, faults, or the demo child's present pages.
	// Unset, each scenario uses its default_pages.
	std::optional<uint64_t> pages;
	unsigned repeat = 5;                    // runs per result; the median is reported
	int pid = 0;                            // replay: 0 starts a demo child with about `pages` present pages
	unsigned batch = 16;                    // kernel-map: pages per vmap
	unsigned window = 32;                   // kernel-map: live vmaps per thread before the oldest is unmapped
	// kernel-map: map with vm_map_ram (per-thread vmap blocks) instead of
	// vmap (one vmalloc area, and its lock, per mapping).
	bool vm_map_ram = false;
	// Geometry the tables are built in, one of arch::profile_names; empty
	// means the native one.
	std::string arch;
	// Called with a line of progress now and then. The driver passes at
	// most one line a second, and none in the first second.
	std::function<void(const std::string &)> progress;
};

// Checks the options, and the sizes they ask for against the machine's
// free memory. Throws std::invalid_argument with a one-line message naming
// the first bad value.
void validate(const bench_options &options);

// The pages per run of one scenario under these options.
uint64_t pages_for(const bench_options &options, scenario_kind kind);

// Lock statistics of one result: per run, averaged over the repeats.
struct lock_summary {
	std::string name;
	uint64_t locks = 0;        // how many locks of this kind were summed
	double acquisitions = 0;
	double contended = 0;      // acquisitions that found the lock taken
	double wait_ns = 0;        // time spent spinning in contended acquisitions
};

// Throughput of one configuration over the repeats, in units per second.
struct throughput {
	double median = 0;
	double min = 0;
	double max = 0;
	std::vector<double> seconds; // duration of each run, in run order
	// CPU time the threads got, as a percentage of their wall time
	// (seconds x threads), mean over the runs. Below 100 the threads were
	// waiting for a CPU: other load, or more threads than CPUs.
	double cpu_percent = 0;
};

struct bench_result {
	scenario_kind scenario;
	mm::lock_mode mode;
	unsigned threads = 0;
	uint64_t units = 0; // work items of one run
	throughput rate;
	std::optional<double> ratio_to_one_thread; // median / same mode's 1-thread median
	std::optional<double> fraction_of_limit;   // median / store limit's median at this thread count
	std::optional<double> ratio_to_legacy;     // median / legacy's median at this thread count
	std::vector<lock_summary> locks;

	double contended_percent() const;
	// Lock waiting as a percentage of the run's thread time (seconds x threads).
	double wait_percent() const;
};

// The store limit of one scenario at one thread count.
struct limit_result {
	scenario_kind scenario;
	unsigned threads = 0;
	uint64_t units = 0;
	throughput rate;
};

struct machine_info {
	unsigned cpus = 0;       // online CPUs
	std::string cpu_model;   // "model name" of /proc/cpuinfo, or empty
	uint64_t memory_bytes = 0;
	std::optional<double> load_average; // 1-minute load average before the run
};

struct bench_report {
	machine_info machine;
	std::string arch;        // geometry the tables were built for
	bench_options options;   // progress left unset
	std::string replay_process; // "PID (name)" of the replayed process, if replay ran
	uint64_t replay_pages = 0;  // present pages of that process
	std::vector<limit_result> limits;
	std::vector<bench_result> results;
	double total_seconds = 0;
};

// Runs every selected scenario. Throws std::invalid_argument for bad
// options, tools::input_error when the process to replay cannot be read,
// and std::runtime_error when a run fails.
bench_report run_bench(const bench_options &options);

machine_info read_machine_info();

std::string format_table(const bench_report &report);
std::string format_json(const bench_report &report);
std::string format_csv(const bench_report &report);

} // namespace ptl::bench
