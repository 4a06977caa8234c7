#pragma once
// The vmalloc area allocator: hands out disjoint virtual ranges of the
// kernel's vmalloc area, Linux's vmlist under vmlist_lock.
//
// Ownership of a range is what keeps kernel mappings apart: the owner of an
// area is the only task that sets or clears the PTEs inside it, so mapping
// takes no page-table lock. A range must become free again only after its
// owner has cleared its PTEs. Removal is therefore split in two steps.
// detach() hides the area from lookups but keeps its range reserved, and
// release() hands the range out again.
//
// Areas are placed first fit in address order, each followed by one unmapped
// guard page so that running off the end of an area faults instead of
// touching its neighbour.

#include <ptl/arch/geometry.hpp>
#include <ptl/base/result.hpp>
#include <ptl/phys/frame_pool.hpp>
#include <ptl/sync/spinlock.hpp>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstdint>
#include <map>
#include <memory>
#include <string_view>
#include <vector>

namespace ptl::kernel {

using phys::pfn_t;

// Purpose of an area, exactly one per area. The names are Linux's VM_* flags.
enum vm_flags : uint32_t {
	vm_ioremap = 1u << 0, // maps a physical range, owns no frames
	vm_alloc = 1u << 1,   // vmalloc: owns the data frames behind it
	vm_map = 1u << 2,     // vmap: maps frames the caller owns
	vm_ram_blocks = 1u << 3, // the region vm_map_ram carves its per-thread blocks from
};

inline constexpr uint32_t vm_flags_mask = vm_ioremap | vm_alloc | vm_map | vm_ram_blocks;

// The name /proc/vmallocinfo prints for an area's flags.
constexpr std::string_view vm_flags_name(uint32_t flags)
{
	switch (flags) {
	case vm_ioremap:
		return "ioremap";
	case vm_alloc:
		return "vmalloc";
	case vm_map:
		return "vmap";
	case vm_ram_blocks:
		return "vm_map_ram";
	}
	return "unknown";
}

// One reserved range of the vmalloc area, Linux's struct vm_struct. The
// guard page at addr + size is reserved with the area but not counted in
// size.
struct vm_struct {
	uint64_t addr = 0;
	uint64_t size = 0; // bytes that may be mapped, a multiple of the page size
	uint32_t flags = 0;
	// Frames the area owns and frees with it (vm_alloc only).
	std::vector<pfn_t> pages;
	// Physical address passed to ioremap. The mapping starts at the page
	// that contains it.
	uint64_t phys_addr = 0;

	uint64_t nr_pages() const { return size / arch::page_size; }
	uint64_t end() const { return addr + size; }
};

// A copy of an area's description, safe to keep after the area is gone.
struct vm_area_info {
	uint64_t addr;
	uint64_t size;
	uint32_t flags;
	uint64_t nr_pages; // frames the area owns
	uint64_t phys_addr;
};

class vmalloc_area {
public:
	// Manages [start, end); both must be page aligned and start < end.
	vmalloc_area(uint64_t start, uint64_t end) : start_(start), end_(end)
	{
		assert(start % arch::page_size == 0);
		assert(end % arch::page_size == 0);
		assert(start < end);
	}

	vmalloc_area(const vmalloc_area &) = delete;
	vmalloc_area &operator=(const vmalloc_area &) = delete;

	uint64_t start() const { return start_; }
	uint64_t end() const { return end_; }

	// Reserves the lowest free range of size bytes plus a guard page
	// (get_vm_area), starting at a multiple of align. Fails with
	// errc::invalid_argument unless size is a non-zero multiple of the
	// page size, align a power of two and a multiple of the page size,
	// and flags exactly one vm_flags value. Fails with errc::no_space when
	// no gap is large enough. The area stays valid until its owner
	// releases it.
	result<vm_struct *> reserve(uint64_t size, uint32_t flags, uint64_t align = arch::page_size)
		PTL_EXCLUDES(lock_)
	{
		if (size == 0 || size % arch::page_size != 0 || !valid_flags(flags))
			return fail(errc::invalid_argument);
		if (align < arch::page_size || (align & (align - 1)) != 0)
			return fail(errc::invalid_argument);

		// The area and its guard page must both fit.
		if (size > end_ - start_ - arch::page_size)
			return fail(errc::no_space);

		auto area = std::make_unique<vm_struct>();
		area->size = size;
		area->flags = flags;

		sync::spin_guard guard(lock_);

		auto addr = find_gap(size + arch::page_size, align);
		if (!addr)
			return fail(addr.error());

		area->addr = *addr;
		vm_struct *reserved = area.get();
		areas_.emplace(*addr, entry{std::move(area), false});
		nr_live_.fetch_add(1, std::memory_order_relaxed);
		return reserved;
	}

	// The area that starts at addr, or nullptr (find_vm_area). An area
	// being removed is not found. The pointer is valid only while its
	// owner keeps the area.
	vm_struct *find(uint64_t addr) const PTL_EXCLUDES(lock_)
	{
		sync::spin_guard guard(lock_);

		auto it = areas_.find(addr);
		if (it == areas_.end() || it->second.detached)
			return nullptr;
		return it->second.area.get();
	}

	// Takes the area that starts at addr out of lookups, keeping its range
	// reserved until release(). Fails with errc::not_found when no area
	// starts at addr, and with errc::invalid_argument when the area's flags
	// are not in expected_flags. A failure leaves the area as it was.
	result<vm_struct *> detach(uint64_t addr, uint32_t expected_flags) PTL_EXCLUDES(lock_)
	{
		sync::spin_guard guard(lock_);

		auto it = areas_.find(addr);
		if (it == areas_.end() || it->second.detached)
			return fail(errc::not_found);
		if ((it->second.area->flags & expected_flags) == 0)
			return fail(errc::invalid_argument);

		it->second.detached = true;
		return it->second.area.get();
	}

	// Makes a detached area findable again, for a caller that detached it
	// and then found it must not be removed.
	void reattach(vm_struct *area) PTL_EXCLUDES(lock_)
	{
		sync::spin_guard guard(lock_);

		auto it = areas_.find(area->addr);
		assert(it != areas_.end());
		assert(it->second.area.get() == area);
		assert(it->second.detached);
		it->second.detached = false;
	}

	// Frees the range of an area returned by reserve() or detach() and
	// hands the area to the caller. Its PTEs must already be clear: the
	// next reserve() may give the range to a new owner at once.
	std::unique_ptr<vm_struct> release(vm_struct *area) PTL_EXCLUDES(lock_)
	{
		sync::spin_guard guard(lock_);

		auto it = areas_.find(area->addr);
		assert(it != areas_.end());
		assert(it->second.area.get() == area);

		std::unique_ptr<vm_struct> released = std::move(it->second.area);
		areas_.erase(it);
		nr_live_.fetch_sub(1, std::memory_order_relaxed);
		return released;
	}

	// As release(), but first calls unlink(floor, ceiling) under the
	// allocator's lock, where [floor, ceiling) is the free range around
	// the area: from the end of the area below (or the start of the
	// vmalloc area) to the start of the area above (or its end). While
	// unlink runs no task can reserve anything there, so it may free the
	// page tables that lie wholly inside.
	template <class Unlink>
	std::unique_ptr<vm_struct> release(vm_struct *area, Unlink &&unlink) PTL_EXCLUDES(lock_)
	{
		sync::spin_guard guard(lock_);

		auto it = areas_.find(area->addr);
		assert(it != areas_.end());
		assert(it->second.area.get() == area);

		const uint64_t floor = it == areas_.begin() ? start_ : std::prev(it)->second.area->end();
		const uint64_t ceiling = std::next(it) == areas_.end() ? end_ : std::next(it)->first;
		unlink(floor, ceiling);

		std::unique_ptr<vm_struct> released = std::move(it->second.area);
		areas_.erase(it);
		nr_live_.fetch_sub(1, std::memory_order_relaxed);
		return released;
	}

	// Areas reserved now, detached ones included.
	uint64_t nr_live() const { return nr_live_.load(std::memory_order_relaxed); }

	// Descriptions of every area in address order, detached ones included.
	std::vector<vm_area_info> snapshot() const PTL_EXCLUDES(lock_)
	{
		std::vector<vm_area_info> infos;
		sync::spin_guard guard(lock_);

		for (const auto &[addr, e] : areas_)
			infos.push_back({addr, e.area->size, e.area->flags, e.area->pages.size(), e.area->phys_addr});
		return infos;
	}

	// Calls fn(vm_struct &) for each area, detached ones included. For
	// teardown, when no other task uses the allocator.
	template <class Fn>
	void for_each_area(Fn &&fn) PTL_EXCLUDES(lock_)
	{
		sync::spin_guard guard(lock_);

		for (auto &[addr, e] : areas_)
			fn(*e.area);
	}

	// Statistics of the allocator's lock (Linux's vmlist_lock).
	sync::lock_stats lock_stats() const { return lock_.stats(); }

private:
	struct entry {
		std::unique_ptr<vm_struct> area;
		bool detached; // being removed: not found, range still reserved
	};

	static bool valid_flags(uint32_t flags)
	{
		return flags == vm_ioremap || flags == vm_alloc || flags == vm_map || flags == vm_ram_blocks;
	}

	// The lowest multiple of align where bytes fit between the reserved
	// ranges, each of which extends one guard page past its area.
	// NOTE: this scans every area, as Linux's vmlist search did, so the
	// cost of reserve() grows with the number of live areas.
	result<uint64_t> find_gap(uint64_t bytes, uint64_t align) const PTL_REQUIRES(lock_)
	{
		uint64_t candidate = align_up(start_, align);

		for (const auto &[addr, e] : areas_) {
			if (addr >= candidate && addr - candidate >= bytes)
				return candidate;
			candidate = std::max(candidate, align_up(addr + e.area->size + arch::page_size, align));
		}

		if (candidate < end_ && end_ - candidate >= bytes)
			return candidate;
		return fail(errc::no_space);
	}

	// Rounds up to a multiple of align; an address that would wrap goes
	// to the top, where nothing fits.
	static uint64_t align_up(uint64_t addr, uint64_t align)
	{
		const uint64_t aligned = (addr + align - 1) & ~(align - 1);
		return aligned < addr ? ~uint64_t{0} & ~(align - 1) : aligned;
	}

	const uint64_t start_;
	const uint64_t end_;

	mutable sync::spinlock lock_;
	std::map<uint64_t, entry> areas_ PTL_GUARDED_BY(lock_);
	std::atomic<uint64_t> nr_live_{0};
};

} // namespace ptl::kernel
