#pragma once
// The parts the bench driver and its scenarios share: a scenario's
// interface, the thread harness that times every run the same way, and the
// store-limit helpers.

#include "bench.hpp"

#include <ptl/arch/registry.hpp>
#include <ptl/mm/populate.hpp>

#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

namespace ptl::bench {

// The native geometry, for the parts of ptl bench that take no --arch
// (bench peers). The scenarios are templates over their geometry instead.
using G = arch::native;

// Wall time of one timed run, and the CPU time its threads got meanwhile.
struct run_timing {
	double seconds = 0;
	double cpu_seconds = 0;
};

// One timed run of a workload.
struct run_sample {
	run_timing time;
	std::vector<mm::named_lock_stats> locks;
};

class scenario {
public:
	virtual ~scenario() = default;

	// Work items of one run: pages mapped, faults handled, pages inserted.
	virtual uint64_t units() const = 0;

	// Runs the workload once in a fresh address space of the given mode.
	virtual run_sample run(mm::lock_mode mode, unsigned threads) = 0;

	// Times storing the entries that run() stores, into tables populated
	// beforehand, with no allocation and no lock.
	virtual run_timing run_store_limit(unsigned threads) = 0;
};

// Takes every frame of the pool and frees them again in descending frame
// order, so that the next run takes its frames in ascending order whatever
// the runs before it freed. The pool hands out the frames freed last first,
// and zeroing frames in descending address order was measured at about half
// the speed of ascending order. Every frame must be free. Frames that were
// used before are zeroed as they are taken here, so this costs a pass over
// the pool's memory.
void reset_frame_order(phys::frame_pool &pool);

// Checks the options of one scenario against the machine, and throws
// std::invalid_argument for sizes it cannot run.
void check_kernel_map_options(const bench_options &options);
void check_fault_options(const bench_options &options);
void check_replay_options(const bench_options &options);

// Each constructor does the scenario's untimed setup: sizing and
// prefaulting its frame pool, and for replay reading the process. The
// scenario builds tables in the geometry options.arch names.
std::unique_ptr<scenario> make_kernel_map(const bench_options &options);
std::unique_ptr<scenario> make_fault(const bench_options &options);
std::unique_ptr<scenario> make_replay(const bench_options &options, std::string &process, uint64_t &pages);

// Runs body(index) on `threads` threads, all released at once after every
// thread has started. Returns the seconds from the release until the last
// one finished, and the CPU time the threads spent in body. An exception in
// a thread is rethrown here after all threads have been joined.
run_timing run_threads(unsigned threads, const std::function<void(unsigned)> &body);

// Runs a store limit's body as run_threads does, but repeats it in each
// thread until the run has written at least limit_min_entries entries, and
// returns the time of one pass. A single pass over a few hundred thousand
// entries lasts well under a millisecond, which thread start-up would
// distort. `entries` is the number of entry writes of one pass.
run_timing run_limit_passes(unsigned threads, uint64_t entries, const std::function<void(unsigned)> &body);

inline constexpr uint64_t limit_min_entries = uint64_t{1} << 23;

// First and one-past-last item of thread `index` when n items are split
// into `threads` contiguous slices.
inline uint64_t slice_begin(uint64_t n, unsigned index, unsigned threads)
{
	return n * index / threads;
}

inline uint64_t slice_end(uint64_t n, unsigned index, unsigned threads)
{
	return n * (index + 1) / threads;
}

// Throws std::runtime_error naming what failed and the error.
[[noreturn]] void throw_failure(std::string_view what, errc error);

// Throws std::invalid_argument when a scenario of `pages` pages needs more
// than 3/4 of the memory that is free now, so that the host's out-of-memory
// killer does not end the run instead.
void check_memory(std::string_view scenario, uint64_t pages, uint64_t bytes);

// An address space whose PTE tables cover chosen ranges, for the store
// limit. Its tables are populated before timing, so storing an entry is one
// release store, as a mapping's final step is.
template <class G>
class limit_tables {
public:
	limit_tables(phys::frame_pool &pool, mm::mm_kind kind)
	{
		auto mm = mm::mm_struct<G>::create(pool, kind, mm::lock_mode::pushdown);
		if (!mm)
			throw_failure("creating the store limit's address space", mm.error());
		mm_ = std::move(*mm);
	}

	// Populates every table that [start, end) needs.
	void populate(uint64_t start, uint64_t end)
	{
		const uint64_t span = arch::entry_span<G>(arch::level::pmd);

		for (uint64_t addr = start & ~(span - 1); addr < end; addr += span) {
			auto pmd = mm::pmd_alloc_walk(*mm_, addr);
			if (!pmd)
				throw_failure("populating the store limit's tables", pmd.error());

			auto pte = mm::pte_alloc(*mm_, *pmd, addr);
			if (!pte)
				throw_failure("populating the store limit's tables", pte.error());
		}
	}

	mm::mm_struct<G> &mm() { return *mm_; }

private:
	std::unique_ptr<mm::mm_struct<G>> mm_;
};

// Finds the PTE slot of an address in populated tables, walking from the
// pgd only when the address leaves the PTE table of the previous one.
template <class G>
class pte_cursor {
public:
	using slot_t = typename mm::mm_struct<G>::slot_t;

	explicit pte_cursor(mm::mm_struct<G> &mm) : mm_(mm) {}

	slot_t *slot(uint64_t addr)
	{
		const uint64_t span = arch::entry_span<G>(arch::level::pmd);
		const uint64_t table_start = addr & ~(span - 1);

		if (table_start != table_start_)
			find_table(table_start);
		return &table_[arch::table_index<G>(arch::level::pte, addr)];
	}

private:
	void find_table(uint64_t table_start)
	{
		// The tables are populated, so this walk only reads entries.
		auto pmd = mm::pmd_alloc_walk(mm_, table_start);
		if (!pmd)
			throw_failure("walking the store limit's tables", pmd.error());

		table_ = mm::entry_offset(mm_, *pmd, arch::level::pte, table_start);
		table_start_ = table_start;
	}

	mm::mm_struct<G> &mm_;
	uint64_t table_start_ = 1; // no table starts at an odd address
	slot_t *table_ = nullptr;
};

// The entry a limit stores for the page at index i: a bare frame number.
template <class G>
typename G::entry_t limit_entry(uint64_t i, uint64_t prot)
{
	return static_cast<typename G::entry_t>(G::format::make(i & G::format::max_pfn, prot));
}

} // namespace ptl::bench
