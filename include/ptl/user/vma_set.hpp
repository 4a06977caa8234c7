#pragma once
// The VMAs of one address space, sorted by start address.
//
// Invariant: the VMAs never overlap. Adjacent VMAs with the same flags stay
// separate, because Linux's vma_merge is not modelled. The set has no lock
// of its own. Its owner's mmap_lock guards it, shared for lookups and
// exclusive for changes.

#include <ptl/user/vma.hpp>

#include <algorithm>
#include <cassert>
#include <map>
#include <optional>
#include <vector>

namespace ptl::user {

class vma_set {
public:
	using map_type = std::map<uint64_t, vm_area>;

	// The VMA that contains addr (vma_lookup), or nullptr.
	const vm_area *lookup(uint64_t addr) const
	{
		const vm_area *vma = find(addr);
		return vma && vma->contains(addr) ? vma : nullptr;
	}

	// The first VMA that ends above addr (find_vma), or nullptr. It either
	// contains addr or lies wholly above it.
	const vm_area *find(uint64_t addr) const
	{
		auto above = vmas_.upper_bound(addr);
		if (above != vmas_.begin()) {
			const vm_area &below = std::prev(above)->second;
			if (below.end > addr)
				return &below;
		}
		return above == vmas_.end() ? nullptr : &above->second;
	}

	bool overlaps(uint64_t start, uint64_t end) const
	{
		const vm_area *vma = find(start);
		return vma && vma->start < end;
	}

	// Whether VMAs cover every address of [start, end), leaving no gap.
	bool covers(uint64_t start, uint64_t end) const
	{
		uint64_t addr = start;

		while (addr < end) {
			const vm_area *vma = lookup(addr);
			if (!vma)
				return false;
			addr = vma->end;
		}
		return true;
	}

	// The caller has checked that the range is free.
	void insert(const vm_area &vma)
	{
		assert(vma.start < vma.end);
		assert(!overlaps(vma.start, vma.end));
		vmas_.emplace(vma.start, vma);
	}

	// Makes addr a VMA boundary by splitting the VMA that contains it
	// (split_vma). A linear PFN-mapped VMA keeps mapping the same frames:
	// the upper part's pfn_base moves up by the pages left below addr.
	void split_at(uint64_t addr)
	{
		const vm_area *vma = lookup(addr);
		if (!vma || vma->start == addr)
			return;

		vm_area upper = *vma;
		upper.start = addr;
		upper.pfn_base = vma->linear_pfn(addr);

		vmas_.at(vma->start).end = addr;
		vmas_.emplace(upper.start, upper);
	}

	// Replaces the vm_flags of the VMA that starts at start, which must
	// exist. Its range stays as it is.
	void set_flags(uint64_t start, uint32_t flags) { vmas_.at(start).flags = flags; }

	// Removes and returns the VMAs that lie within [start, end). Both ends
	// must already be VMA boundaries or free addresses (see split_at).
	std::vector<vm_area> remove_range(uint64_t start, uint64_t end)
	{
		std::vector<vm_area> removed;
		auto it = vmas_.lower_bound(start);

		while (it != vmas_.end() && it->second.start < end) {
			// The caller splits at end first, so no VMA crosses it.
			assert(it->second.end <= end);
			removed.push_back(it->second);
			it = vmas_.erase(it);
		}
		return removed;
	}

	// Start of the highest free range of len bytes inside [low, high), or
	// nothing when no gap is large enough. Searching from the top down
	// follows Linux's default mmap layout.
	std::optional<uint64_t> find_free_range(uint64_t len, uint64_t low, uint64_t high) const
	{
		uint64_t gap_end = high;

		for (auto it = vmas_.rbegin(); it != vmas_.rend(); ++it) {
			const vm_area &vma = it->second;
			if (vma.start >= gap_end)
				continue;
			if (vma.end <= low)
				break;

			if (gap_fits(std::max(vma.end, low), gap_end, len))
				return gap_end - len;
			gap_end = vma.start;
			if (gap_end <= low)
				return std::nullopt;
		}

		if (gap_fits(low, gap_end, len))
			return gap_end - len;
		return std::nullopt;
	}

	// End of the highest VMA that ends at or below addr, or 0: the floor
	// below which an unmap of a range starting at addr must not free
	// tables. addr must not lie inside a VMA.
	uint64_t end_below(uint64_t addr) const
	{
		auto above = vmas_.lower_bound(addr);
		if (above == vmas_.begin())
			return 0;
		const vm_area &below = std::prev(above)->second;
		assert(below.end <= addr);
		return below.end;
	}

	// Start of the lowest VMA that starts at or above addr, or 0 for none
	// (the top of the address space): the ceiling of an unmap that ends
	// at addr.
	uint64_t start_above(uint64_t addr) const
	{
		auto above = vmas_.lower_bound(addr);
		return above == vmas_.end() ? 0 : above->second.start;
	}

	size_t size() const { return vmas_.size(); }
	bool empty() const { return vmas_.empty(); }
	map_type::const_iterator begin() const { return vmas_.begin(); }
	map_type::const_iterator end() const { return vmas_.end(); }

private:
	static bool gap_fits(uint64_t gap_start, uint64_t gap_end, uint64_t len)
	{
		return gap_start < gap_end && gap_end - gap_start >= len;
	}

	map_type vmas_;
};

} // namespace ptl::user
