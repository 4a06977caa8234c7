// The bench driver: runs every scenario, mode and thread count, interleaved
// per repeat, and turns the run times into medians and ratios.

#include "scenario.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <stdexcept>

namespace ptl::bench {

namespace {

using clock_type = std::chrono::steady_clock;

// Upper bounds of the options. 2^30 pages keep the fault scenario's frame
// pool below the pool's limit of 2^32 frames.
constexpr uint64_t max_pages = uint64_t{1} << 30;
constexpr unsigned max_threads = 1024;
constexpr unsigned max_batch = 1 << 16;

struct scenario_names {
	scenario_kind kind;
	std::string_view name;
	std::string_view unit;
};

constexpr scenario_names names[] = {
	{scenario_kind::kernel_map, "kernel-map", "pages"},
	{scenario_kind::fault, "fault", "faults"},
	{scenario_kind::replay, "replay", "pages"},
};

// Passes progress lines on at most once a second, and none during the
// first second, so that short runs print nothing.
class progress_meter {
public:
	progress_meter(const std::function<void(const std::string &)> &sink, uint64_t total_runs)
		: sink_(sink), total_runs_(total_runs), last_(clock_type::now())
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

	void note_run(const std::string &line)
	{
		if (sink_)
			note(fmt::format("{} (run {} of {})", line, runs_done_ + 1, total_runs_));
	}

	void run_done() { runs_done_++; }

private:
	const std::function<void(const std::string &)> &sink_;
	const uint64_t total_runs_;
	uint64_t runs_done_ = 0;
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

// The options with duplicates removed and thread counts ascending.
bench_options normalize(const bench_options &options)
{
	bench_options n = options;

	remove_duplicates(n.scenarios);
	remove_duplicates(n.modes);
	std::sort(n.threads.begin(), n.threads.end());
	remove_duplicates(n.threads);
	return n;
}

double median(std::vector<double> values)
{
	std::sort(values.begin(), values.end());

	const size_t mid = values.size() / 2;
	if (values.size() % 2 == 1)
		return values[mid];
	return (values[mid - 1] + values[mid]) / 2;
}

throughput summarize_rate(uint64_t units, unsigned threads, const std::vector<run_timing> &timings)
{
	throughput t;
	std::vector<double> rates;

	for (const auto &timing : timings) {
		rates.push_back(timing.seconds > 0 ? double(units) / timing.seconds : 0);
		t.seconds.push_back(timing.seconds);
		if (timing.seconds > 0)
			t.cpu_percent += 100.0 * timing.cpu_seconds / (timing.seconds * threads) / double(timings.size());
	}

	t.median = median(rates);
	t.min = *std::min_element(rates.begin(), rates.end());
	t.max = *std::max_element(rates.begin(), rates.end());
	return t;
}

// Per-run means of each lock's statistics, in the order the runs list them.
std::vector<lock_summary> summarize_locks(const std::vector<run_sample> &samples)
{
	std::vector<lock_summary> locks;

	for (const auto &sample : samples) {
		for (const auto &l : sample.locks) {
			auto it = std::find_if(locks.begin(), locks.end(), [&](const auto &s) { return s.name == l.name; });
			if (it == locks.end())
				it = locks.insert(locks.end(), lock_summary{l.name, 0, 0, 0, 0});
			it->locks = std::max(it->locks, l.locks);
			it->acquisitions += double(l.stats.acquisitions) / double(samples.size());
			it->contended += double(l.stats.contended) / double(samples.size());
			it->wait_ns += double(l.stats.wait_ns) / double(samples.size());
		}
	}
	return locks;
}

std::string thread_count(unsigned threads)
{
	return fmt::format("{} thread{}", threads, threads == 1 ? "" : "s");
}

// The samples of one scenario, collected over all repeats.
struct scenario_samples {
	std::map<std::pair<mm::lock_mode, unsigned>, std::vector<run_sample>> runs;
	std::map<unsigned, std::vector<run_timing>> limit_timings;
};

void check_scenario_options(scenario_kind kind, const bench_options &options)
{
	switch (kind) {
	case scenario_kind::kernel_map:
		check_kernel_map_options(options);
		break;
	case scenario_kind::fault:
		check_fault_options(options);
		break;
	case scenario_kind::replay:
		check_replay_options(options);
		break;
	}
}

std::unique_ptr<scenario> make_scenario(scenario_kind kind, const bench_options &options, bench_report &report)
{
	switch (kind) {
	case scenario_kind::kernel_map:
		return make_kernel_map(options);
	case scenario_kind::fault:
		return make_fault(options);
	case scenario_kind::replay:
		return make_replay(options, report.replay_process, report.replay_pages);
	}
	throw std::logic_error("unknown scenario");
}

scenario_samples run_scenario(scenario_kind kind, scenario &s, const bench_options &options,
			      progress_meter &progress)
{
	scenario_samples samples;

	for (unsigned r = 0; r < options.repeat; r++) {
		for (unsigned threads : options.threads) {
			progress.note_run(fmt::format("{}: store limit, {}, repeat {} of {}", scenario_name(kind),
						  thread_count(threads), r + 1, options.repeat));
			samples.limit_timings[threads].push_back(s.run_store_limit(threads));
			progress.run_done();

			for (mm::lock_mode mode : options.modes) {
				progress.note_run(fmt::format("{}: {}, {}, repeat {} of {}", scenario_name(kind),
							      mm::lock_mode_name(mode), thread_count(threads), r + 1,
							      options.repeat));
				samples.runs[{mode, threads}].push_back(s.run(mode, threads));
				progress.run_done();
			}
		}
	}
	return samples;
}

void add_results(scenario_kind kind, uint64_t units, const scenario_samples &samples, const bench_options &options,
		 bench_report &report)
{
	for (unsigned threads : options.threads)
		report.limits.push_back(
			{kind, threads, units, summarize_rate(units, threads, samples.limit_timings.at(threads))});

	for (unsigned threads : options.threads) {
		for (mm::lock_mode mode : options.modes) {
			const auto &runs = samples.runs.at({mode, threads});
			std::vector<run_timing> timings;
			for (const auto &run : runs)
				timings.push_back(run.time);

			bench_result result{kind, mode, threads, units, summarize_rate(units, threads, timings), {}, {}, {}, {}};
			result.locks = summarize_locks(runs);
			report.results.push_back(std::move(result));
		}
	}
}

template <class Range, class Match>
const auto *find_in(const Range &range, Match &&match)
{
	auto it = std::find_if(range.begin(), range.end(), match);
	return it == range.end() ? nullptr : &*it;
}

// Fills each result's ratios from the results it is compared with.
void add_ratios(bench_report &report)
{
	for (auto &r : report.results) {
		const auto *one = find_in(report.results, [&](const bench_result &o) {
			return o.scenario == r.scenario && o.mode == r.mode && o.threads == 1;
		});
		const auto *legacy = find_in(report.results, [&](const bench_result &o) {
			return o.scenario == r.scenario && o.mode == mm::lock_mode::legacy && o.threads == r.threads;
		});
		const auto *limit = find_in(report.limits, [&](const limit_result &o) {
			return o.scenario == r.scenario && o.threads == r.threads;
		});

		if (one && one->rate.median > 0)
			r.ratio_to_one_thread = r.rate.median / one->rate.median;
		if (legacy && legacy->rate.median > 0)
			r.ratio_to_legacy = r.rate.median / legacy->rate.median;
		if (limit && limit->rate.median > 0)
			r.fraction_of_limit = r.rate.median / limit->rate.median;
	}
}

} // namespace

std::string_view scenario_name(scenario_kind kind)
{
	for (const auto &n : names) {
		if (n.kind == kind)
			return n.name;
	}
	return "unknown";
}

std::optional<scenario_kind> parse_scenario(std::string_view name)
{
	for (const auto &n : names) {
		if (n.name == name)
			return n.kind;
	}
	return std::nullopt;
}

uint64_t pages_for(const bench_options &options, scenario_kind kind)
{
	return options.pages.value_or(default_pages(kind));
}

std::string_view scenario_unit(scenario_kind kind)
{
	for (const auto &n : names) {
		if (n.kind == kind)
			return n.unit;
	}
	return "items";
}

double bench_result::contended_percent() const
{
	double acquisitions = 0;
	double contended = 0;

	for (const auto &l : locks) {
		acquisitions += l.acquisitions;
		contended += l.contended;
	}
	return acquisitions > 0 ? 100.0 * contended / acquisitions : 0;
}

double bench_result::wait_percent() const
{
	double wait_ns = 0;
	for (const auto &l : locks)
		wait_ns += l.wait_ns;

	// The lock statistics are means per run, so compare with the mean run.
	double seconds = 0;
	for (double s : rate.seconds)
		seconds += s / double(rate.seconds.size());

	const double thread_ns = seconds * 1e9 * threads;
	return thread_ns > 0 ? 100.0 * wait_ns / thread_ns : 0;
}

void validate(const bench_options &options)
{
	if (options.scenarios.empty())
		throw std::invalid_argument("no scenario selected; choose from kernel-map, fault, replay");
	if (options.modes.empty())
		throw std::invalid_argument("no lock mode selected; choose from legacy, pushdown, split, lockless");
	if (options.threads.empty())
		throw std::invalid_argument("no thread count given; use 1 or more");

	for (unsigned t : options.threads)
		check_count("thread count", t, max_threads);
	if (options.pages)
		check_count("page count", *options.pages, max_pages);
	check_count("repeat count", options.repeat, 1000);
	check_count("batch size", options.batch, max_batch);
	check_count("window size", options.window, max_batch);
	if (options.pid < 0)
		throw std::invalid_argument(fmt::format("process id {} is invalid; use a positive id", options.pid));
	if (!options.arch.empty() && !arch::is_profile_name(options.arch))
		throw std::invalid_argument(fmt::format("unknown geometry '{}'; choose from {}", options.arch,
							arch::profile_name_list()));

	for (scenario_kind kind : options.scenarios)
		check_scenario_options(kind, options);
}

bench_report run_bench(const bench_options &requested)
{
	validate(requested);
	const bench_options options = normalize(requested);
	const auto start = clock_type::now();

	bench_report report;
	report.machine = read_machine_info();
	report.arch = options.arch.empty() ? std::string(arch::native::name) : options.arch;
	report.options = options;
	report.options.progress = nullptr;

	const uint64_t runs_per_scenario = options.repeat * options.threads.size() * (options.modes.size() + 1);
	progress_meter progress(options.progress, runs_per_scenario * options.scenarios.size());

	// Scenarios report their setup through the same throttle.
	bench_options setup_options = options;
	setup_options.progress = [&](const std::string &line) { progress.note(line); };

	for (scenario_kind kind : options.scenarios) {
		auto s = make_scenario(kind, setup_options, report);
		const auto samples = run_scenario(kind, *s, options, progress);
		add_results(kind, s->units(), samples, options, report);
	}

	add_ratios(report);
	report.total_seconds = std::chrono::duration<double>(clock_type::now() - start).count();
	return report;
}

} // namespace ptl::bench
