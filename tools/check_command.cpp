#include "check_command.hpp"

#include <ptl/check/kvm.hpp>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <sstream>
#include <stdexcept>

namespace ptl::cli {

namespace {

std::vector<mm::lock_mode> parse_modes(const std::string &list)
{
	std::vector<mm::lock_mode> modes;
	std::stringstream in(list);
	std::string name;

	while (std::getline(in, name, ',')) {
		const auto mode = mm::parse_lock_mode(name);
		if (!mode)
			throw std::invalid_argument(fmt::format("--modes: '{}' is not a lock mode; use legacy, pushdown, "
								"split or lockless, separated by commas",
								name));
		modes.push_back(*mode);
	}
	if (modes.empty())
		throw std::invalid_argument("--modes: the list is empty; name at least one lock mode");
	return modes;
}

std::string status_name(check::kvm_check_status status)
{
	switch (status) {
	case check::kvm_check_status::passed:
		return "passed";
	case check::kvm_check_status::failed:
		return "failed";
	case check::kvm_check_status::skipped:
		return "skipped";
	}
	return "unknown";
}

void print_text(const check::kvm_report &r)
{
	fmt::print("kvm check        {}\n", status_name(r.status));
	if (!r.paging.empty())
		fmt::print("page walker      {}\n", r.paging);
	for (const auto &s : r.spaces)
		fmt::print("{:<6} {:<9}   {} pages mapped, {} accessed-dirty bits checked, {} exits in {:.3f} s\n",
			   s.space, mm::lock_mode_name(s.mode), s.pages_mapped, s.accessed_dirty_checked, s.guest_exits,
			   s.guest_seconds);
	fmt::print("addresses        {} verified, {} mismatches\n", r.addresses_verified, r.mismatches);
	fmt::print("page faults      {} expected, {} observed\n", r.faults_expected, r.faults_observed);
	fmt::print("accessed/dirty   {} checked, {} mismatches\n", r.accessed_dirty_checked, r.accessed_dirty_mismatches);
	fmt::print("{}\n", r.message);
}

void print_json(const check::kvm_report &r)
{
	nlohmann::json spaces = nlohmann::json::array();
	for (const auto &s : r.spaces) {
		spaces.push_back({{"space", s.space},
				  {"mode", std::string(mm::lock_mode_name(s.mode))},
				  {"pages_mapped", s.pages_mapped},
				  {"accessed_dirty_checked", s.accessed_dirty_checked},
				  {"accessed_dirty_mismatches", s.accessed_dirty_mismatches},
				  {"guest_seconds", s.guest_seconds},
				  {"guest_exits", s.guest_exits}});
	}

	const nlohmann::json j = {
		{"status", status_name(r.status)},
		{"message", r.message},
		{"paging", r.paging},
		{"addresses_verified", r.addresses_verified},
		{"mismatches", r.mismatches},
		{"faults_expected", r.faults_expected},
		{"faults_observed", r.faults_observed},
		{"accessed_dirty_checked", r.accessed_dirty_checked},
		{"accessed_dirty_mismatches", r.accessed_dirty_mismatches},
		{"spaces", spaces},
	};
	fmt::print("{}\n", j.dump());
}

} // namespace

void add_check_command(CLI::App &app, check_command &cmd)
{
	auto *sub = app.add_subcommand("check", "Check ptl's tables against an independent reader");
	sub->add_flag("--kvm", cmd.kvm,
		      "Run a KVM guest whose page walker reads tables that ptl built, and compare every access, fault "
		      "and accessed or dirty bit with ptl's walker (required)")
		->required();
	sub->add_option("--pages", cmd.pages, "Distinct 4 KiB pages mapped per address space and lock mode")
		->check(CLI::Range(uint64_t{16}, uint64_t{1} << 20))
		->capture_default_str();
	sub->add_option("--threads", cmd.threads, "Threads that build the mappings concurrently")
		->check(CLI::Range(1u, 64u))
		->capture_default_str();
	sub->add_option("--modes", cmd.modes, "Comma-separated lock modes to build the tables in")->capture_default_str();
	sub->add_option("--device", cmd.device, "KVM device file")->capture_default_str();
	sub->add_option("--seed", cmd.seed, "Seed of the random mappings")->capture_default_str();
	sub->add_flag("--json", cmd.json, "Print the report as one JSON object (default: text)");
}

int run_check_command(const check_command &cmd)
{
	check::kvm_check_options options;
	options.device_path = cmd.device;
	options.nr_pages = cmd.pages;
	options.nr_threads = cmd.threads;
	options.modes = parse_modes(cmd.modes);
	options.seed = cmd.seed;

	const auto report = check::run_kvm_check(options);
	if (cmd.json)
		print_json(report);
	else
		print_text(report);

	switch (report.status) {
	case check::kvm_check_status::passed:
		return 0;
	case check::kvm_check_status::failed:
		return 1;
	case check::kvm_check_status::skipped:
		return exit_check_skipped;
	}
	return 1;
}

} // namespace ptl::cli
