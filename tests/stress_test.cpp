// Randomized stress: many threads run random operations on user regions and
// kernel areas whose directory tables they share, and check every result
// against a reference model of what each page must translate to. Built and
// run under AddressSanitizer and ThreadSanitizer too.
//
// PTL_LOCK_MODE picks the lock mode (see lock_mode_env.hpp) and
// PTL_STRESS_OPS the number of operations of one run (default 250,000, so
// the four lock modes together run 10^6).

#include "geometries.hpp"
#include "lock_mode_env.hpp"

#include <ptl/check/audit.hpp>
#include <ptl/kernel/kernel_space.hpp>
#include <ptl/user/user_space.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

using namespace ptl;
using G = arch::native;
using user::access_type;

namespace {

constexpr uint64_t page = arch::page_size;
constexpr unsigned nr_threads = 4;
// Pages per thread's region; regions are adjacent, 2 MiB apart, so
// neighbours share pud and pmd tables and the edges of PTE tables.
constexpr uint64_t region_pages = 512;
constexpr uint64_t region_base = 0x0000100000000000;

uint64_t ops_per_run()
{
	const char *text = std::getenv("PTL_STRESS_OPS");
	if (!text)
		return 250'000;
	const uint64_t ops = std::strtoull(text, nullptr, 10);
	return ops == 0 ? 250'000 : ops;
}

// What one page of a region must translate to.
enum class page_state : uint8_t { unmapped, anon, pfn };

// A thread's own region: an anonymous half and a PFN-mapped half, with the
// reference model of each page.
struct region {
	uint64_t anon_start;
	uint64_t pfn_start;
	std::vector<page_state> anon_model = std::vector<page_state>(region_pages, page_state::unmapped);
	std::vector<page_state> pfn_model = std::vector<page_state>(region_pages, page_state::unmapped);
};

// Frames each thread vmaps, disjoint between threads.
constexpr uint64_t kernel_pfns_per_thread = 0x10000;

uint64_t kernel_pfn_base(unsigned thread)
{
	return 0x200000 + thread * kernel_pfns_per_thread;
}

uint64_t pfn_for(unsigned thread, uint64_t index)
{
	return 0x100000 + thread * region_pages + index;
}

class stress_worker {
public:
	stress_worker(user::user_space<G> &space, kernel::kernel_space<G> &kernel, unsigned id, uint64_t ops)
		: space_(space), kernel_(kernel), id_(id), ops_(ops), rng_(0x5eed + id)
	{
		region_.anon_start = region_base + uint64_t{id} * 2 * region_pages * page;
		region_.pfn_start = region_.anon_start + region_pages * page;
	}

	void setup()
	{
		map_anon();
		map_pfn();
	}

	void run()
	{
		for (uint64_t i = 0; i < ops_ && failures_ == 0; i++)
			step();
		unmap_kernel_areas();
	}

	uint64_t failures() const { return failures_; }
	const std::string &first_failure() const { return first_failure_; }

private:
	void fail(const std::string &what)
	{
		if (failures_++ == 0)
			first_failure_ = "thread " + std::to_string(id_) + ": " + what;
	}

	void map_anon()
	{
		auto r = space_.mmap(region_.anon_start, region_pages * page, user::prot_read | user::prot_write,
				     user::map_private | user::map_anonymous | user::map_fixed_noreplace);
		if (!r)
			fail("mmap anon: " + std::string(errc_name(r.error())));
	}

	void map_pfn()
	{
		auto r = space_.mmap(region_.pfn_start, region_pages * page, user::prot_read,
				     user::map_shared | user::map_pfnmap | user::map_fixed_noreplace);
		if (!r)
			fail("mmap pfnmap: " + std::string(errc_name(r.error())));
	}

	void step()
	{
		const unsigned op = rng_() % 100;
		const uint64_t index = rng_() % region_pages;

		if (op < 40)
			fault(index);
		else if (op < 65)
			insert(index);
		else if (op < 75)
			check(index);
		else if (op < 80)
			unmap_range(index);
		else
			kernel_op();
	}

	void fault(uint64_t index)
	{
		const uint64_t addr = region_.anon_start + index * page;
		auto r = space_.handle_mm_fault(addr, rng_() % 2 ? access_type::write : access_type::read);
		if (!r) {
			fail("fault: " + std::string(errc_name(r.error())));
			return;
		}
		region_.anon_model[index] = page_state::anon;
		check(index);
	}

	void insert(uint64_t index)
	{
		const uint64_t addr = region_.pfn_start + index * page;
		auto r = space_.insert_pfn(addr, pfn_for(id_, index));
		if (!r) {
			fail("insert_pfn: " + std::string(errc_name(r.error())));
			return;
		}
		region_.pfn_model[index] = page_state::pfn;
		check(index);
	}

	// Unmaps up to 8 pages of both halves and maps them again, as a
	// program that frees and reallocates memory does.
	void unmap_range(uint64_t index)
	{
		const uint64_t count = std::min<uint64_t>(1 + rng_() % 8, region_pages - index);
		for (uint64_t start : {region_.anon_start, region_.pfn_start}) {
			auto r = space_.munmap(start + index * page, count * page);
			if (!r)
				fail("munmap: " + std::string(errc_name(r.error())));
		}

		const bool anon_ok = remap(region_.anon_start + index * page, count, true);
		const bool pfn_ok = remap(region_.pfn_start + index * page, count, false);
		if (!anon_ok || !pfn_ok)
			return;
		for (uint64_t i = index; i < index + count; i++) {
			region_.anon_model[i] = page_state::unmapped;
			region_.pfn_model[i] = page_state::unmapped;
			check(i);
		}
	}

	bool remap(uint64_t addr, uint64_t count, bool anon)
	{
		const unsigned prot = anon ? user::prot_read | user::prot_write : user::prot_read;
		const unsigned flags = anon ? user::map_private | user::map_anonymous : user::map_shared | user::map_pfnmap;
		auto r = space_.mmap(addr, count * page, prot, flags | user::map_fixed_noreplace);
		if (!r)
			fail("re-mmap: " + std::string(errc_name(r.error())));
		return r.has_value();
	}

	void check(uint64_t index)
	{
		check_page(region_.anon_start + index * page, region_.anon_model[index], 0);
		check_page(region_.pfn_start + index * page, region_.pfn_model[index], pfn_for(id_, index));
	}

	void check_page(uint64_t addr, page_state expected, uint64_t pfn)
	{
		const auto t = mm::translate(space_.mm(), addr);
		if (expected == page_state::unmapped && t)
			fail("page " + std::to_string(addr) + " is mapped after munmap");
		if (expected != page_state::unmapped && !t)
			fail("page " + std::to_string(addr) + " is not mapped");
		if (expected == page_state::pfn && t && t->pfn != pfn)
			fail("page " + std::to_string(addr) + " maps the wrong frame");
	}

	// vmap a few pages, check them, and keep up to 4 areas live.
	void kernel_op()
	{
		if (live_areas_.size() >= 4 || (rng_() % 2 && !live_areas_.empty())) {
			unmap_oldest_area();
			return;
		}

		const uint64_t count = 1 + rng_() % 16;
		std::vector<phys::pfn_t> pfns(count);
		for (uint64_t i = 0; i < count; i++)
			pfns[i] = kernel_pfn_base(id_) + rng_() % kernel_pfns_per_thread;

		auto addr = kernel_.vmap(pfns, kernel::page_kernel);
		if (!addr) {
			fail("vmap: " + std::string(errc_name(addr.error())));
			return;
		}
		for (uint64_t i = 0; i < count; i++) {
			const auto t = mm::translate(kernel_.init_mm(), *addr + i * page);
			if (!t || t->pfn != pfns[i])
				fail("vmapped page does not translate to its frame");
		}
		live_areas_.push_back({*addr, count});
	}

	void unmap_oldest_area()
	{
		const auto [addr, count] = live_areas_.front();
		live_areas_.erase(live_areas_.begin());
		auto r = kernel_.vunmap(addr);
		if (!r)
			fail("vunmap: " + std::string(errc_name(r.error())));

		// Another thread may already have been given the range again,
		// but never with this thread's frames.
		for (uint64_t i = 0; i < count; i++) {
			const auto t = mm::translate(kernel_.init_mm(), addr + i * page);
			if (t && t->pfn >= kernel_pfn_base(id_) && t->pfn < kernel_pfn_base(id_) + kernel_pfns_per_thread)
				fail("page still maps this thread's frame after vunmap");
		}
	}

	void unmap_kernel_areas()
	{
		while (!live_areas_.empty())
			unmap_oldest_area();
	}

	user::user_space<G> &space_;
	kernel::kernel_space<G> &kernel_;
	const unsigned id_;
	const uint64_t ops_;
	std::mt19937_64 rng_;
	region region_;
	std::vector<std::pair<uint64_t, uint64_t>> live_areas_;
	uint64_t failures_ = 0;
	std::string first_failure_;
};

} // namespace

TEST(Stress, RandomOperationsMatchModel)
{
	const mm::lock_mode mode = test::lock_mode_under_test();
	const uint64_t ops = ops_per_run();
	phys::frame_pool pool(1 << 16);
	auto space = *user::user_space<G>::create(pool, mode);
	auto kernel = *kernel::kernel_space<G>::create(pool, mode);

	std::vector<std::unique_ptr<stress_worker>> workers;
	for (unsigned t = 0; t < nr_threads; t++) {
		workers.push_back(std::make_unique<stress_worker>(*space, *kernel, t, ops / nr_threads));
		workers.back()->setup();
	}

	std::atomic<unsigned> ready{0};
	std::vector<std::thread> threads;
	for (auto &w : workers) {
		threads.emplace_back([&ready, &w] {
			ready.fetch_add(1);
			while (ready.load() < nr_threads)
				std::this_thread::yield();
			w->run();
		});
	}
	for (auto &t : threads)
		t.join();

	for (const auto &w : workers)
		EXPECT_EQ(w->failures(), 0u) << w->first_failure();

	const auto user_report = check::audit<G>({&space->mm(), &kernel->init_mm()});
	EXPECT_TRUE(user_report.ok()) << user_report.summary();
	EXPECT_EQ(pool.in_use(phys::alloc_site::data), space->counters().anon_pages);
	EXPECT_FALSE(space->mm().page_table_lock.is_locked());
	EXPECT_FALSE(kernel->init_mm().page_table_lock.is_locked());
	EXPECT_EQ(kernel->counters().pages_mapped, 0u);

	std::printf("stress: %llu operations in %s mode on %u threads\n", static_cast<unsigned long long>(ops),
		    std::string(mm::lock_mode_name(mode)).c_str(), nr_threads);
}
