// replay: threads rebuild the page tables of a live process, read once from
// /proc, in a fresh user address space per run, as `ptl replay` does.

#include "scenario.hpp"

#include <ptl/tools/replay.hpp>
#include <ptl/user/user_space.hpp>

#include <fmt/core.h>

namespace ptl::bench {

namespace {

// Flags of a replayed PTE, as a present user page.
constexpr uint64_t replay_pte_prot = arch::prot_present | arch::prot_write | arch::prot_user | arch::prot_accessed;

// Bytes of a demo child that touches about `pages` pages: it touches 3 of
// every 4 pages of its mapping.
uint64_t demo_bytes(uint64_t pages)
{
	return (pages * 4 + 2) / 3 * tools::page_bytes;
}

tools::process_image read_image(int pid, std::string &process)
{
	tools::process_image image = tools::read_process_image(pid, false);
	process = fmt::format("{} ({})", pid, image.status.name);
	if (image.pages.empty())
		throw tools::input_error(fmt::format("process {} has no present pages in its user half to replay", process));
	return image;
}

template <class G>
class replay final : public scenario {
public:
	replay(const bench_options &options, std::string &process)
		: image_(read_target(options, process)), pool_(tools::image_pool_frames(image_))
	{
		pool_.prefault(pool_.nr_frames());

		// One untimed run brings every path of the run into the caches.
		run(mm::lock_mode::pushdown, 1);
	}

	uint64_t units() const override { return image_.pages.size(); }

	run_sample run(mm::lock_mode mode, unsigned threads) override
	{
		reset_frame_order(pool_);
		auto space = user::user_space<G>::create(pool_, mode);
		if (!space)
			throw_failure("creating the replay address space", space.error());
		tools::create_image_vmas(**space, image_);

		run_sample sample;
		sample.time = run_threads(threads, [&](unsigned i) { insert_share(**space, i, threads); });
		sample.locks = mm::lock_report((*space)->mm());
		return sample;
	}

	run_timing run_store_limit(unsigned threads) override
	{
		reset_frame_order(pool_);
		limit_tables<G> tables(pool_, mm::mm_kind::user);
		populate_image(tables);

		return run_limit_passes(threads, units(), [&](unsigned i) {
			store_share(tables.mm(), slice_begin(units(), i, threads), slice_end(units(), i, threads));
		});
	}

private:
	// Reads the process named by --pid, or a demo child started for the
	// purpose and killed once it has been read, and checks that G can hold
	// it.
	static tools::process_image read_target(const bench_options &options, std::string &process)
	{
		if (options.pid != 0)
			return read_fitting_image(options.pid, process);

		const uint64_t pages = pages_for(options, scenario_kind::replay);
		report(options, fmt::format("starting a demo child that touches {} pages", pages));
		tools::demo_child child(demo_bytes(pages));
		return read_fitting_image(child.pid(), process);
	}

	static tools::process_image read_fitting_image(int pid, std::string &process)
	{
		tools::process_image image = read_image(pid, process);
		tools::check_image_fits<G>(image, fmt::format("process {}", process));
		return image;
	}

	static void report(const bench_options &options, const std::string &line)
	{
		if (options.progress)
			options.progress(line);
	}

	void insert_share(user::user_space<G> &space, unsigned index, unsigned threads)
	{
		const uint64_t first = slice_begin(units(), index, threads);
		const uint64_t last = slice_end(units(), index, threads);

		const uint64_t failures = tools::insert_image_pages(space, image_, first, last);
		if (failures != 0)
			throw std::runtime_error(fmt::format("{} of {} pages could not be inserted", failures, last - first));
	}

	// Populates the tables of every present page; the pages are in address
	// order, so each PTE table is populated once.
	void populate_image(limit_tables<G> &tables)
	{
		const uint64_t span = arch::entry_span<G>(arch::level::pmd);
		uint64_t populated = 1; // no table starts at an odd address

		for (const auto &page : image_.pages) {
			const uint64_t table_start = page.addr & ~(span - 1);
			if (table_start != populated)
				tables.populate(table_start, table_start + span);
			populated = table_start;
		}
	}

	void store_share(mm::mm_struct<G> &mm, uint64_t first, uint64_t last)
	{
		pte_cursor<G> cursor(mm);

		for (uint64_t i = first; i < last; i++) {
			const auto &page = image_.pages[i];
			cursor.slot(page.addr)->store(limit_entry<G>(page.pfn, replay_pte_prot), std::memory_order_release);
		}
	}

	const tools::process_image image_;
	phys::frame_pool pool_;
};

} // namespace

void check_replay_options(const bench_options &options)
{
	const uint64_t pages = pages_for(options, scenario_kind::replay);
	if (options.pid == 0)
		check_memory("the replay scenario's demo child", pages, pages * tools::page_bytes);
}

std::unique_ptr<scenario> make_replay(const bench_options &options, std::string &process, uint64_t &pages)
{
	return arch::with_profile(options.arch, [&](auto profile) -> std::unique_ptr<scenario> {
		using G = typename decltype(profile)::type;
		auto s = std::make_unique<replay<G>>(options, process);
		pages = s->units();
		return s;
	});
}

} // namespace ptl::bench
