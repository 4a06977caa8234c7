#include <ptl/phys/frame_pool.hpp>

#include <sys/mman.h>

#include <algorithm>
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

result<pfn_t> frame_pool::alloc(alloc_site site)
{
	if (should_fail(site)) {
		failed_allocs_.fetch_add(1, std::memory_order_relaxed);
		return fail(errc::no_memory);
	}

	std::optional<pfn_t> pfn = pop_free();
	if (pfn) {
		// A reused frame holds whatever its last user wrote, and its
		// lock the statistics of its last use.
		std::memset(frame_address(*pfn), 0, frame_size);
		meta_[*pfn].ptl.reset_stats();
	} else {
		const uint64_t fresh = next_unused_.fetch_add(1, std::memory_order_relaxed);
		if (fresh >= nr_frames_) {
			next_unused_.fetch_sub(1, std::memory_order_relaxed);
			failed_allocs_.fetch_add(1, std::memory_order_relaxed);
			return fail(errc::no_memory);
		}
		// Untouched anonymous memory reads as zero, so a fresh frame
		// needs no clearing; its metadata is constructed on first use.
		new (&meta_[fresh]) page();
		pfn = fresh;
	}

	meta_[*pfn].owner.store(nullptr, std::memory_order_relaxed);
	meta_[*pfn].state.store(static_cast<uint8_t>(site_slot(site) + 1), std::memory_order_release);
	in_use_.fetch_add(1, std::memory_order_relaxed);
	in_use_by_site_[site_slot(site)].fetch_add(1, std::memory_order_relaxed);
	allocs_by_site_[site_slot(site)].fetch_add(1, std::memory_order_relaxed);
	return *pfn;
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

	in_use_.fetch_sub(1, std::memory_order_relaxed);
	in_use_by_site_[state - 1u].fetch_sub(1, std::memory_order_relaxed);
	frees_.fetch_add(1, std::memory_order_relaxed);
	push_free(pfn);
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
	return in_use_by_site_[site_slot(site)].load(std::memory_order_relaxed);
}

pool_stats frame_pool::stats() const
{
	pool_stats s;
	s.nr_frames = nr_frames_;
	s.in_use = in_use_.load(std::memory_order_relaxed);
	for (size_t i = 0; i < nr_sites; i++) {
		s.in_use_by_site[i] = in_use_by_site_[i].load(std::memory_order_relaxed);
		s.allocs_by_site[i] = allocs_by_site_[i].load(std::memory_order_relaxed);
	}
	s.frees = frees_.load(std::memory_order_relaxed);
	s.failed_allocs = failed_allocs_.load(std::memory_order_relaxed);
	s.double_frees = double_frees_.load(std::memory_order_relaxed);
	return s;
}

void frame_pool::prefault(size_t nr_frames)
{
	// Only frames never handed out: nobody else touches them.
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
