#include <ptl/phys/frame_pool.hpp>

#include <sys/mman.h>

#include <algorithm>
#include <cassert>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

namespace ptl::phys {

namespace {

// Frame numbers must fit the 32-bit half of the free-list head.
constexpr size_t max_frames = (size_t{1} << 32) - 2;

constexpr size_t max_pools = 256;
std::array<std::atomic<frame_pool *>, max_pools> pool_registry{};

void *map_region(size_t bytes)
{
	void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		throw std::bad_alloc();
	return p;
}

size_t site_slot(alloc_site site)
{
	return static_cast<size_t>(site);
}

} // namespace

std::optional<alloc_site> parse_site(std::string_view name)
{
	for (size_t i = 0; i < nr_sites; i++) {
		if (site_name(static_cast<alloc_site>(i)) == name)
			return static_cast<alloc_site>(i);
	}
	return std::nullopt;
}

frame_pool::frame_pool(size_t nr_frames) : nr_frames_(nr_frames)
{
	if (nr_frames == 0 || nr_frames > max_frames)
		throw std::invalid_argument("frame pool size " + std::to_string(nr_frames) + " is out of range (1 to " +
					    std::to_string(max_frames) + " frames)");

	base_ = static_cast<std::byte *>(map_region(nr_frames * frame_size));
	meta_ = static_cast<page *>(map_region(nr_frames * sizeof(page)));
	register_pool();
}

frame_pool::~frame_pool()
{
	unregister_pool();
	munmap(meta_, nr_frames_ * sizeof(page));
	munmap(base_, nr_frames_ * frame_size);
}

void frame_pool::register_pool()
{
	for (auto &slot : pool_registry) {
		frame_pool *expected = nullptr;
		if (slot.compare_exchange_strong(expected, this, std::memory_order_acq_rel))
			return;
	}
	throw std::runtime_error("too many frame pools alive at once (the limit is " + std::to_string(max_pools) + ")");
}

void frame_pool::unregister_pool()
{
	for (auto &slot : pool_registry) {
		frame_pool *expected = this;
		if (slot.compare_exchange_strong(expected, nullptr, std::memory_order_acq_rel))
			return;
	}
}

frame_pool *frame_pool::pool_of(const void *address)
{
	for (auto &slot : pool_registry) {
		frame_pool *pool = slot.load(std::memory_order_acquire);
		if (pool && pool->contains(address))
			return pool;
	}
	return nullptr;
}

bool frame_pool::should_fail(alloc_site site)
{
	if (!faults_armed_.load(std::memory_order_relaxed))
		return false;

	if (fail_site_[site_slot(site)].load(std::memory_order_relaxed))
		return true;

	uint64_t countdown = fail_countdown_.load(std::memory_order_relaxed);
	while (countdown > 0) {
		if (fail_countdown_.compare_exchange_weak(countdown, countdown - 1, std::memory_order_relaxed))
			return countdown == 1;
	}

	const uint64_t threshold = fail_threshold_.load(std::memory_order_relaxed);
	if (threshold == 0)
		return false;

	// splitmix64 step: a fixed seed gives the same failures each run.
	uint64_t z = fail_rng_.fetch_add(0x9e3779b97f4a7c15ull, std::memory_order_relaxed) + 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (z >> 32) < threshold;
}

std::optional<pfn_t> frame_pool::pop_free()
{
	uint64_t head = free_head_.load(std::memory_order_acquire);

	for (;;) {
		const uint32_t top = static_cast<uint32_t>(head);
		if (top == 0)
			return std::nullopt;

		const pfn_t pfn = top - 1;
		const uint32_t next = meta_[pfn].next_free.load(std::memory_order_relaxed);
		const uint64_t tag = (head >> 32) + 1;
		if (free_head_.compare_exchange_weak(head, (tag << 32) | next, std::memory_order_acquire,
						     std::memory_order_acquire))
			return pfn;
	}
}

void frame_pool::push_free(pfn_t pfn)
{
	uint64_t head = free_head_.load(std::memory_order_relaxed);

	for (;;) {
		meta_[pfn].next_free.store(static_cast<uint32_t>(head), std::memory_order_relaxed);
		const uint64_t tag = (head >> 32) + 1;
		if (free_head_.compare_exchange_weak(head, (tag << 32) | (pfn + 1), std::memory_order_release,
						     std::memory_order_relaxed))
			return;
	}
}

// Fills an empty shard: freed frames from the shared list first, then a
// batch of frames never handed out.
void frame_pool::refill(shard &s)
{
	while (s.count < shard_batch) {
		const auto pfn = pop_free();
		if (!pfn)
			break;
		s.frames[s.count++] = *pfn | frame_used;
	}
	if (s.count > 0)
		return;

	const uint64_t first = next_unused_.fetch_add(shard_batch, std::memory_order_relaxed);
	if (first >= nr_frames_) {
		next_unused_.fetch_sub(shard_batch, std::memory_order_relaxed);
		steal(s);
		return;
	}

	// Hand out the batch lowest frame first. Untouched anonymous memory
	// reads as zero, so these frames need no clearing; their metadata is
	// constructed here, on first use.
	const uint64_t last = std::min<uint64_t>(first + shard_batch, nr_frames_);
	for (uint64_t pfn = last; pfn-- > first;) {
		new (&meta_[pfn]) page();
		s.frames[s.count++] = pfn;
	}
}

// Takes free frames from other threads' shards when the pool has no other
// free frame left, so a nearly full pool still hands out every frame. Only
// try_lock: the caller holds its own shard's lock, and two threads stealing
// from each other must not wait on each other.
void frame_pool::steal(shard &s) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	for (unsigned i = 0; i < sync::nr_shards && s.count == 0; i++) {
		shard &other = shards_[i];
		if (&other == &s || !other.lock.try_lock())
			continue;
		while (other.count > 0 && s.count < shard_batch)
			s.frames[s.count++] = other.frames[--other.count];
		other.lock.unlock();
	}
}

// Moves half of a full shard to the shared list.
void frame_pool::drain(shard &s)
{
	for (unsigned i = 0; i < shard_batch; i++)
		push_free(s.frames[--s.count] & ~frame_used);
}

result<pfn_t> frame_pool::alloc(alloc_site site)
{
	if (should_fail(site)) {
		failed_allocs_.fetch_add(1, std::memory_order_relaxed);
		return fail(errc::no_memory);
	}

	shard &s = current_shard();
	uint64_t entry;
	{
		sync::spin_guard guard(s.lock);
		if (s.count == 0)
			refill(s);
		if (s.count == 0) {
			failed_allocs_.fetch_add(1, std::memory_order_relaxed);
			return fail(errc::no_memory);
		}
		entry = s.frames[--s.count];
		s.in_use_by_site[site_slot(site)]++;
		s.allocs_by_site[site_slot(site)]++;
	}

	const pfn_t pfn = entry & ~frame_used;
	if (entry & frame_used) {
		// A reused frame holds whatever its last user wrote, and its
		// lock the statistics of its last use.
		std::memset(frame_address(pfn), 0, frame_size);
		meta_[pfn].ptl.reset_stats();
	}

	meta_[pfn].owner.store(nullptr, std::memory_order_relaxed);
	meta_[pfn].refcount.store(1, std::memory_order_relaxed);
	meta_[pfn].state.store(static_cast<uint8_t>(site_slot(site) + 1), std::memory_order_release);
	return pfn;
}

result<pfn_t> frame_pool::alloc_contig(uint64_t nr, alloc_site site)
{
	assert(nr != 0);
	assert((nr & (nr - 1)) == 0 && "nr must be a power of two");
	if (should_fail(site)) {
		failed_allocs_.fetch_add(1, std::memory_order_relaxed);
		return fail(errc::no_memory);
	}

	// Claim [first, first + nr) from the untouched part of the pool; the
	// frames skipped to align it go to the free list.
	uint64_t unused = next_unused_.load(std::memory_order_relaxed);
	uint64_t first;
	do {
		first = (unused + nr - 1) & ~(nr - 1);
		if (first + nr > nr_frames_ || first + nr < first) {
			failed_allocs_.fetch_add(1, std::memory_order_relaxed);
			return fail(errc::no_memory);
		}
	} while (!next_unused_.compare_exchange_weak(unused, first + nr, std::memory_order_relaxed));

	for (uint64_t pfn = unused; pfn < first; pfn++) {
		new (&meta_[pfn]) page();
		push_free(pfn);
	}

	// Never handed out, so they read as zero, as in refill().
	for (uint64_t pfn = first; pfn < first + nr; pfn++) {
		new (&meta_[pfn]) page();
		meta_[pfn].refcount.store(1, std::memory_order_relaxed);
		meta_[pfn].state.store(static_cast<uint8_t>(site_slot(site) + 1), std::memory_order_release);
	}

	shard &s = current_shard();
	sync::spin_guard guard(s.lock);
	s.in_use_by_site[site_slot(site)] += static_cast<int64_t>(nr);
	s.allocs_by_site[site_slot(site)] += nr;
	return first;
}

void frame_pool::free(pfn_t pfn)
{
	if (pfn >= nr_frames_ || pfn >= next_unused_.load(std::memory_order_relaxed)) {
		double_frees_.fetch_add(1, std::memory_order_relaxed);
		return;
	}

	const uint8_t state = meta_[pfn].state.exchange(0, std::memory_order_acq_rel);
	if (state == 0) {
		double_frees_.fetch_add(1, std::memory_order_relaxed);
		return;
	}
	meta_[pfn].refcount.store(0, std::memory_order_relaxed);

	shard &s = current_shard();
	sync::spin_guard guard(s.lock);
	if (s.count == shard_frames)
		drain(s);
	s.frames[s.count++] = pfn | frame_used;
	s.in_use_by_site[state - 1u]--;
	s.frees++;
}

void frame_pool::get_page(pfn_t pfn)
{
	const uint32_t before = meta_[pfn].refcount.fetch_add(1, std::memory_order_relaxed);
	assert(before != 0 && "get_page on a free frame");
	(void)before;
}

void frame_pool::put_page(pfn_t pfn)
{
	if (pfn >= nr_frames_) {
		double_frees_.fetch_add(1, std::memory_order_relaxed);
		return;
	}

	std::atomic<uint32_t> &refcount = meta_[pfn].refcount;
	uint32_t count = refcount.load(std::memory_order_relaxed);
	do {
		if (count == 0) {
			double_frees_.fetch_add(1, std::memory_order_relaxed);
			return;
		}
		// acq_rel: the last holder, which frees the frame, must see
		// every write that the other holders made to it.
	} while (!refcount.compare_exchange_weak(count, count - 1, std::memory_order_acq_rel,
						  std::memory_order_relaxed));

	if (count == 1)
		free(pfn);
}

uint32_t frame_pool::page_count(pfn_t pfn) const
{
	if (pfn >= nr_frames_)
		return 0;
	return meta_[pfn].refcount.load(std::memory_order_acquire);
}

std::optional<alloc_site> frame_pool::site_of(pfn_t pfn) const
{
	if (pfn >= nr_frames_ || pfn >= next_unused_.load(std::memory_order_relaxed))
		return std::nullopt;

	const uint8_t state = meta_[pfn].state.load(std::memory_order_acquire);
	if (state == 0)
		return std::nullopt;
	return static_cast<alloc_site>(state - 1);
}

uint64_t frame_pool::in_use(alloc_site site) const
{
	int64_t sum = 0;
	for (unsigned i = 0; i < sync::nr_shards; i++) {
		sync::spin_guard guard(shards_[i].lock);
		sum += shards_[i].in_use_by_site[site_slot(site)];
	}
	return static_cast<uint64_t>(sum);
}

uint64_t frame_pool::in_use() const
{
	uint64_t sum = 0;
	for (size_t site = 0; site < nr_sites; site++)
		sum += in_use(static_cast<alloc_site>(site));
	return sum;
}

pool_stats frame_pool::stats() const
{
	pool_stats s;
	s.nr_frames = nr_frames_;
	for (unsigned i = 0; i < sync::nr_shards; i++) {
		sync::spin_guard guard(shards_[i].lock);
		for (size_t site = 0; site < nr_sites; site++) {
			s.in_use_by_site[site] += static_cast<uint64_t>(shards_[i].in_use_by_site[site]);
			s.allocs_by_site[site] += shards_[i].allocs_by_site[site];
		}
		s.frees += shards_[i].frees;
	}
	for (size_t site = 0; site < nr_sites; site++)
		s.in_use += s.in_use_by_site[site];
	s.failed_allocs = failed_allocs_.load(std::memory_order_relaxed);
	s.double_frees = double_frees_.load(std::memory_order_relaxed);
	return s;
}

void frame_pool::prefault(size_t nr_frames)
{
	// Only frames never handed out, which no other thread touches.
	const size_t first = std::min<size_t>(next_unused_.load(std::memory_order_relaxed), nr_frames_);
	const size_t last = std::min(nr_frames, nr_frames_);
	if (first >= last)
		return;

	std::byte *start = base_ + first * frame_size;
	const size_t bytes = (last - first) * frame_size;
#if defined(MADV_POPULATE_WRITE)
	if (madvise(start, bytes, MADV_POPULATE_WRITE) == 0)
		return;
#endif
	// Kernels before 5.14: write a zero byte per page, which keeps the
	// untouched frames reading as zero.
	for (size_t offset = 0; offset < bytes; offset += frame_size)
		static_cast<volatile std::byte *>(static_cast<void *>(start))[offset] = std::byte{0};
}

void frame_pool::fail_nth(uint64_t n)
{
	fail_countdown_.store(n, std::memory_order_relaxed);
	faults_armed_.store(true, std::memory_order_relaxed);
}

void frame_pool::fail_site(alloc_site site, bool fail)
{
	fail_site_[site_slot(site)].store(fail, std::memory_order_relaxed);
	faults_armed_.store(true, std::memory_order_relaxed);
}

void frame_pool::fail_probability(double probability, uint64_t seed)
{
	if (!(probability >= 0.0 && probability <= 1.0))
		throw std::invalid_argument("failure probability " + std::to_string(probability) +
					    " is out of range (0 to 1)");

	fail_threshold_.store(static_cast<uint64_t>(probability * 4294967296.0), std::memory_order_relaxed);
	fail_rng_.store(seed, std::memory_order_relaxed);
	faults_armed_.store(true, std::memory_order_relaxed);
}

void frame_pool::clear_faults()
{
	faults_armed_.store(false, std::memory_order_relaxed);
	fail_countdown_.store(0, std::memory_order_relaxed);
	for (auto &f : fail_site_)
		f.store(false, std::memory_order_relaxed);
	fail_threshold_.store(0, std::memory_order_relaxed);
}

} // namespace ptl::phys
