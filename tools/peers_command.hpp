#pragma once
// `ptl bench peers`: ptl against other page-number-to-frame maps and the
// real kernel, in one run.

#include "bench/peers.hpp"

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace ptl::cli {

struct peers_command {
	bench::peers::peers_options options;
	std::vector<std::string> layouts{"dense", "replay", "scattered"};
	std::vector<std::string> peers{"std", "absl", "tbb", "cds", "judy"};
	std::vector<std::string> modes{"legacy", "pushdown", "split", "lockless"};
	std::string sweep;
	std::string csv_file; // also write the CSV report here
	bool json = false;
	bool csv = false;
	bool quiet = false;
	bool progress = false;
};

// Registers `peers` as a subcommand of `ptl bench`, storing its options in
// cmd, and returns it.
CLI::App *add_peers_command(CLI::App &bench, peers_command &cmd);

// Runs the comparison, prints the report on standard output and returns
// the exit status. Throws std::invalid_argument for bad options, and as
// run_peers does.
int run_peers_command(peers_command &cmd);

} // namespace ptl::cli
