// `ptl bench peers`: option parsing and the run.

#include "peers_command.hpp"

#include <fmt/core.h>

#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <unistd.h>

namespace ptl::cli {

namespace {

namespace peers = bench::peers;

// Parses "FROM:TO", two decimal numbers. Throws std::invalid_argument
// naming the text when it is not of that form.
std::pair<unsigned, unsigned> parse_sweep(const std::string &text)
{
	const auto colon = text.find(':');
	unsigned from = 0, to = 0;
	const char *end = text.data() + text.size();

	const bool ok = colon != std::string::npos &&
			std::from_chars(text.data(), text.data() + colon, from) ==
				std::from_chars_result{text.data() + colon, std::errc{}} &&
			std::from_chars(text.data() + colon + 1, end, to) == std::from_chars_result{end, std::errc{}};
	if (!ok || colon == 0 || colon + 1 == text.size())
		throw std::invalid_argument(fmt::format("sweep '{}' is invalid; use FROM:TO, such as 10:24 for 2^10 to "
							"2^24 pages",
							text));
	return {from, to};
}

// Converts the names given on the command line. Throws
// std::invalid_argument naming the first unknown one.
void parse_names(peers_command &cmd)
{
	auto &o = cmd.options;

	o.layouts.clear();
	for (const auto &name : cmd.layouts) {
		auto kind = peers::parse_layout(name);
		if (!kind)
			throw std::invalid_argument(fmt::format("unknown layout '{}'; choose from dense, replay, "
								"scattered",
								name));
		o.layouts.push_back(*kind);
	}

	o.peers.clear();
	for (const auto &name : cmd.peers) {
		if (name == "none")
			continue;
		auto kind = peers::parse_peer(name);
		if (!kind)
			throw std::invalid_argument(fmt::format("unknown peer '{}'; choose from std, absl, tbb, cds, judy, "
								"or none",
								name));
		o.peers.push_back(*kind);
	}

	o.modes.clear();
	for (const auto &name : cmd.modes) {
		if (name == "none")
			continue;
		auto mode = mm::parse_lock_mode(name);
		if (!mode)
			throw std::invalid_argument(fmt::format("unknown lock mode '{}'; choose from legacy, pushdown, "
								"split, lockless, or none",
								name));
		o.modes.push_back(*mode);
	}
	o.run_ptl = !o.modes.empty();
}

} // namespace

CLI::App *add_peers_command(CLI::App &bench, peers_command &cmd)
{
	auto &o = cmd.options;
	auto *sub = bench.add_subcommand("peers", "Compare ptl with hash maps, Judy arrays and the real kernel on the "
						  "same page-to-frame mappings");
	sub->add_option("--layouts", cmd.layouts,
			"Comma-separated layouts: dense (one range), replay (a real process's present pages), "
			"scattered (pages at random over 64 TiB) (default all three)")
		->delimiter(',');
	sub->add_option("--peers", cmd.peers,
			"Comma-separated peers: std, absl, tbb, cds, judy, or none (default all five)")
		->delimiter(',');
	sub->add_option("--modes", cmd.modes,
			"Comma-separated ptl lock modes: legacy, pushdown, split, lockless, or none to leave ptl out "
			"(default all four)")
		->delimiter(',');
	sub->add_option("--threads", o.threads, "Comma-separated thread counts (default 1,2)")->delimiter(',');
	sub->add_option("--pages", o.pages,
			"Mappings per run for the dense and scattered layouts and the kernel comparison, and the "
			"present pages of the demo child that replay reads (default 262144)");
	sub->add_option("--repeat", o.repeat, "Runs per result; the median is reported (default 5)");
	auto *pid = sub->add_option("--pid", o.pid,
				    "Process whose present pages make the replay layout (default: a demo child that "
				    "touches --pages pages)")
			    ->check(CLI::Range(1, INT_MAX));
	sub->add_option("--snapshot", o.snapshot_path,
			"Snapshot file, as 'ptl snapshot' writes it, whose present pages make the replay layout "
			"(default none)")
		->excludes(pid);
	sub->add_flag("--kernel,!--no-kernel", o.kernel,
		      "Measure the kernel's anonymous faults and MAP_POPULATE beside ptl's fault path and vmap "
		      "(default on)");
	sub->add_option("--sweep", cmd.sweep,
			"Also time map, lookup and unmap per page for 2^FROM to 2^TO pages, as FROM:TO, such as "
			"10:24 (default none)");
	sub->add_option("--seed", o.seed, "Seed of the scattered layout and the random orders (default 1)");
	auto *json = sub->add_flag("--json", cmd.json, "Print the report as one JSON object");
	sub->add_flag("--csv", cmd.csv, "Print the report as CSV, one measurement per row")->excludes(json);
	sub->add_option("--csv-file", cmd.csv_file,
			"Also write the CSV report to this file, replacing it, whatever standard output gets "
			"(default none)");
	sub->add_flag("--progress", cmd.progress,
		      "Print progress on standard error even when it is not a terminal (it is printed on a "
		      "terminal), at most once a second");
	sub->add_flag("--quiet", cmd.quiet, "Print no progress on standard error");
	return sub;
}

int run_peers_command(peers_command &cmd)
{
	parse_names(cmd);
	if (!cmd.sweep.empty())
		cmd.options.sweep = parse_sweep(cmd.sweep);
	peers::validate(cmd.options);

	const bool show_progress = cmd.progress || (!cmd.quiet && isatty(STDERR_FILENO));
	if (show_progress)
		cmd.options.progress = [](const std::string &line) { fmt::print(stderr, "ptl bench peers: {}\n", line); };

	// Opened before the run, so that a bad path fails at once.
	std::FILE *csv_file = nullptr;
	if (!cmd.csv_file.empty()) {
		csv_file = std::fopen(cmd.csv_file.c_str(), "w");
		if (!csv_file)
			throw std::invalid_argument(fmt::format("cannot open --csv-file {} for writing: {}", cmd.csv_file,
								std::strerror(errno)));
	}
	std::unique_ptr<std::FILE, int (*)(std::FILE *)> csv_guard(csv_file, [](std::FILE *f) {
		return f ? std::fclose(f) : 0;
	});

	const auto report = peers::run_peers(cmd.options);
	if (csv_file)
		fmt::print(csv_file, "{}", peers::format_csv(report));
	if (cmd.json)
		fmt::print("{}\n", peers::format_json(report));
	else if (cmd.csv)
		fmt::print("{}", peers::format_csv(report));
	else
		fmt::print("{}", peers::format_table(report));
	return 0;
}

} // namespace ptl::cli
