// The bench report as a table for people, one JSON object, or CSV rows.

#include "bench.hpp"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <algorithm>

namespace ptl::bench {

namespace {

// The lock names that CSV gives columns of their own, in column order.
constexpr std::string_view csv_locks[] = {"page_table_lock", "pte table locks", "pmd table locks",
					  "vmalloc area lock"};

std::string join(const std::vector<std::string> &parts, std::string_view separator)
{
	std::string out;
	for (size_t i = 0; i < parts.size(); i++) {
		if (i != 0)
			out += separator;
		out += parts[i];
	}
	return out;
}

std::string format_ratio(const std::optional<double> &ratio, std::string_view suffix, int decimals)
{
	if (!ratio)
		return "-";
	return fmt::format("{:.{}f}{}", *ratio, decimals, suffix);
}

bool selected(const bench_options &o, scenario_kind kind)
{
	return std::find(o.scenarios.begin(), o.scenarios.end(), kind) != o.scenarios.end();
}

std::string format_header(const bench_report &r)
{
	const auto &o = r.options;
	std::string out;

	out += fmt::format("machine     {} CPUs ({}), {:.1f} GiB memory", r.machine.cpus,
			   r.machine.cpu_model.empty() ? "model unknown" : r.machine.cpu_model,
			   double(r.machine.memory_bytes) / double(1ull << 30));
	if (r.machine.load_average)
		out += fmt::format(", load average {:.2f} before the run", *r.machine.load_average);
	out += fmt::format("; {} tables\n", r.arch);
	out += fmt::format("runs        median of {} per result, {:.1f} s in all; rates in millions per second\n",
			   o.repeat, r.total_seconds);

	if (selected(o, scenario_kind::kernel_map))
		out += fmt::format("kernel-map  {} pages per run, {} of {} pages, {} live per thread\n",
				   pages_for(o, scenario_kind::kernel_map), o.vm_map_ram ? "vm_map_ram mappings" : "vmaps",
				   o.batch, o.window);
	if (selected(o, scenario_kind::fault))
		out += fmt::format("fault       {} pages per run\n", pages_for(o, scenario_kind::fault));
	if (selected(o, scenario_kind::replay))
		out += fmt::format("replay      {} present pages of process {}\n", r.replay_pages, r.replay_process);
	return out;
}

constexpr std::string_view table_columns =
	"{:<11} {:<9} {:>7} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>5}\n";

std::string format_rate(double per_second)
{
	return fmt::format("{:.2f}", per_second / 1e6);
}

std::string format_percent(double percent)
{
	return fmt::format("{:.0f}%", percent);
}

std::string format_limit_row(const limit_result &l)
{
	return fmt::format(fmt::runtime(table_columns), scenario_name(l.scenario), "limit", l.threads,
			   format_rate(l.rate.median), format_rate(l.rate.min), format_rate(l.rate.max), "-", "1.000",
			   "-", "-", "-", format_percent(l.rate.cpu_percent));
}

std::string format_result_row(const bench_result &r)
{
	return fmt::format(fmt::runtime(table_columns), scenario_name(r.scenario), mm::lock_mode_name(r.mode),
			   r.threads, format_rate(r.rate.median), format_rate(r.rate.min), format_rate(r.rate.max),
			   format_ratio(r.ratio_to_one_thread, "x", 2), format_ratio(r.fraction_of_limit, "", 3),
			   format_ratio(r.ratio_to_legacy, "x", 2), fmt::format("{:.1f}%", r.contended_percent()),
			   fmt::format("{:.1f}%", r.wait_percent()), format_percent(r.rate.cpu_percent));
}

std::string format_results(const bench_report &report)
{
	std::string out = fmt::format(fmt::runtime(table_columns), "scenario", "mode", "threads", "median", "min",
				      "max", "vs 1 thread", "of limit", "vs legacy", "contended", "lock wait", "cpu");

	for (const auto &l : report.limits) {
		out += format_limit_row(l);
		for (const auto &r : report.results) {
			if (r.scenario == l.scenario && r.threads == l.threads)
				out += format_result_row(r);
		}
	}
	return out;
}

std::string format_locks(const bench_report &report)
{
	constexpr std::string_view columns = "{:<11} {:<9} {:>7}  {:<18} {:>6} {:>13} {:>11} {:>10}\n";
	std::string out = "lock statistics per run, mean over the repeats\n";
	out += fmt::format(fmt::runtime(columns), "scenario", "mode", "threads", "lock", "locks", "acquisitions",
			   "contended", "wait ms");

	for (const auto &r : report.results) {
		for (const auto &l : r.locks) {
			out += fmt::format(fmt::runtime(columns), scenario_name(r.scenario), mm::lock_mode_name(r.mode),
					   r.threads, l.name, l.locks, fmt::format("{:.0f}", l.acquisitions),
					   fmt::format("{:.0f}", l.contended), fmt::format("{:.2f}", l.wait_ns / 1e6));
		}
	}
	return out;
}

nlohmann::json optional_json(const std::optional<double> &value)
{
	return value ? nlohmann::json(*value) : nlohmann::json();
}

nlohmann::json throughput_json(const throughput &t)
{
	return {{"median", t.median},
		{"min", t.min},
		{"max", t.max},
		{"seconds", t.seconds},
		{"cpu_percent", t.cpu_percent}};
}

nlohmann::json options_json(const bench_options &o)
{
	std::vector<std::string> scenarios;
	for (auto s : o.scenarios)
		scenarios.emplace_back(scenario_name(s));
	std::vector<std::string> modes;
	for (auto m : o.modes)
		modes.emplace_back(mm::lock_mode_name(m));

	nlohmann::json pages;
	for (auto s : o.scenarios)
		pages[std::string(scenario_name(s))] = pages_for(o, s);

	return {{"scenarios", scenarios}, {"modes", modes}, {"threads", o.threads}, {"pages", pages},
		{"repeat", o.repeat},     {"pid", o.pid},     {"batch", o.batch},     {"window", o.window}};
}

nlohmann::json result_json(const bench_result &r)
{
	nlohmann::json locks = nlohmann::json::array();
	for (const auto &l : r.locks)
		locks.push_back({{"name", l.name},
				 {"locks", l.locks},
				 {"acquisitions", l.acquisitions},
				 {"contended", l.contended},
				 {"wait_ns", l.wait_ns}});

	return {{"scenario", scenario_name(r.scenario)},
		{"mode", mm::lock_mode_name(r.mode)},
		{"threads", r.threads},
		{"unit", scenario_unit(r.scenario)},
		{"units_per_run", r.units},
		{"per_second", throughput_json(r.rate)},
		{"ratio_to_one_thread", optional_json(r.ratio_to_one_thread)},
		{"fraction_of_limit", optional_json(r.fraction_of_limit)},
		{"ratio_to_legacy", optional_json(r.ratio_to_legacy)},
		{"contended_percent", r.contended_percent()},
		{"wait_percent", r.wait_percent()},
		{"locks", locks}};
}

nlohmann::json limit_json(const limit_result &l)
{
	return {{"scenario", scenario_name(l.scenario)},
		{"threads", l.threads},
		{"unit", scenario_unit(l.scenario)},
		{"units_per_run", l.units},
		{"per_second", throughput_json(l.rate)}};
}

std::string csv_number(const std::optional<double> &value)
{
	return value ? fmt::format("{:.6g}", *value) : std::string();
}

std::string csv_header()
{
	std::vector<std::string> columns = {"scenario",      "mode",          "threads",
					    "unit",          "units_per_run", "median_per_second",
					    "min_per_second", "max_per_second", "ratio_to_one_thread",
					    "fraction_of_limit", "ratio_to_legacy", "contended_percent",
					    "wait_percent",  "cpu_percent"};
	for (std::string_view lock : csv_locks) {
		std::string prefix(lock);
		std::replace(prefix.begin(), prefix.end(), ' ', '_');
		for (std::string_view field : {"acquisitions", "contended", "wait_ns"})
			columns.push_back(fmt::format("{}_{}", prefix, field));
	}
	return join(columns, ",") + "\n";
}

// The lock columns of one result; empty where the result has no such lock.
std::vector<std::string> csv_lock_fields(const std::vector<lock_summary> &locks)
{
	std::vector<std::string> fields;

	for (std::string_view name : csv_locks) {
		auto it = std::find_if(locks.begin(), locks.end(), [&](const auto &l) { return l.name == name; });
		if (it == locks.end()) {
			fields.insert(fields.end(), 3, std::string());
			continue;
		}
		fields.push_back(fmt::format("{:.0f}", it->acquisitions));
		fields.push_back(fmt::format("{:.0f}", it->contended));
		fields.push_back(fmt::format("{:.0f}", it->wait_ns));
	}
	return fields;
}

std::string csv_limit_row(const limit_result &l)
{
	std::vector<std::string> fields = {std::string(scenario_name(l.scenario)),
					   "limit",
					   std::to_string(l.threads),
					   std::string(scenario_unit(l.scenario)),
					   std::to_string(l.units),
					   csv_number(l.rate.median),
					   csv_number(l.rate.min),
					   csv_number(l.rate.max),
					   "",
					   "1",
					   "",
					   "",
					   "",
					   csv_number(l.rate.cpu_percent)};
	fields.insert(fields.end(), std::size(csv_locks) * 3, std::string());
	return join(fields, ",") + "\n";
}

std::string csv_result_row(const bench_result &r)
{
	std::vector<std::string> fields = {std::string(scenario_name(r.scenario)),
					   std::string(mm::lock_mode_name(r.mode)),
					   std::to_string(r.threads),
					   std::string(scenario_unit(r.scenario)),
					   std::to_string(r.units),
					   csv_number(r.rate.median),
					   csv_number(r.rate.min),
					   csv_number(r.rate.max),
					   csv_number(r.ratio_to_one_thread),
					   csv_number(r.fraction_of_limit),
					   csv_number(r.ratio_to_legacy),
					   csv_number(r.contended_percent()),
					   csv_number(r.wait_percent()),
					   csv_number(r.rate.cpu_percent)};
	auto locks = csv_lock_fields(r.locks);
	fields.insert(fields.end(), locks.begin(), locks.end());
	return join(fields, ",") + "\n";
}

} // namespace

// Lists the results whose threads were off a CPU for a noticeable part of
// the run although there were no more threads than CPUs. Other load on the
// machine took the CPUs, so their scaling reflects that load more than ptl.
std::string format_busy_warning(const bench_report &report)
{
	constexpr double min_cpu_percent = 90;
	std::vector<std::string> busy;

	for (const auto &r : report.results) {
		if (r.threads <= report.machine.cpus && r.rate.cpu_percent < min_cpu_percent)
			busy.push_back(fmt::format("{} {} {}", scenario_name(r.scenario), mm::lock_mode_name(r.mode),
						   r.threads));
	}
	if (busy.empty())
		return {};

	return fmt::format("note: the threads of {} of {} results with no more threads than CPUs ran less than "
			   "{:.0f}% of the time (cpu column), so other load on the machine slowed them: {}\n",
			   busy.size(), report.results.size(), min_cpu_percent, join(busy, ", "));
}

std::string format_table(const bench_report &report)
{
	return format_header(report) + "\n" + format_results(report) + format_busy_warning(report) + "\n" +
	       format_locks(report);
}

std::string format_json(const bench_report &report)
{
	nlohmann::json limits = nlohmann::json::array();
	for (const auto &l : report.limits)
		limits.push_back(limit_json(l));
	nlohmann::json results = nlohmann::json::array();
	for (const auto &r : report.results)
		results.push_back(result_json(r));

	const nlohmann::json j = {
		{"machine",
		 {{"cpus", report.machine.cpus},
		  {"cpu_model", report.machine.cpu_model},
		  {"memory_bytes", report.machine.memory_bytes},
		  {"load_average", optional_json(report.machine.load_average)}}},
		{"arch", report.arch},
		{"options", options_json(report.options)},
		{"replay_process", report.replay_process},
		{"replay_pages", report.replay_pages},
		{"total_seconds", report.total_seconds},
		{"limits", limits},
		{"results", results},
	};
	return j.dump();
}

std::string format_csv(const bench_report &report)
{
	std::string out = csv_header();

	for (const auto &l : report.limits)
		out += csv_limit_row(l);
	for (const auto &r : report.results)
		out += csv_result_row(r);
	return out;
}

} // namespace ptl::bench
