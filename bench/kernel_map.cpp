// kernel-map: threads vmap and vunmap batches of pages in one kernel address
// space. All areas come from one vmalloc area allocator, first fit, so the
// areas of different threads sit side by side and share pmd and PTE tables.

#include "scenario.hpp"

#include <ptl/kernel/kernel_space.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <vector>

namespace ptl::bench {

namespace {

// An area and the guard page the allocator reserves after it.
uint64_t area_pages(unsigned batch)
{
	return uint64_t{batch} + 1;
}

// Pages of vmalloc area that all threads' windows of areas span at the
// largest thread count selected.
uint64_t footprint_pages(const bench_options &options)
{
	const unsigned max_threads = *std::max_element(options.threads.begin(), options.threads.end());
	return uint64_t{max_threads} * options.window * area_pages(options.batch);
}

// A mapping of one thread that is still mapped: its address and pages.
struct live_mapping {
	uint64_t addr = 0;
	uint64_t pages = 0;
};

// The vmaps of one thread that are still mapped, oldest first.
class live_window {
public:
	explicit live_window(unsigned size) : addrs_(size) {}

	bool full() const { return count_ == addrs_.size(); }
	bool empty() const { return count_ == 0; }

	void push(live_mapping mapping)
	{
		addrs_[(oldest_ + count_) % addrs_.size()] = mapping;
		count_++;
	}

	live_mapping pop_oldest()
	{
		const live_mapping mapping = addrs_[oldest_];
		oldest_ = (oldest_ + 1) % addrs_.size();
		count_--;
		return mapping;
	}

private:
	std::vector<live_mapping> addrs_;
	size_t oldest_ = 0;
	size_t count_ = 0;
};

template <class G>
class kernel_map final : public scenario {
public:
	explicit kernel_map(const bench_options &options)
		: pages_(pages_for(options, scenario_kind::kernel_map)), batch_(options.batch), window_(options.window),
		  vm_map_ram_(options.vm_map_ram), pool_(pool_frames(options))
	{
		pool_.prefault(pool_.nr_frames());
	}

	uint64_t units() const override { return pages_; }

	run_sample run(mm::lock_mode mode, unsigned threads) override
	{
		// A fresh kernel space per run, so every run populates its tables.
		reset_frame_order(pool_);
		auto space = kernel::kernel_space<G>::create(pool_, mode);
		if (!space)
			throw_failure("creating the kernel address space", space.error());

		run_sample sample;
		sample.time = run_threads(threads, [&](unsigned i) { map_share(**space, i, threads); });

		sample.locks = mm::lock_report((*space)->init_mm());
		sample.locks.push_back({"vmalloc area lock", 1, (*space)->areas().lock_stats()});
		return sample;
	}

	run_timing run_store_limit(unsigned threads) override
	{
		const uint64_t thread_pages = uint64_t{window_} * area_pages(batch_);
		reset_frame_order(pool_);
		limit_tables<G> tables(pool_, mm::mm_kind::kernel);
		tables.populate(G::vmalloc_start, G::vmalloc_start + threads * thread_pages * arch::page_size);

		// Each page's entry is set and cleared.
		return run_limit_passes(threads, 2 * pages_, [&](unsigned i) {
			const uint64_t base = G::vmalloc_start + i * thread_pages * arch::page_size;
			store_share(tables.mm(), base, slice_begin(pages_, i, threads), slice_end(pages_, i, threads));
		});
	}

private:
	// Frames for the tables of the widest layout, which contains every
	// thread's window of areas at the largest thread count selected, with
	// room to spare.
	static size_t pool_frames(const bench_options &options)
	{
		return footprint_pages(options) / arch::ptrs_per_table<G>(arch::level::pte) * 2 + 256;
	}

	// Maps pages [first, last) of the run in vmaps of batch_ pages, keeping
	// window_ of them mapped and unmapping the oldest to make room. The
	// frames are bare numbers with nothing behind them.
	void map_share(kernel::kernel_space<G> &space, unsigned index, unsigned threads)
	{
		const uint64_t first = slice_begin(pages_, index, threads);
		const uint64_t last = slice_end(pages_, index, threads);
		std::vector<phys::pfn_t> frames(batch_);
		live_window live(window_);

		// Frame numbers wrap at the format's largest, as limit_entry's do.
		for (unsigned i = 0; i < batch_; i++)
			frames[i] = (first + i) & G::format::max_pfn;

		for (uint64_t page = first; page < last; page += batch_) {
			if (live.full())
				unmap(space, live.pop_oldest());

			const size_t n = std::min<uint64_t>(batch_, last - page);
			const std::span<const phys::pfn_t> pages(frames.data(), n);
			auto addr = vm_map_ram_ ? space.vm_map_ram(pages) : space.vmap(pages);
			if (!addr)
				throw_failure(vm_map_ram_ ? "vm_map_ram" : "vmap", addr.error());
			live.push({*addr, n});
		}

		while (!live.empty())
			unmap(space, live.pop_oldest());
	}

	void unmap(kernel::kernel_space<G> &space, live_mapping mapping) const
	{
		auto r = vm_map_ram_ ? space.vm_unmap_ram(mapping.addr, mapping.pages) : space.vunmap(mapping.addr);
		if (!r)
			throw_failure(vm_map_ram_ ? "vm_unmap_ram" : "vunmap", r.error());
	}

	// Writes the PTEs that map_share writes, in the same order, into one
	// thread's own window of areas at base: each batch is stored into the
	// slot of the batch it replaces, after clearing that batch.
	void store_share(mm::mm_struct<G> &mm, uint64_t base, uint64_t first, uint64_t last)
	{
		pte_cursor<G> cursor(mm);
		const uint64_t batches = (last - first + batch_ - 1) / batch_;
		const uint64_t slot_bytes = area_pages(batch_) * arch::page_size;

		for (uint64_t b = 0; b < batches; b++) {
			const uint64_t addr = base + (b % window_) * slot_bytes;
			if (b >= window_)
				clear_batch(cursor, addr, batch_);

			const uint64_t page = first + b * batch_;
			const uint64_t n = std::min<uint64_t>(batch_, last - page);
			for (uint64_t i = 0; i < n; i++)
				cursor.slot(addr + i * arch::page_size)
					->store(limit_entry<G>(page + i, kernel::page_kernel), std::memory_order_release);
		}

		// The last batch may be short. Clearing a full batch there costs
		// at most batch_ - 1 extra stores of zero per thread.
		for (uint64_t b = batches > window_ ? batches - window_ : 0; b < batches; b++)
			clear_batch(cursor, base + (b % window_) * slot_bytes, batch_);
	}

	static void clear_batch(pte_cursor<G> &cursor, uint64_t addr, uint64_t n)
	{
		for (uint64_t i = 0; i < n; i++)
			cursor.slot(addr + i * arch::page_size)->store(0, std::memory_order_relaxed);
	}

	const uint64_t pages_;
	const unsigned batch_;
	const unsigned window_;
	const bool vm_map_ram_;
	phys::frame_pool pool_;
};

} // namespace

template <class G>
uint64_t vmalloc_pages()
{
	return (G::vmalloc_end - G::vmalloc_start) / arch::page_size;
}

void check_kernel_map_options(const bench_options &options)
{
	const uint64_t footprint = footprint_pages(options);
	const uint64_t vmalloc_pages = arch::with_profile(options.arch, [](auto profile) {
		return bench::vmalloc_pages<typename decltype(profile)::type>();
	});

	// A quarter leaves the first-fit allocator room for fragmentation.
	if (footprint > vmalloc_pages / 4)
		throw std::invalid_argument(fmt::format("kernel-map with windows of {} vmaps of {} pages per thread "
							"needs {} pages of vmalloc area, more than 1/4 of its {}; "
							"lower --window, --batch or --threads",
							options.window, options.batch, footprint, vmalloc_pages));
}

std::unique_ptr<scenario> make_kernel_map(const bench_options &options)
{
	return arch::with_profile(options.arch, [&](auto profile) -> std::unique_ptr<scenario> {
		using G = typename decltype(profile)::type;
		return std::make_unique<kernel_map<G>>(options);
	});
}

} // namespace ptl::bench
