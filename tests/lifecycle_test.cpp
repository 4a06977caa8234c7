// The life of an address space. Unmapping frees the tables it leaves empty,
// bounded by its neighbours and only after a grace period. Exit frees every
// table, and a long random sequence leaves the pool as it found it. Every test
// runs on every geometry, and CTest runs the file once per lock mode.

#include "geometries.hpp"
#include "lock_mode_env.hpp"

#include <ptl/check/audit.hpp>
#include <ptl/kernel/kernel_space.hpp>
#include <ptl/mm/walk.hpp>
#include <ptl/user/user_space.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace ptl;
using arch::level;
using phys::alloc_site;
using user::access_type;

namespace {

constexpr uint64_t page = arch::page_size;
constexpr unsigned prot_rw = user::prot_read | user::prot_write;
constexpr unsigned anon_private = user::map_private | user::map_anonymous;
constexpr unsigned anon_fixed = anon_private | user::map_fixed_noreplace;

// Table frames in use, every level together.
uint64_t tables_in_use(const phys::frame_pool &pool)
{
	return pool.in_use() - pool.in_use(alloc_site::data);
}

// Bytes one PTE table maps: the span of an entry of the level above it.
template <class G>
constexpr uint64_t pte_table_span()
{
	return arch::entry_span<G>(level::pmd);
}

// Entries of the pgd that map user addresses and are not empty.
template <class G>
uint64_t user_pgd_entries(const mm::mm_struct<G> &mm)
{
	const auto *pgd = mm.table(mm.pgd_pfn());
	const uint64_t last = arch::table_index<G>(level::pgd, G::task_size - 1);
	uint64_t set = 0;

	for (uint64_t i = 0; i <= last; i++)
		set += G::format::none(pgd[i].load()) ? 0 : 1;
	return set;
}

} // namespace

template <class G>
class Lifecycle : public ::testing::Test {
protected:
	using space_t = user::user_space<G>;

	phys::frame_pool pool{1 << 15};
	std::unique_ptr<space_t> space = *space_t::create(pool, test::lock_mode_under_test());
	const uint64_t base = sample_user_addr<G>();

	uint64_t map_anon(uint64_t addr, uint64_t nr_pages)
	{
		auto start = space->mmap(addr, nr_pages * page, prot_rw, anon_fixed);
		EXPECT_TRUE(start) << "mmap at " << std::hex << addr;
		return start ? *start : 0;
	}

	void touch(uint64_t addr, uint64_t nr_pages)
	{
		for (uint64_t i = 0; i < nr_pages; i++)
			ASSERT_TRUE(space->handle_mm_fault(addr + i * page, access_type::write)) << "page " << i;
	}

	bool mapped(uint64_t addr) const { return mm::translate(space->mm(), addr).has_value(); }

	// The tree, the mm's counters and the pool agree, and every leaf is
	// a page the space counts as mapped.
	void expect_consistent() const
	{
		const auto report = check::audit<G>({&space->mm()});
		EXPECT_TRUE(report.ok()) << report.summary();
		EXPECT_EQ(report.leaves, space->counters().pages_mapped);
		EXPECT_EQ(pool.in_use(alloc_site::data), space->counters().anon_pages);
	}

	// What an unmap must give back exactly: the mm's table counters, its
	// VmPTE equivalent and the pool's frames.
	struct footprint {
		std::array<uint64_t, arch::nr_levels> tables;
		uint64_t pgtables_bytes;
		uint64_t in_use;

		bool operator==(const footprint &) const = default;
	};

	footprint measure() const
	{
		return {space->mm().counters().nr_tables, space->mm().pgtables_bytes(), pool.in_use()};
	}
};

TYPED_TEST_SUITE(Lifecycle, all_geometries, geometry_names);

// Two VMAs share one PTE table. Unmapping the first keeps the table, which
// still maps the second; unmapping the second frees it and every table
// above it.
TYPED_TEST(Lifecycle, NeighbourKeepsSharedTable)
{
	const uint64_t a = this->map_anon(this->base, 4);
	const uint64_t b = this->map_anon(this->base + 8 * page, 4);
	this->touch(a, 4);
	this->touch(b, 4);
	const uint64_t tables = tables_in_use(this->pool);
	ASSERT_GT(tables, 1u);

	ASSERT_TRUE(this->space->munmap(a, 4 * page));
	EXPECT_EQ(tables_in_use(this->pool), tables) << "the PTE table still maps b";
	EXPECT_FALSE(this->mapped(a));
	EXPECT_TRUE(this->mapped(b));
	this->expect_consistent();

	ASSERT_TRUE(this->space->munmap(b, 4 * page));
	EXPECT_EQ(this->pool.in_use(), 1u) << "only the pgd is left";
	EXPECT_EQ(this->space->mm().pgtables_bytes(), 0u);
	EXPECT_EQ(user_pgd_entries(this->space->mm()), 0u);
	this->expect_consistent();
}

// A VMA in a PTE table of its own, or under a pgd entry of its own, goes
// with all its tables. The counters and the pool return exactly to their
// values before it was mapped, and a VMA elsewhere stays.
TYPED_TEST(Lifecycle, UnmapReturnsCountersToEarlierValues)
{
	using G = TypeParam;

	const uint64_t kept = this->map_anon(this->base, 3);
	this->touch(kept, 3);
	const auto before = this->measure();

	for (uint64_t offset : {5 * pte_table_span<G>(), arch::entry_span<G>(level::pgd)}) {
		SCOPED_TRACE("offset " + std::to_string(offset));
		const uint64_t other = this->map_anon(this->base + offset, 9);
		this->touch(other, 9);
		EXPECT_NE(this->measure(), before);

		ASSERT_TRUE(this->space->munmap(other, 9 * page));
		EXPECT_EQ(this->measure(), before);
		EXPECT_TRUE(this->mapped(kept));
		this->expect_consistent();
	}
}

// munmap of part of a VMA splits it; the tables of the part that goes are
// freed only where the remaining parts do not reach.
TYPED_TEST(Lifecycle, PartialUnmapFreesOnlyUncoveredTables)
{
	using G = TypeParam;
	const uint64_t span = pte_table_span<G>();
	const uint64_t nr_pages = 3 * span / page;

	const uint64_t start = this->map_anon(this->base, nr_pages);
	this->touch(start, nr_pages);
	const uint64_t ptes = this->pool.in_use(alloc_site::pte);
	ASSERT_EQ(ptes, 3u);

	// The middle PTE table's whole span goes; the outer two keep a page.
	ASSERT_TRUE(this->space->munmap(start + page, 3 * span - 2 * page));
	EXPECT_EQ(this->pool.in_use(alloc_site::pte), 2u);
	EXPECT_TRUE(this->mapped(start));
	EXPECT_TRUE(this->mapped(start + 3 * span - page));
	EXPECT_FALSE(this->mapped(start + span));
	EXPECT_EQ(this->space->vmas().size(), 2u);
	this->expect_consistent();
}

// Maps and unmaps ranges of random size at random places next to a VMA
// that stays. After every unmap the pool's usage is where it started.
TYPED_TEST(Lifecycle, MapUnmapLoopKeepsPoolFlat)
{
	using G = TypeParam;
	std::mt19937_64 rng(7);

	const uint64_t anchor = this->map_anon(this->base, 2);
	this->touch(anchor, 2);
	const auto before = this->measure();
	const uint64_t window = 16 * pte_table_span<G>();

	for (unsigned i = 0; i < 200; i++) {
		const uint64_t nr_pages = 1 + rng() % 700;
		const uint64_t addr = this->base + 2 * page + page * (rng() % ((window - nr_pages * page) / page));
		const uint64_t start = this->map_anon(addr, nr_pages);
		ASSERT_NE(start, 0u);
		this->touch(start, std::min<uint64_t>(nr_pages, 1 + rng() % 64));

		ASSERT_TRUE(this->space->munmap(start, nr_pages * page));
		ASSERT_EQ(this->measure(), before) << "round " << i;
	}
	this->expect_consistent();
}

// Zircon's cycle: many ranges across the whole user half, mapped, touched
// and unmapped in random order. Afterwards every user entry of the top
// table is zero and the pool contains the top table alone.
TYPED_TEST(Lifecycle, CycleLeavesOnlyTopTable)
{
	using G = TypeParam;
	std::mt19937_64 rng(11);
	std::vector<std::pair<uint64_t, uint64_t>> ranges;

	for (unsigned i = 0; i < 64; i++) {
		const uint64_t nr_pages = 1 + rng() % 1024;
		const uint64_t slots = (G::task_size - user::mmap_min_addr) / page - nr_pages;
		const uint64_t hint = user::mmap_min_addr + page * (rng() % slots);
		auto start = this->space->mmap(hint, nr_pages * page, prot_rw, anon_private);
		ASSERT_TRUE(start);
		this->touch(*start, 1);
		this->touch(*start + (nr_pages - 1) * page, 1);
		ranges.emplace_back(*start, nr_pages);
	}
	ASSERT_GT(user_pgd_entries(this->space->mm()), 0u);
	this->expect_consistent();

	std::shuffle(ranges.begin(), ranges.end(), rng);
	for (const auto &[start, nr_pages] : ranges)
		ASSERT_TRUE(this->space->munmap(start, nr_pages * page));

	EXPECT_EQ(user_pgd_entries(this->space->mm()), 0u);
	EXPECT_EQ(this->pool.in_use(), 1u) << "only the pgd is left";
	EXPECT_EQ(this->pool.in_use(alloc_site::pgd), 1u);
	this->expect_consistent();
}

// Exit: destroying a space with many mappings frees every table and every
// data frame, and the pool ends exactly where it was before the space
// was created.
TYPED_TEST(Lifecycle, ExitLeavesPoolAsBeforeCreate)
{
	using G = TypeParam;
	phys::frame_pool pool(1 << 14);
	auto space = *user::user_space<G>::create(pool, test::lock_mode_under_test());

	for (uint64_t i = 0; i < 8; i++) {
		const uint64_t addr = sample_user_addr<G>() + i * 3 * pte_table_span<G>();
		ASSERT_TRUE(space->mmap(addr, 40 * page, prot_rw, anon_fixed));
		for (uint64_t p = 0; p < 40; p += 3)
			ASSERT_TRUE(space->handle_mm_fault(addr + p * page, access_type::write));
	}
	const auto report = check::audit<G>({&space->mm()});
	ASSERT_TRUE(report.ok()) << report.summary();
	ASSERT_GT(pool.in_use(), 8u);

	space.reset();

	EXPECT_EQ(pool.in_use(), 0u);
	EXPECT_EQ(pool.stats().double_frees, 0u);
	for (unsigned s = 0; s < phys::nr_sites; s++)
		EXPECT_EQ(pool.stats().in_use_by_site[s], 0u) << phys::site_name(static_cast<alloc_site>(s));
}

// An unmap that unlinks a table waits for a walker that entered its
// read-side section before the unlink, and frees the table only after the
// walker leaves. The broken variant without the grace period frees the
// table while the walker may still read it.
TYPED_TEST(Lifecycle, TableOutlivesWalkerThatMayHoldIt)
{
#if !defined(PTL_TEST_HOOKS)
	GTEST_SKIP() << "needs a build with PTL_TEST_HOOKS";
#else
	const uint64_t addr = this->map_anon(this->base, 4);
	this->touch(addr, 4);
	const auto *pmd = user::detail::find_pmd(this->space->mm(), addr).pmd;
	ASSERT_NE(pmd, nullptr);
	const phys::pfn_t pte_table = TypeParam::format::pfn(pmd->load());

	std::atomic<bool> walker_inside{false};
	std::atomic<bool> walker_may_leave{false};
	std::thread walker([&] {
		sync::srcu_read_guard rcu(this->space->mm().table_rcu);
		walker_inside.store(true);
		while (!walker_may_leave.load())
			std::this_thread::yield();
	});
	while (!walker_inside.load())
		std::this_thread::yield();

	std::atomic<bool> unlinked{false};
	hooks::scoped_handler watch([&](const hooks::event &e) {
		if (e.where == hooks::point::tables_before_grace)
			unlinked.store(true);
	});

	std::atomic<bool> unmapped{false};
	std::thread unmapper([&] {
		EXPECT_TRUE(this->space->munmap(addr, 4 * page));
		unmapped.store(true);
	});
	while (!unlinked.load())
		std::this_thread::yield();

	// Give a broken unmap ample time to free the table.
	std::this_thread::sleep_for(std::chrono::milliseconds(50));
	EXPECT_FALSE(unmapped.load()) << "munmap returned while a walker was inside";
	EXPECT_EQ(this->pool.site_of(pte_table), alloc_site::pte) << "the table was freed under the walker";

	walker_may_leave.store(true);
	walker.join();
	unmapper.join();
	EXPECT_FALSE(this->pool.site_of(pte_table).has_value()) << "the table was not freed after the walker left";
	EXPECT_EQ(this->pool.in_use(), 1u);
#endif
}

// Unmaps racing with faults and lookups. One thread maps, touches and
// unmaps a range over and over. Others fault a VMA that stays next to it,
// and translate addresses in both. The stable VMA's translations are
// always its data frames, and it never loses a page.
TYPED_TEST(Lifecycle, UnmapRacesFaultsAndLookups)
{
	using G = TypeParam;
	constexpr unsigned rounds = 150;
	constexpr uint64_t stable_pages = 64;
	constexpr uint64_t churn_pages = 96;

	const uint64_t stable = this->map_anon(this->base, stable_pages);
	const uint64_t churn = this->base + pte_table_span<G>() + 4 * page;
	std::atomic<bool> done{false};
	std::atomic<unsigned> errors{0};

	std::thread churner([&] {
		for (unsigned i = 0; i < rounds; i++) {
			if (!this->space->mmap(churn, churn_pages * page, prot_rw, anon_fixed))
				errors.fetch_add(1);
			for (uint64_t p = 0; p < churn_pages; p += 1 + i % 5) {
				if (!this->space->handle_mm_fault(churn + p * page, access_type::write))
					errors.fetch_add(1);
			}
			if (!this->space->munmap(churn, churn_pages * page))
				errors.fetch_add(1);
		}
		done.store(true);
	});

	// Every stable page is faulted at least once, however soon the
	// churner finishes.
	std::thread faulter([&] {
		for (uint64_t n = 0; n < stable_pages || !done.load(); n++) {
			if (!this->space->handle_mm_fault(stable + (n % stable_pages) * page, access_type::write))
				errors.fetch_add(1);
		}
	});

	std::thread reader([&] {
		std::mt19937_64 rng(3);
		while (!done.load()) {
			const bool in_churn = rng() % 2;
			const uint64_t addr = in_churn ? churn + (rng() % churn_pages) * page
						       : stable + (rng() % stable_pages) * page;
			// A churn page's frame may be freed as soon as it is
			// read, so only the walk itself is checked there (by
			// the sanitizers). A stable page's frame is never freed.
			const auto t = mm::translate(this->space->mm(), addr);
			if (!in_churn && t && this->pool.site_of(t->pfn) != alloc_site::data)
				errors.fetch_add(1);
		}
	});

	churner.join();
	faulter.join();
	reader.join();

	EXPECT_EQ(errors.load(), 0u);
	for (uint64_t p = 0; p < stable_pages; p++)
		EXPECT_TRUE(this->mapped(stable + p * page)) << "stable page " << p;
	EXPECT_FALSE(this->mapped(churn));
	this->expect_consistent();

	this->space.reset();
	EXPECT_EQ(this->pool.in_use(), 0u);
}

// A random mixed sequence: map, huge map, fault, mprotect (which may split
// huge leaves), munmap (which may split too), fork, and exit of the child.
// After every step the table counters of both spaces are checked against
// the pool, and every 1000 steps the trees are audited and the data frames'
// references are checked against the spaces' anonymous pages. At the end
// both spaces are destroyed, and the pool must be exactly as before.
// PTL_SEQUENCE_OPS overrides the length: 100000 by default, fewer in the
// sanitizer builds (PTL_SEQUENCE_DEFAULT_OPS), which run several times
// slower.
TYPED_TEST(Lifecycle, RandomSequenceLeavesPoolAsBefore)
{
	using G = TypeParam;
	using space_t = user::user_space<G>;
	const char *ops_env = std::getenv("PTL_SEQUENCE_OPS");
#if defined(PTL_SEQUENCE_DEFAULT_OPS)
	const uint64_t default_ops = PTL_SEQUENCE_DEFAULT_OPS;
#else
	const uint64_t default_ops = 100000;
#endif
	const uint64_t nr_ops = ops_env ? std::strtoull(ops_env, nullptr, 10) : default_ops;
	std::mt19937_64 rng(1234);

	phys::frame_pool pool(1 << 16);
	const uint64_t in_use_before = pool.in_use();
	std::unique_ptr<space_t> parent = *space_t::create(pool, test::lock_mode_under_test());
	std::unique_ptr<space_t> child;
	const uint64_t window_start = sample_user_addr<G>();
	const uint64_t window_pages = 64 * pte_table_span<G>() / page;

	std::array<uint64_t, 10> done{}; // operations that succeeded, per kind
	uint64_t huge_faults = 0;        // faults that found or made a huge leaf
	auto random_page = [&] { return window_start + page * (rng() % window_pages); };
	auto random_space = [&]() -> space_t & { return child && rng() % 2 ? *child : *parent; };

	auto check_tables = [&](uint64_t step) {
		for (unsigned l = 0; l < arch::nr_levels; l++) {
			uint64_t tables = parent->mm().counters().nr_tables[l];
			if (child)
				tables += child->mm().counters().nr_tables[l];
			ASSERT_EQ(pool.in_use(static_cast<alloc_site>(l)), tables) << "step " << step;
		}
	};

	// Each PTE of a private anonymous page holds one reference to its
	// frame, so the references add up to the spaces' anonymous pages.
	auto check_data_frames = [&](uint64_t step) {
		uint64_t references = 0;
		for (phys::pfn_t pfn = 0; pfn < pool.nr_frames(); pfn++) {
			if (pool.site_of(pfn) == alloc_site::data)
				references += pool.page_count(pfn);
		}
		const uint64_t anon = parent->counters().anon_pages + (child ? child->counters().anon_pages : 0);
		ASSERT_EQ(references, anon) << "step " << step;
	};

	auto audit = [&](uint64_t step) {
		const auto report = child ? check::audit<G>({&parent->mm(), &child->mm()})
					  : check::audit<G>({&parent->mm()});
		ASSERT_TRUE(report.ok()) << "step " << step << "\n" << report.summary();
	};

	// The kind of each step, drawn with these weights out of 20: fork and
	// exit copy or free whole trees, so they are the rarest.
	constexpr std::array<unsigned, 20> kinds = {0, 0, 0, 0, 2, 3, 3, 3, 4, 4, 5, 5, 5, 6, 6, 7, 7, 8, 8, 9};

	for (uint64_t step = 0; step < nr_ops; step++) {
		const unsigned op = kinds[rng() % kinds.size()];
		const uint64_t addr = random_page();
		const uint64_t len = page * (1 + rng() % 512);
		space_t &space = random_space();
		bool ok = false;

		if (op == 0) {
			// Fails where the range is taken: that is part of the test.
			ok = space.mmap(addr, len, prot_rw, anon_fixed).has_value();
		} else if (op == 2) {
			// Up to three huge blocks, so some are wholly inside.
			const uint64_t huge_len = page * (1 + rng() % (3 * user::huge_pmd_pages<G>()));
			ok = space.mmap(addr, huge_len, prot_rw, anon_fixed | user::map_huge).has_value();
		} else if (op < 6) {
			const auto r = space.handle_mm_fault(addr, rng() % 2 ? access_type::write : access_type::read);
			ASSERT_TRUE(r || r.error() == errc::not_found || r.error() == errc::access_fault) << "step " << step;
			ok = r.has_value();
			const auto t = mm::translate(space.mm(), addr);
			huge_faults += t && t->leaf_level != level::pte ? 1 : 0;
		} else if (op == 6) {
			const unsigned prot[] = {user::prot_read, prot_rw, user::prot_read | user::prot_exec, user::prot_none};
			const auto r = space.mprotect(addr, len, prot[rng() % 4]);
			ASSERT_TRUE(r || r.error() == errc::not_found || r.error() == errc::no_memory) << "step " << step;
			ok = r.has_value();
		} else if (op < 9) {
			// Splitting a huge leaf needs a table, which a full
			// pool may not have.
			const auto r = space.munmap(addr, len);
			ASSERT_TRUE(r || r.error() == errc::no_memory) << "step " << step;
			ok = r.has_value();
		} else if (child) {
			child.reset(); // exit
			ok = true;
		} else {
			auto forked = parent->fork();
			ASSERT_TRUE(forked || forked.error() == errc::no_memory) << "step " << step;
			if (forked)
				child = std::move(*forked);
			ok = forked.has_value();
		}
		if (ok)
			done[op]++;

		check_tables(step);
		if (::testing::Test::HasFatalFailure())
			return;
		if (step % 1000 == 999) {
			audit(step);
			check_data_frames(step);
			if (::testing::Test::HasFatalFailure())
				return;
		}
	}

	const uint64_t in_use_during = pool.in_use();
	child.reset();
	parent.reset();
	std::printf("sequence: %llu operations on %s: %llu maps, %llu huge maps, %llu faults (%llu on huge leaves), "
		    "%llu mprotects, %llu munmaps, %llu forks and exits; pool frames in use before %llu, at the end "
		    "%llu, after exit %llu\n",
		    static_cast<unsigned long long>(nr_ops), std::string(G::name).c_str(),
		    static_cast<unsigned long long>(done[0]), static_cast<unsigned long long>(done[2]),
		    static_cast<unsigned long long>(done[3] + done[4] + done[5]),
		    static_cast<unsigned long long>(huge_faults), static_cast<unsigned long long>(done[6]),
		    static_cast<unsigned long long>(done[7] + done[8]), static_cast<unsigned long long>(done[9]),
		    static_cast<unsigned long long>(in_use_before), static_cast<unsigned long long>(in_use_during),
		    static_cast<unsigned long long>(pool.in_use()));
	EXPECT_EQ(pool.in_use(), in_use_before);
	EXPECT_EQ(pool.stats().double_frees, 0u);
}

// The kernel's cycle: many vmaps of random size, unmapped in random order.
// Afterwards the tables are exactly those one small vmap and vunmap at the
// start of the area leave, which reach outside the vmalloc area.
TYPED_TEST(Lifecycle, KernelCycleFreesEveryAreaTable)
{
	using G = TypeParam;
	std::mt19937_64 rng(5);
	phys::frame_pool pool(1 << 14);
	auto ks = *kernel::kernel_space<G>::create(pool, test::lock_mode_under_test());

	const std::vector<phys::pfn_t> one{0x100};
	auto first = ks->vmap(one);
	ASSERT_TRUE(first);
	ASSERT_TRUE(ks->vunmap(*first));
	const uint64_t baseline = pool.in_use();

	std::vector<uint64_t> addrs;
	for (unsigned i = 0; i < 64; i++) {
		std::vector<phys::pfn_t> pfns(1 + rng() % 256);
		for (uint64_t p = 0; p < pfns.size(); p++)
			pfns[p] = 0x1000 + p;
		auto addr = ks->vmap(pfns);
		ASSERT_TRUE(addr);
		addrs.push_back(*addr);
	}
	ASSERT_GT(pool.in_use(), baseline);

	std::shuffle(addrs.begin(), addrs.end(), rng);
	for (uint64_t addr : addrs)
		ASSERT_TRUE(ks->vunmap(addr));

	EXPECT_EQ(pool.in_use(), baseline);
	const auto report = check::audit<G>({&ks->init_mm()});
	EXPECT_TRUE(report.ok()) << report.summary();
	EXPECT_EQ(report.leaves, 0u);
}

// Kernel unmaps racing with maps and lookups: threads vmap and vunmap
// ranges large enough to fill PTE tables of their own, next to each other,
// so tables are freed while neighbours populate and walkers read nearby.
// Each thread reads back its own frames; at the end the pool contains what a
// single map and unmap leaves.
TYPED_TEST(Lifecycle, KernelUnmapRacesMapsAndLookups)
{
	using G = TypeParam;
	constexpr unsigned nr_threads = 3;
	constexpr unsigned rounds = 60;
	const uint64_t nr_pages = pte_table_span<G>() / page + 7;

	phys::frame_pool pool(1 << 14);
	auto ks = *kernel::kernel_space<G>::create(pool, test::lock_mode_under_test());
	auto first = ks->vmap(std::vector<phys::pfn_t>{0x100});
	ASSERT_TRUE(first);
	ASSERT_TRUE(ks->vunmap(*first));
	const uint64_t baseline = pool.in_use();

	std::atomic<bool> done{false};
	std::atomic<unsigned> errors{0};
	std::vector<std::thread> threads;
	for (unsigned t = 0; t < nr_threads; t++) {
		threads.emplace_back([&, t] {
			std::vector<phys::pfn_t> pfns(nr_pages);
			for (unsigned i = 0; i < rounds; i++) {
				for (uint64_t p = 0; p < nr_pages; p++)
					pfns[p] = 0x10000 * (t + 1) + i + p;
				auto addr = ks->vmap(pfns);
				if (!addr) {
					errors.fetch_add(1);
					continue;
				}
				const uint64_t probe = (i * 31) % nr_pages;
				const auto found = mm::translate(ks->init_mm(), *addr + probe * page);
				if (!found || found->pfn != pfns[probe])
					errors.fetch_add(1);
				if (!ks->vunmap(*addr))
					errors.fetch_add(1);
			}
		});
	}

	std::thread reader([&] {
		std::mt19937_64 rng(9);
		const uint64_t window = 8 * nr_pages * page;
		while (!done.load())
			(void)mm::translate(ks->init_mm(), G::vmalloc_start + (rng() % window) / page * page);
	});

	for (auto &t : threads)
		t.join();
	done.store(true);
	reader.join();

	EXPECT_EQ(errors.load(), 0u);
	EXPECT_EQ(pool.in_use(), baseline);
	const auto report = check::audit<G>({&ks->init_mm()});
	EXPECT_TRUE(report.ok()) << report.summary();
	EXPECT_EQ(report.leaves, 0u);
}

// A kernel unmap keeps the PTE table that an area next to it is being
// mapped into, although that table is empty when the unmap looks at it:
// the neighbour's area is reserved, so the ceiling stops below it. The
// broken variant that ignores the bounds frees the table, and the
// neighbour's PTE lands in a freed frame.
TYPED_TEST(Lifecycle, KernelUnmapKeepsTableOfNeighbourBeingMapped)
{
#if !defined(PTL_TEST_HOOKS)
	GTEST_SKIP() << "needs a build with PTL_TEST_HOOKS";
#else
	using G = TypeParam;
	if (test::lock_mode_under_test() == mm::lock_mode::legacy)
		GTEST_SKIP() << "legacy mode holds page_table_lock across the neighbour's whole map, so the unmap "
				"cannot run in the middle of it";

	phys::frame_pool pool(256);
	auto ks = *kernel::kernel_space<G>::create(pool, test::lock_mode_under_test());
	auto first = ks->vmap(std::vector<phys::pfn_t>{0x100});
	ASSERT_TRUE(first);

	std::atomic<bool> paused{false};
	std::atomic<bool> may_go{false};
	const auto main_thread = std::this_thread::get_id();
	hooks::scoped_handler pause([&](const hooks::event &e) {
		if (std::this_thread::get_id() == main_thread || e.where != hooks::point::vmap_before_set)
			return;
		paused.store(true);
		while (!may_go.load())
			std::this_thread::yield();
	});

	// The neighbour has its area and its PTE table, and is about to
	// set its PTE.
	result<uint64_t> second = fail(errc::busy);
	std::thread neighbour([&] { second = ks->vmap(std::vector<phys::pfn_t>{0x200}); });
	while (!paused.load())
		std::this_thread::yield();

	ASSERT_TRUE(ks->vunmap(*first));
	may_go.store(true);
	neighbour.join();

	ASSERT_TRUE(second);
	ASSERT_EQ(*second - *first, 2 * page) << "the neighbour shares the first area's PTE table";
	const auto t = mm::translate(ks->init_mm(), *second);
	ASSERT_TRUE(t) << "the neighbour's PTE went into a freed table";
	EXPECT_EQ(t->pfn, 0x200u);
	const auto report = check::audit<G>({&ks->init_mm()});
	EXPECT_TRUE(report.ok()) << report.summary();
	EXPECT_EQ(report.leaves, 1u);
#endif
}

// A walk cursor gives the same translation as translate for every address,
// in address order and at random, across PTE tables, huge leaves, holes
// and separate pgd entries, and again after the tables it walked were
// freed and populated anew.
TYPED_TEST(Lifecycle, WalkCursorMatchesTranslate)
{
	using G = TypeParam;
	const uint64_t span = pte_table_span<G>();
	const uint64_t far = this->base + std::max(arch::entry_span<G>(level::pgd), 16 * span);
	const uint64_t huge_base = (this->base + 8 * span) & ~(span - 1);

	const uint64_t a = this->map_anon(this->base, 3 * span / page);
	this->touch(a, span / page + 9);
	ASSERT_TRUE(this->space->mmap(huge_base, 2 * span, prot_rw, anon_fixed | user::map_huge));
	this->touch(huge_base, 1);
	this->touch(huge_base + span + 5 * page, 1);
	const uint64_t b = this->map_anon(far, 4);
	this->touch(b, 4);

	std::vector<uint64_t> addrs;
	for (uint64_t addr = this->base; addr < huge_base + 2 * span; addr += page)
		addrs.push_back(addr);
	for (uint64_t i = 0; i < 6; i++)
		addrs.push_back(far + i * page);
	std::mt19937_64 rng(21);
	std::vector<uint64_t> shuffled = addrs;
	std::shuffle(shuffled.begin(), shuffled.end(), rng);

	auto expect_same = [&](const std::vector<uint64_t> &order) {
		mm::walk_cursor<G> cursor(this->space->mm());
		for (uint64_t addr : order) {
			const auto expected = mm::translate(this->space->mm(), addr);
			const auto found = cursor.translate(addr);
			ASSERT_EQ(found.has_value(), expected.has_value()) << std::hex << addr;
			if (!found)
				continue;
			ASSERT_EQ(found->pfn, expected->pfn) << std::hex << addr;
			ASSERT_EQ(found->leaf_level, expected->leaf_level) << std::hex << addr;
			ASSERT_EQ(found->entry, expected->entry) << std::hex << addr;
		}
	};

	expect_same(addrs);
	expect_same(shuffled);

	// The first PTE table goes and a new one takes its place.
	ASSERT_TRUE(this->space->munmap(a, 3 * span));
	ASSERT_EQ(this->map_anon(this->base, 2), this->base);
	this->touch(this->base + page, 1);
	expect_same(addrs);
	expect_same(shuffled);
}
