#pragma once
// Readers for /proc/PID/maps, /proc/PID/status and /proc/PID/pagemap, and a
// child process with a known page pattern to read them from.
//
// Parsers reject malformed input with input_error instead of guessing, because
// the replay rebuilds an address space from exactly what they return.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

namespace ptl::tools {

// The size of the pages that maps, pagemap and demo_child work in.
inline constexpr uint64_t page_bytes = 4096;

// Bad input from a /proc file or a file in the same format. what() is one
// line: "<file>:<line>: <problem>" or "<file>:offset N: <problem>".
class input_error : public std::runtime_error {
public:
	using std::runtime_error::runtime_error;
};

// One line of /proc/PID/maps.
struct vma_record {
	uint64_t start = 0; // first byte, page aligned
	uint64_t end = 0;   // one past the last byte, page aligned
	bool read = false;
	bool write = false;
	bool exec = false;
	bool shared = false;
	uint64_t offset = 0; // file offset of start, in bytes
	std::string dev;     // device as "major:minor" in hex, e.g. "fd:01"
	uint64_t inode = 0;

	// Empty for anonymous memory, or "[heap]", "[stack]", "[vsyscall]" and
	// the like. A file path may contain spaces and ends in " (deleted)" once
	// the file is unlinked.
	std::string path;

	uint64_t pages() const;
};

// Limits that parse_maps enforces so that a corrupt or hostile file cannot
// make it allocate without bound.
inline constexpr size_t maps_max_lines = 1'000'000;
inline constexpr size_t maps_max_line_bytes = 64 * 1024;

// Parses the text of /proc/PID/maps. `source` names the file in errors.
// Throws input_error, with the 1-based line number and the value, for a
// malformed line, start >= end, an unaligned start or end, a range that is
// below or overlaps the previous one, a perms field that is not 4 characters
// of [r-][w-][x-][ps], more than maps_max_lines lines, or a line longer than
// maps_max_line_bytes.
std::vector<vma_record> parse_maps(std::string_view text, std::string_view source);

// Reads and parses /proc/PID/maps. Throws input_error "no such process: PID"
// when the process does not exist.
// NOTE: the kernel produces the file in several reads, so a process that maps
// or unmaps memory meanwhile can yield a list that parse_maps rejects. Stop
// the process (SIGSTOP) first when it is not known to be idle.
std::vector<vma_record> read_maps(int pid);

// The fields of /proc/PID/status that ptl uses.
struct status_record {
	std::string name;                    // Name:, the command name as the kernel escapes it
	char state = 0;                      // first letter of State:, e.g. 'S' or 'Z'; 0 when absent
	std::optional<uint64_t> vm_pte_kib;  // VmPTE:, page-table memory in KiB
	std::optional<uint64_t> vm_rss_kib;  // VmRSS:, resident memory in KiB
	std::optional<uint64_t> vm_size_kib; // VmSize:, virtual size in KiB
};

// Parses the text of /proc/PID/status. The Vm fields stay empty when the
// text lacks them, as it does for kernel threads. Throws input_error for a
// missing Name: field, a line without ':', or a Vm field that is not
// "<decimal> kB".
status_record parse_status(std::string_view text, std::string_view source);

// Reads and parses /proc/PID/status. Throws input_error "no such process: PID"
// when the process does not exist.
status_record read_status(int pid);

// Throws input_error when status describes a process without a user address
// space: a zombie, which exited while it was read, or a kernel thread. The
// kernel omits the Vm fields for both.
void check_user_address_space(int pid, const status_record &status);

// One decoded /proc/PID/pagemap entry, as the kernel's
// Documentation/admin-guide/mm/pagemap.rst describes it.
struct pagemap_entry {
	bool present = false;        // bit 63
	bool swapped = false;        // bit 62
	bool file_or_shared = false; // bit 61: a file page or shared anonymous page
	bool exclusive = false;      // bit 56: page exclusively mapped
	bool soft_dirty = false;     // bit 55

	// Bits 0-54 when present, else 0. The kernel reports 0 for every page
	// to a reader without CAP_SYS_ADMIN.
	uint64_t pfn = 0;
};

pagemap_entry decode_pagemap(uint64_t raw);

// A range of pages that share the listed states, as PAGEMAP_SCAN reports it.
struct page_range {
	uint64_t start = 0; // first byte, page aligned
	uint64_t end = 0;   // one past the last byte
	bool present = false;
	bool swapped = false;
};

// Reads /proc/PID/pagemap, or any file in its format, with pread in chunks.
class pagemap_reader {
public:
	// Opens /proc/PID/pagemap. Throws input_error "no such process: PID"
	// when the process does not exist, and input_error naming the path and
	// strerror when the file cannot be opened.
	explicit pagemap_reader(int pid);

	// Opens any file in pagemap format. Throws input_error naming the path
	// and strerror when it cannot be opened.
	explicit pagemap_reader(std::string path);

	~pagemap_reader();
	pagemap_reader(const pagemap_reader &) = delete;
	pagemap_reader &operator=(const pagemap_reader &) = delete;
	pagemap_reader(pagemap_reader &&other) noexcept;
	pagemap_reader &operator=(pagemap_reader &&other) noexcept;

	// Fills out[i] with the entry for page first_vaddr / page_bytes + i.
	// Throws input_error naming the path and byte offset on a short read,
	// which happens when the process has exited or the range lies beyond
	// the file, and on a read error.
	void read(uint64_t first_vaddr, std::span<pagemap_entry> out);

	// Ranges of [start, end) whose pages are present or swapped, from the
	// PAGEMAP_SCAN ioctl (Linux 6.7 and later), so that a caller reads
	// entries only where there are pages instead of across huge reserved
	// VMAs. Returns nothing when the kernel lacks the ioctl; callers then
	// read the whole range. Throws input_error on any other failure.
	std::optional<std::vector<page_range>> scan_populated(uint64_t start, uint64_t end);

	// Returns whether some present page read so far had a non-zero PFN.
	// Without CAP_SYS_ADMIN the kernel reports PFN 0 for every page, and
	// callers can then check presence only.
	bool pfns_visible() const;

	const std::string &path() const;

private:
	std::string path_;
	int fd_ = -1;
	bool pfns_visible_ = false;
};

// A child process that maps anonymous memory and writes to it in a known
// pattern, so that tests and demos can read its maps, status and pagemap.
//
// The child maps `bytes` with mmap(MAP_PRIVATE | MAP_ANONYMOUS), calls
// madvise(MADV_NOHUGEPAGE) so that every page is a 4 KiB PTE, writes to each
// page for which page_is_touched() is true, reports the mapping's address
// through a pipe and then waits to be killed. The destructor kills it with
// SIGKILL and reaps it.
// NOTE: the child dies with SIGKILL when the thread that constructed this
// object exits (PR_SET_PDEATHSIG follows the thread), so construct it on a
// thread that outlives it.
class demo_child {
public:
	// Starts the child and waits up to ready_timeout_ms for its report.
	// `bytes` must be a non-zero multiple of page_bytes. Throws
	// std::system_error when the size is invalid, fork or the child's mmap
	// fails, or the child does not report in time.
	explicit demo_child(uint64_t bytes);
	~demo_child();
	demo_child(const demo_child &) = delete;
	demo_child &operator=(const demo_child &) = delete;

	int pid() const;
	uint64_t region_start() const; // address of the mapping in the child
	uint64_t region_bytes() const;

	static bool page_is_touched(uint64_t page_index) { return page_index % 4 != 3; }

	static constexpr int ready_timeout_ms = 30'000;

private:
	pid_t pid_ = -1;
	uint64_t region_start_ = 0;
	uint64_t region_bytes_ = 0;
};

// Helpers that the readers share. They are not part of the stable API.
namespace detail {

// Returns "/proc/PID/FILE". Throws input_error when pid is not positive.
std::string proc_path(int pid, std::string_view file);

// Opens path read-only and returns the file descriptor. Throws input_error
// "no such process: PID" when pid is positive and the file does not exist,
// "process PID has no user address space" when the kernel returns ESRCH (the
// pagemap of a kernel thread or a zombie), and input_error naming the path
// and strerror on any other failure.
int open_read_only(const std::string &path, int pid);

// Reads /proc/PID/FILE whole. Throws input_error "no such process: PID" when
// it does not exist, naming the path and strerror when it cannot be opened or
// read, and when it is longer than max_bytes.
std::string read_proc_text(int pid, std::string_view file, size_t max_bytes);

// Reads the file at path whole. Throws input_error naming the path and
// strerror when it cannot be opened or read, with access_hint added when
// the error is a permission error, and when it is longer than max_bytes.
std::string read_text_file(const std::string &path, size_t max_bytes, std::string_view access_hint = {});

// Returns value in single quotes for an error message, with control
// characters escaped as \xHH and the text cut after 80 bytes.
std::string quote(std::string_view value);

// Reports errors for one line of a text file as "<source>:<line>: <problem>".
struct line_context {
	std::string_view source;
	size_t number; // 1-based

	[[noreturn]] void fail(std::string_view problem) const;
};

// Parses all of text as an unsigned number in base; false on any other
// character, an empty text or overflow.
bool parse_number(std::string_view text, int base, uint64_t &value);

// Fails at where when the file has more than max_lines lines, or the line
// is longer than max_line_bytes. file_kind names the file in the message
// ("maps file", "vmallocinfo").
void check_line_limits(const line_context &where, std::string_view line, size_t max_lines, size_t max_line_bytes,
		       std::string_view file_kind);

// Splits off the next space-separated field of rest and returns it, or an
// empty view at the end. Runs of spaces count as one separator, as in the
// padded columns of /proc/PID/maps and /proc/vmallocinfo.
std::string_view take_field(std::string_view &rest);

} // namespace detail

} // namespace ptl::tools
