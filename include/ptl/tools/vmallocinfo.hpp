#pragma once
// Reader for /proc/vmallocinfo: the kernel's list of vmalloc, vmap and
// ioremap areas, one line each, as mm/vmalloc.c prints them:
//
//   0xffffc90000000000-0xffffc90000005000   20480 some_caller+0x2c/0x80 pages=4 vmalloc N0=4
//
// The kernel prints the addresses with %pK. Unless kernel.kptr_restrict
// lets the reader see them, they are hashed (32-bit values) or zero, and then
// they bear no relation to the size field.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ptl::tools {

// Pages that one NUMA node supplied to an area, from an "N<node>=<pages>" field.
struct node_pages {
	uint32_t node = 0;
	uint64_t pages = 0;
};

// One line of /proc/vmallocinfo.
struct vmalloc_area {
	uint64_t start = 0; // first byte; meaningful only when the file's addresses are real
	uint64_t end = 0;   // one past the last byte, guard page included
	uint64_t size = 0;  // bytes, guard page included, a multiple of page_bytes

	// The allocating function as "symbol+0xOFF/0xLEN", "symbol+0xOFF/0xLEN
	// [module]" or a bare "0x<address>", or empty when the kernel recorded
	// none.
	std::string caller;

	std::optional<uint64_t> pages; // pages=: pages backing the area
	std::optional<uint64_t> phys;  // phys=: physical address of an ioremap
	std::vector<node_pages> nodes; // N<node>=<pages>, in the order printed

	bool ioremap = false;      // ioremap() and friends
	bool vmalloc = false;      // vmalloc()
	bool vmap = false;         // vmap() of existing pages
	bool user = false;         // may be mapped into user space
	bool dma_coherent = false; // dma_alloc_coherent() remap
	bool vpages = false;       // the page array itself was vmalloc'ed
	bool sparse = false;       // partially populated (VM_SPARSE)
	bool vm_map_ram = false;   // a vm_map_ram() block, with no vm_struct
	bool unpurged = false;     // freed, awaiting a lazy TLB flush

	// Flag words this reader does not know, as printed, so that a newer
	// kernel's file still parses.
	std::vector<std::string> other_flags;
};

struct vmallocinfo {
	std::vector<vmalloc_area> areas; // in file order

	// Whether start and end are the kernel's addresses. The first line
	// decides: its end - start must equal its size. When false the
	// addresses are hashed or zero and callers must not use them.
	bool addresses_visible = false;
};

// Limits that parse_vmallocinfo enforces so that a corrupt or hostile file
// cannot make it allocate without bound. A large server lists about 10^5
// areas.
inline constexpr size_t vmallocinfo_max_lines = 4'000'000;
inline constexpr size_t vmallocinfo_max_line_bytes = 4096;
inline constexpr size_t vmallocinfo_max_nodes = 1024;        // MAX_NUMNODES on x86-64
inline constexpr size_t vmallocinfo_max_other_flags = 16;    // per line
inline constexpr uint64_t vmallocinfo_max_area_bytes = uint64_t{1} << 57; // 5-level x86-64's whole vmalloc space is smaller

// Parses the text of /proc/vmallocinfo. `source` names the file in errors.
// Throws input_error "<source>:<line>: <problem>" for a malformed line, a
// size that is zero, unaligned or above vmallocinfo_max_area_bytes, pages=
// larger than the size allows, node counts that do not add up to pages=, a
// duplicate field, or a line or line count above the limits. When the
// addresses are visible it also rejects a range that is unaligned, inverted,
// disagrees with its size, or overlaps another line's range.
vmallocinfo parse_vmallocinfo(std::string_view text, std::string_view source);

// Reads and parses path, /proc/vmallocinfo by default. Throws input_error
// naming the path when it cannot be opened or read (the kernel lets only
// root read /proc/vmallocinfo) and as parse_vmallocinfo does.
vmallocinfo read_vmallocinfo(const std::string &path = "/proc/vmallocinfo");

} // namespace ptl::tools
