#pragma once
// `ptl bench peers`: ptl against the structures a user would otherwise pick
// to map page numbers to frame numbers, and against the real kernel.
//
// Every structure does the same work on the same keys. T threads insert N
// page-to-frame mappings in disjoint slices and look them up three ways: in
// address order, in random order, and as a pointer chase where the frame
// found names the next page. Then they remove them. Runs are interleaved (for
// each repeat: every layout, thread count and structure), so a slow patch
// of the machine hits all structures alike, and each result is the median
// over the repeats.

#include "bench.hpp"

#include <ptl/mm/mm.hpp>

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ptl::bench::peers {

// The set of pages that a run maps.
enum class layout_kind {
	// One contiguous range of N pages.
	dense,
	// The present pages of a real process: live (--pid), a demo child,
	// or a snapshot file.
	replay,
	// N distinct pages at random over 64 TiB of address space.
	scattered,
};

inline constexpr layout_kind all_layouts[] = {layout_kind::dense, layout_kind::replay, layout_kind::scattered};

std::string_view layout_name(layout_kind kind);
std::optional<layout_kind> parse_layout(std::string_view name);

// The structures compared. Each peer is the map a user would build from a
// Debian package; ptl runs once per selected lock mode.
enum class peer_kind {
	std_map,  // std::unordered_map under std::mutex
	absl_map, // absl::flat_hash_map under absl::Mutex (reader lock for lookups)
	tbb_map,  // tbb::concurrent_hash_map
	cds_map,  // cds::container::FeldmanHashMap with hazard pointers
	judy,     // JudyL under std::mutex
};

inline constexpr peer_kind all_peers[] = {peer_kind::std_map, peer_kind::absl_map, peer_kind::tbb_map,
					  peer_kind::cds_map, peer_kind::judy};

std::string_view peer_name(peer_kind kind);
std::optional<peer_kind> parse_peer(std::string_view name);

// The timed operations of one run, in the order they run.
enum class op_kind { insert, lookup_order, lookup_random, lookup_chase, remove };

inline constexpr op_kind all_ops[] = {op_kind::insert, op_kind::lookup_order, op_kind::lookup_random,
				      op_kind::lookup_chase, op_kind::remove};
inline constexpr size_t nr_ops = std::size(all_ops);

std::string_view op_name(op_kind op);

// The thread counts are ascending and unique once validated.
struct peers_options {
	std::vector<layout_kind> layouts{std::begin(all_layouts), std::end(all_layouts)};
	std::vector<peer_kind> peers{std::begin(all_peers), std::end(all_peers)};
	std::vector<mm::lock_mode> modes{std::begin(mm::all_lock_modes), std::end(mm::all_lock_modes)};
	bool run_ptl = true;
	std::vector<unsigned> threads{1, 2};
	// Mappings per run for the dense and scattered layouts, the demo
	// child's present pages for replay, and the pages of the kernel runs.
	uint64_t pages = uint64_t{1} << 18;
	unsigned repeat = 5;
	int pid = 0;               // replay: the process to read; 0 starts a demo child
	std::string snapshot_path; // replay: a snapshot file to read instead of a process
	bool kernel = true;        // run the kernel comparison
	// Size sweep: log2 of the smallest and largest page counts, or unset.
	std::optional<std::pair<unsigned, unsigned>> sweep;
	uint64_t seed = 1;         // of the scattered layout and the random orders
	std::function<void(const std::string &)> progress;
};

// Checks the options. Throws std::invalid_argument with a one-line message
// naming the first bad value.
void validate(const peers_options &options);

// Rate of one operation over the repeats, in operations per second.
struct rate {
	double median = 0;
	double min = 0;
	double max = 0;
};

// One structure on one layout at one thread count.
struct structure_result {
	layout_kind layout;
	std::string structure; // peer name, or "ptl-MODE"
	bool is_ptl = false;
	unsigned threads = 0;
	uint64_t pages = 0;
	std::array<rate, nr_ops> ops{};
	double bytes_per_page = 0; // median over the repeats
	// CPU time the threads got as a percentage of their wall time, median
	// over the repeats. Below 100 other load took the CPUs.
	double cpu_percent = 0;
};

// ptl's best mode against the fastest peer for one operation.
struct ratio_result {
	layout_kind layout;
	unsigned threads = 0;
	op_kind op;
	std::string ptl_structure; // the fastest ptl mode
	std::string peer;          // the fastest peer
	double ratio = 0;          // ptl's median / the peer's median
};

// One kernel or ptl run of the kernel comparison, in pages per second.
struct kernel_result {
	std::string name;
	unsigned threads = 0;
	uint64_t pages = 0;
	rate per_second;
};

// Seconds per page of one operation at one size, on the dense layout with
// one thread and random-order lookups.
struct sweep_result {
	std::string structure;
	uint64_t pages = 0;
	std::array<double, 3> ns_per_page{}; // insert, lookup_random, remove: medians
};

// A target of the comparison, as measured.
struct target_result {
	std::string name;
	double measured = 0;
	double target = 0;
	bool at_most = false; // the target is an upper bound (bytes), not a lower one
	bool met = false;
};

struct peers_report {
	machine_info machine;
	std::string arch;
	peers_options options; // progress left unset
	std::string replay_process;
	uint64_t replay_pages = 0;
	size_t page_metadata_bytes = 0; // ptl's per-frame metadata, counted with each table
	std::vector<structure_result> results;
	std::vector<ratio_result> ratios;
	std::vector<kernel_result> kernel;
	std::vector<sweep_result> sweep;
	std::vector<target_result> targets;
	double total_seconds = 0;
};

// Runs the comparison. Throws std::invalid_argument for bad options,
// tools::input_error when the process or snapshot to replay cannot be read,
// and std::runtime_error when a run fails or a lookup returns a wrong frame.
peers_report run_peers(const peers_options &options);

std::string format_table(const peers_report &report);
std::string format_json(const peers_report &report);
std::string format_csv(const peers_report &report);

} // namespace ptl::bench::peers
