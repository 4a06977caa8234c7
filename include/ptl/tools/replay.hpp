#pragma once
// `ptl replay`: rebuild a real process's address space in a ptl user address
// space and check it against what the kernel reported.
//
// The process's VMAs come from /proc/PID/maps and its present pages, with
// their frame numbers, from /proc/PID/pagemap. Each VMA becomes a PFN-mapped
// VMA, and N threads insert disjoint parts of the present pages
// concurrently, racing to populate the directory tables they share. Every
// present page must then translate to the frame the kernel reported.

#include <ptl/arch/profiles.hpp>
#include <ptl/mm/mm.hpp>
#include <ptl/tools/proc.hpp>

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ptl::user {
template <class G>
class user_space;
}

namespace ptl::tools {

// A replay's address space in the native geometry.
using replay_space = user::user_space<arch::native>;

// A present page of the process and the frame the kernel reported for it.
struct present_page {
	uint64_t addr;
	uint64_t pfn;
};

// The replay's input: a process's VMAs, present pages and status as read
// from /proc.
struct process_image {
	std::vector<vma_record> vmas;     // VMAs in the user half, in address order
	std::vector<present_page> pages;  // present pages in address order
	status_record status;
	bool pfns_visible = false;        // false: the kernel hid PFNs, every pfn is 0
	uint64_t swapped = 0;             // swapped-out pages, not in pages
	uint64_t vmas_skipped = 0;        // VMAs outside the user half
};

struct replay_options {
	int pid = 0;                               // 0: start a demo child and replay it
	unsigned threads = 1;                      // threads inserting pages; at least 1
	uint64_t demo_bytes = 256ull << 20;        // size of the demo child's mapping
	bool stop_target = false;                  // SIGSTOP the process while reading it
	std::string arch;                          // geometry to build (arch::profile_names); empty: native
	std::string snapshot_path;                 // non-empty: replay this snapshot file, not a process
	std::function<void(const std::string &)> progress; // progress lines, if set
};

struct replay_report {
	int pid = 0;
	std::string command;         // the process's Name: from status
	std::string arch;            // geometry the tables were built for
	bool demo_child = false;     // the process was started by ptl
	std::string snapshot_path;   // the snapshot file replayed; empty for a live process
	int64_t snapshot_time = 0;   // when the snapshot was taken, seconds since the Unix epoch
	std::string snapshot_kernel; // uname -r of the machine the snapshot was taken on
	bool pfns_visible = false;   // false: the kernel hid PFNs, presence only
	unsigned threads = 0;

	uint64_t vmas = 0;           // VMAs replayed
	uint64_t vmas_skipped = 0;   // VMAs outside the user half, such as [vsyscall]
	uint64_t pages_present = 0;  // present pages the kernel reported
	uint64_t pages_swapped = 0;  // swapped-out pages, not mapped by the replay
	uint64_t pages_mapped = 0;   // present leaves found in the rebuilt tree
	uint64_t mismatches = 0;     // present pages that did not translate to the reported PFN
	uint64_t huge_candidates = 0; // 2 MiB-aligned runs of 512 contiguous frames

	std::array<uint64_t, arch::nr_levels> tables{}; // page-table pages per level
	uint64_t pgtables_bytes = 0;                    // as VmPTE counts them
	std::optional<uint64_t> kernel_vm_pte_bytes;    // VmPTE of the process
	std::optional<uint64_t> kernel_vm_rss_bytes;

	double read_seconds = 0;     // reading maps, pagemap and status
	double rebuild_seconds = 0;  // inserting every page, all threads
	double verify_seconds = 0;
	double pages_per_second = 0; // pages_present / rebuild_seconds

	uint64_t populates = 0;  // tables published
	uint64_t races_lost = 0; // tables freed because another thread won
};

// Reads the maps, pagemap and status of process pid, stopping it with
// SIGSTOP meanwhile when stop is set. Throws input_error as run_replay does.
process_image read_process_image(int pid, bool stop);

// Frames a pool needs for the tables of the image's replay: the data pages
// are bare PFNs and take none.
size_t image_pool_frames(const process_image &image);

// Checks that geometry G can hold the image: every VMA ends inside G's user
// half and every frame number fits G's entries. Throws input_error naming
// source (a file or process) and the first VMA that does not fit, or the
// highest frame number when that does not.
template <class G>
void check_image_fits(const process_image &image, std::string_view source);

// Creates one PFN-mapped VMA in space for each VMA of the image. Throws
// std::runtime_error when one cannot be created.
template <class G>
void create_image_vmas(user::user_space<G> &space, const process_image &image);

// Inserts pages [first, last) of the image into space, which holds the
// image's VMAs, and returns how many could not be inserted. Safe to call
// from several threads on disjoint slices.
template <class G>
uint64_t insert_image_pages(user::user_space<G> &space, const process_image &image, size_t first, size_t last);

// Inserts every page of the image into space with the given number of
// threads, each taking one contiguous slice, and returns the seconds from
// starting the first thread to joining the last. Throws std::runtime_error
// when a page cannot be inserted.
template <class G>
double rebuild_image(user::user_space<G> &space, const process_image &image, unsigned threads);

// The image functions above exist for every profile of arch/registry.hpp.

// Runs the replay. Throws input_error for bad input (no such process, an
// unreadable or malformed /proc file, a process that options.arch cannot
// hold) and std::invalid_argument for bad options, an unknown arch among
// them.
replay_report run_replay(const replay_options &options);

std::string format_report_text(const replay_report &report);
std::string format_report_json(const replay_report &report);

} // namespace ptl::tools
