// Parser for /proc/vmallocinfo.

#include "ptl/tools/vmallocinfo.hpp"

#include "ptl/tools/proc.hpp"

#include <algorithm>
#include <bitset>
#include <charconv>
#include <fmt/format.h>
#include <numeric>

namespace ptl::tools {

namespace {

using detail::line_context;
using detail::parse_number;

using detail::quote;

// Reports errors for one line as "<source>:<line>: <problem>".
bool is_decimal(std::string_view text)
{
	return !text.empty() && text.find_first_not_of("0123456789") == std::string_view::npos;
}

bool is_hexadecimal(std::string_view text)
{
	return !text.empty() && text.find_first_not_of("0123456789abcdefABCDEF") == std::string_view::npos;
}

// Parses "0x<hex>", the form of %pK, %pa and a bare %pS.
bool parse_prefixed_hex(std::string_view text, uint64_t &value)
{
	if (!text.starts_with("0x"))
		return false;

	text.remove_prefix(2);
	return is_hexadecimal(text) && parse_number(text, 16, value);
}

void parse_range(const line_context &where, std::string_view field, vmalloc_area &area)
{
	const size_t dash = field.find('-');
	const bool parsed = dash != std::string_view::npos && parse_prefixed_hex(field.substr(0, dash), area.start) &&
			    parse_prefixed_hex(field.substr(dash + 1), area.end);
	if (!parsed)
		where.fail(fmt::format("malformed address range {} (expected 0xHEX-0xHEX)", quote(field)));
}

void parse_size(const line_context &where, std::string_view field, vmalloc_area &area)
{
	if (!is_decimal(field) || !parse_number(field, 10, area.size))
		where.fail(fmt::format("malformed size {} (expected a decimal number of bytes)", quote(field)));

	if (area.size == 0 || area.size % page_bytes != 0)
		where.fail(fmt::format("size {} is not a positive multiple of {} bytes", area.size, page_bytes));
	if (area.size > vmallocinfo_max_area_bytes)
		where.fail(fmt::format("size {} exceeds the limit of {} bytes, larger than any vmalloc space",
				       area.size, vmallocinfo_max_area_bytes));
}

bool is_symbol_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
	       c == '$';
}

// Accepts what %pS prints: "symbol+0xOFF/0xLEN", or "0x<address>" when the
// address has no symbol.
bool is_caller(std::string_view field)
{
	uint64_t value = 0;
	if (parse_prefixed_hex(field, value))
		return true;

	const size_t plus = field.find('+');
	const size_t slash = field.find('/');
	if (plus == 0 || plus == std::string_view::npos || slash == std::string_view::npos || slash < plus)
		return false;

	const std::string_view symbol = field.substr(0, plus);
	return std::all_of(symbol.begin(), symbol.end(), is_symbol_char) &&
	       parse_prefixed_hex(field.substr(plus + 1, slash - plus - 1), value) &&
	       parse_prefixed_hex(field.substr(slash + 1), value);
}

bool is_module(std::string_view field)
{
	if (field.size() < 3 || field.front() != '[' || field.back() != ']')
		return false;

	const std::string_view name = field.substr(1, field.size() - 2);
	return std::all_of(name.begin(), name.end(), is_symbol_char);
}

bool is_flag_word(std::string_view field)
{
	const auto valid = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'; };
	return !field.empty() && field.front() >= 'a' && field.front() <= 'z' &&
	       std::all_of(field.begin(), field.end(), valid);
}

void store_number(const line_context &where, std::string_view key, std::string_view text, int base,
		  std::optional<uint64_t> &field)
{
	if (field)
		where.fail(fmt::format("duplicate {} field", key));

	uint64_t value = 0;
	const bool valid = base == 16 ? parse_prefixed_hex(text, value) : is_decimal(text) && parse_number(text, 10, value);
	if (!valid)
		where.fail(fmt::format("malformed {} value {} (expected {})", key, quote(text),
				       base == 16 ? "0x followed by hexadecimal digits" : "a decimal number"));
	field = value;
}

// Parses "N<node>=<pages>".
void store_node(const line_context &where, std::string_view field, vmalloc_area &area,
		std::bitset<vmallocinfo_max_nodes> &seen)
{
	const size_t equals = field.find('=');
	uint64_t node = 0;
	uint64_t pages = 0;
	const bool valid = equals != std::string_view::npos && is_decimal(field.substr(1, equals - 1)) &&
			   parse_number(field.substr(1, equals - 1), 10, node) && is_decimal(field.substr(equals + 1)) &&
			   parse_number(field.substr(equals + 1), 10, pages);
	if (!valid)
		where.fail(fmt::format("malformed node field {} (expected N<node>=<pages>)", quote(field)));

	if (node >= vmallocinfo_max_nodes)
		where.fail(fmt::format("node {} in {} is not below the limit of {} nodes", node, quote(field),
				       vmallocinfo_max_nodes));
	if (seen.test(node))
		where.fail(fmt::format("duplicate node field for node {}", node));

	seen.set(node);
	area.nodes.push_back({static_cast<uint32_t>(node), pages});
}

void store_flag(const line_context &where, std::string_view field, bool &flag)
{
	if (flag)
		where.fail(fmt::format("duplicate {} flag", quote(field)));
	flag = true;
}

// Sets the flag the word names. Returns false for a word this reader does
// not know.
bool store_known_flag(const line_context &where, std::string_view field, vmalloc_area &area)
{
	const std::pair<std::string_view, bool *> flags[] = {
		{"ioremap", &area.ioremap}, {"vmalloc", &area.vmalloc},		  {"vmap", &area.vmap},
		{"user", &area.user},	    {"dma-coherent", &area.dma_coherent}, {"vpages", &area.vpages},
		{"sparse", &area.sparse},   {"vm_map_ram", &area.vm_map_ram},
	};

	for (const auto &[name, flag] : flags) {
		if (field == name) {
			store_flag(where, field, *flag);
			return true;
		}
	}
	return false;
}

void store_other_flag(const line_context &where, std::string_view field, vmalloc_area &area)
{
	if (!is_flag_word(field))
		where.fail(fmt::format("unexpected field {} (expected a caller, pages=, phys=, N<node>=<pages> or a "
				       "lowercase flag word)",
				       quote(field)));
	if (area.other_flags.size() >= vmallocinfo_max_other_flags)
		where.fail(fmt::format("more than {} unknown flag words", vmallocinfo_max_other_flags));

	area.other_flags.emplace_back(field);
}

// Takes the caller, and its module when one follows, if the line has one.
void take_caller(std::string_view &rest, vmalloc_area &area)
{
	std::string_view after = rest;
	const std::string_view field = detail::take_field(after);
	if (!is_caller(field))
		return;
	area.caller = field;
	rest = after;

	std::string_view after_module = rest;
	const std::string_view module = detail::take_field(after_module);
	if (is_module(module)) {
		area.caller += ' ';
		area.caller += module;
		rest = after_module;
	}
}

// Takes "unpurged vm_area", which the kernel prints in place of a caller and
// flags for an area freed but not yet flushed.
void take_unpurged(std::string_view &rest, vmalloc_area &area)
{
	std::string_view after = rest;
	const std::string_view first = detail::take_field(after);
	const std::string_view second = detail::take_field(after);
	if (first == "unpurged" && second == "vm_area") {
		area.unpurged = true;
		rest = after;
	}
}

void parse_fields(const line_context &where, std::string_view rest, vmalloc_area &area)
{
	std::bitset<vmallocinfo_max_nodes> seen_nodes;

	take_unpurged(rest, area);
	take_caller(rest, area);

	for (std::string_view field = detail::take_field(rest); !field.empty(); field = detail::take_field(rest)) {
		if (field.starts_with("pages="))
			store_number(where, "pages", field.substr(6), 10, area.pages);
		else if (field.starts_with("phys="))
			store_number(where, "phys", field.substr(5), 16, area.phys);
		else if (field.size() > 1 && field[0] == 'N' && field[1] >= '0' && field[1] <= '9')
			store_node(where, field, area, seen_nodes);
		else if (!store_known_flag(where, field, area))
			store_other_flag(where, field, area);
	}
}

void check_pages(const line_context &where, const vmalloc_area &area)
{
	if (area.pages && *area.pages > area.size / page_bytes)
		where.fail(fmt::format("pages={} does not fit in size {} ({} pages at most)", *area.pages, area.size,
				       area.size / page_bytes));

	if (area.nodes.empty())
		return;
	if (!area.pages)
		where.fail("node fields without a pages= field");

	uint64_t total = 0;
	for (const node_pages &node : area.nodes) {
		if (node.pages > *area.pages - total)
			where.fail(fmt::format("node counts add up to more than pages={}", *area.pages));
		total += node.pages;
	}
	if (total != *area.pages)
		where.fail(fmt::format("node counts add up to {}, not pages={}", total, *area.pages));
}

vmalloc_area parse_line(const line_context &where, std::string_view line)
{
	if (line.empty())
		where.fail("empty line (expected '0xSTART-0xEND SIZE [CALLER] [FIELDS]')");

	std::string_view rest = line;
	const std::string_view range = detail::take_field(rest);
	const std::string_view size = detail::take_field(rest);
	if (size.empty())
		where.fail(fmt::format("truncated line {} (expected '0xSTART-0xEND SIZE [CALLER] [FIELDS]')",
				       quote(line)));

	vmalloc_area area;
	parse_range(where, range, area);
	parse_size(where, size, area);
	parse_fields(where, rest, area);
	check_pages(where, area);
	return area;
}

bool range_matches_size(const vmalloc_area &area)
{
	return area.start < area.end && area.end - area.start == area.size;
}

void check_visible_range(const line_context &where, const vmalloc_area &area)
{
	const std::string range = fmt::format("'{:#x}-{:#x}'", area.start, area.end);

	if (area.start >= area.end)
		where.fail(fmt::format("empty or inverted address range {} (start must be below end)", range));
	if (area.start % page_bytes != 0)
		where.fail(fmt::format("address range {} is not aligned to {} bytes", range, page_bytes));
	if (area.end - area.start != area.size)
		where.fail(fmt::format("address range {} spans {} bytes but the size field is {} (the first line had "
				       "real addresses, so every line must)",
				       range, area.end - area.start, area.size));
}

// The kernel lists areas in address order per vmap node, but with several
// nodes the list as a whole need not be sorted, so overlaps are found on a
// sorted copy.
void check_overlaps(std::string_view source, const std::vector<vmalloc_area> &areas)
{
	std::vector<size_t> order(areas.size());
	std::iota(order.begin(), order.end(), size_t{0});
	std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return areas[a].start < areas[b].start; });

	for (size_t i = 1; i < order.size(); i++) {
		const vmalloc_area &previous = areas[order[i - 1]];
		const vmalloc_area &current = areas[order[i]];
		if (current.start < previous.end)
			throw input_error(fmt::format("{}:{}: address range '{:#x}-{:#x}' overlaps '{:#x}-{:#x}' on line {}",
						      source, order[i] + 1, current.start, current.end, previous.start,
						      previous.end, order[i - 1] + 1));
	}
}

} // namespace

vmallocinfo parse_vmallocinfo(std::string_view text, std::string_view source)
{
	vmallocinfo info;
	line_context where{source, 0};

	while (!text.empty()) {
		const size_t newline = std::min(text.find('\n'), text.size());
		const std::string_view line = text.substr(0, newline);
		text.remove_prefix(std::min(newline + 1, text.size()));
		where.number++;

		detail::check_line_limits(where, line, vmallocinfo_max_lines, vmallocinfo_max_line_bytes, "vmallocinfo");
		vmalloc_area area = parse_line(where, line);

		if (where.number == 1)
			info.addresses_visible = range_matches_size(area);
		if (info.addresses_visible)
			check_visible_range(where, area);
		info.areas.push_back(std::move(area));
	}

	if (info.addresses_visible)
		check_overlaps(source, info.areas);
	return info;
}

vmallocinfo read_vmallocinfo(const std::string &path)
{
	// The limit only stops a runaway read: 4 million lines of about 100 bytes.
	constexpr size_t max_bytes = 512ull * 1024 * 1024;

	const std::string text =
		detail::read_text_file(path, max_bytes, "(the kernel lets only root read /proc/vmallocinfo)");
	return parse_vmallocinfo(text, path);
}

} // namespace ptl::tools
