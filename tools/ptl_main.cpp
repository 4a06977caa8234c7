// ptl: the command line. Results go to standard output; progress and errors
// go to standard error. Exit status: 0 success, 1 a check or a benchmark run
// failed, 2 bad input.

#include "bench/bench.hpp"
#include "check_command.hpp"
#include "peers_command.hpp"
#include "snapshot_command.hpp"

#include <ptl/arch/registry.hpp>
#include <ptl/tools/proc.hpp>
#include <ptl/tools/replay.hpp>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <climits>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

constexpr int exit_check_failed = 1;
constexpr int exit_bad_input = 2;

struct replay_command {
	ptl::tools::replay_options options;
	uint64_t demo_mib = 256;
	bool json = false;
	bool quiet = false;
	bool progress = false;
};

void add_replay(CLI::App &app, replay_command &cmd)
{
	auto *sub = app.add_subcommand("replay", "Rebuild the page tables of a live process or of a snapshot FILE "
						 "and verify every translation");
	auto *file = sub->add_option("FILE", cmd.options.snapshot_path,
				     "Snapshot file to replay instead of a live process, as 'ptl snapshot' writes it "
				     "(default none: replay --pid or a demo child)");
	sub->add_option("--pid", cmd.options.pid,
			"Process to replay. Without it, ptl starts a child that maps --demo-mib MiB and touches "
			"3 of every 4 pages, and replays that child")
		->check(CLI::Range(1, INT_MAX))
		->excludes(file);
	sub->add_option("--threads", cmd.options.threads, "Threads inserting pages concurrently (default 1)")
		->check(CLI::Range(1u, 1024u));
	sub->add_option("--demo-mib", cmd.demo_mib, "Size of the demo child's mapping in MiB (default 256)")
		->check(CLI::Range(uint64_t{1}, uint64_t{65536}))
		->excludes(file);
	sub->add_flag("--stop", cmd.options.stop_target,
		      "Stop the process (SIGSTOP) while reading it, so maps and pagemap agree; it is resumed after "
		      "(default off)")
		->excludes(file);
	sub->add_option("--arch", cmd.options.arch,
			fmt::format("Geometry to build the tables in: {} (default {}, the one this ptl was built for)",
				    ptl::arch::profile_name_list(), ptl::arch::native::name));
	sub->add_flag("--json", cmd.json, "Print the report as one JSON object (default off: a text report)");
	sub->add_flag("--progress", cmd.progress,
		      "Print progress on standard error even when it is not a terminal (default: only on a terminal)");
	sub->add_flag("--quiet", cmd.quiet, "Print no progress on standard error (default off)");
}

int run_replay(replay_command &cmd)
{
	cmd.options.demo_bytes = cmd.demo_mib << 20;
	const bool show_progress = cmd.progress || (!cmd.quiet && isatty(STDERR_FILENO));
	if (show_progress)
		cmd.options.progress = [](const std::string &line) { fmt::print(stderr, "ptl replay: {}\n", line); };

	const auto report = ptl::tools::run_replay(cmd.options);
	fmt::print("{}", cmd.json ? ptl::tools::format_report_json(report) + "\n" : ptl::tools::format_report_text(report));
	return report.mismatches == 0 ? 0 : exit_check_failed;
}

struct bench_command {
	ptl::bench::bench_options options;
	std::vector<std::string> scenarios{"kernel-map", "fault", "replay"};
	std::vector<std::string> modes{"legacy", "pushdown", "split", "lockless"};
	uint64_t pages = 0;
	bool json = false;
	bool csv = false;
	bool quiet = false;
	bool progress = false;
};

void add_bench(CLI::App &app, bench_command &cmd)
{
	auto *sub = app.add_subcommand("bench", "Measure throughput per lock mode and thread count against the "
						"store limit");
	sub->add_option("--scenarios", cmd.scenarios,
			"Comma-separated scenarios: kernel-map (vmap and vunmap in one kernel address space), fault "
			"(write faults on one anonymous area), replay (rebuild a live process) "
			"(default kernel-map,fault,replay)")
		->delimiter(',');
	sub->add_option("--modes", cmd.modes,
			"Comma-separated lock modes: legacy, pushdown, split, lockless (default all four)")
		->delimiter(',');
	sub->add_option("--threads", cmd.options.threads, "Comma-separated thread counts (default 1,2,4)")
		->delimiter(',');
	sub->add_option("--pages", cmd.pages,
			"Pages per run: mapped by kernel-map, faulted by fault, and touched by the demo child that "
			"replay rebuilds (default 4194304 for kernel-map, 262144 for fault and replay)");
	sub->add_option("--repeat", cmd.options.repeat, "Runs per result; the median is reported (default 5)");
	sub->add_option("--pid", cmd.options.pid,
			"Process for the replay scenario. Without it, ptl starts a child that touches --pages pages "
			"and replays that child")
		->check(CLI::Range(1, INT_MAX));
	sub->add_option("--batch", cmd.options.batch, "kernel-map: pages per vmap (default 16)");
	sub->add_option("--window", cmd.options.window,
			"kernel-map: vmaps each thread keeps mapped before it unmaps the oldest (default 32)");
	sub->add_option("--arch", cmd.options.arch,
			fmt::format("Geometry to build the tables in: {} (default {}, the one this ptl was built for)",
				    ptl::arch::profile_name_list(), ptl::arch::native::name));
	sub->add_flag("--vm-map-ram", cmd.options.vm_map_ram,
		      "kernel-map: map with vm_map_ram, which carves ranges from per-thread vmap blocks, instead of "
		      "vmap, which takes the vmalloc area lock for every mapping (default: vmap)");
	auto *json = sub->add_flag("--json", cmd.json, "Print the report as one JSON object");
	sub->add_flag("--csv", cmd.csv, "Print the report as CSV, one row per result and per store limit")
		->excludes(json);
	sub->add_flag("--progress", cmd.progress,
		      "Print progress on standard error even when it is not a terminal (it is printed on a "
		      "terminal), at most once a second");
	sub->add_flag("--quiet", cmd.quiet, "Print no progress on standard error");
}

// Converts the names given on the command line. Throws
// std::invalid_argument naming the first unknown one.
void parse_bench_names(bench_command &cmd)
{
	cmd.options.scenarios.clear();
	for (const auto &name : cmd.scenarios) {
		auto kind = ptl::bench::parse_scenario(name);
		if (!kind)
			throw std::invalid_argument(fmt::format("unknown scenario '{}'; choose from kernel-map, fault, "
								"replay",
								name));
		cmd.options.scenarios.push_back(*kind);
	}

	cmd.options.modes.clear();
	for (const auto &name : cmd.modes) {
		auto mode = ptl::mm::parse_lock_mode(name);
		if (!mode)
			throw std::invalid_argument(fmt::format("unknown lock mode '{}'; choose from legacy, pushdown, "
								"split, lockless",
								name));
		cmd.options.modes.push_back(*mode);
	}
}

int run_bench(const CLI::App &sub, bench_command &cmd)
{
	parse_bench_names(cmd);
	if (sub.count("--pages") != 0)
		cmd.options.pages = cmd.pages;
	ptl::bench::validate(cmd.options);

	const bool show_progress = cmd.progress || (!cmd.quiet && isatty(STDERR_FILENO));
	if (show_progress)
		cmd.options.progress = [](const std::string &line) { fmt::print(stderr, "ptl bench: {}\n", line); };

	const auto report = ptl::bench::run_bench(cmd.options);
	if (cmd.json)
		fmt::print("{}\n", ptl::bench::format_json(report));
	else if (cmd.csv)
		fmt::print("{}", ptl::bench::format_csv(report));
	else
		fmt::print("{}", ptl::bench::format_table(report));
	return 0;
}

// CLI11 messages can span lines; the first line states what was wrong.
std::string first_line(const std::string &text)
{
	return text.substr(0, text.find('\n'));
}

} // namespace

int main(int argc, char **argv)
{
	CLI::App app{"ptl: concurrent hardware-format page tables, replayed from real processes"};
	app.require_subcommand(1);
	app.set_help_all_flag("--help-all", "Show help for every subcommand");

	replay_command replay;
	add_replay(app, replay);
	ptl::cli::snapshot_command snapshot;
	ptl::cli::add_snapshot_command(app, snapshot);
	bench_command bench;
	add_bench(app, bench);
	ptl::cli::peers_command peers;
	CLI::App *peers_sub = ptl::cli::add_peers_command(*app.get_subcommand("bench"), peers);
	ptl::cli::check_command check;
	ptl::cli::add_check_command(app, check);

	try {
		app.parse(argc, argv);
	} catch (const CLI::CallForHelp &e) {
		return app.exit(e);
	} catch (const CLI::CallForAllHelp &e) {
		return app.exit(e);
	} catch (const CLI::ParseError &e) {
		if (app.get_subcommands().empty() && argc > 1 && argv[1][0] != '-') {
			fmt::print(stderr, "ptl: error: unknown subcommand '{}'. Run 'ptl --help' for the subcommands.\n",
				   argv[1]);
			return exit_bad_input;
		}
		std::string sub = app.get_subcommands().empty() ? "" : " " + app.get_subcommands()[0]->get_name();
		if (peers_sub->parsed())
			sub = " bench peers";
		fmt::print(stderr, "ptl{}: error: {}. Run 'ptl{} --help' for the options.\n", sub, first_line(e.what()),
			   sub);
		return exit_bad_input;
	}

	const std::string name = peers_sub->parsed() ? "bench peers" : app.get_subcommands()[0]->get_name();
	try {
		if (name == "replay")
			return run_replay(replay);
		if (name == "snapshot")
			return ptl::cli::run_snapshot_command(snapshot);
		if (name == "bench peers")
			return ptl::cli::run_peers_command(peers);
		if (name == "bench")
			return run_bench(*app.get_subcommand("bench"), bench);
		if (name == "check")
			return ptl::cli::run_check_command(check);
	} catch (const ptl::tools::input_error &e) {
		fmt::print(stderr, "ptl {}: error: {}\n", name, e.what());
		return exit_bad_input;
	} catch (const std::invalid_argument &e) {
		fmt::print(stderr, "ptl {}: error: {}\n", name, e.what());
		return exit_bad_input;
	} catch (const std::exception &e) {
		fmt::print(stderr, "ptl {}: failed: {}\n", name, e.what());
		return exit_check_failed;
	}
	return 0;
}
