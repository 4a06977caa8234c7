#pragma once
// Snapshot files: a process's VMAs, present pages and status saved from /proc
// so that `ptl replay FILE` can rebuild its page tables later, on any
// machine. docs/SNAPSHOT.md describes the format byte by byte.
//
// The loader treats every file as untrusted: each count is checked against
// the bytes left and against snapshot_limits before anything is allocated,
// and any inconsistency is an input_error naming the file and byte offset.

#include <ptl/tools/proc.hpp>
#include <ptl/tools/replay.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ptl::tools {

inline constexpr char snapshot_magic[8] = {'P', 'T', 'L', 'S', 'N', 'A', 'P', '\0'};
inline constexpr uint32_t snapshot_version = 1;

// A process image and where and when it was taken.
struct snapshot {
	process_image image;
	int pid = 0;
	int64_t time = 0;           // capture time, seconds since the Unix epoch
	std::string kernel_release; // uname -r of the machine it was taken on
	std::string machine;        // uname -m, e.g. "x86_64"
	uint64_t page_size = page_bytes;
};

// Bounds that load_snapshot and decode_snapshot enforce. The defaults admit
// any process this machine could plausibly run; fuzzing uses smaller ones.
struct snapshot_limits {
	// Present pages, each of which costs 16 bytes once loaded: 2^28 pages
	// are 1 TiB resident and 4 GiB of memory to replay.
	uint64_t max_pages = uint64_t{1} << 28;

	// The file itself, read whole into memory. A one-page run next to the
	// previous one takes at most 10 bytes, so 2^28 adjacent pages on
	// unrelated frames fit in 2.5 GiB. Real processes have long runs and
	// need far less.
	size_t max_file_bytes = size_t{4} << 30;
};

// Strings longer than these are rejected on load.
inline constexpr size_t snapshot_max_name_bytes = 256; // command, release, machine

// Reads process pid from /proc (stopping it with SIGSTOP meanwhile when stop
// is set) and stamps it with the time and uname. Throws input_error as
// read_process_image does, and when the process has no user address space
// (a kernel thread, or a process that exited while it was read).
snapshot capture_snapshot(int pid, bool stop);

// Returns the file's bytes. Throws std::invalid_argument when the image is
// inconsistent: pages out of order or outside every VMA, overlapping VMAs,
// or a page size other than page_bytes.
std::vector<uint8_t> encode_snapshot(const snapshot &snap);

// Parses the bytes of a snapshot file. `source` names the file in errors.
// Throws input_error "<source>:offset N: <problem>" for a wrong magic or
// version, a length or checksum that does not match, a truncated or
// malformed field, a count above the limits, VMAs that are unaligned,
// overlapping or out of order, or pages outside every VMA.
snapshot decode_snapshot(std::span<const uint8_t> bytes, std::string_view source,
			 const snapshot_limits &limits = {});

// Writes the snapshot to path through a temporary file in the same
// directory that is renamed into place, so that readers never see a partial
// file, and returns the file's size in bytes. Throws input_error naming the
// path when the file cannot be created, and std::runtime_error when writing
// it fails.
size_t save_snapshot(const snapshot &snap, const std::string &path);

// Reads and decodes the snapshot at path. Throws input_error naming the path
// when it cannot be opened or read, is larger than limits.max_file_bytes or
// changes while it is read, and as decode_snapshot does.
snapshot load_snapshot(const std::string &path, const snapshot_limits &limits = {});

// Throws input_error naming source when a VMA of the snapshot ends above the
// user half of the native geometry, which a replay cannot hold.
void check_snapshot_fits(const snapshot &snap, std::string_view source);

// Helpers shared with the tests. They are not part of the stable API.
namespace detail {

// CRC-32 as zlib and IEEE 802.3 compute it: reflected polynomial 0xedb88320,
// initial value and final XOR 0xffffffff. crc32("123456789") is 0xcbf43926.
uint32_t crc32(std::span<const uint8_t> bytes);

// Reads the file at path whole, at most max_bytes. Throws input_error when a
// regular file's size or modification time differ before and after the
// read. between_reads, when set, runs after each read call, so that tests
// can change the file in the middle.
std::vector<uint8_t> read_binary_file(const std::string &path, size_t max_bytes,
				      const std::function<void()> &between_reads = {});

} // namespace detail

} // namespace ptl::tools
