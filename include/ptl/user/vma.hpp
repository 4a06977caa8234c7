#pragma once
// A virtual memory area: Linux's vm_area_struct, reduced to what the fault
// path and munmap need. A VMA is a page-aligned range [start, end) of a user
// address space with one set of vm_flags. Its pages are either anonymous
// (backed by zeroed data frames from the pool, allocated on first fault) or
// PFN-mapped (frames the pool does not own, such as device memory or the
// frames of a replayed process).

#include <ptl/arch/geometry.hpp>
#include <ptl/arch/pte_format.hpp>
#include <ptl/phys/frame_pool.hpp>

#include <cstdint>
#include <optional>

namespace ptl::user {

using phys::pfn_t;

// vm_flags bits, at Linux's positions.
enum vm_flags : uint32_t {
	vm_none = 0,
	vm_read = 1u << 0,
	vm_write = 1u << 1,
	vm_exec = 1u << 2,
	vm_shared = 1u << 3,
	// The pages are raw frame numbers with no struct page behind them
	// (VM_PFNMAP). Without the flag the area is anonymous memory.
	vm_pfnmap = 1u << 10,
	// Map aligned blocks with huge pmd leaves where the VMA wholly
	// contains them (VM_HUGEPAGE, as madvise(MADV_HUGEPAGE) sets it).
	vm_hugepage = 1u << 29,
};

// The kind of access that faulted.
enum class access_type { read, write, exec };

struct vm_area {
	uint64_t start = 0;  // first byte, page aligned
	uint64_t end = 0;    // one past the last byte, page aligned
	uint32_t flags = 0;  // vm_flags

	// First frame of a linear PFN-mapped area: page i maps frame
	// pfn_base + i, as remap_pfn_range sets up, so a fault can fill it in.
	// Empty when the pages are inserted one by one with insert_pfn
	// (vmf_insert_pfn into a VM_MIXEDMAP-style area), and then a fault
	// there has nothing to map.
	std::optional<pfn_t> pfn_base;

	uint64_t size() const { return end - start; }
	uint64_t pages() const { return size() >> arch::page_shift; }
	bool contains(uint64_t addr) const { return addr >= start && addr < end; }
	bool is_pfnmap() const { return (flags & vm_pfnmap) != 0; }
	bool is_anonymous() const { return !is_pfnmap(); }
	bool is_huge() const { return (flags & vm_hugepage) != 0; }

	// Frame that a linear PFN-mapped area maps at addr, or nothing.
	std::optional<pfn_t> linear_pfn(uint64_t addr) const
	{
		if (!pfn_base)
			return std::nullopt;
		return *pfn_base + ((addr - start) >> arch::page_shift);
	}
};

// Whether the area's flags allow the access, as x86's access_error decides
// it for a page that is not present: reading needs any of read, write or
// exec (x86 pages are always readable), writing needs vm_write, and
// executing needs vm_exec.
inline bool access_permitted(const vm_area &vma, access_type a)
{
	switch (a) {
	case access_type::read:
		return (vma.flags & (vm_read | vm_write | vm_exec)) != 0;
	case access_type::write:
		return (vma.flags & vm_write) != 0;
	case access_type::exec:
		return (vma.flags & vm_exec) != 0;
	}
	return false;
}

// PTE protection for the area's pages (vm_page_prot): present and user,
// writable only with vm_write, and no-execute without vm_exec where the
// entry format has an NX bit. Accessed and dirty are left to the caller.
template <class G>
uint64_t vm_page_prot(const vm_area &vma)
{
	uint64_t prot = arch::prot_present | arch::prot_user;

	if (vma.flags & vm_write)
		prot |= arch::prot_write;
	if (G::format::has_nx && !(vma.flags & vm_exec))
		prot |= arch::prot_nx;
	return prot;
}

} // namespace ptl::user
