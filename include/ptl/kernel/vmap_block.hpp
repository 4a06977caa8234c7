#pragma once
// Per-thread vmap blocks: the address allocator behind vm_map_ram, as
// Linux's mm/vmalloc.c has it for small, short-lived kernel mappings.
//
// vmap takes the vmalloc area allocator's lock twice per mapping (reserve,
// then detach and release), so many threads mapping small ranges serialise
// on it. vm_map_ram instead carves its ranges out of a block that the
// calling thread's shard owns, under that shard's own lock, and the shared
// state is touched once per block. The blocks live in one region reserved
// from the vmalloc area on first use. A block is block_pages pages, and it
// is reused once it is full and every range carved from it has been freed.
//
// Ranges carved from a block have no guard page between them, as in Linux.

#include <ptl/arch/geometry.hpp>
#include <ptl/base/result.hpp>
#include <ptl/sync/sharded_counter.hpp>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace ptl::kernel {

class vmap_blocks {
public:
	static constexpr unsigned block_pages = 256;
	// Larger requests go to vmap, as VMAP_MAX_ALLOC does in Linux.
	static constexpr unsigned max_pages = 64;
	static constexpr uint64_t block_bytes = uint64_t{block_pages} * arch::page_size;

	// Manages nr_blocks blocks starting at base, which is block aligned.
	vmap_blocks(uint64_t base, unsigned nr_blocks)
		: base_(base), nr_blocks_(nr_blocks), blocks_(std::make_unique<block[]>(nr_blocks))
	{
		for (unsigned i = nr_blocks; i-- > 0;)
			free_blocks_.push_back(i);
	}

	uint64_t base() const { return base_; }
	uint64_t end() const { return base_ + uint64_t{nr_blocks_} * block_bytes; }
	bool contains(uint64_t addr) const { return addr >= base_ && addr < end(); }

	// Reserves count pages (1 to max_pages) from the calling thread's
	// block. Fails with errc::no_space when no block is free.
	result<uint64_t> alloc(unsigned count)
	{
		cpu_block &cpu = cpus_[sync::current_shard()];
		sync::spin_guard guard(cpu.lock);

		if (cpu.current < 0 || blocks_[cpu.current].next.load(std::memory_order_relaxed) + count > block_pages) {
			if (cpu.current >= 0)
				retire(static_cast<unsigned>(cpu.current));
			cpu.current = take_free_block();
			if (cpu.current < 0)
				return fail(errc::no_space);
		}

		block &b = blocks_[cpu.current];
		const unsigned first = b.next.load(std::memory_order_relaxed);
		b.sizes[first].store(static_cast<uint8_t>(count), std::memory_order_relaxed);
		b.next.store(first + count, std::memory_order_relaxed);
		return block_address(static_cast<unsigned>(cpu.current)) + uint64_t{first} * arch::page_size;
	}

	// Claims the range that starts at addr for freeing and returns its
	// page count, or 0 when addr is not the start of a live range (never
	// allocated, or freed already). The caller clears the range's PTEs
	// and then calls release().
	unsigned claim(uint64_t addr)
	{
		if (!contains(addr) || addr % arch::page_size != 0)
			return 0;

		block &b = blocks_[block_index(addr)];
		const unsigned first = static_cast<unsigned>((addr - base_) % block_bytes / arch::page_size);
		return b.sizes[first].exchange(0, std::memory_order_acq_rel);
	}

	// Undoes a claim that the caller decided not to free.
	void unclaim(uint64_t addr, unsigned count)
	{
		block &b = blocks_[block_index(addr)];
		const unsigned first = static_cast<unsigned>((addr - base_) % block_bytes / arch::page_size);
		b.sizes[first].store(static_cast<uint8_t>(count), std::memory_order_release);
	}

	// Returns the pages of a claimed range to its block, after its PTEs
	// were cleared. The last release of a retired block makes it free.
	void release(uint64_t addr, unsigned count)
	{
		const unsigned index = block_index(addr);
		const uint64_t freed = blocks_[index].freed.fetch_add(count, std::memory_order_acq_rel) + count;
		maybe_recycle(index, freed);
	}

private:
	// Added to freed when the owner stops carving from a block. Both the
	// retiring owner and each release add to freed atomically, so exactly
	// one of them reads the block's final count and recycles it.
	static constexpr uint64_t retired = uint64_t{1} << 32;

	struct block {
		std::atomic<unsigned> next{0};   // first page not carved yet
		std::atomic<uint64_t> freed{0};  // pages released, plus retired
		std::array<std::atomic<uint8_t>, block_pages> sizes{}; // pages of the range starting here
	};

	struct alignas(64) cpu_block {
		sync::spinlock lock;
		int current = -1;
	};

	uint64_t block_address(unsigned index) const { return base_ + uint64_t{index} * block_bytes; }
	unsigned block_index(uint64_t addr) const { return static_cast<unsigned>((addr - base_) / block_bytes); }

	void retire(unsigned index)
	{
		const uint64_t freed = blocks_[index].freed.fetch_add(retired, std::memory_order_acq_rel) + retired;
		maybe_recycle(index, freed);
	}

	// A block whose every carved page is released after it was retired
	// goes back on the free list. next no longer changes once it is
	// retired, and the acq_rel additions order the read after the writes.
	void maybe_recycle(unsigned index, uint64_t freed)
	{
		block &b = blocks_[index];
		if (freed != retired + b.next.load(std::memory_order_relaxed))
			return;

		b.next.store(0, std::memory_order_relaxed);
		b.freed.store(0, std::memory_order_relaxed);
		sync::spin_guard guard(free_lock_);
		free_blocks_.push_back(index);
	}

	int take_free_block()
	{
		sync::spin_guard guard(free_lock_);
		if (free_blocks_.empty())
			return -1;
		const unsigned index = free_blocks_.back();
		free_blocks_.pop_back();
		return static_cast<int>(index);
	}

	const uint64_t base_;
	const unsigned nr_blocks_;
	std::unique_ptr<block[]> blocks_;
	std::array<cpu_block, sync::nr_shards> cpus_{};

	sync::spinlock free_lock_;
	std::vector<unsigned> free_blocks_;
};

} // namespace ptl::kernel
