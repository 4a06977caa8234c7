// The reports of `ptl bench peers`: a table for people, one JSON object,
// and CSV with one measurement per row for plotting.

#include "peers.hpp"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

namespace ptl::bench::peers {

namespace {

constexpr std::string_view peer_descriptions[] = {
	"std      std::unordered_map under std::mutex",
	"absl     absl::flat_hash_map under absl::Mutex (reader lock for lookups)",
	"tbb      tbb::concurrent_hash_map (a lock per bucket)",
	"cds      cds::container::FeldmanHashMap with hazard pointers (lock-free)",
	"judy     JudyL under std::mutex",
	"ptl-MODE user_space::insert_pfn into PFN-mapped VMAs, mm::translate, munmap of each page",
};

std::string format_header(const peers_report &r)
{
	std::string out = "ptl bench peers: the same page-number-to-frame mappings in ptl and in its peers\n";

	out += fmt::format("machine     {} CPUs ({}), {:.1f} GiB memory", r.machine.cpus,
			   r.machine.cpu_model.empty() ? "model unknown" : r.machine.cpu_model,
			   double(r.machine.memory_bytes) / double(1ull << 30));
	if (r.machine.load_average)
		out += fmt::format(", load average {:.2f} before the run", *r.machine.load_average);
	out += fmt::format("\narch        {}\n", r.arch);
	out += fmt::format("pages       {} per run (dense and scattered layouts, kernel comparison)\n", r.options.pages);
	if (!r.replay_process.empty())
		out += fmt::format("replay      {}, {} present pages\n", r.replay_process, r.replay_pages);
	out += fmt::format("repeat      {} runs per result, interleaved; medians\n", r.options.repeat);
	for (std::string_view d : peer_descriptions)
		out += fmt::format("  {}\n", d);
	return out;
}

std::string format_results(const peers_report &r)
{
	std::string out;

	for (layout_kind kind : r.options.layouts) {
		bool header = false;
		for (const auto &res : r.results) {
			if (res.layout != kind)
				continue;
			if (!header) {
				out += fmt::format("\n{} layout, {} pages: millions of operations per second, bytes per "
						   "mapped page\n",
						   layout_name(kind), res.pages);
				out += fmt::format("{:<15} {:>7} {:>9} {:>13} {:>14} {:>13} {:>9} {:>10} {:>5}\n",
						   "structure", "threads", "insert", "lookup-order", "lookup-random",
						   "lookup-chase", "remove", "bytes/page", "cpu%");
				header = true;
			}
			out += fmt::format("{:<15} {:>7}", res.structure, res.threads);
			const int widths[] = {9, 13, 14, 13, 9};
			for (size_t op = 0; op < nr_ops; op++)
				out += fmt::format(" {:>{}.2f}", res.ops[op].median / 1e6, widths[op]);
			out += fmt::format(" {:>10.2f} {:>5.0f}\n", res.bytes_per_page, res.cpu_percent);
		}
	}
	return out;
}

std::string format_ratios(const peers_report &r)
{
	if (r.ratios.empty())
		return {};

	std::string out = "\nptl's fastest mode / the fastest peer (medians)\n";
	out += fmt::format("{:<10} {:>7} {:<14} {:<15} {:<8} {:>7}\n", "layout", "threads", "operation", "ptl", "peer",
			   "ratio");
	for (const auto &ratio : r.ratios)
		out += fmt::format("{:<10} {:>7} {:<14} {:<15} {:<8} {:>7.2f}\n", layout_name(ratio.layout), ratio.threads,
				   op_name(ratio.op), ratio.ptl_structure, ratio.peer, ratio.ratio);
	return out;
}

std::string format_kernel(const peers_report &r)
{
	if (r.kernel.empty())
		return {};

	std::string out = fmt::format("\nkernel comparison, {} pages: millions of pages per second\n", r.options.pages);
	out += fmt::format("{:<26} {:>7} {:>9} {:>9} {:>9}\n", "run", "threads", "median", "min", "max");
	for (const auto &k : r.kernel)
		out += fmt::format("{:<26} {:>7} {:>9.3f} {:>9.3f} {:>9.3f}\n", k.name, k.threads, k.per_second.median / 1e6,
				   k.per_second.min / 1e6, k.per_second.max / 1e6);
	return out;
}

std::string format_sweep(const peers_report &r)
{
	if (r.sweep.empty())
		return {};

	std::string out = "\nsize sweep, dense layout, 1 thread: nanoseconds per page (medians)\n";
	out += fmt::format("{:<15} {:>10} {:>9} {:>14} {:>9}\n", "structure", "pages", "insert", "lookup-random",
			   "remove");
	for (const auto &s : r.sweep)
		out += fmt::format("{:<15} {:>10} {:>9.1f} {:>14.1f} {:>9.1f}\n", s.structure, s.pages, s.ns_per_page[0],
				   s.ns_per_page[1], s.ns_per_page[2]);
	return out;
}

std::string format_targets(const peers_report &r)
{
	if (r.targets.empty())
		return {};

	std::string out = "\ntargets\n";
	for (const auto &t : r.targets)
		out += fmt::format("  {:<6} {:<70} {:>9.2f} (target {} {})\n", t.met ? "met" : "missed", t.name, t.measured,
				   t.at_most ? "<=" : ">=", t.target);
	return out;
}

nlohmann::json rate_json(const rate &r)
{
	return {{"median", r.median}, {"min", r.min}, {"max", r.max}};
}

nlohmann::json options_json(const peers_options &o)
{
	nlohmann::json layouts = nlohmann::json::array();
	for (layout_kind k : o.layouts)
		layouts.push_back(layout_name(k));
	nlohmann::json peers = nlohmann::json::array();
	for (peer_kind k : o.peers)
		peers.push_back(peer_name(k));
	nlohmann::json modes = nlohmann::json::array();
	for (mm::lock_mode m : o.run_ptl ? o.modes : std::vector<mm::lock_mode>{})
		modes.push_back(mm::lock_mode_name(m));

	nlohmann::json j = {{"layouts", layouts}, {"peers", peers},     {"modes", modes},
			    {"threads", o.threads}, {"pages", o.pages},     {"repeat", o.repeat},
			    {"pid", o.pid},         {"kernel", o.kernel}, {"seed", o.seed}};
	j["snapshot"] = o.snapshot_path;
	j["sweep"] = o.sweep ? nlohmann::json{o.sweep->first, o.sweep->second} : nlohmann::json(nullptr);
	return j;
}

nlohmann::json result_json(const structure_result &r)
{
	nlohmann::json ops;
	for (size_t op = 0; op < nr_ops; op++)
		ops[std::string(op_name(all_ops[op]))] = rate_json(r.ops[op]);
	return {{"layout", layout_name(r.layout)}, {"structure", r.structure}, {"is_ptl", r.is_ptl},
		{"threads", r.threads},            {"pages", r.pages},         {"per_second", ops},
		{"bytes_per_page", r.bytes_per_page}, {"cpu_percent", r.cpu_percent}};
}

std::string csv_row(std::string_view section, std::string_view layout, std::string_view structure, unsigned threads,
		    uint64_t pages, std::string_view metric, double median, double min, double max)
{
	return fmt::format("{},{},{},{},{},{},{},{},{}\n", section, layout, structure, threads, pages, metric, median, min,
			   max);
}

} // namespace

std::string format_table(const peers_report &report)
{
	std::string out = format_header(report);
	out += format_results(report);
	out += format_ratios(report);
	out += format_kernel(report);
	out += format_sweep(report);
	out += format_targets(report);
	out += "\ncpu% is the CPU time the threads got as a percentage of their wall time; below 100 other load "
	       "took the CPUs\n";
	out += fmt::format("ptl's bytes per page count each table frame as 4096 bytes plus {} bytes of frame "
			   "metadata, plus the heap growth (VMAs)\ntotal time {:.1f} s\n",
			   report.page_metadata_bytes, report.total_seconds);
	return out;
}

std::string format_json(const peers_report &report)
{
	nlohmann::json results = nlohmann::json::array();
	for (const auto &r : report.results)
		results.push_back(result_json(r));

	nlohmann::json ratios = nlohmann::json::array();
	for (const auto &r : report.ratios)
		ratios.push_back({{"layout", layout_name(r.layout)},
				  {"threads", r.threads},
				  {"operation", op_name(r.op)},
				  {"ptl", r.ptl_structure},
				  {"peer", r.peer},
				  {"ratio", r.ratio}});

	nlohmann::json kernel = nlohmann::json::array();
	for (const auto &k : report.kernel)
		kernel.push_back(
			{{"name", k.name}, {"threads", k.threads}, {"pages", k.pages}, {"per_second", rate_json(k.per_second)}});

	nlohmann::json sweep = nlohmann::json::array();
	for (const auto &s : report.sweep)
		sweep.push_back({{"structure", s.structure},
				 {"pages", s.pages},
				 {"ns_per_page",
				  {{"insert", s.ns_per_page[0]}, {"lookup-random", s.ns_per_page[1]}, {"remove", s.ns_per_page[2]}}}});

	nlohmann::json targets = nlohmann::json::array();
	for (const auto &t : report.targets)
		targets.push_back({{"name", t.name},
				   {"measured", t.measured},
				   {"target", t.target},
				   {"bound", t.at_most ? "at most" : "at least"},
				   {"met", t.met}});

	const nlohmann::json j = {
		{"machine",
		 {{"cpus", report.machine.cpus},
		  {"cpu_model", report.machine.cpu_model},
		  {"memory_bytes", report.machine.memory_bytes},
		  {"load_average", report.machine.load_average ? nlohmann::json(*report.machine.load_average)
							       : nlohmann::json(nullptr)}}},
		{"arch", report.arch},
		{"options", options_json(report.options)},
		{"replay_process", report.replay_process},
		{"replay_pages", report.replay_pages},
		{"page_metadata_bytes", report.page_metadata_bytes},
		{"results", results},
		{"ratios", ratios},
		{"kernel", kernel},
		{"sweep", sweep},
		{"targets", targets},
		{"total_seconds", report.total_seconds},
	};
	return j.dump();
}

std::string format_csv(const peers_report &report)
{
	std::string out = "section,layout,structure,threads,pages,metric,median,min,max\n";

	for (const auto &r : report.results) {
		for (size_t op = 0; op < nr_ops; op++)
			out += csv_row("structure", layout_name(r.layout), r.structure, r.threads, r.pages,
				       fmt::format("{}_per_second", op_name(all_ops[op])), r.ops[op].median, r.ops[op].min,
				       r.ops[op].max);
		out += csv_row("structure", layout_name(r.layout), r.structure, r.threads, r.pages, "bytes_per_page",
			       r.bytes_per_page, r.bytes_per_page, r.bytes_per_page);
		out += csv_row("structure", layout_name(r.layout), r.structure, r.threads, r.pages, "cpu_percent",
			       r.cpu_percent, r.cpu_percent, r.cpu_percent);
	}
	for (const auto &k : report.kernel)
		out += csv_row("kernel", "dense", k.name, k.threads, k.pages, "pages_per_second", k.per_second.median,
			       k.per_second.min, k.per_second.max);
	for (const auto &s : report.sweep) {
		constexpr std::string_view metrics[] = {"insert_ns_per_page", "lookup-random_ns_per_page",
							"remove_ns_per_page"};
		for (size_t i = 0; i < 3; i++)
			out += csv_row("sweep", "dense", s.structure, 1, s.pages, metrics[i], s.ns_per_page[i],
				       s.ns_per_page[i], s.ns_per_page[i]);
	}
	return out;
}

} // namespace ptl::bench::peers
