// fault: threads fault in disjoint contiguous parts of one anonymous area,
// one write fault per page, each mapping a zeroed data frame.

#include "scenario.hpp"

#include <ptl/user/user_space.hpp>

#include <fmt/core.h>

#include <cassert>

namespace ptl::bench {

namespace {

// Flags of an anonymous, writable PTE after a write fault.
constexpr uint64_t user_pte_prot = arch::prot_present | arch::prot_write | arch::prot_user | arch::prot_accessed |
				   arch::prot_dirty | arch::prot_nx;

// A data frame per page, a PTE table per 512 pages and the directory tables
// above them, with room for tables that lockless runs allocate and free when
// they lose a race.
size_t pool_frames(uint64_t pages)
{
	return pages + pages / 256 + 256;
}

template <class G>
class fault final : public scenario {
public:
	explicit fault(const bench_options &options) : pages_(pages_for(options, scenario_kind::fault)), pool_(pool_frames(pages_))
	{
		pool_.prefault(pool_.nr_frames());

		// One untimed run places the area, whose start the store limit
		// needs, and brings every path of the run into the caches.
		run(mm::lock_mode::pushdown, 1);
	}

	uint64_t units() const override { return pages_; }

	run_sample run(mm::lock_mode mode, unsigned threads) override
	{
		reset_frame_order(pool_);
		auto space = user::user_space<G>::create(pool_, mode);
		if (!space)
			throw_failure("creating the user address space", space.error());

		auto start = (*space)->mmap(0, pages_ * arch::page_size, user::prot_read | user::prot_write,
					    user::map_private | user::map_anonymous);
		if (!start)
			throw_failure("mmap of the faulted area", start.error());
		area_start_ = *start;

		run_sample sample;
		sample.time = run_threads(threads, [&](unsigned i) { fault_share(**space, i, threads); });
		sample.locks = mm::lock_report((*space)->mm());

		// Destroying the space here, untimed, returns the data frames
		// and tables to the pool for the next run.
		return sample;
	}

	run_timing run_store_limit(unsigned threads) override
	{
		const uint64_t end = area_start_ + pages_ * arch::page_size;
		reset_frame_order(pool_);
		limit_tables<G> tables(pool_, mm::mm_kind::user);
		tables.populate(area_start_, end);

		return run_limit_passes(threads, pages_, [&](unsigned i) {
			store_share(tables.mm(), slice_begin(pages_, i, threads), slice_end(pages_, i, threads));
		});
	}

private:
	void fault_share(user::user_space<G> &space, unsigned index, unsigned threads)
	{
		const uint64_t last = slice_end(pages_, index, threads);

		for (uint64_t page = slice_begin(pages_, index, threads); page < last; page++) {
			auto r = space.handle_mm_fault(area_start_ + page * arch::page_size, user::access_type::write);
			if (!r)
				throw_failure("handle_mm_fault", r.error());
		}
	}

	void store_share(mm::mm_struct<G> &mm, uint64_t first, uint64_t last)
	{
		pte_cursor<G> cursor(mm);

		for (uint64_t page = first; page < last; page++)
			cursor.slot(area_start_ + page * arch::page_size)
				->store(limit_entry<G>(page, user_pte_prot), std::memory_order_release);
	}

	const uint64_t pages_;
	phys::frame_pool pool_;
	// Where mmap placed the area; the same in every run, because each run
	// maps it into an empty address space.
	uint64_t area_start_ = 0;
};

} // namespace

void check_fault_options(const bench_options &options)
{
	const uint64_t pages = pages_for(options, scenario_kind::fault);

	// The area is one mmap, which must fit in the user half. The data
	// frames' numbers fit every profile's entries once it does.
	arch::with_profile(options.arch, [&](auto profile) {
		using G = typename decltype(profile)::type;
		const uint64_t user_pages = (G::task_size - user::mmap_min_addr) / arch::page_size;
		if (pages > user_pages)
			throw std::invalid_argument(fmt::format("the fault scenario's area of {} pages does not fit the "
								"{} pages of the {} user half; use fewer pages",
								pages, user_pages, G::name));
		assert(pool_frames(pages) - 1 <= G::format::max_pfn);
	});

	check_memory("the fault scenario", pages, pages * phys::frame_size);
}

std::unique_ptr<scenario> make_fault(const bench_options &options)
{
	return arch::with_profile(options.arch, [&](auto profile) -> std::unique_ptr<scenario> {
		using G = typename decltype(profile)::type;
		return std::make_unique<fault<G>>(options);
	});
}

} // namespace ptl::bench
