// Decoder and reader for /proc/PID/pagemap: one native-endian 64-bit entry per
// virtual page, at byte offset (vaddr / page_bytes) * 8.

#include "ptl/tools/proc.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <limits>
#include <sys/ioctl.h>
#include <unistd.h>
#include <utility>

namespace ptl::tools {

namespace {

constexpr uint64_t entry_bytes = sizeof(uint64_t);

// Entries per pread, so that a large range is read in 64 KiB steps.
constexpr size_t chunk_entries = 8192;

constexpr uint64_t bit(unsigned n)
{
	return uint64_t{1} << n;
}

constexpr uint64_t pfn_mask = bit(55) - 1;

// Reads exactly `bytes` bytes at `offset`, retrying after EINTR and partial
// reads.
void read_exactly(int fd, const std::string &path, uint64_t offset, char *buffer, size_t bytes)
{
	size_t done = 0;
	while (done < bytes) {
		const uint64_t at = offset + done;
		const ssize_t n = ::pread(fd, buffer + done, bytes - done, static_cast<off_t>(at));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			throw input_error(fmt::format("{}:offset {}: read failed: {}", path, at, std::strerror(errno)));
		if (n == 0)
			throw input_error(fmt::format("{}:offset {}: short read, end of file {} bytes into a {}-byte read "
						      "(the process may have exited, or the address is beyond the end "
						      "of the file)",
						      path, at, done, bytes));
		done += static_cast<size_t>(n);
	}
}

} // namespace

pagemap_entry decode_pagemap(uint64_t raw)
{
	pagemap_entry entry;
	entry.present = (raw & bit(63)) != 0;
	entry.swapped = (raw & bit(62)) != 0;
	entry.file_or_shared = (raw & bit(61)) != 0;
	entry.exclusive = (raw & bit(56)) != 0;
	entry.soft_dirty = (raw & bit(55)) != 0;

	// Bits 0-54 of a swapped entry hold the swap type and offset, not a PFN.
	if (entry.present)
		entry.pfn = raw & pfn_mask;
	return entry;
}

pagemap_reader::pagemap_reader(int pid) : path_(detail::proc_path(pid, "pagemap"))
{
	fd_ = detail::open_read_only(path_, pid);
}

pagemap_reader::pagemap_reader(std::string path) : path_(std::move(path))
{
	fd_ = detail::open_read_only(path_, 0);
}

pagemap_reader::~pagemap_reader()
{
	if (fd_ >= 0)
		::close(fd_);
}

pagemap_reader::pagemap_reader(pagemap_reader &&other) noexcept
	: path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)), pfns_visible_(other.pfns_visible_)
{
}

pagemap_reader &pagemap_reader::operator=(pagemap_reader &&other) noexcept
{
	if (this == &other)
		return *this;

	if (fd_ >= 0)
		::close(fd_);
	path_ = std::move(other.path_);
	fd_ = std::exchange(other.fd_, -1);
	pfns_visible_ = other.pfns_visible_;
	return *this;
}

void pagemap_reader::read(uint64_t first_vaddr, std::span<pagemap_entry> out)
{
	const uint64_t offset = first_vaddr / page_bytes * entry_bytes;
	const uint64_t max_offset = static_cast<uint64_t>(std::numeric_limits<off_t>::max());
	if (out.size() > (max_offset - offset) / entry_bytes)
		throw input_error(fmt::format("{}:offset {}: {} entries reach beyond the largest file offset", path_,
					      offset, out.size()));

	uint64_t raw[chunk_entries];
	for (size_t first = 0; first < out.size(); first += chunk_entries) {
		const size_t count = std::min(chunk_entries, out.size() - first);
		read_exactly(fd_, path_, offset + first * entry_bytes, reinterpret_cast<char *>(raw),
			     count * entry_bytes);

		for (size_t i = 0; i < count; i++) {
			out[first + i] = decode_pagemap(raw[i]);
			if (out[first + i].present && out[first + i].pfn != 0)
				pfns_visible_ = true;
		}
	}
}

namespace {

// The PAGEMAP_SCAN ABI of <linux/fs.h> (Linux 6.7), declared here because
// Debian 12's kernel headers predate it.
struct pm_scan_arg {
	uint64_t size;
	uint64_t flags;
	uint64_t start;
	uint64_t end;
	uint64_t walk_end;
	uint64_t vec;
	uint64_t vec_len;
	uint64_t max_pages;
	uint64_t category_inverted;
	uint64_t category_mask;
	uint64_t category_anyof_mask;
	uint64_t return_mask;
};

struct page_region {
	uint64_t start;
	uint64_t end;
	uint64_t categories;
};

constexpr uint64_t page_is_present = 1u << 3;
constexpr uint64_t page_is_swapped = 1u << 4;
constexpr unsigned long pagemap_scan_request = _IOWR('f', 16, pm_scan_arg);

// Regions returned per ioctl call; a scan with more continues at walk_end.
constexpr size_t scan_batch = 4096;

bool scan_unsupported(int error)
{
	return error == ENOTTY || error == EINVAL || error == EOPNOTSUPP;
}

} // namespace

std::optional<std::vector<page_range>> pagemap_reader::scan_populated(uint64_t start, uint64_t end)
{
	std::vector<page_range> ranges;
	std::vector<page_region> batch(scan_batch);

	while (start < end) {
		pm_scan_arg arg{};
		arg.size = sizeof(arg);
		arg.start = start;
		arg.end = end;
		arg.vec = reinterpret_cast<uint64_t>(batch.data());
		arg.vec_len = batch.size();
		arg.category_anyof_mask = page_is_present | page_is_swapped;
		arg.return_mask = page_is_present | page_is_swapped;

		const int found = ::ioctl(fd_, pagemap_scan_request, &arg);
		if (found < 0 && scan_unsupported(errno) && ranges.empty())
			return std::nullopt;
		if (found < 0)
			throw input_error(fmt::format("{}: PAGEMAP_SCAN of {:#x}-{:#x} failed: {}", path_, start, end,
						      std::strerror(errno)));

		for (int i = 0; i < found; i++) {
			page_range range{batch[i].start, batch[i].end, (batch[i].categories & page_is_present) != 0,
					 (batch[i].categories & page_is_swapped) != 0};

			// A batch that filled up can end at a walk_end inside its
			// last region, and the next batch reports that region
			// again: keep only the part not seen yet.
			if (!ranges.empty() && range.start < ranges.back().end)
				range.start = ranges.back().end;
			if (range.start < range.end)
				ranges.push_back(range);
		}

		// The kernel stops early when the batch is full, and walk_end is
		// the address to go on from.
		if (arg.walk_end <= start)
			throw input_error(fmt::format("{}: PAGEMAP_SCAN made no progress at {:#x}", path_, start));
		start = arg.walk_end;
	}
	return ranges;
}

bool pagemap_reader::pfns_visible() const
{
	return pfns_visible_;
}

const std::string &pagemap_reader::path() const
{
	return path_;
}

} // namespace ptl::tools
