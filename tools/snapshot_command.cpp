// `ptl snapshot`: option parsing and the run.

#include "snapshot_command.hpp"

#include <ptl/tools/proc.hpp>
#include <ptl/tools/snapshot.hpp>

#include <fmt/core.h>

#include <climits>
#include <cstdio>
#include <memory>
#include <unistd.h>

namespace ptl::cli {

void add_snapshot_command(CLI::App &app, snapshot_command &cmd)
{
	auto *sub = app.add_subcommand("snapshot", "Save a live process's VMAs, present pages and status to a file "
						   "that 'ptl replay FILE' replays");
	sub->add_option("-o,--output", cmd.output,
			"Snapshot file to write, replaced if it exists; ptl writes FILE.tmp.XXXXXX and renames it into "
			"place (required, no default)")
		->required();
	sub->add_option("--pid", cmd.pid,
			"Process to save (default none: ptl starts a child that maps --demo-mib MiB, touches "
			"3 of every 4 pages, and saves that child)")
		->check(CLI::Range(1, INT_MAX));
	sub->add_option("--demo-mib", cmd.demo_mib, "Size of the demo child's mapping in MiB (default 256)")
		->check(CLI::Range(uint64_t{1}, uint64_t{65536}));
	sub->add_flag("--stop", cmd.stop,
		      "Stop the process (SIGSTOP) while reading it, so maps and pagemap agree; it is resumed after "
		      "(default off)");
	sub->add_flag("--progress", cmd.progress,
		      "Print progress on standard error even when it is not a terminal (default: only on a terminal)");
	sub->add_flag("--quiet", cmd.quiet, "Print no progress on standard error (default off)");
}

namespace {

void print_progress(bool show, const std::string &line)
{
	if (show)
		fmt::print(stderr, "ptl snapshot: {}\n", line);
}

} // namespace

int run_snapshot_command(const snapshot_command &cmd)
{
	const bool show = cmd.progress || (!cmd.quiet && isatty(STDERR_FILENO));

	std::unique_ptr<tools::demo_child> child;
	int pid = cmd.pid;
	if (pid == 0) {
		print_progress(show, fmt::format("starting a demo child that maps {} MiB", cmd.demo_mib));
		child = std::make_unique<tools::demo_child>(cmd.demo_mib << 20);
		pid = child->pid();
	}

	print_progress(show, fmt::format("reading /proc/{}/maps, pagemap and status", pid));
	const tools::snapshot snap = tools::capture_snapshot(pid, cmd.stop);

	print_progress(show, fmt::format("writing {} present pages to {}", snap.image.pages.size(), cmd.output));
	const size_t bytes = tools::save_snapshot(snap, cmd.output);

	fmt::print("saved process {} ({}): {} VMAs, {} present pages, {} swapped out, {}; {} bytes in {}\n", snap.pid,
		   snap.image.status.name, snap.image.vmas.size(), snap.image.pages.size(), snap.image.swapped,
		   snap.image.pfns_visible ? "PFNs recorded" : "presence only (the kernel hid PFNs)", bytes,
		   cmd.output);
	return 0;
}

} // namespace ptl::cli
