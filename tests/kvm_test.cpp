// The KVM check: a guest runs with CR3 at a ptl pgd. The frames its page
// walker reaches, the page faults it raises and the A and D bits it sets
// must match what translate reports on the host. Every test skips when
// /dev/kvm is missing or rejects VM creation.

#include <ptl/check/kvm.hpp>
#include <ptl/mm/walk.hpp>

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <ostream>
#include <vector>

using namespace ptl;
using namespace ptl::check;
using ptl::mm::translate;

namespace ptl::mm {

// Names the mode in test output, where gtest would print its bytes.
void PrintTo(lock_mode mode, std::ostream *out)
{
	*out << lock_mode_name(mode);
}

} // namespace ptl::mm

namespace {

constexpr uint64_t page = arch::page_size;

// Read-only variants of PAGE_KERNEL: without and with execute permission.
constexpr uint64_t kernel_read_only = arch::prot_present | arch::prot_global | arch::prot_nx;
constexpr uint64_t kernel_read_exec = arch::prot_present | arch::prot_global;

uint64_t word_at(phys::frame_pool &pool, phys::pfn_t pfn, uint64_t offset)
{
	uint64_t value;
	std::memcpy(&value, static_cast<std::byte *>(pool.frame_address(pfn)) + offset, sizeof(value));
	return value;
}

// Fills each 8-byte word of the frame with its own guest-physical address.
void stamp(phys::frame_pool &pool, phys::pfn_t pfn)
{
	auto *words = static_cast<uint64_t *>(pool.frame_address(pfn));
	for (uint64_t i = 0; i < page / 8; i++)
		words[i] = pfn * page + i * 8;
}

std::vector<phys::pfn_t> stamped_frames(phys::frame_pool &pool, size_t count)
{
	std::vector<phys::pfn_t> frames;
	for (size_t i = 0; i < count; i++) {
		auto pfn = pool.alloc(phys::alloc_site::data);
		EXPECT_TRUE(pfn);
		stamp(pool, *pfn);
		frames.push_back(*pfn);
	}
	return frames;
}

bool pte_has(const kvm_mm &mm, uint64_t addr, uint64_t bit)
{
	const auto t = translate(mm, addr);
	return t && (t->prot & bit) != 0;
}

class KvmTest : public ::testing::Test {
protected:
	void SetUp() override
	{
		try {
			machine_ = std::make_unique<kvm_machine>();
		} catch (const kvm_unavailable &e) {
			GTEST_SKIP() << "KVM is not usable here: " << e.what();
		}
	}

	kvm_machine &machine() { return *machine_; }

	phys::frame_pool pool_{4096};

private:
	std::unique_ptr<kvm_machine> machine_;
};

// A kernel address space with the guest program mapped into it first, so
// the areas a test maps later never reuse the program's addresses.
class KvmKernelTest : public KvmTest {
protected:
	void SetUp() override
	{
		KvmTest::SetUp();
		if (IsSkipped())
			return;

		auto kernel = kernel::kernel_space<kvm_geometry>::create(pool_, mm::lock_mode::pushdown);
		ASSERT_TRUE(kernel);
		kernel_ = std::move(*kernel);

		runtime_ = std::make_unique<guest_runtime>(pool_, 64);
		runtime_->map_into(*kernel_);
	}

	void TearDown() override { runtime_.reset(); }

	// Maps frames with prot and returns the address.
	uint64_t vmap(const std::vector<phys::pfn_t> &frames, uint64_t prot = kernel::page_kernel)
	{
		auto addr = kernel_->vmap(frames, prot);
		EXPECT_TRUE(addr);
		return *addr;
	}

	guest_run run(const std::vector<guest_access> &accesses)
	{
		return machine().run(*runtime_, accesses, guest_mode::kernel);
	}

	const kvm_mm &mm() const { return kernel_->init_mm(); }

	std::unique_ptr<kernel::kernel_space<kvm_geometry>> kernel_;
	std::unique_ptr<guest_runtime> runtime_;
};

// A user address space with the guest program mapped into it. The guest
// makes its accesses at CPL3.
class KvmUserTest : public KvmTest {
protected:
	void SetUp() override
	{
		KvmTest::SetUp();
		if (IsSkipped())
			return;

		auto space = user::user_space<kvm_geometry>::create(pool_, mm::lock_mode::lockless);
		ASSERT_TRUE(space);
		space_ = std::move(*space);

		runtime_ = std::make_unique<guest_runtime>(pool_, 64);
		runtime_->map_into(*space_);
	}

	void TearDown() override { runtime_.reset(); }

	// Maps an anonymous area of nr_pages at addr and faults every page in
	// with a read, so its PTEs have A set and D clear.
	uint64_t map_anon(uint64_t addr, uint64_t nr_pages, unsigned prot)
	{
		auto start = space_->mmap(addr, nr_pages * page, prot,
					  user::map_private | user::map_anonymous | user::map_fixed_noreplace);
		EXPECT_TRUE(start);
		for (uint64_t i = 0; i < nr_pages; i++)
			EXPECT_TRUE(space_->handle_mm_fault(addr + i * page, user::access_type::read));
		return addr;
	}

	guest_run run(const std::vector<guest_access> &accesses)
	{
		return machine().run(*runtime_, accesses, guest_mode::user);
	}

	kvm_mm &mm() { return space_->mm(); }

	phys::pfn_t pfn_of(uint64_t addr) { return translate(mm(), addr)->pfn; }

	std::unique_ptr<user::user_space<kvm_geometry>> space_;
	std::unique_ptr<guest_runtime> runtime_;
};

TEST_F(KvmKernelTest, ReadsReachFramesTranslateReports)
{
	const auto frames = stamped_frames(pool_, 8);
	const uint64_t addr = vmap(frames);

	std::vector<guest_access> accesses;
	for (uint64_t i = 0; i < frames.size(); i++)
		accesses.push_back({addr + i * page + i * 8, guest_op::read});

	const guest_run r = run(accesses);

	EXPECT_TRUE(r.faults.empty());
	for (uint64_t i = 0; i < frames.size(); i++) {
		EXPECT_EQ(r.values[i], frames[i] * page + i * 8) << "page " << i;
		EXPECT_EQ(r.values[i], translate(mm(), accesses[i].addr)->pfn * page + i * 8) << "page " << i;
	}
}

TEST_F(KvmKernelTest, WriteLandsInFrameTranslateReports)
{
	const auto frames = stamped_frames(pool_, 2);
	const uint64_t addr = vmap(frames);
	const uint64_t target = addr + page + 0x40;

	const guest_run r = run({{target, guest_op::write}});

	EXPECT_TRUE(r.faults.empty());
	EXPECT_EQ(r.values[0], target);
	EXPECT_EQ(word_at(pool_, frames[1], 0x40), target);
	EXPECT_EQ(word_at(pool_, frames[0], 0x40), frames[0] * page + 0x40);
}

TEST_F(KvmKernelTest, WriteToReadOnlyPageFaultsPresentWrite)
{
	const auto frames = stamped_frames(pool_, 1);
	const uint64_t addr = vmap(frames, kernel_read_only);

	const guest_run r = run({{addr + 8, guest_op::write}});

	ASSERT_EQ(r.faults.size(), 1u);
	EXPECT_EQ(r.faults[0].address, addr + 8);
	EXPECT_EQ(r.faults[0].error_code, pf_error_present | pf_error_write);
	EXPECT_EQ(r.values[0], guest_no_value);
	EXPECT_EQ(word_at(pool_, frames[0], 8), frames[0] * page + 8);
}

TEST_F(KvmKernelTest, ReadOfUnmappedAddressFaultsNotPresent)
{
	const auto frames = stamped_frames(pool_, 1);
	const uint64_t addr = vmap(frames);
	const uint64_t guard = addr + page;
	const uint64_t empty_pgd_slot = 0xffff900000000000;
	ASSERT_FALSE(translate(mm(), guard));
	ASSERT_FALSE(translate(mm(), empty_pgd_slot));

	const guest_run r = run({{guard, guest_op::read}, {addr, guest_op::read}, {empty_pgd_slot, guest_op::read}});

	ASSERT_EQ(r.faults.size(), 2u);
	EXPECT_EQ(r.faults[0].index, 0u);
	EXPECT_EQ(r.faults[0].address, guard);
	EXPECT_EQ(r.faults[0].error_code, 0u);
	EXPECT_EQ(r.values[1], frames[0] * page);
	EXPECT_EQ(r.faults[1].index, 2u);
	EXPECT_EQ(r.faults[1].address, empty_pgd_slot);
	EXPECT_EQ(r.faults[1].error_code, 0u);
}

TEST_F(KvmKernelTest, FetchFromNxPageFaultsWithFetchBit)
{
	const auto frames = stamped_frames(pool_, 2);
	const uint64_t nx_page = vmap({frames[0]});
	static_cast<uint8_t *>(pool_.frame_address(frames[1]))[0x100] = 0xc3; // ret
	const uint64_t exec_page = vmap({frames[1]}, kernel_read_exec);

	const guest_run r = run({{nx_page + 0x100, guest_op::fetch}, {exec_page + 0x100, guest_op::fetch}});

	ASSERT_EQ(r.faults.size(), 1u);
	EXPECT_EQ(r.faults[0].address, nx_page + 0x100);
	EXPECT_EQ(r.faults[0].rip, nx_page + 0x100);
	EXPECT_EQ(r.faults[0].error_code, pf_error_present | pf_error_fetch);
	EXPECT_EQ(r.values[1], exec_page + 0x100);
}

TEST_F(KvmKernelTest, VunmappedPageFaultsInNextRun)
{
	const auto frames = stamped_frames(pool_, 2);
	const uint64_t first = vmap({frames[0]});
	const uint64_t second = vmap({frames[1]});
	const std::vector<guest_access> accesses = {{first, guest_op::read}, {second, guest_op::read}};

	const guest_run before = run(accesses);
	ASSERT_TRUE(kernel_->vunmap(first));
	const guest_run after = run(accesses);

	EXPECT_TRUE(before.faults.empty());
	EXPECT_EQ(before.values[0], frames[0] * page);
	ASSERT_EQ(after.faults.size(), 1u);
	EXPECT_EQ(after.faults[0].address, first);
	EXPECT_EQ(after.faults[0].error_code, 0u);
	EXPECT_EQ(after.values[1], frames[1] * page);
}

TEST_F(KvmKernelTest, AccessedAndDirtyFollowGuestAccesses)
{
	const auto frames = stamped_frames(pool_, 3);
	const uint64_t addr = vmap(frames);
	const uint64_t read_page = addr, written_page = addr + page, untouched_page = addr + 2 * page;
	for (uint64_t p : {read_page, written_page, untouched_page})
		ASSERT_FALSE(pte_has(mm(), p, arch::prot_accessed | arch::prot_dirty)) << "vmap set A or D";

	const guest_run r = run({{read_page, guest_op::read}, {written_page, guest_op::write}});
	ASSERT_TRUE(r.faults.empty());

	EXPECT_TRUE(pte_has(mm(), read_page, arch::prot_accessed));
	EXPECT_FALSE(pte_has(mm(), read_page, arch::prot_dirty));
	EXPECT_TRUE(pte_has(mm(), written_page, arch::prot_accessed));
	EXPECT_TRUE(pte_has(mm(), written_page, arch::prot_dirty));
	EXPECT_FALSE(pte_has(mm(), untouched_page, arch::prot_accessed));
	EXPECT_FALSE(pte_has(mm(), untouched_page, arch::prot_dirty));
}

TEST_F(KvmKernelTest, ExpectAccessPredictsEveryOutcome)
{
	const auto frames = stamped_frames(pool_, 2);
	const uint64_t rw = vmap({frames[0]});
	const uint64_t ro = vmap({frames[1]}, kernel_read_only);
	const std::vector<guest_access> accesses = {
		{rw + 16, guest_op::read}, {rw + 24, guest_op::write}, {rw + 0x100, guest_op::fetch},
		{ro + 32, guest_op::write}, {ro + page, guest_op::read},
	};

	std::vector<expected_outcome> expected;
	for (const auto &a : accesses)
		expected.push_back(expect_access(mm(), a, guest_mode::kernel));
	const access_tally tally = compare_run(run(accesses), accesses, expected);

	EXPECT_EQ(tally.mismatches, 0u) << (tally.problems.empty() ? "" : tally.problems[0]);
	EXPECT_EQ(tally.verified, accesses.size());
	EXPECT_EQ(tally.faults_expected, 3u);
	EXPECT_EQ(tally.faults_observed, 3u);
}

TEST_F(KvmKernelTest, CompareRunReportsUnmapAfterPrediction)
{
	const auto frames = stamped_frames(pool_, 1);
	const uint64_t addr = vmap(frames);
	const std::vector<guest_access> accesses = {{addr, guest_op::read}};
	const std::vector<expected_outcome> expected = {expect_access(mm(), accesses[0], guest_mode::kernel)};

	ASSERT_TRUE(kernel_->vunmap(addr));
	const access_tally tally = compare_run(run(accesses), accesses, expected);

	EXPECT_EQ(tally.mismatches, 1u);
	EXPECT_EQ(tally.verified, 0u);
	ASSERT_EQ(tally.problems.size(), 1u);
	EXPECT_NE(tally.problems[0].find("got #PF with error code 0"), std::string::npos) << tally.problems[0];
}

TEST_F(KvmUserTest, ErrorCodesCarryUserBit)
{
	const uint64_t rw = map_anon(0x400000, 1, user::prot_read | user::prot_write);
	const uint64_t ro = map_anon(0x600000, 1, user::prot_read);
	const uint64_t hole = 0x800000;
	ASSERT_FALSE(translate(mm(), hole));

	const guest_run r = run({
		{rw + 8, guest_op::read},
		{ro + 8, guest_op::write},
		{rw + 0x100, guest_op::fetch},
		{hole, guest_op::read},
		{hole, guest_op::write},
	});

	ASSERT_EQ(r.faults.size(), 4u);
	EXPECT_EQ(r.values[0], word_at(pool_, pfn_of(rw), 8));
	EXPECT_EQ(r.faults[0].address, ro + 8);
	EXPECT_EQ(r.faults[0].error_code, pf_error_present | pf_error_write | pf_error_user);
	EXPECT_EQ(r.faults[1].address, rw + 0x100);
	EXPECT_EQ(r.faults[1].error_code, pf_error_present | pf_error_fetch | pf_error_user);
	EXPECT_EQ(r.faults[2].address, hole);
	EXPECT_EQ(r.faults[2].error_code, pf_error_user);
	EXPECT_EQ(r.faults[3].address, hole);
	EXPECT_EQ(r.faults[3].error_code, pf_error_write | pf_error_user);
}

TEST_F(KvmUserTest, WriteLandsInFrameTranslateReports)
{
	const uint64_t addr = map_anon(0x10000000, 4, user::prot_read | user::prot_write);
	const uint64_t target = addr + 2 * page + 0x80;

	const guest_run r = run({{target, guest_op::write}});

	EXPECT_TRUE(r.faults.empty());
	EXPECT_EQ(r.values[0], target);
	EXPECT_EQ(word_at(pool_, pfn_of(target), 0x80), target);
}

TEST_F(KvmUserTest, MunmappedPageFaultsInNextRun)
{
	const uint64_t addr = map_anon(0x20000000, 2, user::prot_read | user::prot_write);
	const uint64_t kept_page = addr + page;
	const std::vector<guest_access> accesses = {{addr, guest_op::read}, {kept_page, guest_op::read}};
	stamp(pool_, pfn_of(kept_page));

	const guest_run before = run(accesses);
	ASSERT_TRUE(space_->munmap(addr, page));
	const guest_run after = run(accesses);

	EXPECT_TRUE(before.faults.empty());
	ASSERT_EQ(after.faults.size(), 1u);
	EXPECT_EQ(after.faults[0].address, addr);
	EXPECT_EQ(after.faults[0].error_code, pf_error_user);
	EXPECT_EQ(after.values[1], pfn_of(kept_page) * page);
}

TEST_F(KvmUserTest, AccessedAndDirtyFollowGuestAccesses)
{
	const uint64_t addr = map_anon(0x30000000, 3, user::prot_read | user::prot_write);
	const uint64_t read_page = addr, written_page = addr + page, untouched_page = addr + 2 * page;
	// The fault path set A on each of them.
	for (uint64_t p : {read_page, written_page, untouched_page})
		ASSERT_TRUE(clear_accessed_dirty(mm(), p));

	const guest_run r = run({{read_page, guest_op::read}, {written_page, guest_op::write}});
	ASSERT_TRUE(r.faults.empty());

	EXPECT_TRUE(pte_has(mm(), read_page, arch::prot_accessed));
	EXPECT_FALSE(pte_has(mm(), read_page, arch::prot_dirty));
	EXPECT_TRUE(pte_has(mm(), written_page, arch::prot_accessed));
	EXPECT_TRUE(pte_has(mm(), written_page, arch::prot_dirty));
	EXPECT_FALSE(pte_has(mm(), untouched_page, arch::prot_accessed));
	EXPECT_FALSE(pte_has(mm(), untouched_page, arch::prot_dirty));
}

TEST(KvmCheck, MissingDeviceReportsSkipped)
{
	kvm_check_options options;
	options.device_path = "/nonexistent/kvm";

	const kvm_report report = run_kvm_check(options);

	EXPECT_EQ(report.status, kvm_check_status::skipped);
	EXPECT_EQ(report.message, "skipped: /nonexistent/kvm missing");
	EXPECT_TRUE(report.spaces.empty());
}

TEST(KvmCheck, ZeroPagesIsInvalid)
{
	kvm_check_options options;
	options.nr_pages = 0;

	const kvm_report report = run_kvm_check(options);

	EXPECT_EQ(report.status, kvm_check_status::failed);
	EXPECT_NE(report.message.find("invalid options"), std::string::npos);
}

// The full check on one address space kind in one lock mode: 10,000 pages
// mapped by 4 threads at once, every one accessed by the guest.
class KvmDifferential : public ::testing::TestWithParam<mm::lock_mode> {
protected:
	kvm_report check(bool kernel_space)
	{
		kvm_check_options options;
		options.nr_pages = 10000;
		options.nr_threads = 4;
		options.modes = {GetParam()};
		options.kernel_space = kernel_space;
		options.user_space = !kernel_space;
		return run_kvm_check(options);
	}

	static void expect_passed(const kvm_report &report)
	{
		ASSERT_EQ(report.spaces.size(), 1u) << report.message;
		const kvm_space_report &space = report.spaces[0];

		EXPECT_EQ(report.status, kvm_check_status::passed) << report.message;
		EXPECT_EQ(report.mismatches, 0u) << report.message;
		EXPECT_EQ(report.accessed_dirty_mismatches, 0u) << report.message;
		EXPECT_EQ(report.faults_observed, report.faults_expected);
		EXPECT_EQ(space.pages_mapped, 10000u);
		// The access run covers nine pages in ten and the probes, and
		// the run after unmapping covers every page again.
		EXPECT_GE(report.addresses_verified, 18000u);
		EXPECT_GT(report.faults_expected, 2000u);
		EXPECT_GE(report.accessed_dirty_checked, 8000u);
		EXPECT_GE(space.tables[arch::level_index(arch::level::pud)], 2u);
		EXPECT_GE(space.tables[arch::level_index(arch::level::pmd)], 4u);
	}
};

TEST_P(KvmDifferential, KernelSpaceMatchesTranslate)
{
	const kvm_report report = check(true);
	if (report.status == kvm_check_status::skipped)
		GTEST_SKIP() << report.message;

	expect_passed(report);
}

TEST_P(KvmDifferential, UserSpaceMatchesTranslate)
{
	const kvm_report report = check(false);
	if (report.status == kvm_check_status::skipped)
		GTEST_SKIP() << report.message;

	expect_passed(report);
}

INSTANTIATE_TEST_SUITE_P(LockModes, KvmDifferential,
			 ::testing::Values(mm::lock_mode::pushdown, mm::lock_mode::lockless, mm::lock_mode::split,
					   mm::lock_mode::legacy),
			 [](const auto &info) { return std::string(mm::lock_mode_name(info.param)); });

} // namespace
