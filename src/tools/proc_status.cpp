// Parser for the fields of /proc/PID/status that ptl uses.

#include "ptl/tools/proc.hpp"

#include <charconv>
#include <fmt/format.h>

namespace ptl::tools {

namespace {

using detail::quote;

using detail::line_context;

std::string_view trim_leading_blanks(std::string_view text)
{
	const size_t begin = text.find_first_not_of(" \t");
	if (begin == std::string_view::npos)
		return {};
	return text.substr(begin);
}

// Parses a value such as "    1744 kB", the form the kernel uses for every
// Vm field.
uint64_t parse_kib(const line_context &where, std::string_view key, std::string_view value)
{
	const std::string_view number = trim_leading_blanks(value);
	const size_t digits = std::min(number.find_first_not_of("0123456789"), number.size());

	uint64_t kib = 0;
	const char *digits_end = number.data() + digits;
	const auto [ptr, error] = std::from_chars(number.data(), digits_end, kib);
	const bool valid = digits > 0 && error == std::errc() && ptr == digits_end && number.substr(digits) == " kB";
	if (!valid)
		where.fail(fmt::format("malformed {} value {} (expected a decimal number followed by ' kB')", key,
				       quote(value)));
	return kib;
}

void store_kib(const line_context &where, std::string_view key, std::string_view value,
	       std::optional<uint64_t> &field)
{
	if (field)
		where.fail(fmt::format("duplicate {} field", key));

	field = parse_kib(where, key, value);
}

// The kernel writes "Name:\t<comm>", and comm itself may start with a space,
// so only the tab is removed.
void store_name(const line_context &where, std::string_view value, std::optional<std::string> &name)
{
	if (name)
		where.fail("duplicate Name field");

	if (!value.empty() && value.front() == '\t')
		value.remove_prefix(1);
	name = std::string(value);
}

// The kernel writes "State:\t<letter> (<word>)".
void store_state(const line_context &where, std::string_view value, status_record &status)
{
	if (status.state != 0)
		where.fail("duplicate State field");

	const std::string_view text = trim_leading_blanks(value);
	if (text.empty() || text.front() < 'A' || text.front() > 'Z')
		where.fail(fmt::format("malformed State value {} (expected an upper-case letter such as 'S')",
				       quote(value)));
	status.state = text.front();
}

void parse_line(const line_context &where, std::string_view line, std::optional<std::string> &name,
		status_record &status)
{
	const size_t colon = line.find(':');
	if (colon == std::string_view::npos)
		where.fail(fmt::format("malformed line {} (expected 'Key:<tab>value')", quote(line)));

	const std::string_view key = line.substr(0, colon);
	const std::string_view value = line.substr(colon + 1);

	if (key == "Name")
		store_name(where, value, name);
	else if (key == "State")
		store_state(where, value, status);
	else if (key == "VmPTE")
		store_kib(where, key, value, status.vm_pte_kib);
	else if (key == "VmRSS")
		store_kib(where, key, value, status.vm_rss_kib);
	else if (key == "VmSize")
		store_kib(where, key, value, status.vm_size_kib);
}

} // namespace

status_record parse_status(std::string_view text, std::string_view source)
{
	status_record status;
	std::optional<std::string> name;
	line_context where{source, 0};

	while (!text.empty()) {
		const size_t newline = std::min(text.find('\n'), text.size());
		const std::string_view line = text.substr(0, newline);
		text.remove_prefix(std::min(newline + 1, text.size()));
		where.number++;

		parse_line(where, line, name, status);
	}

	if (!name)
		throw input_error(fmt::format("{}: missing Name field (expected the text of /proc/PID/status)", source));
	status.name = std::move(*name);
	return status;
}

void check_user_address_space(int pid, const status_record &status)
{
	if (status.state == 'Z' || status.state == 'X')
		throw input_error(fmt::format("process {} ({}) exited while it was read (its state is {}); choose "
					      "a process that keeps running",
					      pid, status.name, status.state));

	if (!status.vm_rss_kib)
		throw input_error(fmt::format("process {} ({}) has no user address space (a kernel thread, or a "
					      "process that exited while it was read)",
					      pid, status.name));
}

status_record read_status(int pid)
{
	// A real status file is a few KiB. The limit only stops a runaway read.
	constexpr size_t max_bytes = 1024 * 1024;

	const std::string text = detail::read_proc_text(pid, "status", max_bytes);
	return parse_status(text, detail::proc_path(pid, "status"));
}

} // namespace ptl::tools
