// fork's page-table copy and the copy-on-write fault, on every geometry:
// the frames the child shares, the write protection on both sides, the copy
// a write makes, the reference counts, and the pool after both spaces go.
//
// This file is also built with two broken variants (see
// tests/CMakeLists.txt), and each build's tests must fail:
//   PTL_MUTANT_FORK_NO_WRPROTECT  fork leaves the parent's PTEs writable, so
//                                 the parent's writes show in the child
//   PTL_MUTANT_WP_NO_RECHECK      the copy-on-write fault installs its copy
//                                 without re-checking the PTE after the
//                                 unlocked copy

#include "geometries.hpp"
#include "lock_mode_env.hpp"
#include "race_support.hpp"

#include <ptl/check/audit.hpp>
#include <ptl/mm/walk.hpp>
#include <ptl/user/user_space.hpp>

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

using namespace ptl;
using arch::level;
using phys::alloc_site;
using user::access_type;

namespace {

constexpr uint64_t page = arch::page_size;

constexpr unsigned prot_rw = user::prot_read | user::prot_write;
constexpr unsigned anon_fixed = user::map_private | user::map_anonymous | user::map_fixed_noreplace;
constexpr unsigned shared_anon_fixed = user::map_shared | user::map_anonymous | user::map_fixed_noreplace;
constexpr unsigned pfnmap_fixed = user::map_shared | user::map_pfnmap | user::map_fixed_noreplace;

// A page's first 8 bytes, as a number.
uint64_t read_word(const void *frame)
{
	uint64_t value;
	std::memcpy(&value, frame, sizeof(value));
	return value;
}

void write_word(void *frame, uint64_t value)
{
	std::memcpy(frame, &value, sizeof(value));
}

} // namespace

template <class G>
class Fork : public ::testing::Test {
protected:
	using space_t = user::user_space<G>;

	phys::frame_pool pool{8192};
	const uint64_t pool_before_create = pool.in_use();
	std::unique_ptr<space_t> parent = *space_t::create(pool, test::lock_mode_under_test());
	const uint64_t base = sample_user_addr<G>();

	// Maps nr_pages of memory at addr, faults each page in for writing and
	// stores 1000 + i in the first word of page i, through the pool.
	uint64_t map_filled(uint64_t addr, uint64_t nr_pages, unsigned flags = anon_fixed)
	{
		auto start = parent->mmap(addr, nr_pages * page, prot_rw, flags);
		EXPECT_TRUE(start) << "mmap at " << std::hex << addr;
		if (!start)
			return 0;

		for (uint64_t i = 0; i < nr_pages; i++) {
			EXPECT_TRUE(parent->handle_mm_fault(*start + i * page, access_type::write)) << "page " << i;
			write_word(pool.frame_address(frame_of(*parent, *start + i * page)), 1000 + i);
		}
		return *start;
	}

	std::unique_ptr<space_t> fork_parent()
	{
		auto child = parent->fork();
		EXPECT_TRUE(child);
		return child ? std::move(*child) : nullptr;
	}

	static std::optional<mm::translation> translate(const space_t &space, uint64_t addr)
	{
		return mm::translate(space.mm(), addr);
	}

	// The frame mapped at addr, or a pfn no test uses when none is.
	static phys::pfn_t frame_of(const space_t &space, uint64_t addr)
	{
		const auto t = translate(space, addr);
		EXPECT_TRUE(t) << "nothing mapped at " << std::hex << addr;
		return t ? t->pfn : ~phys::pfn_t{0};
	}

	static bool writable(const space_t &space, uint64_t addr)
	{
		const auto t = translate(space, addr);
		return t && (t->prot & arch::prot_write);
	}

	uint64_t word_at(const space_t &space, uint64_t addr) const
	{
		return read_word(pool.frame_address(frame_of(space, addr)));
	}

	void expect_audit_ok(std::initializer_list<const mm::mm_struct<G> *> spaces) const
	{
		const auto report = check::audit<G>(spaces);
		EXPECT_TRUE(report.ok()) << report.summary();
	}
};

TYPED_TEST_SUITE(Fork, all_geometries, geometry_names);

TYPED_TEST(Fork, ChildSharesFramesReadOnly)
{
	const uint64_t addr = this->map_filled(this->base, 4);

	auto child = this->fork_parent();
	ASSERT_TRUE(child);

	const auto vmas = child->vmas();
	ASSERT_EQ(vmas.size(), 1u);
	EXPECT_EQ(vmas[0].start, addr);
	EXPECT_EQ(vmas[0].end, addr + 4 * page);
	EXPECT_EQ(vmas[0].flags, user::vm_read | user::vm_write);

	for (uint64_t i = 0; i < 4; i++) {
		SCOPED_TRACE(i);
		const uint64_t at = addr + i * page;
		const auto in_parent = this->translate(*this->parent, at);
		const auto in_child = this->translate(*child, at);
		ASSERT_TRUE(in_parent);
		ASSERT_TRUE(in_child);
		EXPECT_EQ(in_child->pfn, in_parent->pfn);
		EXPECT_FALSE(in_parent->prot & arch::prot_write) << "fork must write-protect the parent";
		EXPECT_FALSE(in_child->prot & arch::prot_write) << "fork must write-protect the child";
		EXPECT_TRUE(in_parent->prot & arch::prot_dirty) << "the parent keeps its dirty bit";
		EXPECT_FALSE(in_child->prot & arch::prot_accessed) << "the child's copy starts old";
		EXPECT_EQ(this->pool.page_count(in_parent->pfn), 2u);
		EXPECT_EQ(this->word_at(*child, at), 1000 + i);
	}

	EXPECT_EQ(this->pool.in_use(alloc_site::data), 4u) << "fork must copy no data frame";
	EXPECT_EQ(child->counters().pages_mapped, 4u);
	EXPECT_EQ(child->counters().anon_pages, 4u);
	this->expect_audit_ok({&this->parent->mm(), &child->mm()});
}

TYPED_TEST(Fork, ChildWriteCopiesFrame)
{
	const uint64_t addr = this->map_filled(this->base, 2);
	auto child = this->fork_parent();
	ASSERT_TRUE(child);
	const phys::pfn_t shared = this->frame_of(*this->parent, addr);

	ASSERT_TRUE(child->handle_mm_fault(addr + 8, access_type::write));

	const phys::pfn_t copy = this->frame_of(*child, addr);
	EXPECT_NE(copy, shared) << "the child's write must get a frame of its own";
	EXPECT_TRUE(this->writable(*child, addr));
	EXPECT_EQ(this->word_at(*child, addr), 1000u) << "the copy must hold the old contents";
	write_word(this->pool.frame_address(copy), 77);
	EXPECT_EQ(this->word_at(*this->parent, addr), 1000u) << "the child's write must not reach the parent";
	EXPECT_EQ(this->frame_of(*this->parent, addr), shared);
	EXPECT_FALSE(this->writable(*this->parent, addr)) << "the parent is still write-protected until it writes";

	EXPECT_EQ(this->pool.page_count(shared), 1u);
	EXPECT_EQ(this->pool.page_count(copy), 1u);
	EXPECT_EQ(this->pool.in_use(alloc_site::data), 3u);
	EXPECT_EQ(child->counters().wp_copies, 1u);
	EXPECT_EQ(this->frame_of(*child, addr + page), this->frame_of(*this->parent, addr + page))
		<< "the other page stays shared";
}

TYPED_TEST(Fork, ParentWriteReusesUnsharedFrame)
{
	const uint64_t addr = this->map_filled(this->base, 1);
	auto child = this->fork_parent();
	ASSERT_TRUE(child);
	const phys::pfn_t shared = this->frame_of(*this->parent, addr);
	ASSERT_TRUE(child->handle_mm_fault(addr, access_type::write));

	ASSERT_TRUE(this->parent->handle_mm_fault(addr, access_type::write));

	EXPECT_EQ(this->frame_of(*this->parent, addr), shared) << "a frame only the parent maps is reused";
	EXPECT_TRUE(this->writable(*this->parent, addr));
	EXPECT_EQ(this->parent->counters().wp_reuses, 1u);
	EXPECT_EQ(this->parent->counters().wp_copies, 0u);
	EXPECT_EQ(this->pool.in_use(alloc_site::data), 2u);
}

TYPED_TEST(Fork, ParentWriteLeavesChildData)
{
	const uint64_t addr = this->map_filled(this->base, 1);
	auto child = this->fork_parent();
	ASSERT_TRUE(child);
	const phys::pfn_t shared = this->frame_of(*child, addr);

	const uint64_t value = 5;
	ASSERT_TRUE(this->parent->copy_to_user(addr, &value, sizeof(value)));

	EXPECT_EQ(this->word_at(*this->parent, addr), 5u);
	EXPECT_EQ(this->word_at(*child, addr), 1000u) << "the parent's write leaked into the child";
	EXPECT_EQ(this->frame_of(*child, addr), shared);
	EXPECT_NE(this->frame_of(*this->parent, addr), shared);
	EXPECT_EQ(this->parent->counters().wp_copies, 1u);
}

TYPED_TEST(Fork, DestroyingBothReturnsPool)
{
	using G = TypeParam;
	const uint64_t addr = this->map_filled(this->base, 4);
	const uint64_t far = this->map_filled(this->base + arch::entry_span<G>(level::pmd), 2);
	ASSERT_TRUE(this->parent->mmap(this->base + 64 * page, 2 * page, prot_rw, pfnmap_fixed, phys::pfn_t{0x300}));
	ASSERT_TRUE(this->parent->handle_mm_fault(this->base + 64 * page, access_type::read));

	for (bool child_first : {true, false}) {
		SCOPED_TRACE(child_first ? "child destroyed first" : "parent destroyed first");
		auto child = this->fork_parent();
		ASSERT_TRUE(child);
		ASSERT_TRUE(child->handle_mm_fault(addr, access_type::write));
		ASSERT_TRUE(this->parent->handle_mm_fault(far, access_type::write));

		if (child_first) {
			child.reset();
			EXPECT_EQ(this->pool.page_count(this->frame_of(*this->parent, addr)), 1u);
			continue;
		}
		this->parent.reset();
		EXPECT_EQ(this->pool.page_count(this->frame_of(*child, addr + page)), 1u);
		child.reset();
	}

	EXPECT_EQ(this->pool.in_use(), this->pool_before_create);
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
}

TYPED_TEST(Fork, PfnmapCopiedAsIs)
{
	auto start = this->parent->mmap(this->base, 2 * page, prot_rw, pfnmap_fixed, phys::pfn_t{0x12345});
	ASSERT_TRUE(start);
	ASSERT_TRUE(this->parent->handle_mm_fault(*start, access_type::write));

	auto child = this->fork_parent();
	ASSERT_TRUE(child);

	const auto in_child = this->translate(*child, *start);
	ASSERT_TRUE(in_child);
	EXPECT_EQ(in_child->pfn, 0x12345u);
	EXPECT_TRUE(in_child->prot & arch::prot_write) << "PFN maps are copied without copy-on-write";
	EXPECT_TRUE(this->writable(*this->parent, *start));
	EXPECT_FALSE(this->translate(*child, *start + page)) << "only installed PTEs are copied";
	EXPECT_EQ(child->counters().pages_mapped, 1u);
	EXPECT_EQ(child->counters().anon_pages, 0u);
}

TYPED_TEST(Fork, SharedAnonStaysShared)
{
	const uint64_t addr = this->map_filled(this->base, 1, shared_anon_fixed);
	auto child = this->fork_parent();
	ASSERT_TRUE(child);

	EXPECT_TRUE(this->writable(*child, addr));
	EXPECT_TRUE(this->writable(*this->parent, addr));
	const uint64_t value = 9;
	ASSERT_TRUE(child->copy_to_user(addr, &value, sizeof(value)));
	EXPECT_EQ(this->word_at(*this->parent, addr), 9u) << "a shared mapping's write must reach the parent";
	EXPECT_EQ(this->pool.page_count(this->frame_of(*child, addr)), 2u);
}

TYPED_TEST(Fork, MprotectKeepsSharedFrameReadOnly)
{
	const uint64_t addr = this->map_filled(this->base, 1);
	auto child = this->fork_parent();
	ASSERT_TRUE(child);

	ASSERT_TRUE(child->mprotect(addr, page, user::prot_read));
	ASSERT_TRUE(child->mprotect(addr, page, prot_rw));
	EXPECT_FALSE(this->writable(*child, addr)) << "a shared frame must stay copy-on-write";

	ASSERT_TRUE(child->handle_mm_fault(addr, access_type::write));
	EXPECT_NE(this->frame_of(*child, addr), this->frame_of(*this->parent, addr));

	ASSERT_TRUE(this->parent->mprotect(addr, page, user::prot_read));
	ASSERT_TRUE(this->parent->mprotect(addr, page, prot_rw));
	EXPECT_TRUE(this->writable(*this->parent, addr)) << "a frame only the parent maps gets write back";
}

TYPED_TEST(Fork, GrandchildSharesFrame)
{
	const uint64_t addr = this->map_filled(this->base, 1);
	auto child = this->fork_parent();
	ASSERT_TRUE(child);
	auto grandchild = child->fork();
	ASSERT_TRUE(grandchild);
	const phys::pfn_t shared = this->frame_of(*this->parent, addr);

	EXPECT_EQ(this->frame_of(**grandchild, addr), shared);
	EXPECT_EQ(this->pool.page_count(shared), 3u);

	child.reset();
	EXPECT_EQ(this->pool.page_count(shared), 2u);
	ASSERT_TRUE(this->parent->handle_mm_fault(addr, access_type::write));
	EXPECT_NE(this->frame_of(*this->parent, addr), shared);
	ASSERT_TRUE((*grandchild)->handle_mm_fault(addr, access_type::write));
	EXPECT_EQ(this->frame_of(**grandchild, addr), shared) << "the last mapper reuses the frame";
	EXPECT_EQ(this->word_at(**grandchild, addr), 1000u);
}

// Allocation failure at each allocation of a fork in turn: the fork fails
// with no_memory, and the pool, the parent's frames and its data stay.
TYPED_TEST(Fork, FailsCleanlyAtEachAllocation)
{
	using G = TypeParam;
	const uint64_t addr = this->map_filled(this->base, 2);
	const uint64_t far = this->map_filled(this->base + 3 * arch::entry_span<G>(level::pmd), 1);
	const uint64_t in_use = this->pool.in_use();
	unsigned failures = 0;

	for (uint64_t n = 1;; n++) {
		SCOPED_TRACE(testing::Message() << "failing allocation " << n);
		this->pool.fail_nth(n);
		auto child = this->parent->fork();
		this->pool.clear_faults();
		if (child)
			break;

		failures++;
		EXPECT_EQ(child.error(), errc::no_memory);
		EXPECT_EQ(this->pool.in_use(), in_use) << "the failed fork leaked";
		EXPECT_EQ(this->pool.page_count(this->frame_of(*this->parent, addr)), 1u);
		EXPECT_EQ(this->word_at(*this->parent, far), 1000u);
		this->expect_audit_ok({&this->parent->mm()});
		ASSERT_LT(n, 64u) << "fork never succeeded";
	}

	EXPECT_GE(failures, 2u) << "the pgd and at least one table of the child";
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
}

// Two write faults on one shared page of the parent, forced to race: thread
// A is held after dropping the PTE lock to copy the frame, while the main
// thread breaks the sharing completely. A's re-check must find the PTE
// changed, free its copy and leave the main thread's frame in place, and
// the child's frame must keep exactly the child's reference.
TYPED_TEST(Fork, RacingWriteFaultsInstallOneCopy)
{
#if !defined(PTL_TEST_HOOKS)
	GTEST_SKIP() << "needs a build with PTL_TEST_HOOKS";
#else
	const uint64_t addr = this->map_filled(this->base, 1);
	auto child = this->fork_parent();
	ASSERT_TRUE(child);
	const phys::pfn_t shared = this->frame_of(*child, addr);
	// Without the write protection no write fault copies, and A would
	// never reach the hook.
	ASSERT_FALSE(this->writable(*this->parent, addr));
	test::paused_thread held(hooks::point::wp_copy_unlocked);
	bool a_succeeded = false;

	std::thread a([&] {
		test::paused_thread::designate();
		a_succeeded = static_cast<bool>(this->parent->handle_mm_fault(addr, access_type::write));
	});

	const bool paused = held.wait_until_paused();
	EXPECT_TRUE(paused);
	if (paused) {
		EXPECT_EQ(this->pool.page_count(shared), 3u) << "A holds a reference while it copies";
		EXPECT_TRUE(this->parent->handle_mm_fault(addr, access_type::write));
	}
	const phys::pfn_t winner = this->frame_of(*this->parent, addr);
	held.release();
	a.join();

	EXPECT_TRUE(a_succeeded);
	EXPECT_EQ(this->frame_of(*this->parent, addr), winner) << "A replaced the copy that won";
	EXPECT_NE(winner, shared);
	EXPECT_EQ(this->pool.page_count(shared), 1u) << "only the child maps the old frame";
	EXPECT_EQ(this->pool.page_count(winner), 1u);
	EXPECT_EQ(this->pool.in_use(alloc_site::data), 2u) << "A's surplus copy was not freed";
	EXPECT_EQ(this->parent->counters().wp_copies, 1u);
	EXPECT_EQ(this->parent->counters().faults_already_mapped, 1u);

	child.reset();
	this->parent.reset();
	EXPECT_EQ(this->pool.in_use(), this->pool_before_create);
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
#endif
}

// Threads store into the parent while another thread forks it again and
// again. After each fork the child's memory must stay exactly as it was at
// the fork, whatever the parent's threads write afterwards, and a write in
// the child must not reach the parent.
TYPED_TEST(Fork, ConcurrentFaultsWhileForking)
{
	constexpr uint64_t nr_pages = 32;
	constexpr unsigned nr_writers = 2;
	constexpr int nr_forks = 12;
	// The child's own writes go here; the parent never writes this offset.
	constexpr uint64_t child_offset = 2048;

	auto start = this->parent->mmap(this->base, nr_pages * page, prot_rw, anon_fixed);
	ASSERT_TRUE(start);
	const uint64_t addr = *start;
	std::atomic<bool> stop{false};
	std::atomic<uint64_t> stores{0};
	std::atomic<uint64_t> writer_errors{0};

	// Writer t stores increasing values in word t of every page in turn,
	// and reads back its own word and the child's offset.
	auto writer = [&](unsigned t) {
		for (uint64_t value = 1; !stop.load(); value++) {
			const uint64_t at = addr + (value * 7 + t) % nr_pages * page;
			uint64_t read_back = 0;
			uint64_t child_word = 1;

			const bool ok = this->parent->copy_to_user(at + t * 8, &value, 8) &&
					this->parent->copy_from_user(&read_back, at + t * 8, 8) &&
					this->parent->copy_from_user(&child_word, at + child_offset, 8);
			if (!ok || read_back != value || child_word != 0)
				writer_errors.fetch_add(1);
			stores.fetch_add(1);
		}
	};

	std::vector<std::thread> writers;
	for (unsigned t = 0; t < nr_writers; t++)
		writers.emplace_back(writer, t);

	auto snapshot = [&](typename TestFixture::space_t &space) {
		std::vector<uint64_t> words(nr_pages * nr_writers);
		for (uint64_t p = 0; p < nr_pages; p++)
			EXPECT_TRUE(space.copy_from_user(&words[p * nr_writers], addr + p * page, nr_writers * 8));
		return words;
	};

	for (int i = 0; i < nr_forks && !this->HasFailure(); i++) {
		SCOPED_TRACE(testing::Message() << "fork " << i);
		auto child = this->parent->fork();
		ASSERT_TRUE(child);
		const auto at_fork = snapshot(**child);

		const uint64_t marker = 0xc0ffee00 + static_cast<uint64_t>(i);
		EXPECT_TRUE((*child)->copy_to_user(addr + (i % nr_pages) * page + child_offset, &marker, 8));

		// Let the writers store into every page at least once more.
		const uint64_t target = stores.load() + 4 * nr_pages;
		while (stores.load() < target && writer_errors.load() == 0)
			std::this_thread::yield();

		EXPECT_EQ(snapshot(**child), at_fork) << "the parent's stores reached the child";
		uint64_t marker_back = 0;
		EXPECT_TRUE((*child)->copy_from_user(&marker_back, addr + (i % nr_pages) * page + child_offset, 8));
		EXPECT_EQ(marker_back, marker);
	}

	stop = true;
	for (auto &w : writers)
		w.join();

	EXPECT_EQ(writer_errors.load(), 0u) << "a store of the parent was lost or the child's write reached it";
	this->expect_audit_ok({&this->parent->mm()});
	this->parent.reset();
	EXPECT_EQ(this->pool.in_use(), this->pool_before_create);
	EXPECT_EQ(this->pool.stats().double_frees, 0u);
}
