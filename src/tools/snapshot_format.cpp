// Encoder and decoder for the snapshot file format (docs/SNAPSHOT.md).
//
// The file is a fixed header (magic, version, body length), a body of
// unsigned LEB128 varints and length-prefixed strings, and a CRC-32 of
// everything before it. Present pages are stored as runs of consecutive
// pages on consecutive frames, each run relative to the end of the previous
// one, so that a large, mostly contiguous address space takes a few bytes
// per run.

#include "ptl/tools/snapshot.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <climits>
#include <concepts>
#include <cstring>
#include <fmt/format.h>
#include <limits>
#include <stdexcept>

namespace ptl::tools {

namespace detail {

namespace {

constexpr std::array<uint32_t, 256> make_crc32_table()
{
	std::array<uint32_t, 256> table{};
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t crc = i;
		for (int bit = 0; bit < 8; bit++)
			crc = (crc & 1) ? (crc >> 1) ^ 0xedb88320u : crc >> 1;
		table[i] = crc;
	}
	return table;
}

constexpr std::array<uint32_t, 256> crc32_table = make_crc32_table();

} // namespace

uint32_t crc32(std::span<const uint8_t> bytes)
{
	uint32_t crc = 0xffffffffu;
	for (const uint8_t byte : bytes)
		crc = crc32_table[(crc ^ byte) & 0xff] ^ (crc >> 8);
	return crc ^ 0xffffffffu;
}

} // namespace detail

namespace {

constexpr size_t magic_bytes = sizeof(snapshot_magic);
constexpr size_t header_bytes = magic_bytes + 4 + 8; // magic, version, body length
constexpr size_t checksum_bytes = 4;

// Flags of the body's flags field.
constexpr uint64_t flag_pfns = 1; // runs carry frame numbers

// Bits of a VMA's perms field.
constexpr uint64_t perm_read = 1;
constexpr uint64_t perm_write = 2;
constexpr uint64_t perm_exec = 4;
constexpr uint64_t perm_shared = 8;

// Page numbers are addresses / page_bytes. The last page that ends below
// 2^64 is page 2^52 - 1, so a range's end page is at most that.
constexpr uint64_t max_end_page = (uint64_t{1} << 52) - 1;

// pagemap stores frame numbers in bits 0-54.
constexpr uint64_t max_pfn = (uint64_t{1} << 55) - 1;

// Linux's dev_t encodes a 12-bit major and a 20-bit minor number.
constexpr uint64_t max_dev_major = 0xfff;
constexpr uint64_t max_dev_minor = 0xfffff;

// Status values are KiB, which replay turns into bytes.
constexpr uint64_t max_kib = uint64_t{1} << 54;

// The smallest encodings, which bound how many records the bytes left can
// hold: a VMA has eight fields of at least one byte, a run two or three.
constexpr size_t min_vma_bytes = 8;
constexpr size_t min_run_bytes = 2;
constexpr size_t min_run_bytes_with_pfn = 3;

// The largest PID Linux hands out (PID_MAX_LIMIT on 64-bit).
constexpr uint64_t max_pid = 4 * 1024 * 1024;

// A run of consecutive pages in one VMA whose frames are consecutive too.
struct page_run {
	uint64_t first_page = 0;
	uint64_t pages = 0;
	uint64_t first_pfn = 0; // 0 when the snapshot has no frame numbers
};

// ---- encoding ----

class byte_writer {
public:
	void put_fixed(uint64_t value, size_t bytes)
	{
		for (size_t i = 0; i < bytes; i++)
			out_.push_back(static_cast<uint8_t>(value >> (8 * i)));
	}

	void put_varint(uint64_t value)
	{
		while (value >= 0x80) {
			out_.push_back(static_cast<uint8_t>(value | 0x80));
			value >>= 7;
		}
		out_.push_back(static_cast<uint8_t>(value));
	}

	void put_string(std::string_view text)
	{
		put_varint(text.size());
		out_.insert(out_.end(), text.begin(), text.end());
	}

	void put_bytes(std::span<const uint8_t> bytes) { out_.insert(out_.end(), bytes.begin(), bytes.end()); }

	std::vector<uint8_t> &bytes() { return out_; }

private:
	std::vector<uint8_t> out_;
};

// An optional value is stored as value + 1, and absence as 0.
uint64_t optional_field(const std::optional<uint64_t> &value, std::string_view name)
{
	if (!value)
		return 0;
	if (*value > max_kib)
		throw std::invalid_argument(fmt::format("{} of {} KiB exceeds the snapshot limit of {} KiB", name,
							*value, max_kib));
	return *value + 1;
}

uint64_t zigzag(uint64_t from, uint64_t to)
{
	return to >= from ? (to - from) * 2 : (from - to) * 2 - 1;
}

void parse_device(const vma_record &vma, uint64_t &major, uint64_t &minor)
{
	const size_t colon = vma.dev.find(':');
	const auto parse = [](std::string_view text, uint64_t &value) {
		const char *last = text.data() + text.size();
		const auto [ptr, error] = std::from_chars(text.data(), last, value, 16);
		return !text.empty() && error == std::errc() && ptr == last;
	};

	const bool valid = colon != std::string::npos && parse(std::string_view(vma.dev).substr(0, colon), major) &&
			   parse(std::string_view(vma.dev).substr(colon + 1), minor) && major <= max_dev_major &&
			   minor <= max_dev_minor;
	if (!valid)
		throw std::invalid_argument(fmt::format("VMA {:#x}-{:#x} has device '{}', which is not MAJOR:MINOR "
							"in hexadecimal within Linux's 12:20 bits",
							vma.start, vma.end, vma.dev));
}

void check_vma(const vma_record &vma, uint64_t previous_end)
{
	const bool valid = vma.start < vma.end && vma.start % page_bytes == 0 && vma.end % page_bytes == 0 &&
			   vma.end / page_bytes <= max_end_page && vma.start >= previous_end;
	if (!valid)
		throw std::invalid_argument(fmt::format("VMA {:#x}-{:#x} is empty, unaligned, out of order or "
							"overlaps the previous one",
							vma.start, vma.end));
	if (vma.path.size() > maps_max_line_bytes || vma.path.find_first_of(std::string_view("\0\n", 2)) != std::string::npos)
		throw std::invalid_argument(fmt::format("VMA {:#x}-{:#x} has a path longer than {} bytes or with a "
							"NUL or newline",
							vma.start, vma.end, maps_max_line_bytes));
}

void encode_vmas(byte_writer &out, const std::vector<vma_record> &vmas)
{
	out.put_varint(vmas.size());

	uint64_t previous_end = 0;
	for (const vma_record &vma : vmas) {
		check_vma(vma, previous_end);
		uint64_t major = 0;
		uint64_t minor = 0;
		parse_device(vma, major, minor);

		const uint64_t perms = (vma.read ? perm_read : 0) | (vma.write ? perm_write : 0) |
				       (vma.exec ? perm_exec : 0) | (vma.shared ? perm_shared : 0);
		out.put_varint((vma.start - previous_end) / page_bytes);
		out.put_varint((vma.end - vma.start) / page_bytes);
		out.put_varint(perms);
		out.put_varint(vma.offset);
		out.put_varint(major);
		out.put_varint(minor);
		out.put_varint(vma.inode);
		out.put_string(vma.path);
		previous_end = vma.end;
	}
}

// Groups the image's pages into runs. A run never crosses a VMA boundary,
// so that the decoder can check each run against one VMA.
std::vector<page_run> build_runs(const process_image &image)
{
	std::vector<page_run> runs;
	size_t vma = 0;
	size_t run_vma = 0;
	uint64_t previous_addr = 0;

	for (const present_page &page : image.pages) {
		if (!runs.empty() && page.addr <= previous_addr)
			throw std::invalid_argument(fmt::format("page {:#x} is not above the previous page {:#x}",
								page.addr, previous_addr));
		while (vma < image.vmas.size() && image.vmas[vma].end <= page.addr)
			vma++;
		if (vma == image.vmas.size() || page.addr < image.vmas[vma].start || page.addr % page_bytes != 0)
			throw std::invalid_argument(fmt::format("page {:#x} is unaligned or outside every VMA", page.addr));

		const uint64_t pfn = image.pfns_visible ? page.pfn : 0;
		if (pfn > max_pfn)
			throw std::invalid_argument(fmt::format("page {:#x} has frame {:#x}, above the 55-bit limit",
								page.addr, pfn));

		const uint64_t page_number = page.addr / page_bytes;
		page_run *last = runs.empty() ? nullptr : &runs.back();
		const bool extends = last && run_vma == vma && last->first_page + last->pages == page_number &&
				     (!image.pfns_visible || last->first_pfn + last->pages == pfn);
		if (extends)
			last->pages++;
		else
			runs.push_back({page_number, 1, pfn});
		run_vma = vma;
		previous_addr = page.addr;
	}
	return runs;
}

void encode_runs(byte_writer &out, const process_image &image)
{
	const std::vector<page_run> runs = build_runs(image);
	out.put_varint(runs.size());

	uint64_t previous_end_page = 0;
	uint64_t previous_end_pfn = 0;
	for (const page_run &run : runs) {
		out.put_varint(run.first_page - previous_end_page);
		out.put_varint(run.pages);
		if (image.pfns_visible)
			out.put_varint(zigzag(previous_end_pfn, run.first_pfn));
		previous_end_page = run.first_page + run.pages;
		previous_end_pfn = run.first_pfn + run.pages;
	}
}

void check_name(std::string_view name, std::string_view field_name)
{
	const bool control = std::any_of(name.begin(), name.end(), [](char c) {
		return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
	});
	if (name.size() > snapshot_max_name_bytes || control)
		throw std::invalid_argument(fmt::format("{} {} is longer than {} bytes or contains control characters",
							field_name, detail::quote(name), snapshot_max_name_bytes));
}

void encode_metadata(byte_writer &out, const snapshot &snap)
{
	if (snap.page_size != page_bytes)
		throw std::invalid_argument(fmt::format("page size {} is not supported (expected {})", snap.page_size,
							page_bytes));
	if (snap.pid <= 0 || static_cast<uint64_t>(snap.pid) > max_pid || snap.time < 0)
		throw std::invalid_argument(fmt::format("PID {} or time {} is out of range", snap.pid, snap.time));
	check_name(snap.image.status.name, "command name");
	check_name(snap.kernel_release, "kernel release");
	check_name(snap.machine, "machine");

	out.put_varint(snap.page_size);
	out.put_varint(snap.image.pfns_visible ? flag_pfns : 0);
	out.put_varint(static_cast<uint64_t>(snap.pid));
	out.put_varint(static_cast<uint64_t>(snap.time));
	out.put_string(snap.image.status.name);
	out.put_string(snap.kernel_release);
	out.put_string(snap.machine);
	out.put_varint(optional_field(snap.image.status.vm_pte_kib, "VmPTE"));
	out.put_varint(optional_field(snap.image.status.vm_rss_kib, "VmRSS"));
	out.put_varint(optional_field(snap.image.status.vm_size_kib, "VmSize"));
	out.put_varint(snap.image.swapped);
	out.put_varint(snap.image.vmas_skipped);
}

// ---- decoding ----

// Reads the body, reporting errors as "<source>:offset N: <problem>" with N
// the file offset of the field being read.
class byte_reader {
public:
	byte_reader(std::span<const uint8_t> bytes, size_t base, std::string_view source)
		: bytes_(bytes), base_(base), source_(source)
	{
	}

	[[noreturn]] void fail(std::string_view problem) const { fail_at(field_, problem); }

	[[noreturn]] void fail_at(size_t offset, std::string_view problem) const
	{
		throw input_error(fmt::format("{}:offset {}: {}", source_, base_ + offset, problem));
	}

	// Reads an unsigned LEB128 value of at most 10 bytes that fits in 64
	// bits. describe() names the field; it is called only on failure, so
	// that the record loops do not format a name per field.
	template <std::invocable Describe>
	uint64_t varint(Describe &&describe)
	{
		field_ = at_;
		uint64_t value = 0;
		for (unsigned shift = 0; shift < 64; shift += 7) {
			if (at_ == bytes_.size())
				fail(fmt::format("truncated {}: the body ends inside it", describe()));

			const uint8_t byte = bytes_[at_++];
			if (shift == 63 && byte > 1)
				break;
			value |= uint64_t{byte & 0x7fu} << shift;
			if ((byte & 0x80) == 0)
				return value;
		}
		fail(fmt::format("{} does not fit in 64 bits", describe()));
	}

	uint64_t varint(std::string_view field_name)
	{
		return varint([field_name] { return field_name; });
	}

	template <std::invocable Describe>
	uint64_t varint_at_most(Describe &&describe, uint64_t max)
	{
		const uint64_t value = varint(describe);
		if (value > max)
			fail(fmt::format("{} {} exceeds the limit of {}", describe(), value, max));
		return value;
	}

	uint64_t varint_at_most(std::string_view field_name, uint64_t max)
	{
		return varint_at_most([field_name] { return field_name; }, max);
	}

	std::string string(std::string_view field_name, size_t max_bytes)
	{
		const uint64_t length = varint_at_most(fmt::format("length of the {}", field_name), max_bytes);
		if (length > left())
			fail(fmt::format("truncated {}: {} bytes promised, {} left", field_name, length, left()));

		std::string text(reinterpret_cast<const char *>(bytes_.data() + at_), length);
		at_ += length;
		return text;
	}

	size_t left() const { return bytes_.size() - at_; }
	size_t position() const { return at_; }

private:
	std::span<const uint8_t> bytes_;
	size_t base_;       // file offset of bytes_[0]
	std::string_view source_;
	size_t at_ = 0;
	size_t field_ = 0;  // where the field being read starts
};

void check_decoded_name(byte_reader &in, const std::string &name, std::string_view field_name)
{
	for (const char c : name) {
		if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
			in.fail(fmt::format("{} {} contains a control character", field_name, detail::quote(name)));
	}
}

std::optional<uint64_t> decode_optional(byte_reader &in, std::string_view field_name)
{
	const uint64_t stored = in.varint_at_most(field_name, max_kib + 1);
	if (stored == 0)
		return std::nullopt;
	return stored - 1;
}

void decode_metadata(byte_reader &in, snapshot &snap)
{
	snap.page_size = in.varint("page size");
	if (snap.page_size != page_bytes)
		in.fail(fmt::format("page size {} is not supported (this ptl replays {}-byte pages)", snap.page_size,
				    page_bytes));

	const uint64_t flags = in.varint("flags");
	if ((flags & ~flag_pfns) != 0)
		in.fail(fmt::format("unknown flags {:#x} (this ptl knows only {:#x})", flags, flag_pfns));
	snap.image.pfns_visible = (flags & flag_pfns) != 0;

	snap.pid = static_cast<int>(in.varint_at_most("PID", max_pid));
	if (snap.pid == 0)
		in.fail("PID 0 is invalid (expected a positive PID)");
	snap.time = static_cast<int64_t>(in.varint_at_most("time", static_cast<uint64_t>(INT64_MAX)));

	snap.image.status.name = in.string("command name", snapshot_max_name_bytes);
	check_decoded_name(in, snap.image.status.name, "command name");
	snap.kernel_release = in.string("kernel release", snapshot_max_name_bytes);
	check_decoded_name(in, snap.kernel_release, "kernel release");
	snap.machine = in.string("machine", snapshot_max_name_bytes);
	check_decoded_name(in, snap.machine, "machine");

	snap.image.status.vm_pte_kib = decode_optional(in, "VmPTE");
	snap.image.status.vm_rss_kib = decode_optional(in, "VmRSS");
	snap.image.status.vm_size_kib = decode_optional(in, "VmSize");
	snap.image.swapped = in.varint("swapped page count");
	snap.image.vmas_skipped = in.varint_at_most("skipped VMA count", maps_max_lines);
}

uint64_t decode_count(byte_reader &in, std::string_view field_name, uint64_t limit, size_t min_record_bytes)
{
	const uint64_t count = in.varint_at_most(field_name, limit);
	if (count > in.left() / min_record_bytes)
		in.fail(fmt::format("{} {} cannot fit in the {} bytes left (each takes at least {})", field_name, count,
				    in.left(), min_record_bytes));
	return count;
}

// Returns previous_end + gap, failing when it passes the last page.
template <class Describe>
uint64_t advance_page(byte_reader &in, uint64_t previous_end, uint64_t gap, Describe &&describe)
{
	if (gap > max_end_page - previous_end)
		in.fail(fmt::format("{} starts beyond the end of a 64-bit address space", describe()));
	return previous_end + gap;
}

vma_record decode_vma(byte_reader &in, uint64_t index, uint64_t &previous_end_page)
{
	const std::string record = fmt::format("VMA {}", index);
	const uint64_t start_page =
		advance_page(in, previous_end_page, in.varint(record + " gap"), [&] { return record; });
	const uint64_t pages = in.varint(record + " page count");
	if (pages == 0)
		in.fail(record + " is empty (page count 0)");
	if (pages > max_end_page - start_page)
		in.fail(record + " ends beyond the end of a 64-bit address space");

	vma_record vma;
	vma.start = start_page * page_bytes;
	vma.end = (start_page + pages) * page_bytes;

	const uint64_t perms = in.varint_at_most(record + " permissions", perm_read | perm_write | perm_exec | perm_shared);
	vma.read = (perms & perm_read) != 0;
	vma.write = (perms & perm_write) != 0;
	vma.exec = (perms & perm_exec) != 0;
	vma.shared = (perms & perm_shared) != 0;

	vma.offset = in.varint(record + " offset");
	const uint64_t major = in.varint_at_most(record + " device major", max_dev_major);
	const uint64_t minor = in.varint_at_most(record + " device minor", max_dev_minor);
	vma.dev = fmt::format("{:02x}:{:02x}", major, minor);
	vma.inode = in.varint(record + " inode");

	vma.path = in.string(record + " path", maps_max_line_bytes);
	if (vma.path.find_first_of(std::string_view("\0\n", 2)) != std::string::npos)
		in.fail(fmt::format("{} path {} contains a NUL or newline, which /proc/PID/maps never shows", record,
				    detail::quote(vma.path)));

	previous_end_page = start_page + pages;
	return vma;
}

void decode_vmas(byte_reader &in, snapshot &snap)
{
	const uint64_t count = decode_count(in, "VMA count", maps_max_lines, min_vma_bytes);
	snap.image.vmas.reserve(count);

	uint64_t previous_end_page = 0;
	for (uint64_t i = 0; i < count; i++)
		snap.image.vmas.push_back(decode_vma(in, i, previous_end_page));
}

// Applies a zigzag-coded frame delta to previous_end_pfn.
template <class Describe>
uint64_t decode_pfn(byte_reader &in, uint64_t previous_end_pfn, uint64_t coded, Describe &&describe)
{
	const uint64_t magnitude = (coded >> 1) + (coded & 1);
	const bool negative = (coded & 1) != 0;

	if (negative && magnitude > previous_end_pfn)
		in.fail(describe() + " starts at a negative frame number");
	if (!negative && magnitude > max_pfn - previous_end_pfn)
		in.fail(describe() + " starts at a frame number above the 55-bit limit");
	return negative ? previous_end_pfn - magnitude : previous_end_pfn + magnitude;
}

// Checks that the run lies inside one VMA. vma advances with the runs,
// which are in address order.
void check_run_in_vma(byte_reader &in, const std::vector<vma_record> &vmas, size_t &vma, const page_run &run,
		      uint64_t index, size_t run_offset)
{
	const uint64_t start = run.first_page * page_bytes;
	const uint64_t end = (run.first_page + run.pages) * page_bytes;

	while (vma < vmas.size() && vmas[vma].end <= start)
		vma++;
	if (vma == vmas.size() || start < vmas[vma].start || end > vmas[vma].end)
		in.fail_at(run_offset, fmt::format("run {} ({:#x}-{:#x}) is not inside one VMA", index, start, end));
}

// A snapshot may contain up to limits.max_pages runs, so the names of a run's fields
// are formatted only when one is reported.
page_run decode_run(byte_reader &in, uint64_t index, bool pfns, uint64_t &previous_end_page,
		    uint64_t &previous_end_pfn)
{
	const auto record = [index] { return fmt::format("run {}", index); };
	page_run run;

	const uint64_t gap = in.varint([&] { return record() + " gap"; });
	run.first_page = advance_page(in, previous_end_page, gap, record);
	run.pages = in.varint([&] { return record() + " page count"; });
	if (run.pages == 0)
		in.fail(record() + " is empty (page count 0)");
	if (run.pages > max_end_page - run.first_page)
		in.fail(record() + " ends beyond the end of a 64-bit address space");

	if (pfns) {
		const uint64_t coded = in.varint([&] { return record() + " frame"; });
		run.first_pfn = decode_pfn(in, previous_end_pfn, coded, record);
		if (run.pages - 1 > max_pfn - run.first_pfn)
			in.fail(record() + " ends at a frame number above the 55-bit limit");
		previous_end_pfn = run.first_pfn + run.pages;
	}
	previous_end_page = run.first_page + run.pages;
	return run;
}

std::vector<page_run> decode_runs(byte_reader &in, const snapshot &snap, const snapshot_limits &limits)
{
	const bool pfns = snap.image.pfns_visible;
	const uint64_t count = decode_count(in, "run count", limits.max_pages,
					    pfns ? min_run_bytes_with_pfn : min_run_bytes);
	std::vector<page_run> runs;
	runs.reserve(count);

	uint64_t previous_end_page = 0;
	uint64_t previous_end_pfn = 0;
	uint64_t total = 0;
	size_t vma = 0;
	for (uint64_t i = 0; i < count; i++) {
		const size_t run_offset = in.position();
		const page_run run = decode_run(in, i, pfns, previous_end_page, previous_end_pfn);
		check_run_in_vma(in, snap.image.vmas, vma, run, i, run_offset);

		if (run.pages > limits.max_pages - total)
			in.fail_at(run_offset, fmt::format("more than {} present pages, the limit for one snapshot", limits.max_pages));
		total += run.pages;
		runs.push_back(run);
	}
	return runs;
}

void expand_runs(const std::vector<page_run> &runs, process_image &image)
{
	uint64_t total = 0;
	for (const page_run &run : runs)
		total += run.pages;
	image.pages.reserve(total);

	for (const page_run &run : runs) {
		for (uint64_t i = 0; i < run.pages; i++) {
			const uint64_t pfn = image.pfns_visible ? run.first_pfn + i : 0;
			image.pages.push_back({(run.first_page + i) * page_bytes, pfn});
		}
	}
}

uint64_t load_fixed(std::span<const uint8_t> bytes, size_t offset, size_t width)
{
	uint64_t value = 0;
	for (size_t i = 0; i < width; i++)
		value |= uint64_t{bytes[offset + i]} << (8 * i);
	return value;
}

void check_magic(std::span<const uint8_t> bytes, std::string_view source)
{
	// An empty span may have a null data(), which memcmp must not see.
	const size_t compared = std::min(bytes.size(), magic_bytes);
	if (compared == 0 || std::memcmp(bytes.data(), snapshot_magic, compared) == 0)
		return;

	const std::string_view start(reinterpret_cast<const char *>(bytes.data()), compared);
	throw input_error(fmt::format("{}:offset 0: not a ptl snapshot: the file starts with {}, not 'PTLSNAP' "
				      "(write one with 'ptl snapshot')",
				      source, detail::quote(start)));
}

// Checks the header and the checksum, and returns the body.
std::span<const uint8_t> check_frame(std::span<const uint8_t> bytes, std::string_view source)
{
	check_magic(bytes, source);
	if (bytes.size() < header_bytes + checksum_bytes)
		throw input_error(fmt::format("{}:offset {}: truncated: {} bytes are shorter than the {}-byte header "
					      "and checksum",
					      source, bytes.size(), bytes.size(), header_bytes + checksum_bytes));

	const uint64_t version = load_fixed(bytes, magic_bytes, 4);
	if (version != snapshot_version)
		throw input_error(fmt::format("{}:offset {}: format version {} is not supported (this ptl reads "
					      "version {})",
					      source, magic_bytes, version, snapshot_version));

	const uint64_t body_bytes = load_fixed(bytes, magic_bytes + 4, 8);
	const uint64_t expected = bytes.size() - header_bytes - checksum_bytes;
	if (body_bytes != expected)
		throw input_error(fmt::format("{}:offset {}: the header gives a body of {} bytes, but the file "
					      "contains {} ({}; copy the file again or take a new snapshot)",
					      source, magic_bytes + 4, body_bytes, expected,
					      body_bytes > expected ? "truncated" : "trailing bytes"));

	const size_t checksum_at = bytes.size() - checksum_bytes;
	const uint32_t stored = static_cast<uint32_t>(load_fixed(bytes, checksum_at, 4));
	const uint32_t computed = detail::crc32(bytes.first(checksum_at));
	if (stored != computed)
		throw input_error(fmt::format("{}:offset {}: checksum mismatch: the file stores CRC-32 {:#010x} but "
					      "its contents give {:#010x}, so the file is corrupt",
					      source, checksum_at, stored, computed));

	return bytes.subspan(header_bytes, body_bytes);
}

} // namespace

std::vector<uint8_t> encode_snapshot(const snapshot &snap)
{
	byte_writer body;
	encode_metadata(body, snap);
	encode_vmas(body, snap.image.vmas);
	encode_runs(body, snap.image);

	byte_writer file;
	file.put_bytes(std::span(reinterpret_cast<const uint8_t *>(snapshot_magic), magic_bytes));
	file.put_fixed(snapshot_version, 4);
	file.put_fixed(body.bytes().size(), 8);
	file.put_bytes(body.bytes());
	file.put_fixed(detail::crc32(file.bytes()), checksum_bytes);
	return std::move(file.bytes());
}

snapshot decode_snapshot(std::span<const uint8_t> bytes, std::string_view source, const snapshot_limits &limits)
{
	const std::span<const uint8_t> body = check_frame(bytes, source);
	byte_reader in(body, header_bytes, source);

	snapshot snap;
	decode_metadata(in, snap);
	decode_vmas(in, snap);
	const std::vector<page_run> runs = decode_runs(in, snap, limits);
	if (in.left() != 0)
		in.fail_at(in.position(), fmt::format("{} unexpected bytes after the last run", in.left()));

	expand_runs(runs, snap.image);
	return snap;
}

} // namespace ptl::tools
