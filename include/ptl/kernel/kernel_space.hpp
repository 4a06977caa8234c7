#pragma once
// The kernel address space: init_mm and the vmalloc area, with the calls
// that map into it (vmap, vmalloc, ioremap) and unmap again.
//
// Mapping takes no page-table lock outside lock_mode::legacy. Each call
// first reserves a range from the area allocator, which makes it the only
// task that touches the PTEs of that range. Table population is the only
// step that synchronises with other tasks. Unmapping frees the tables left
// empty under the area's free range, under the allocator's lock, so that no
// task reserves a neighbour there meanwhile (see release_area). A call that
// fails leaves nothing mapped and nothing allocated.

#include <ptl/kernel/vmalloc_area.hpp>
#include <ptl/mm/free_pgtables.hpp>
#include <ptl/kernel/vmap.hpp>
#include <ptl/kernel/vmap_block.hpp>
#include <ptl/sync/sharded_counter.hpp>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <span>

namespace ptl::kernel {

struct kernel_counters {
	uint64_t maps = 0;         // maps that set every PTE (vmap, vmalloc, ioremap, map_vm_area)
	uint64_t map_failures = 0; // maps that failed partway and were rolled back
	uint64_t pages_mapped = 0; // kernel PTEs set now
	uint64_t areas_live = 0;   // areas reserved in the vmalloc area now
};

template <class G>
class kernel_space {
public:
	using format = typename G::format;

	// Creates init_mm in pool with the given lock mode; fails with
	// errc::no_memory when the pool cannot supply its pgd.
	static result<std::unique_ptr<kernel_space>> create(phys::frame_pool &pool,
							     mm::lock_mode mode = mm::lock_mode::pushdown)
	{
		auto init_mm = mm::kernel_mm<G>::create(pool, mode);
		if (!init_mm)
			return fail(init_mm.error());
		return std::unique_ptr<kernel_space>(new kernel_space(std::move(*init_mm)));
	}

	// Frees the frames of vmalloc areas still live, then every table.
	// Frames behind vmap areas belong to their callers and are left alone.
	~kernel_space()
	{
		areas_.for_each_area([&](vm_struct &area) {
			for (pfn_t pfn : area.pages)
				pool().free(pfn);
		});
	}

	kernel_space(const kernel_space &) = delete;
	kernel_space &operator=(const kernel_space &) = delete;

	mm::kernel_mm<G> &init_mm() { return *init_mm_; }
	const mm::kernel_mm<G> &init_mm() const { return *init_mm_; }
	phys::frame_pool &pool() const { return init_mm_->pool(); }
	const vmalloc_area &areas() const { return areas_; }

	// Reserves an unmapped area of size bytes, rounded up to whole pages,
	// in the vmalloc area. Fails with errc::invalid_argument for a zero or
	// overflowing size or for flags other than one vm_flags value, and
	// with errc::no_space when no free range is large enough.
	result<vm_struct *> get_vm_area(uint64_t size, uint32_t flags)
	{
		auto rounded = page_align(size);
		if (!rounded)
			return fail(rounded.error());
		return areas_.reserve(*rounded, flags);
	}

	// The area that starts at addr, or nullptr. Valid while its owner keeps it.
	vm_struct *find_vm_area(uint64_t addr) const { return areas_.find(addr); }

	// Unmaps the area that starts at addr and frees its range, handing the
	// area to the caller, who frees the frames in its pages. Also frees an
	// area whose map_vm_area failed. Fails with errc::not_found when no
	// area starts at addr.
	result<std::unique_ptr<vm_struct>> remove_vm_area(uint64_t addr)
	{
		return remove_area(addr, vm_flags_mask);
	}

	// Sets the PTEs of an area the caller reserved, so that page i of the
	// area maps pages[i] with prot. Fails with errc::invalid_argument
	// unless pages covers the area exactly and prot passes
	// valid_kernel_prot. After errc::no_memory nothing of the area is
	// mapped, and the caller frees the area with remove_vm_area.
	result<void> map_vm_area(const vm_struct &area, uint64_t prot, std::span<const pfn_t> pages)
	{
		if (pages.size() != area.nr_pages() || !valid_kernel_prot(prot) || !valid_pfns(pages))
			return fail(errc::invalid_argument);

		map_cursor cursor(area.addr, pages);
		return map_range(area, prot, cursor);
	}

	// Maps pages at a fresh kernel address and returns it. The frames stay
	// the caller's. Fails with errc::invalid_argument for no pages, a frame
	// number above the format's maximum or a prot that valid_kernel_prot
	// rejects. Fails with errc::no_space when the vmalloc area is full and
	// with errc::no_memory when a table cannot be populated.
	result<uint64_t> vmap(std::span<const pfn_t> pages, uint64_t prot = page_kernel)
	{
		if (pages.empty() || !valid_kernel_prot(prot) || !valid_pfns(pages))
			return fail(errc::invalid_argument);
		if (pages.size() > (areas_.end() - areas_.start()) / arch::page_size)
			return fail(errc::no_space);

		auto area = areas_.reserve(pages.size() * arch::page_size, vm_map);
		if (!area)
			return fail(area.error());

		auto r = map_vm_area(**area, prot, pages);
		if (!r) {
			release_area(*area);
			return fail(r.error());
		}
		return (*area)->addr;
	}

	// Maps nr_pages physically contiguous frames from first_pfn at a fresh
	// kernel address and returns it (vmap_pfn). The area is aligned so
	// that every block of the range that an aligned pmd or pud entry can
	// map whole is mapped by one huge leaf, as ioremap does. Unmap with
	// vunmap. Fails as vmap does.
	result<uint64_t> vmap_pfn_range(pfn_t first_pfn, uint64_t nr_pages, uint64_t prot = page_kernel)
	{
		if (nr_pages == 0 || !valid_kernel_prot(prot) || first_pfn > format::max_pfn ||
		    nr_pages - 1 > format::max_pfn - first_pfn)
			return fail(errc::invalid_argument);
		if (nr_pages > (areas_.end() - areas_.start()) / arch::page_size)
			return fail(errc::no_space);

		auto area = areas_.reserve(nr_pages * arch::page_size, vm_map, huge_align(first_pfn, nr_pages));
		if (!area)
			return fail(area.error());

		map_cursor cursor((*area)->addr, first_pfn);
		auto r = map_range(**area, prot, cursor);
		if (!r) {
			release_area(*area);
			return fail(r.error());
		}
		return (*area)->addr;
	}

	// Unmaps an area that vmap returned. Fails with errc::invalid_argument
	// for an unaligned address or an area that vmap did not create, and
	// with errc::not_found when no area starts at addr.
	result<void> vunmap(uint64_t addr)
	{
		if (addr % arch::page_size != 0)
			return fail(errc::invalid_argument);

		auto area = remove_area(addr, vm_map);
		if (!area)
			return fail(area.error());
		return {};
	}

	// Maps pages at an address carved from the calling thread's vmap
	// block, taking the vmalloc area lock only once per block instead of
	// per mapping (Linux's vm_map_ram). More than vmap_blocks::max_pages
	// pages go to vmap. Fails with errc::invalid_argument for no pages, a
	// bad prot or PFN, with errc::no_space when every block is in use, and
	// with errc::no_memory when a table cannot be allocated, leaving
	// nothing mapped.
	result<uint64_t> vm_map_ram(std::span<const pfn_t> pages, uint64_t prot = page_kernel)
	{
		if (pages.empty() || !valid_kernel_prot(prot) || !valid_pfns(pages))
			return fail(errc::invalid_argument);
		if (pages.size() > vmap_blocks::max_pages)
			return vmap(pages, prot);

		auto blocks = map_ram_blocks();
		if (!blocks)
			return fail(blocks.error());

		const auto count = static_cast<unsigned>(pages.size());
		auto addr = (*blocks)->alloc(count);
		if (!addr)
			return fail(addr.error());

		map_cursor cursor(*addr, pages);
		auto r = map_kernel_range(*init_mm_, *addr, *addr + count * arch::page_size, prot, cursor);
		if (!r) {
			// map_kernel_range cleared what it set; give the pages back.
			map_failures_.add(1);
			(*blocks)->claim(*addr);
			(*blocks)->release(*addr, count);
			return fail(r.error());
		}

		maps_.add(1);
		pages_mapped_.add(count);
		return *addr;
	}

	// Unmaps what vm_map_ram mapped at addr; count must be the number of
	// pages it was given (Linux's vm_unmap_ram). Fails with
	// errc::invalid_argument for an unaligned addr, a zero count or a
	// count that differs from the mapping's, and with errc::not_found when
	// no vm_map_ram mapping starts at addr.
	result<void> vm_unmap_ram(uint64_t addr, uint64_t count)
	{
		if (count == 0 || addr % arch::page_size != 0)
			return fail(errc::invalid_argument);
		if (count > vmap_blocks::max_pages)
			return vunmap(addr);

		vmap_blocks *blocks = map_ram_.get();
		if (!blocks || !blocks->contains(addr))
			return fail(errc::not_found);

		const unsigned claimed = blocks->claim(addr);
		if (claimed == 0)
			return fail(errc::not_found);
		if (claimed != count) {
			blocks->unclaim(addr, claimed);
			return fail(errc::invalid_argument);
		}

		const uint64_t cleared = unmap_kernel_range(*init_mm_, addr, addr + count * arch::page_size);
		pages_mapped_.add(-static_cast<int64_t>(cleared));
		blocks->release(addr, claimed);
		return {};
	}

	// Allocates size bytes, rounded up to whole pages, of zeroed data frames
	// and maps them with page_kernel. Fails with errc::invalid_argument for
	// a zero or overflowing size and with errc::no_space when the vmalloc
	// area is full. Fails with errc::no_memory when frames or tables run
	// out, after freeing every frame it took.
	result<uint64_t> vmalloc(uint64_t size)
	{
		auto area = get_vm_area(size, vm_alloc);
		if (!area)
			return fail(area.error());

		// A request larger than the whole pool can never be met; fail
		// before taking any frame.
		if ((*area)->nr_pages() > pool().nr_frames()) {
			release_area(*area);
			return fail(errc::no_memory);
		}

		auto r = alloc_pages(**area);
		if (r)
			r = map_vm_area(**area, page_kernel, (*area)->pages);
		if (!r) {
			free_pages(*release_area(*area));
			return fail(r.error());
		}
		return (*area)->addr;
	}

	// Unmaps an area that vmalloc returned and frees its frames. Fails
	// with errc::invalid_argument for an unaligned address or an area that
	// vmalloc did not create, and with errc::not_found when no area starts
	// at addr.
	result<void> vfree(uint64_t addr)
	{
		if (addr % arch::page_size != 0)
			return fail(errc::invalid_argument);

		auto area = remove_area(addr, vm_alloc);
		if (!area)
			return fail(area.error());

		free_pages(**area);
		return {};
	}

	// Maps the physical range [phys_addr, phys_addr + size) uncached and
	// returns the virtual address of phys_addr. The area starts at the page
	// that contains phys_addr, so the result carries phys_addr's offset in
	// that page. Fails with errc::invalid_argument for a zero size, a range
	// that wraps or one that ends above the format's maximum frame number,
	// and with errc::no_space or errc::no_memory as vmap does.
	result<uint64_t> ioremap(uint64_t phys_addr, uint64_t size)
	{
		if (size == 0 || phys_addr + size - 1 < phys_addr)
			return fail(errc::invalid_argument);

		const pfn_t first_pfn = phys_addr >> arch::page_shift;
		const pfn_t last_pfn = (phys_addr + size - 1) >> arch::page_shift;
		if (last_pfn > format::max_pfn)
			return fail(errc::invalid_argument);

		const uint64_t nr_pages = last_pfn - first_pfn + 1;
		if (nr_pages > (areas_.end() - areas_.start()) / arch::page_size)
			return fail(errc::no_space);

		auto area = areas_.reserve(nr_pages * arch::page_size, vm_ioremap, huge_align(first_pfn, nr_pages));
		if (!area)
			return fail(area.error());
		(*area)->phys_addr = phys_addr;

		map_cursor cursor((*area)->addr, first_pfn);
		auto r = map_range(**area, page_kernel_nocache, cursor);
		if (!r) {
			release_area(*area);
			return fail(r.error());
		}
		return (*area)->addr + page_offset(phys_addr);
	}

	// Unmaps a range that ioremap mapped, given the address ioremap
	// returned, offset included. Fails with errc::invalid_argument for any
	// other offset or for an area that ioremap did not create, and with
	// errc::not_found when no area starts at addr's page.
	result<void> iounmap(uint64_t addr)
	{
		const uint64_t start = addr - page_offset(addr);

		auto area = areas_.detach(start, vm_ioremap);
		if (!area)
			return fail(area.error());

		if (page_offset((*area)->phys_addr) != page_offset(addr)) {
			// ioremap never returned this address, so the area
			// goes back to lookups untouched.
			areas_.reattach(*area);
			return fail(errc::invalid_argument);
		}

		unmap_and_release(*area);
		return {};
	}

	kernel_counters counters() const
	{
		kernel_counters c;
		c.maps = static_cast<uint64_t>(maps_.read());
		c.map_failures = static_cast<uint64_t>(map_failures_.read());
		c.pages_mapped = static_cast<uint64_t>(pages_mapped_.read());
		c.areas_live = areas_.nr_live();
		return c;
	}

private:
	explicit kernel_space(std::unique_ptr<mm::kernel_mm<G>> init_mm)
		: init_mm_(std::move(init_mm)), areas_(G::vmalloc_start, G::vmalloc_end)
	{
	}

	static uint64_t page_offset(uint64_t addr) { return addr & (arch::page_size - 1); }

	// Returns the alignment for the area of a contiguous run of frames, so
	// that huge leaves can map it. It is the span of the largest leaf level
	// whose entry the run fills at least once and to whose span its first
	// frame is aligned, and a page otherwise.
	static uint64_t huge_align(pfn_t first_pfn, uint64_t nr_pages)
	{
		for (level l : {level::pud, level::pmd}) {
			if (arch::is_folded<G>(l))
				continue;
			const uint64_t frames = arch::entry_span<G>(l) >> arch::page_shift;
			if (nr_pages >= frames && first_pfn % frames == 0)
				return arch::entry_span<G>(l);
		}
		return arch::page_size;
	}

	// Rounds size up to whole pages. Fails with errc::invalid_argument for
	// zero or a size that wraps when rounded.
	static result<uint64_t> page_align(uint64_t size)
	{
		if (size == 0 || size > ~uint64_t{0} - (arch::page_size - 1))
			return fail(errc::invalid_argument);
		return (size + arch::page_size - 1) & ~(arch::page_size - 1);
	}

	static bool valid_pfns(std::span<const pfn_t> pages)
	{
		for (pfn_t pfn : pages) {
			if (pfn > format::max_pfn)
				return false;
		}
		return true;
	}

	result<void> map_range(const vm_struct &area, uint64_t prot, map_cursor &cursor)
	{
		auto r = map_kernel_range(*init_mm_, area.addr, area.end(), prot, cursor);
		if (!r) {
			map_failures_.add(1);
			return r;
		}

		maps_.add(1);
		pages_mapped_.add(static_cast<int64_t>(area.nr_pages()));
		return {};
	}

	// Takes the area out of lookups, clears its PTEs and only then frees
	// its range, so the next owner of the range finds every PTE empty.
	result<std::unique_ptr<vm_struct>> remove_area(uint64_t addr, uint32_t expected_flags)
	{
		auto area = areas_.detach(addr, expected_flags);
		if (!area)
			return fail(area.error());
		return unmap_and_release(*area);
	}

	std::unique_ptr<vm_struct> unmap_and_release(vm_struct *area)
	{
		const uint64_t cleared = unmap_kernel_range(*init_mm_, area->addr, area->end());
		pages_mapped_.add(-static_cast<int64_t>(cleared));
		return release_area(area);
	}

	// Frees the area's range, and with it the tables that the area's
	// unmap left empty and that cover no other area. The area's PTEs must
	// be clear.
	std::unique_ptr<vm_struct> release_area(vm_struct *area)
	{
		mm::table_batch batch;
		auto released = areas_.release(area, [&](uint64_t floor, uint64_t ceiling) {
#if defined(PTL_MUTANT_IGNORE_BOUNDS)
			// Broken on purpose: frees every empty table under the
			// area, also those that cover a neighbour being mapped.
			floor = 0;
			ceiling = 0;
#endif
			mm::walk_guard<G> walk(*init_mm_);
			mm::free_pgd_range(*init_mm_, area->addr, area->end(), floor, ceiling, batch);
		});

		// Outside the allocator's lock, which the grace period would
		// otherwise hold up.
		mm::free_table_batch(*init_mm_, batch);
		return released;
	}

	// Fills area.pages with one zeroed data frame per page. On failure the
	// frames taken so far stay in area.pages for free_pages.
	result<void> alloc_pages(vm_struct &area)
	{
		for (uint64_t i = 0; i < area.nr_pages(); i++) {
			auto pfn = pool().alloc(phys::alloc_site::data);
			if (!pfn)
				return fail(pfn.error());
			area.pages.push_back(*pfn);
		}
		return {};
	}

	void free_pages(vm_struct &area)
	{
		for (pfn_t pfn : area.pages)
			pool().free(pfn);
		area.pages.clear();
	}

	// The region of vmap blocks, reserved from the vmalloc area by the
	// first vm_map_ram. A quarter of the area, at most 1024 blocks.
	result<vmap_blocks *> map_ram_blocks()
	{
		std::call_once(map_ram_once_, [this] {
			const uint64_t area_bytes = G::vmalloc_end - G::vmalloc_start;
			const uint64_t nr_blocks = std::min<uint64_t>(1024, area_bytes / 4 / vmap_blocks::block_bytes);
			if (nr_blocks == 0)
				return;

			auto region = areas_.reserve(nr_blocks * vmap_blocks::block_bytes, vm_ram_blocks);
			if (region)
				map_ram_ = std::make_unique<vmap_blocks>((*region)->addr, static_cast<unsigned>(nr_blocks));
		});

		if (!map_ram_)
			return fail(errc::no_space);
		return map_ram_.get();
	}

	std::unique_ptr<mm::kernel_mm<G>> init_mm_;
	vmalloc_area areas_;
	std::once_flag map_ram_once_;
	std::unique_ptr<vmap_blocks> map_ram_;

	sync::sharded_counter maps_;
	sync::sharded_counter map_failures_;
	sync::sharded_counter pages_mapped_;
};

} // namespace ptl::kernel
