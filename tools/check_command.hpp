#pragma once
// `ptl check --kvm`: build random mappings with ptl and let a KVM guest's
// page walker read them, comparing every value, fault and accessed or dirty
// bit with what ptl's own walker returns.

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace ptl::cli {

// Exit status when KVM is not usable on this machine, so scripts can tell
// a skipped check from a passed one.
inline constexpr int exit_check_skipped = 3;

struct check_command {
	bool kvm = false;
	uint64_t pages = 10000;
	unsigned threads = 4;
	std::string modes = "pushdown,lockless";
	std::string device = "/dev/kvm";
	uint64_t seed = 1;
	bool json = false;
};

void add_check_command(CLI::App &app, check_command &cmd);

// Runs the check and prints its report. Returns 0 when it passed, 1 when
// it found a mismatch, and exit_check_skipped when KVM is not usable.
// Throws std::invalid_argument for an unknown lock mode.
int run_check_command(const check_command &cmd);

} // namespace ptl::cli
