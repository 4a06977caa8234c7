#pragma once
// The parts of `ptl bench peers` that its driver, layouts, structures and
// kernel comparison share.

#include "peers.hpp"
#include "scenario.hpp"

#include <ptl/tools/replay.hpp>

#include <map>
#include <memory>
#include <optional>
#include <utility>

namespace ptl::bench::peers {

// The frame a lookup returns when the page is not mapped.
inline constexpr uint64_t no_frame = ~uint64_t{0};

// One page-to-frame mapping. The frame of each page is the page number of
// the page after it in one random cycle through all pages, so a pointer
// chase takes the next page straight from the frame it found. No page
// number is 0, because every layout lies above mmap_min_addr.
struct mapping {
	uint64_t vpn;
	uint64_t pfn;
};

// The pages one run maps, and the orders its operations visit them in.
// Each order is an array of its own that the threads read sequentially, so
// that the only cache misses of a lookup are the structure's. Indices are
// uint32_t, so a layout has at most 2^32 pages. The options allow 2^30.
struct layout {
	layout_kind kind = layout_kind::dense;
	std::vector<uint64_t> vpns;          // page numbers, ascending
	std::vector<uint32_t> next;          // one random cycle through every index
	std::vector<mapping> by_address;     // in address order
	std::vector<mapping> by_insert;      // in the order inserts and removals visit them
	std::vector<mapping> by_random;      // in the order random lookups visit them
	// Byte ranges of the VMAs that ptl maps the pages in, for the layouts
	// that have no process image.
	std::vector<std::pair<uint64_t, uint64_t>> vmas;
	std::optional<tools::process_image> image; // the replayed process, for replay
	size_t table_frames = 0;                    // every table the pages need, all levels

	// Chase start and expected end page per thread, per thread count.
	std::map<unsigned, std::vector<std::pair<uint64_t, uint64_t>>> chases;

	uint64_t size() const { return vpns.size(); }
};

layout make_dense_layout(uint64_t pages, uint64_t seed);
layout make_scattered_layout(uint64_t pages, uint64_t seed);
// Reads the process (--pid, a snapshot file, or a demo child started for
// the purpose) and names it in `process`.
layout make_replay_layout(const peers_options &options, std::string &process);

// Computes the chase starts and ends of every thread count.
void prepare_chases(layout &l, const std::vector<unsigned> &thread_counts);

// The measurements of one run of a structure.
struct cycle_sample {
	std::array<double, nr_ops> seconds{}; // 0 for an operation not run
	double bytes_per_page = 0;
	// CPU time the threads got, as a percentage of their wall time over
	// all timed operations. Below 100 they waited for a CPU.
	double cpu_percent = 0;
};

// The set of operations a run times. The sweep runs insert, random
// lookups and removal only.
enum class cycle_ops { all, sweep };

// One structure under test: a name and a function that runs the full cycle
// (create, insert, look up, remove, destroy) once.
struct structure {
	std::string name;
	bool is_ptl = false;
	std::function<cycle_sample(const layout &, unsigned threads, cycle_ops)> run;
};

// The selected structures for one layout. The ptl entries share `pool`,
// which must be sized for the layout and outlive them.
std::vector<structure> make_structures(const peers_options &options, phys::frame_pool &pool);

// Sets up the C allocator so that freed memory stays in the heap for the
// next run instead of going back to the kernel, as ptl's frame pool keeps
// its frames, and reads the heap's bytes in use.
void configure_heap();
uint64_t heap_bytes_in_use();

// Frames of a pool for the layout's tables, with room for the tables that
// lockless runs free only after a grace period.
size_t pool_frames_for(const layout &l, unsigned max_threads);

// The kernel comparison: anonymous faults and MAP_POPULATE against ptl's
// fault path and vmap.
std::vector<kernel_result> run_kernel_comparison(const peers_options &options,
						 const std::function<void(const std::string &)> &note);

double median_of(std::vector<double> values);

} // namespace ptl::bench::peers
