// Parser for /proc/PID/maps, and the file helpers that the /proc readers share.

#include "ptl/tools/proc.hpp"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

namespace ptl::tools {

namespace detail {

std::string proc_path(int pid, std::string_view file)
{
	if (pid <= 0)
		throw input_error(fmt::format("invalid process ID {} (expected a positive PID)", pid));

	return fmt::format("/proc/{}/{}", pid, file);
}

std::string quote(std::string_view value)
{
	constexpr size_t max_shown = 80;

	std::string quoted = "'";
	for (size_t i = 0; i < value.size() && i < max_shown; i++) {
		const auto c = static_cast<unsigned char>(value[i]);
		if (c < 0x20 || c == 0x7f)
			quoted += fmt::format("\\x{:02x}", c);
		else
			quoted += static_cast<char>(c);
	}
	quoted += "'";

	if (value.size() > max_shown)
		quoted += fmt::format(" (first {} of {} bytes)", max_shown, value.size());
	return quoted;
}

namespace {

class fd_guard {
public:
	explicit fd_guard(int fd) : fd_(fd) {}
	~fd_guard() { ::close(fd_); }
	fd_guard(const fd_guard &) = delete;
	fd_guard &operator=(const fd_guard &) = delete;
	int get() const { return fd_; }

private:
	int fd_;
};

} // namespace

int open_read_only(const std::string &path, int pid)
{
	const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd >= 0)
		return fd;

	const int error = errno;
	if (pid > 0 && error == ENOENT)
		throw input_error(fmt::format("no such process: {} ({} not found). Check the PID and that the "
					      "process is still running.",
					      pid, path));

	// The kernel returns ESRCH for pagemap of a process without an address
	// space: a kernel thread, or a process that has exited but is not
	// reaped yet.
	if (pid > 0 && error == ESRCH)
		throw input_error(fmt::format("process {} has no user address space: it is a kernel thread or it "
					      "exited while it was read ({}: {})",
					      pid, path, std::strerror(error)));

	if (pid > 0 && (error == EACCES || error == EPERM))
		throw input_error(fmt::format("{}: cannot open: {} (reading it needs ptrace access: run as the "
					      "process's user or as root, in the process's own PID namespace)",
					      path, std::strerror(error)));
	throw input_error(fmt::format("{}: cannot open: {}", path, std::strerror(error)));
}

namespace {

// Reads fd to its end. A /proc file reports size 0, so the length is known
// only once read returns 0.
std::string read_to_end(int fd, const std::string &path, size_t max_bytes)
{
	std::string text;
	char buffer[64 * 1024];
	for (;;) {
		const ssize_t n = ::read(fd, buffer, sizeof(buffer));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			throw input_error(fmt::format("{}:offset {}: read failed: {}", path, text.size(), std::strerror(errno)));
		if (n == 0)
			return text;

		if (text.size() + static_cast<size_t>(n) > max_bytes)
			throw input_error(fmt::format("{}: file is longer than the limit of {} bytes", path, max_bytes));
		text.append(buffer, static_cast<size_t>(n));
	}
}

} // namespace

std::string read_proc_text(int pid, std::string_view file, size_t max_bytes)
{
	const std::string path = proc_path(pid, file);
	const fd_guard fd(open_read_only(path, pid));

	return read_to_end(fd.get(), path, max_bytes);
}

std::string read_text_file(const std::string &path, size_t max_bytes, std::string_view access_hint)
{
	const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		const int error = errno;
		const bool denied = error == EACCES || error == EPERM;
		throw input_error(fmt::format("{}: cannot open: {}{}{}", path, std::strerror(error),
					      denied && !access_hint.empty() ? " " : "", denied ? access_hint : ""));
	}
	const fd_guard guard(fd);

	return read_to_end(fd, path, max_bytes);
}

void line_context::fail(std::string_view problem) const
{
	throw input_error(fmt::format("{}:{}: {}", source, number, problem));
}

bool parse_number(std::string_view text, int base, uint64_t &value)
{
	if (text.empty())
		return false;

	const char *last = text.data() + text.size();
	const auto [ptr, error] = std::from_chars(text.data(), last, value, base);
	return error == std::errc() && ptr == last;
}

void check_line_limits(const line_context &where, std::string_view line, size_t max_lines, size_t max_line_bytes,
		       std::string_view file_kind)
{
	if (where.number > max_lines)
		where.fail(fmt::format("more than {} lines, which no real {} has, so check the input", max_lines,
				       file_kind));

	if (line.size() > max_line_bytes)
		where.fail(fmt::format("line of {} bytes exceeds the limit of {} bytes", line.size(), max_line_bytes));
}

std::string_view take_field(std::string_view &rest)
{
	const size_t begin = rest.find_first_not_of(' ');
	if (begin == std::string_view::npos) {
		rest = {};
		return {};
	}
	rest.remove_prefix(begin);

	const size_t length = std::min(rest.find(' '), rest.size());
	const std::string_view field = rest.substr(0, length);
	rest.remove_prefix(length);
	return field;
}

} // namespace detail

uint64_t vma_record::pages() const
{
	return (end - start) / page_bytes;
}

namespace {

using detail::line_context;
using detail::parse_number;

using detail::quote;

bool is_hex_digit(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool is_hex_field(std::string_view text)
{
	if (text.empty())
		return false;
	for (char c : text) {
		if (!is_hex_digit(c))
			return false;
	}
	return true;
}

// Reports errors for one line as "<source>:<line>: <problem>".
void parse_range(const line_context &where, std::string_view field, vma_record &vma)
{
	const size_t dash = field.find('-');
	const bool parsed = dash != std::string_view::npos && is_hex_field(field.substr(0, dash)) &&
			    is_hex_field(field.substr(dash + 1)) && parse_number(field.substr(0, dash), 16, vma.start) &&
			    parse_number(field.substr(dash + 1), 16, vma.end);
	if (!parsed)
		where.fail(fmt::format("malformed address range {} (expected HEX-HEX)", quote(field)));

	if (vma.start >= vma.end)
		where.fail(fmt::format("empty or inverted address range {} (start must be below end)", quote(field)));

	if (vma.start % page_bytes != 0 || vma.end % page_bytes != 0)
		where.fail(fmt::format("address range {} is not aligned to {} bytes", quote(field), page_bytes));
}

void parse_perms(const line_context &where, std::string_view field, vma_record &vma)
{
	const bool valid = field.size() == 4 && (field[0] == 'r' || field[0] == '-') &&
			   (field[1] == 'w' || field[1] == '-') && (field[2] == 'x' || field[2] == '-') &&
			   (field[3] == 'p' || field[3] == 's');
	if (!valid)
		where.fail(fmt::format("invalid permissions {} (expected 4 characters of [r-][w-][x-][ps])", quote(field)));

	vma.read = field[0] == 'r';
	vma.write = field[1] == 'w';
	vma.exec = field[2] == 'x';
	vma.shared = field[3] == 's';
}

void parse_offset(const line_context &where, std::string_view field, vma_record &vma)
{
	if (!is_hex_field(field) || !parse_number(field, 16, vma.offset))
		where.fail(fmt::format("malformed offset {} (expected a hexadecimal number)", quote(field)));
}

void parse_device(const line_context &where, std::string_view field, vma_record &vma)
{
	const size_t colon = field.find(':');
	const bool valid = colon != std::string_view::npos && is_hex_field(field.substr(0, colon)) &&
			   is_hex_field(field.substr(colon + 1));
	if (!valid)
		where.fail(fmt::format("malformed device {} (expected MAJOR:MINOR in hexadecimal)", quote(field)));

	vma.dev = field;
}

void parse_inode(const line_context &where, std::string_view field, vma_record &vma)
{
	const bool valid = !field.empty() && field.find_first_not_of("0123456789") == std::string_view::npos &&
			   parse_number(field, 10, vma.inode);
	if (!valid)
		where.fail(fmt::format("malformed inode {} (expected a decimal number)", quote(field)));
}

// The kernel pads the path to a column with spaces, so leading spaces are
// dropped. A file name that itself starts with a space loses them too, which
// the format cannot express.
std::string_view take_path(std::string_view rest)
{
	const size_t begin = rest.find_first_not_of(' ');
	if (begin == std::string_view::npos)
		return {};
	return rest.substr(begin);
}

vma_record parse_line(const line_context &where, std::string_view line)
{
	if (line.empty())
		where.fail("empty line (expected 'START-END PERMS OFFSET DEV INODE [PATH]')");

	std::string_view rest = line;
	const std::string_view range = detail::take_field(rest);
	const std::string_view perms = detail::take_field(rest);
	const std::string_view offset = detail::take_field(rest);
	const std::string_view device = detail::take_field(rest);
	const std::string_view inode = detail::take_field(rest);
	if (inode.empty())
		where.fail(fmt::format("truncated line {} (expected 'START-END PERMS OFFSET DEV INODE [PATH]')",
				       quote(line)));

	vma_record vma;
	parse_range(where, range, vma);
	parse_perms(where, perms, vma);
	parse_offset(where, offset, vma);
	parse_device(where, device, vma);
	parse_inode(where, inode, vma);
	vma.path = take_path(rest);
	return vma;
}

void check_order(const line_context &where, const vma_record &previous, const vma_record &current)
{
	const std::string range = fmt::format("'{:x}-{:x}'", current.start, current.end);
	const std::string previous_range = fmt::format("'{:x}-{:x}'", previous.start, previous.end);

	if (current.start < previous.start)
		where.fail(fmt::format("address range {} is below the previous range {} (expected ascending order)",
				       range, previous_range));
	if (current.start < previous.end)
		where.fail(fmt::format("address range {} overlaps the previous range {}", range, previous_range));
}

} // namespace

std::vector<vma_record> parse_maps(std::string_view text, std::string_view source)
{
	std::vector<vma_record> vmas;
	line_context where{source, 0};

	while (!text.empty()) {
		const size_t newline = std::min(text.find('\n'), text.size());
		const std::string_view line = text.substr(0, newline);
		text.remove_prefix(std::min(newline + 1, text.size()));
		where.number++;

		detail::check_line_limits(where, line, maps_max_lines, maps_max_line_bytes, "maps file");
		vma_record vma = parse_line(where, line);
		if (!vmas.empty())
			check_order(where, vmas.back(), vma);
		vmas.push_back(std::move(vma));
	}

	return vmas;
}

std::vector<vma_record> read_maps(int pid)
{
	// The limit only stops a runaway read. A maps file has at most
	// vm.max_map_count lines (65530 by default), most of them under 200 bytes.
	constexpr size_t max_bytes = 1024ull * 1024 * 1024;

	const std::string text = detail::read_proc_text(pid, "maps", max_bytes);
	return parse_maps(text, detail::proc_path(pid, "maps"));
}

} // namespace ptl::tools
