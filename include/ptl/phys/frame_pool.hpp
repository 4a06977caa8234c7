#pragma once
// The frame pool: ptl's "physical memory" for page-table pages and for data
// pages that need backing.
//
// The pool is one contiguous, lazily backed region of 4 KiB frames, and a
// frame's number (PFN) is its index in the region, so entries hold PFNs as
// hardware does and the region can serve as a virtual machine's
// guest-physical memory (guest frame N is pool frame N).
//
// Allocation and free may be called from any thread. Each thread works on a
// cache of free frames of its own (a shard, as Linux's per-CPU page lists),
// refilled from and drained to a shared lock-free free list in batches, so
// that threads on different CPUs do not bounce one cache line per frame.
// Each allocation names its site (the level it is for, or data), which
// drives the per-site accounting and the fault injection.

#include <ptl/base/result.hpp>
#include <ptl/sync/sharded_counter.hpp>
#include <ptl/sync/spinlock.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

namespace ptl::phys {

using pfn_t = uint64_t;

inline constexpr size_t frame_size = 4096;

// The purpose a frame was allocated for. The first five match arch::level.
enum class alloc_site : uint8_t { pgd, p4d, pud, pmd, pte, data };
inline constexpr size_t nr_sites = 6;

constexpr std::string_view site_name(alloc_site s)
{
	constexpr std::array<std::string_view, nr_sites> names = {"pgd", "p4d", "pud", "pmd", "pte", "data"};
	return names[static_cast<size_t>(s)];
}

std::optional<alloc_site> parse_site(std::string_view name);

// Per-frame metadata, Linux's struct page for page-table pages.
struct page {
	// 0 when free, otherwise 1 + the alloc_site.
	std::atomic<uint8_t> state{0};
	// Next free frame plus one (0 ends the list); used only while free.
	std::atomic<uint32_t> next_free{0};
	// The address space whose tree holds this table, set when the table
	// is allocated. It lets pte_alloc_kernel find the kernel address space
	// from a pmd entry alone.
	std::atomic<void *> owner{nullptr};
	// Lock of a PTE table in split-lock mode.
	sync::spinlock ptl;
	// References to the frame (Linux's page_count): alloc sets 1, and a
	// data frame gains one more for each further PTE that maps it (fork)
	// and for each fault that copies it with the PTE lock dropped.
	std::atomic<uint32_t> refcount{0};
};

struct pool_stats {
	uint64_t nr_frames = 0;
	uint64_t in_use = 0;
	std::array<uint64_t, nr_sites> in_use_by_site{};
	std::array<uint64_t, nr_sites> allocs_by_site{};
	uint64_t frees = 0;
	uint64_t failed_allocs = 0; // injected failures plus real exhaustion
	uint64_t double_frees = 0;  // frees of a frame that was already free
};

class frame_pool {
public:
	// Reserves nr_frames frames of address space; memory is committed only
	// when a frame is first written.
	explicit frame_pool(size_t nr_frames);
	~frame_pool();
	frame_pool(const frame_pool &) = delete;
	frame_pool &operator=(const frame_pool &) = delete;

	// Returns a zeroed frame, or errc::no_memory when the pool is exhausted
	// or a fault was injected for this allocation.
	result<pfn_t> alloc(alloc_site site);

	// Returns nr physically contiguous zeroed frames, the first aligned to
	// nr, for a huge page; nr must be a power of two. They come from the
	// part of the pool never handed out, so this fails with
	// errc::no_memory once that part is too small, even when enough
	// frames are free elsewhere (the pool does not compact). Each frame
	// is freed on its own, with free() or put_page().
	result<pfn_t> alloc_contig(uint64_t nr, alloc_site site);

	// Returns a frame to the pool. A frame that is already free is counted
	// in double_frees and left alone, so audits can report the bug.
	void free(pfn_t pfn);

	// Takes one more reference to an allocated frame (get_page).
	void get_page(pfn_t pfn);
	// Drops one reference (put_page) and frees the frame when it was the
	// last. Dropping a reference that is not there counts in double_frees.
	void put_page(pfn_t pfn);
	// References the frame has now: 0 when it is free.
	uint32_t page_count(pfn_t pfn) const;

	void *frame_address(pfn_t pfn) const { return base_ + pfn * frame_size; }
	pfn_t pfn_of(const void *address) const
	{
		return static_cast<pfn_t>((static_cast<const std::byte *>(address) - base_) / frame_size);
	}
	bool contains(const void *address) const
	{
		auto *p = static_cast<const std::byte *>(address);
		return p >= base_ && p < base_ + nr_frames_ * frame_size;
	}
	bool valid_pfn(pfn_t pfn) const { return pfn < nr_frames_; }

	page &page_of(pfn_t pfn) const { return meta_[pfn]; }
	// The site a frame is allocated for, or nothing when it is free.
	std::optional<alloc_site> site_of(pfn_t pfn) const;

	std::byte *base() const { return base_; }
	size_t nr_frames() const { return nr_frames_; }

	pool_stats stats() const;
	uint64_t in_use() const;
	uint64_t in_use(alloc_site site) const;

	// Commits memory for the first nr_frames frames now, so that a
	// benchmark does not time the host kernel's page faults on first
	// touch. Frames stay free and read as zero.
	void prefault(size_t nr_frames);

	// Fault injection. Each setting stays until clear_faults().
	// Fail the nth allocation counted from now (1 = the next one), once.
	void fail_nth(uint64_t n);
	// Fail every allocation at this site.
	void fail_site(alloc_site site, bool fail = true);
	// Fail each allocation with this probability, from a fixed seed.
	void fail_probability(double probability, uint64_t seed);
	void clear_faults();

	// The pool that contains address, or nullptr. Lets code that holds only an
	// entry pointer reach the frame's metadata, as virt_to_page does.
	static frame_pool *pool_of(const void *address);

private:
	// Frames a shard keeps, and how many it moves to or from the shared
	// free list at a time.
	static constexpr unsigned shard_frames = 64;
	static constexpr unsigned shard_batch = 32;

	// One thread's cache of free frames and its share of the counters.
	// Bit 63 of a cached entry marks a frame that was used before and must
	// be zeroed when it is handed out again.
	struct alignas(64) shard {
		sync::spinlock lock;
		unsigned count = 0;
		std::array<uint64_t, shard_frames> frames{};
		std::array<int64_t, nr_sites> in_use_by_site{};
		std::array<uint64_t, nr_sites> allocs_by_site{};
		uint64_t frees = 0;
	};
	static constexpr uint64_t frame_used = uint64_t{1} << 63;

	bool should_fail(alloc_site site);
	std::optional<pfn_t> pop_free();
	void push_free(pfn_t pfn);
	void refill(shard &s);
	void steal(shard &s);
	void drain(shard &s);
	shard &current_shard() const { return shards_[sync::current_shard()]; }
	void register_pool();
	void unregister_pool();

	std::byte *base_ = nullptr;
	page *meta_ = nullptr;
	size_t nr_frames_ = 0;

	// Frames never handed out start at next_unused_; freed frames go on a
	// Treiber stack whose head packs a 32-bit tag (against ABA) above the
	// 32-bit frame number plus one.
	std::atomic<uint64_t> next_unused_{0};
	std::atomic<uint64_t> free_head_{0};

	std::unique_ptr<shard[]> shards_ = std::make_unique<shard[]>(sync::nr_shards);
	std::atomic<uint64_t> failed_allocs_{0};
	std::atomic<uint64_t> double_frees_{0};

	std::atomic<bool> faults_armed_{false};
	std::atomic<uint64_t> fail_countdown_{0};
	std::array<std::atomic<bool>, nr_sites> fail_site_{};
	std::atomic<uint64_t> fail_threshold_{0}; // probability scaled to 2^32
	std::atomic<uint64_t> fail_rng_{0};
};

} // namespace ptl::phys
