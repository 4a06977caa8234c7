// The driver of `ptl bench peers`: checks the options, runs every layout,
// thread count and structure interleaved per repeat, then the kernel
// comparison and the size sweep, and turns run times into medians, ratios
// and the targets.

#include "peers_internal.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace ptl::bench::peers {

namespace {

using clock_type = std::chrono::steady_clock;

// 2^30 pages keep every index in uint32_t and the pools below their limit
// of 2^32 frames.
constexpr uint64_t max_page_count = uint64_t{1} << 30;
constexpr unsigned max_threads = 256;
constexpr unsigned max_repeat = 1000;
constexpr unsigned max_sweep_log2 = 26;

// Bytes per page that the sweep's memory check allows: the layout's arrays
// (60 bytes a page) and the largest structure (cds, about 90 bytes a page),
// with headroom.
constexpr uint64_t sweep_bytes_per_page = 192;

// The targets the comparison is measured against.
constexpr double lookup_target = 2.0;
constexpr double insert_target = 2.0;
constexpr double bytes_target = 8.1;
constexpr double populate_target = 5.0;
constexpr double fault_target = 20.0;

constexpr std::string_view layout_names[] = {"dense", "replay", "scattered"};
constexpr std::string_view peer_names[] = {"std", "absl", "tbb", "cds", "judy"};
constexpr std::string_view op_names[] = {"insert", "lookup-order", "lookup-random", "lookup-chase", "remove"};

// Passes progress lines on at most once a second, and none during the
// first second, so that short runs print nothing.
class progress_meter {
public:
	explicit progress_meter(const std::function<void(const std::string &)> &sink)
		: sink_(sink), last_(clock_type::now())
	{
	}

	void note(const std::string &line)
	{
		if (!sink_)
			return;

		const auto now = clock_type::now();
		if (now - last_ < std::chrono::seconds(1))
			return;
		last_ = now;
		sink_(line);
	}

private:
	const std::function<void(const std::string &)> &sink_;
	clock_type::time_point last_;
};

void check_count(std::string_view what, uint64_t value, uint64_t max)
{
	if (value == 0 || value > max)
		throw std::invalid_argument(fmt::format("{} {} is invalid; use 1 to {}", what, value, max));
}

template <class T>
void remove_duplicates(std::vector<T> &values)
{
	std::vector<T> unique;
	for (const T &v : values) {
		if (std::find(unique.begin(), unique.end(), v) == unique.end())
			unique.push_back(v);
	}
	values = std::move(unique);
}

peers_options normalize(const peers_options &options)
{
	peers_options n = options;

	remove_duplicates(n.layouts);
	remove_duplicates(n.peers);
	remove_duplicates(n.modes);
	std::sort(n.threads.begin(), n.threads.end());
	remove_duplicates(n.threads);
	if (n.modes.empty())
		n.run_ptl = false;
	return n;
}

rate summarize(const std::vector<double> &rates)
{
	return {median_of(rates), *std::min_element(rates.begin(), rates.end()),
		*std::max_element(rates.begin(), rates.end())};
}

std::string thread_label(unsigned threads)
{
	return fmt::format("{} thread{}", threads, threads == 1 ? "" : "s");
}

// One layout with its pool and structures, and the samples of its runs,
// keyed by thread count and structure index.
struct layout_run {
	layout l;
	std::unique_ptr<phys::frame_pool> pool;
	std::vector<structure> structures;
	std::map<std::pair<unsigned, size_t>, std::vector<cycle_sample>> samples;
};

std::unique_ptr<phys::frame_pool> make_pool(size_t frames)
{
	auto pool = std::make_unique<phys::frame_pool>(frames);
	pool->prefault(pool->nr_frames());
	return pool;
}

layout make_layout(layout_kind kind, const peers_options &options, peers_report &report)
{
	switch (kind) {
	case layout_kind::dense:
		return make_dense_layout(options.pages, options.seed);
	case layout_kind::scattered:
		return make_scattered_layout(options.pages, options.seed);
	case layout_kind::replay: {
		layout l = make_replay_layout(options, report.replay_process);
		report.replay_pages = l.size();
		return l;
	}
	}
	throw std::logic_error("unknown layout");
}

std::vector<std::unique_ptr<layout_run>> prepare_layouts(const peers_options &options, peers_report &report,
							 progress_meter &progress)
{
	std::vector<std::unique_ptr<layout_run>> runs;

	for (layout_kind kind : options.layouts) {
		progress.note(fmt::format("preparing the {} layout", layout_name(kind)));
		auto run = std::make_unique<layout_run>();
		run->l = make_layout(kind, options, report);
		prepare_chases(run->l, options.threads);

		const size_t frames = pool_frames_for(run->l, options.threads.back());
		check_memory(fmt::format("the {} layout's frame pool", layout_name(kind)), run->l.size(),
			     frames * phys::frame_size);
		run->pool = make_pool(frames);
		run->structures = make_structures(options, *run->pool);
		runs.push_back(std::move(run));
	}
	return runs;
}

// One untimed run of every structure, so that the heap and the pool hold
// the memory of a run before any run is timed.
void warm_up(std::vector<std::unique_ptr<layout_run>> &runs, const peers_options &options, progress_meter &progress)
{
	for (auto &run : runs) {
		for (auto &s : run->structures) {
			progress.note(fmt::format("warming up {} on the {} layout", s.name, layout_name(run->l.kind)));
			s.run(run->l, options.threads.back(), cycle_ops::all);
		}
	}
}

void run_repeats(std::vector<std::unique_ptr<layout_run>> &runs, const peers_options &options,
		 progress_meter &progress)
{
	for (unsigned r = 0; r < options.repeat; r++) {
		for (auto &run : runs) {
			for (unsigned threads : options.threads) {
				for (size_t i = 0; i < run->structures.size(); i++) {
					const structure &s = run->structures[i];
					progress.note(fmt::format("{} layout, {}, {}, repeat {} of {}",
								  layout_name(run->l.kind), s.name, thread_label(threads),
								  r + 1, options.repeat));
					run->samples[{threads, i}].push_back(s.run(run->l, threads, cycle_ops::all));
				}
			}
		}
	}
}

structure_result summarize_structure(const layout_run &run, unsigned threads, size_t index)
{
	const structure &s = run.structures[index];
	const auto &samples = run.samples.at({threads, index});
	structure_result result{run.l.kind, s.name, s.is_ptl, threads, run.l.size(), {}, 0, 0};

	for (size_t op = 0; op < nr_ops; op++) {
		std::vector<double> rates;
		for (const auto &sample : samples)
			rates.push_back(sample.seconds[op] > 0 ? double(run.l.size()) / sample.seconds[op] : 0);
		result.ops[op] = summarize(rates);
	}

	std::vector<double> bytes;
	std::vector<double> cpu;
	for (const auto &sample : samples) {
		bytes.push_back(sample.bytes_per_page);
		cpu.push_back(sample.cpu_percent);
	}
	result.bytes_per_page = median_of(bytes);
	result.cpu_percent = median_of(cpu);
	return result;
}

// ptl's fastest mode against the fastest peer, per layout, thread count and
// operation.
std::vector<ratio_result> compute_ratios(const std::vector<structure_result> &results, const peers_options &options)
{
	std::vector<ratio_result> ratios;

	for (layout_kind kind : options.layouts) {
		for (unsigned threads : options.threads) {
			for (size_t op = 0; op < nr_ops; op++) {
				const structure_result *best_ptl = nullptr;
				const structure_result *best_peer = nullptr;
				for (const auto &r : results) {
					if (r.layout != kind || r.threads != threads)
						continue;
					const structure_result *&best = r.is_ptl ? best_ptl : best_peer;
					if (!best || r.ops[op].median > best->ops[op].median)
						best = &r;
				}
				if (!best_ptl || !best_peer || best_peer->ops[op].median <= 0)
					continue;
				ratios.push_back({kind, threads, all_ops[op], best_ptl->structure, best_peer->structure,
						  best_ptl->ops[op].median / best_peer->ops[op].median});
			}
		}
	}
	return ratios;
}

const ratio_result *find_ratio(const std::vector<ratio_result> &ratios, layout_kind kind, unsigned threads, op_kind op)
{
	for (const auto &r : ratios) {
		if (r.layout == kind && r.threads == threads && r.op == op)
			return &r;
	}
	return nullptr;
}

void add_structure_targets(peers_report &report)
{
	const auto &options = report.options;

	for (layout_kind kind : {layout_kind::dense, layout_kind::replay}) {
		for (unsigned threads : options.threads) {
			for (op_kind op : {op_kind::lookup_order, op_kind::lookup_random, op_kind::lookup_chase}) {
				if (const auto *r = find_ratio(report.ratios, kind, threads, op))
					report.targets.push_back({fmt::format("{} {} at {}: ptl / fastest peer",
									      layout_name(kind), op_name(op),
									      thread_label(threads)),
								  r->ratio, lookup_target, false, r->ratio >= lookup_target});
			}
			if (threads != 2)
				continue;
			if (const auto *r = find_ratio(report.ratios, kind, threads, op_kind::insert))
				report.targets.push_back({fmt::format("{} insert at 2 threads: ptl / fastest peer",
								      layout_name(kind)),
							  r->ratio, insert_target, false, r->ratio >= insert_target});
		}

		// The maximum bytes per page of any ptl mode at any thread count.
		double worst = -1;
		for (const auto &r : report.results) {
			if (r.layout == kind && r.is_ptl)
				worst = std::max(worst, r.bytes_per_page);
		}
		if (worst >= 0)
			report.targets.push_back({fmt::format("{} ptl bytes per mapped page (most of any mode)",
							      layout_name(kind)),
						  worst, bytes_target, true, worst <= bytes_target});
	}
}

const kernel_result *best_kernel(const std::vector<kernel_result> &results, std::string_view prefix, unsigned threads)
{
	const kernel_result *best = nullptr;
	for (const auto &r : results) {
		if (r.threads == threads && r.name.starts_with(prefix) &&
		    (!best || r.per_second.median > best->per_second.median))
			best = &r;
	}
	return best;
}

void add_kernel_targets(peers_report &report)
{
	for (unsigned threads : report.options.threads) {
		const auto *populate = best_kernel(report.kernel, "kernel MAP_POPULATE", threads);
		const auto *vmap = best_kernel(report.kernel, "ptl vmap", threads);
		if (populate && vmap && populate->per_second.median > 0) {
			const double ratio = vmap->per_second.median / populate->per_second.median;
			report.targets.push_back({fmt::format("range populate at {}: {} / kernel MAP_POPULATE",
							      thread_label(threads), vmap->name),
						  ratio, populate_target, false, ratio >= populate_target});
		}

		const auto *anon = best_kernel(report.kernel, "kernel anonymous fault", threads);
		const auto *fault = best_kernel(report.kernel, "ptl fault", threads);
		if (anon && fault && anon->per_second.median > 0) {
			const double ratio = fault->per_second.median / anon->per_second.median;
			report.targets.push_back({fmt::format("page fault at {}: {} / kernel anonymous fault",
							      thread_label(threads), fault->name),
						  ratio, fault_target, false, ratio >= fault_target});
		}
	}
}

// Runs per size of the sweep: --repeat, or more for small sizes, so that
// each size's median covers at least 2^20 pages (at most 64 runs). A run of
// a thousand pages lasts tens of microseconds, and one preemption in it
// would otherwise be the result.
unsigned sweep_runs(unsigned log2, unsigned repeat)
{
	constexpr unsigned min_pages_log2 = 20;
	constexpr unsigned max_runs = 64;

	const unsigned for_pages = log2 >= min_pages_log2 ? 1 : 1u << std::min(min_pages_log2 - log2, 6u);
	return std::max(repeat, std::min(for_pages, max_runs));
}

// Time per page of insert, random lookups and removal on the dense layout
// with one thread, from the largest size down, so that the largest size's
// untimed warm-up run leaves the heap large enough for every smaller one.
std::vector<sweep_result> run_sweep(const peers_options &options, progress_meter &progress)
{
	const auto [from, to] = *options.sweep;
	// The dense layout starts at a 1 GiB boundary: a PTE table per 512
	// pages, a pmd table per 2^18, one pud table and the pgd.
	const uint64_t max_pages = uint64_t{1} << to;
	auto pool = make_pool((max_pages >> 9) + (max_pages >> 18) + 16 + 256 + 64);
	std::vector<structure> structures = make_structures(options, *pool);
	std::vector<sweep_result> results;

	for (unsigned log2 = to + 1; log2-- > from;) {
		layout l = make_dense_layout(uint64_t{1} << log2, options.seed);
		prepare_chases(l, {1});

		for (auto &s : structures) {
			if (log2 == to) {
				progress.note(fmt::format("size sweep: warming up {} at 2^{} pages", s.name, log2));
				s.run(l, 1, cycle_ops::sweep);
			}

			const unsigned runs = sweep_runs(log2, options.repeat);
			std::array<std::vector<double>, 3> seconds;
			for (unsigned r = 0; r < runs; r++) {
				progress.note(fmt::format("size sweep: {} at 2^{} pages, run {} of {}", s.name, log2, r + 1,
							  runs));
				const cycle_sample sample = s.run(l, 1, cycle_ops::sweep);
				seconds[0].push_back(sample.seconds[0]);
				seconds[1].push_back(sample.seconds[2]);
				seconds[2].push_back(sample.seconds[4]);
			}

			sweep_result result{s.name, l.size(), {}};
			for (size_t i = 0; i < 3; i++)
				result.ns_per_page[i] = median_of(seconds[i]) * 1e9 / double(l.size());
			results.push_back(result);
		}
	}

	// Smallest size first; within a size, the structures' order.
	std::stable_sort(results.begin(), results.end(),
			 [](const sweep_result &a, const sweep_result &b) { return a.pages < b.pages; });
	return results;
}

} // namespace

std::string_view layout_name(layout_kind kind)
{
	return layout_names[static_cast<size_t>(kind)];
}

std::optional<layout_kind> parse_layout(std::string_view name)
{
	for (layout_kind kind : all_layouts) {
		if (layout_name(kind) == name)
			return kind;
	}
	return std::nullopt;
}

std::string_view peer_name(peer_kind kind)
{
	return peer_names[static_cast<size_t>(kind)];
}

std::optional<peer_kind> parse_peer(std::string_view name)
{
	for (peer_kind kind : all_peers) {
		if (peer_name(kind) == name)
			return kind;
	}
	return std::nullopt;
}

std::string_view op_name(op_kind op)
{
	return op_names[static_cast<size_t>(op)];
}

double median_of(std::vector<double> values)
{
	if (values.empty())
		return 0;
	std::sort(values.begin(), values.end());

	const size_t mid = values.size() / 2;
	if (values.size() % 2 == 1)
		return values[mid];
	return (values[mid - 1] + values[mid]) / 2;
}

void validate(const peers_options &options)
{
	if (options.layouts.empty())
		throw std::invalid_argument("no layout selected; choose from dense, replay, scattered");
	if (options.peers.empty() && (!options.run_ptl || options.modes.empty()))
		throw std::invalid_argument("no structure selected; choose peers with --peers or ptl lock modes with "
					    "--modes");
	if (options.threads.empty())
		throw std::invalid_argument("no thread count given");
	for (unsigned threads : options.threads)
		check_count("thread count", threads, max_threads);
	check_count("page count", options.pages, max_page_count);
	check_count("repeat count", options.repeat, max_repeat);
	if (options.pid < 0)
		throw std::invalid_argument(fmt::format("pid {} is invalid; use a positive process ID", options.pid));
	if (options.pid != 0 && !options.snapshot_path.empty())
		throw std::invalid_argument("--pid and --snapshot both name the process to replay; give one");

	if (options.sweep) {
		const auto [from, to] = *options.sweep;
		if (from < 1 || to > max_sweep_log2 || from > to)
			throw std::invalid_argument(fmt::format("sweep {}:{} is invalid; use FROM:TO with 1 <= FROM <= TO "
								"<= {} (log2 of the page counts)",
								from, to, max_sweep_log2));
		check_memory("the size sweep", uint64_t{1} << to, (uint64_t{1} << to) * sweep_bytes_per_page);
	}

	// The scattered layout needs up to a PTE table per page, and the
	// kernel comparison a resident memfd and ptl's data frames.
	const auto selected = [&](layout_kind kind) {
		return std::find(options.layouts.begin(), options.layouts.end(), kind) != options.layouts.end();
	};
	if (selected(layout_kind::scattered) && options.run_ptl)
		check_memory("the scattered layout", options.pages, options.pages * 2 * phys::frame_size);
	if (options.kernel)
		check_memory("the kernel comparison", options.pages, options.pages * 3 * phys::frame_size);
}

peers_report run_peers(const peers_options &given)
{
	const auto start = clock_type::now();
	validate(given);
	const peers_options options = normalize(given);
	configure_heap();

	peers_report report;
	report.machine = read_machine_info();
	report.arch = std::string(G::name);
	report.options = options;
	report.options.progress = nullptr;
	report.page_metadata_bytes = sizeof(phys::page);
	progress_meter progress(options.progress);

	{
		auto runs = prepare_layouts(options, report, progress);
		warm_up(runs, options, progress);
		run_repeats(runs, options, progress);

		for (const auto &run : runs) {
			for (unsigned threads : options.threads) {
				for (size_t i = 0; i < run->structures.size(); i++)
					report.results.push_back(summarize_structure(*run, threads, i));
			}
		}
	}
	report.ratios = compute_ratios(report.results, options);
	add_structure_targets(report);

	if (options.kernel) {
		report.kernel = run_kernel_comparison(options, [&](const std::string &line) { progress.note(line); });
		add_kernel_targets(report);
	}
	if (options.sweep)
		report.sweep = run_sweep(options, progress);

	report.total_seconds = std::chrono::duration<double>(clock_type::now() - start).count();
	return report;
}

} // namespace ptl::bench::peers
