// ptl: the command line. Results go to standard output; progress and errors
// go to standard error. Exit status: 0 success, 1 a check failed, 2 bad input.

#include <ptl/tools/proc.hpp>
#include <ptl/tools/replay.hpp>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <climits>
#include <cstdio>
#include <stdexcept>
#include <unistd.h>

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
	auto *sub = app.add_subcommand("replay", "Rebuild a live process's page tables and verify every translation");
	sub->add_option("--pid", cmd.options.pid,
			"Process to replay. Without it, ptl starts a child that maps --demo-mib MiB and touches "
			"3 of every 4 pages, and replays that child")
		->check(CLI::Range(1, INT_MAX));
	sub->add_option("--threads", cmd.options.threads, "Threads inserting pages concurrently (default 1)")
		->check(CLI::Range(1u, 1024u));
	sub->add_option("--demo-mib", cmd.demo_mib, "Size of the demo child's mapping in MiB (default 256)")
		->check(CLI::Range(uint64_t{1}, uint64_t{65536}));
	sub->add_flag("--stop", cmd.options.stop_target,
		      "Stop the process (SIGSTOP) while reading it, so maps and pagemap agree; it is resumed after");
	sub->add_flag("--json", cmd.json, "Print the report as one JSON object");
	sub->add_flag("--progress", cmd.progress,
		      "Print progress on standard error even when it is not a terminal (it is printed on a terminal)");
	sub->add_flag("--quiet", cmd.quiet, "Print no progress on standard error");
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

// CLI11 messages can span lines; the first line says what was wrong.
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

	try {
		app.parse(argc, argv);
	} catch (const CLI::CallForHelp &e) {
		return app.exit(e);
	} catch (const CLI::CallForAllHelp &e) {
		return app.exit(e);
	} catch (const CLI::ParseError &e) {
		const char *sub = app.get_subcommands().empty() ? "" : " replay";
		fmt::print(stderr, "ptl{}: error: {}. Run 'ptl{} --help' for the options.\n", sub, first_line(e.what()),
			   sub);
		return exit_bad_input;
	}

	try {
		if (app.got_subcommand("replay"))
			return run_replay(replay);
	} catch (const ptl::tools::input_error &e) {
		fmt::print(stderr, "ptl replay: error: {}\n", e.what());
		return exit_bad_input;
	} catch (const std::invalid_argument &e) {
		fmt::print(stderr, "ptl replay: error: {}\n", e.what());
		return exit_bad_input;
	} catch (const std::exception &e) {
		fmt::print(stderr, "ptl replay: failed: {}\n", e.what());
		return exit_check_failed;
	}
	return 0;
}
