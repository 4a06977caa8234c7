#pragma once
// `ptl snapshot`: save a live process's VMAs, present pages and status to a
// snapshot file that `ptl replay FILE` replays later.

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace ptl::cli {

struct snapshot_command {
	int pid = 0;             // 0: snapshot a demo child
	uint64_t demo_mib = 256; // size of the demo child's mapping
	std::string output;
	bool stop = false;
	bool quiet = false;
	bool progress = false;
};

// Registers the subcommand and its options on app, storing them in cmd.
void add_snapshot_command(CLI::App &app, snapshot_command &cmd);

// Takes and saves the snapshot, prints a one-line summary on standard output
// and returns the exit status. Throws input_error for bad input, as the
// readers and save_snapshot do.
int run_snapshot_command(const snapshot_command &cmd);

} // namespace ptl::cli
