// The differential part of the KVM check: predictions from translate, the
// comparison with a guest run, the accessed and dirty bits, and the random
// workload behind run_kvm_check.

#include <ptl/check/kvm.hpp>
#include <ptl/mm/walk.hpp>

#include <algorithm>
#include <cstring>
#include <exception>
#include <latch>
#include <optional>
#include <random>
#include <thread>

namespace ptl::check {

using arch::level;
using phys::pfn_t;

namespace {

constexpr uint64_t page_size = arch::page_size;

// A fetch calls offset 0xff8 of its page, where the host puts a ret.
// Reads and writes use the words below it, so no access reads the ret.
constexpr uint64_t fetch_offset = 0xff8;
constexpr uint64_t last_data_offset = 0xff0;
constexpr uint8_t ret_opcode = 0xc3;

constexpr size_t max_problems = 20;

const char *op_name(guest_op op)
{
	switch (op) {
	case guest_op::read:
		return "read";
	case guest_op::write:
		return "write";
	case guest_op::fetch:
		return "fetch";
	}
	return "unknown";
}

std::string error_name(errc e)
{
	return std::string(errc_name(e));
}

std::string hex(uint64_t value)
{
	char text[24];
	std::snprintf(text, sizeof(text), "%#llx", static_cast<unsigned long long>(value));
	return text;
}

uint64_t load_word(const phys::frame_pool &pool, pfn_t pfn, uint64_t offset)
{
	uint64_t value;
	std::memcpy(&value, static_cast<const std::byte *>(pool.frame_address(pfn)) + offset, sizeof(value));
	return value;
}

// The slot of the leaf entry that maps addr, found the way translate walks.
kvm_mm::slot_t *leaf_slot(const kvm_mm &mm, uint64_t addr)
{
	using format = kvm_geometry::format;

	kvm_mm::slot_t *table = mm.table(mm.pgd_pfn());
	for (level l = level::pgd;; l = arch::next_table_level<kvm_geometry>(l)) {
		kvm_mm::slot_t *slot = &table[arch::table_index<kvm_geometry>(l, addr)];
		const auto e = slot->load(std::memory_order_acquire);

		if (!format::present(e))
			return nullptr;
		if (l == level::pte || format::huge(e))
			return slot;
		table = mm.table_of(e);
	}
}

void record_problem(std::vector<std::string> &problems, std::string problem)
{
	if (problems.size() < max_problems)
		problems.push_back(std::move(problem));
}

void note_problem(access_tally &tally, std::string problem)
{
	tally.mismatches++;
	record_problem(tally.problems, std::move(problem));
}

std::string describe_access(size_t index, const guest_access &access)
{
	return "access " + std::to_string(index) + " (" + op_name(access.op) + " " + hex(access.addr) + ")";
}

} // namespace

expected_outcome expect_access(const kvm_mm &mm, const guest_access &access, guest_mode mode)
{
	uint64_t error_code = mode == guest_mode::user ? pf_error_user : 0;
	if (access.op == guest_op::write)
		error_code |= pf_error_write;
	if (access.op == guest_op::fetch)
		error_code |= pf_error_fetch;

	// Only the leaf is consulted: ptl's table entries grant write and
	// user access and never set NX, so the leaf alone decides. A table
	// entry that restricted more would show up as a mismatch.
	const auto t = mm::translate(mm, access.addr);
	if (!t)
		return {true, error_code, 0};

	const bool denied = (mode == guest_mode::user && !(t->prot & arch::prot_user)) ||
			    (access.op == guest_op::write && !(t->prot & arch::prot_write)) ||
			    (access.op == guest_op::fetch && (t->prot & arch::prot_nx));
	if (denied)
		return {true, error_code | pf_error_present, 0};

	if (access.op != guest_op::read)
		return {false, 0, access.addr};

	if (!mm.pool().valid_pfn(t->pfn))
		throw kvm_error(hex(access.addr) + " maps frame " + std::to_string(t->pfn) +
				", which is outside the pool and so outside guest memory");
	return {false, 0, load_word(mm.pool(), t->pfn, access.addr & (page_size - 1))};
}

void access_tally::add(const access_tally &other)
{
	verified += other.verified;
	mismatches += other.mismatches;
	faults_expected += other.faults_expected;
	faults_observed += other.faults_observed;
	for (const auto &p : other.problems)
		record_problem(problems, p);
}

access_tally compare_run(const guest_run &run, std::span<const guest_access> accesses,
			 std::span<const expected_outcome> expected)
{
	access_tally tally;
	std::vector<const guest_fault *> fault_at(accesses.size(), nullptr);

	tally.faults_observed = run.faults.size();
	for (const guest_fault &f : run.faults)
		fault_at[f.index] = &f;

	for (size_t i = 0; i < accesses.size(); i++) {
		const guest_fault *f = fault_at[i];
		const expected_outcome &e = expected[i];

		if (e.fault)
			tally.faults_expected++;

		if (e.fault && !f) {
			note_problem(tally, describe_access(i, accesses[i]) + ": expected #PF with error code " +
						    hex(e.error_code) + ", the guest read " + hex(run.values[i]));
		} else if (e.fault && (f->address != accesses[i].addr || f->error_code != e.error_code)) {
			note_problem(tally, describe_access(i, accesses[i]) + ": expected #PF with error code " +
						    hex(e.error_code) + ", got CR2 " + hex(f->address) +
						    " and error code " + hex(f->error_code));
		} else if (!e.fault && f) {
			note_problem(tally, describe_access(i, accesses[i]) + ": expected " + hex(e.value) +
						    ", got #PF with error code " + hex(f->error_code));
		} else if (!e.fault && run.values[i] != e.value) {
			note_problem(tally, describe_access(i, accesses[i]) + ": expected " + hex(e.value) +
						    ", the guest read " + hex(run.values[i]));
		} else {
			tally.verified++;
		}
	}
	return tally;
}

bool clear_accessed_dirty(kvm_mm &mm, uint64_t addr)
{
	kvm_mm::slot_t *slot = leaf_slot(mm, addr);
	if (!slot)
		return false;

	slot->fetch_and(~static_cast<uint64_t>(arch::prot_accessed | arch::prot_dirty), std::memory_order_relaxed);
	return true;
}

namespace {

// A page the workload mapped, and whether the guest may call into it.
struct workload_page {
	uint64_t addr;
	bool executable;
};

// Pages and probes of one address space's workload, for the guest to check.
struct workload {
	std::vector<workload_page> pages; // mapped, exactly nr_pages
	std::vector<uint64_t> probes;     // page addresses that translate to nothing
};

// The guest's plan for one phase: the accesses, and for each mapped page
// the index of its access, or none when the page is left untouched.
struct access_plan {
	std::vector<guest_access> accesses;
	std::vector<std::optional<size_t>> access_of_page;
};

uint64_t random_data_offset(std::mt19937_64 &rng)
{
	return std::uniform_int_distribution<uint64_t>(0, last_data_offset / 8)(rng) * 8;
}

// Writes into every data frame of the pool, at each 8-byte word, the
// guest-physical address of that word, so a value the guest reads names
// the frame and offset it reached. Call before the guest program takes
// its frames.
void stamp_data_frames(phys::frame_pool &pool)
{
	for (pfn_t pfn = 0; pfn < pool.nr_frames(); pfn++) {
		if (pool.site_of(pfn) != phys::alloc_site::data)
			continue;

		auto *words = static_cast<uint64_t *>(pool.frame_address(pfn));
		for (uint64_t i = 0; i < page_size / 8; i++)
			words[i] = pfn * page_size + i * 8;
	}
}

// Puts a ret where the guest calls each executable page.
void plant_returns(const kvm_mm &mm, const workload &w)
{
	for (const workload_page &p : w.pages) {
		if (!p.executable)
			continue;

		const auto t = mm::translate(mm, p.addr);
		if (!t)
			throw kvm_error("executable page " + hex(p.addr) + " lost its mapping before the guest ran");
		static_cast<uint8_t *>(mm.pool().frame_address(t->pfn))[fetch_offset] = ret_opcode;
	}
}

guest_op random_page_op(std::mt19937_64 &rng)
{
	const auto roll = std::uniform_int_distribution<int>(0, 99)(rng);
	if (roll < 60)
		return guest_op::read;
	if (roll < 85)
		return guest_op::write;
	return guest_op::fetch;
}

guest_access access_at(uint64_t page, guest_op op, std::mt19937_64 &rng)
{
	if (op == guest_op::fetch)
		return {page + fetch_offset, op};
	return {page + random_data_offset(rng), op};
}

// Plans one access with a random operation for every mapped page but a
// tenth, which stay untouched for the accessed-bit check, and one for
// every probe.
access_plan plan_access_phase(const workload &w, std::mt19937_64 &rng)
{
	access_plan plan;
	plan.access_of_page.resize(w.pages.size());

	for (size_t i = 0; i < w.pages.size(); i++) {
		if (std::uniform_int_distribution<int>(0, 9)(rng) == 0)
			continue;
		plan.access_of_page[i] = plan.accesses.size();
		plan.accesses.push_back(access_at(w.pages[i].addr, random_page_op(rng), rng));
	}

	for (uint64_t probe : w.probes)
		plan.accesses.push_back(access_at(probe, random_page_op(rng), rng));
	return plan;
}

// Plans a read of every page that was mapped, for after some were unmapped.
std::vector<guest_access> plan_reread_phase(const workload &w, std::mt19937_64 &rng)
{
	std::vector<guest_access> accesses;
	for (const workload_page &p : w.pages)
		accesses.push_back({p.addr + random_data_offset(rng), guest_op::read});
	return accesses;
}

struct phase_result {
	guest_run run;
	std::vector<expected_outcome> expected;
};

phase_result run_phase(kvm_machine &machine, guest_runtime &runtime, const kvm_mm &mm,
		       std::span<const guest_access> accesses, guest_mode mode, kvm_space_report &report)
{
	phase_result phase;

	for (const guest_access &a : accesses)
		phase.expected.push_back(expect_access(mm, a, mode));

	phase.run = machine.run(runtime, accesses, mode);

	report.accesses.add(compare_run(phase.run, accesses, phase.expected));
	report.guest_seconds += phase.run.seconds;
	report.guest_exits += phase.run.exits;
	return phase;
}

// Compares the accessed and dirty bits of every mapped page with what the
// guest did there. An untouched page keeps both clear, a read or fetch
// sets A, and a write sets A and D. Pages whose access faulted are
// skipped, so the check does not depend on what a faulting access does to
// A.
void check_accessed_dirty(const kvm_mm &mm, const workload &w, const access_plan &plan, const phase_result &phase,
			  kvm_space_report &report)
{
	for (size_t i = 0; i < w.pages.size(); i++) {
		const auto index = plan.access_of_page[i];
		if (index && phase.expected[*index].fault)
			continue;

		const bool expect_dirty = index && plan.accesses[*index].op == guest_op::write;
		const bool expect_accessed = index.has_value();
		const auto t = mm::translate(mm, w.pages[i].addr);
		report.accessed_dirty_checked++;

		if (!t) {
			report.accessed_dirty_mismatches++;
			record_problem(report.accesses.problems, "page " + hex(w.pages[i].addr) +
									 " lost its mapping during the guest run");
			continue;
		}

		const bool accessed = (t->prot & arch::prot_accessed) != 0;
		const bool dirty = (t->prot & arch::prot_dirty) != 0;
		if (accessed == expect_accessed && dirty == expect_dirty)
			continue;

		report.accessed_dirty_mismatches++;
		record_problem(report.accesses.problems, "page " + hex(w.pages[i].addr) + ": expected A=" +
								 std::to_string(expect_accessed) + " D=" +
								 std::to_string(expect_dirty) + ", the PTE has A=" +
								 std::to_string(accessed) + " D=" + std::to_string(dirty));
	}
}

// Checks that no workload PTE has A or D set before the guest runs.
void require_clean_ptes(const kvm_mm &mm, const workload &w)
{
	for (const workload_page &p : w.pages) {
		const auto t = mm::translate(mm, p.addr);
		if (t && (t->prot & (arch::prot_accessed | arch::prot_dirty)))
			throw kvm_error("the PTE of " + hex(p.addr) +
					" has A or D set before the guest ran, so the A and D check cannot start");
	}
}

// Picks count random canonical page addresses that translate to nothing,
// half of them in each half of the address space.
std::vector<uint64_t> pick_probes(const kvm_mm &mm, size_t count, std::mt19937_64 &rng)
{
	std::uniform_int_distribution<uint64_t> page_number(0, (uint64_t{1} << 35) - 1);
	std::vector<uint64_t> probes;

	while (probes.size() < count) {
		uint64_t addr = page_number(rng) << arch::page_shift;
		if (probes.size() % 2)
			addr |= 0xffff800000000000;
		if (addr < user::mmap_min_addr || mm::translate(mm, addr))
			continue;
		probes.push_back(addr);
	}
	return probes;
}

// Calls body(t) on nr_threads threads, t = 0, 1, ..., which a latch
// releases together, and rethrows the first exception any of them threw.
template <class Body>
void run_threads(unsigned nr_threads, Body body)
{
	std::latch start(nr_threads);
	std::vector<std::exception_ptr> errors(nr_threads);
	std::vector<std::thread> threads;

	for (unsigned t = 0; t < nr_threads; t++) {
		threads.emplace_back([&, t] {
			start.arrive_and_wait();
			try {
				body(t);
			} catch (...) {
				errors[t] = std::current_exception();
			}
		});
	}
	for (auto &thread : threads)
		thread.join();

	for (auto &e : errors) {
		if (e)
			std::rethrow_exception(e);
	}
}

// Pages for thread t out of total, split as evenly as possible.
uint64_t share_of(uint64_t total, unsigned nr_threads, unsigned t)
{
	return total / nr_threads + (t < total % nr_threads ? 1 : 0);
}

uint64_t seed_for(const kvm_check_options &options, mm::lock_mode mode, uint64_t salt)
{
	return options.seed * 0x9e3779b97f4a7c15 + static_cast<uint64_t>(mode) * 1000 + salt;
}

// --- kernel space: vmap areas built by concurrent threads ---

struct kernel_area {
	uint64_t addr;
	std::vector<pfn_t> frames;
	bool executable;
};

struct kernel_prot {
	uint64_t prot;
	bool executable;
};

// Picks PAGE_KERNEL for eight areas in ten, read-only for one, and
// read-only and executable for one.
kernel_prot random_kernel_prot(std::mt19937_64 &rng)
{
	const auto roll = std::uniform_int_distribution<int>(0, 9)(rng);

	if (roll == 8)
		return {arch::prot_present | arch::prot_global | arch::prot_nx, false};
	if (roll == 9)
		return {arch::prot_present | arch::prot_global, true};
	return {kernel::page_kernel, false};
}

// Maximum number of 512 GiB gaps in one kernel space: 8 TiB of the 32 TiB
// vmalloc area.
constexpr unsigned max_pud_gaps = 16;

// Reserves unmapped gaps in the vmalloc area now and then, so that the
// areas after them need new PTE and pmd tables. A 512 GiB gap moves the
// next areas under a new pgd entry and so into a new pud table.
void maybe_reserve_gap(kernel::kernel_space<kvm_geometry> &kernel, std::mt19937_64 &rng, bool pud_gap)
{
	uint64_t gap = 0;
	const auto roll = std::uniform_int_distribution<int>(0, 255)(rng);

	if (pud_gap)
		gap = uint64_t{512} << 30;
	else if (roll < 4)
		gap = std::uniform_int_distribution<uint64_t>(1, 8)(rng) << 30;
	else if (roll < 12)
		gap = std::uniform_int_distribution<uint64_t>(1, 32)(rng) << 21;
	if (gap == 0)
		return;

	auto area = kernel.get_vm_area(gap, kernel::vm_map);
	if (!area)
		throw kvm_error("reserving a gap in the vmalloc area failed: " + error_name(area.error()));
}

// Maps nr_pages fresh data frames in vmap areas of 1 to 16 pages. Each
// thread reserves a 512 GiB gap before its first area and before the area
// that crosses its halfway mark, up to max_pud_gaps in all.
std::vector<kernel_area> build_kernel_areas(kernel::kernel_space<kvm_geometry> &kernel, uint64_t nr_pages,
					    std::mt19937_64 &rng, std::atomic<unsigned> &pud_gaps)
{
	std::vector<kernel_area> areas;
	uint64_t mapped = 0;
	phys::frame_pool &pool = kernel.pool();
	const uint64_t half = nr_pages / 2;

	while (mapped < nr_pages) {
		const uint64_t n = std::min<uint64_t>(std::uniform_int_distribution<uint64_t>(1, 16)(rng),
						      nr_pages - mapped);
		const bool at_mark = mapped == 0 || (mapped < half && mapped + n >= half);
		const bool pud_gap = at_mark && pud_gaps.fetch_add(1, std::memory_order_relaxed) < max_pud_gaps;
		maybe_reserve_gap(kernel, rng, pud_gap);

		kernel_area area;
		for (uint64_t i = 0; i < n; i++) {
			auto pfn = pool.alloc(phys::alloc_site::data);
			if (!pfn)
				throw kvm_error("frame pool exhausted while building kernel mappings");
			area.frames.push_back(*pfn);
		}

		const kernel_prot prot = random_kernel_prot(rng);
		area.executable = prot.executable;
		auto addr = kernel.vmap(area.frames, prot.prot);
		if (!addr)
			throw kvm_error("vmap of " + std::to_string(n) + " pages failed: " + error_name(addr.error()));
		area.addr = *addr;

		areas.push_back(std::move(area));
		mapped += n;
	}
	return areas;
}

// Builds the mappings on nr_threads threads and returns every area in a
// random order.
std::vector<kernel_area> build_kernel_mappings(kernel::kernel_space<kvm_geometry> &kernel,
					       const kvm_check_options &options, mm::lock_mode mode,
					       std::mt19937_64 &rng)
{
	std::vector<std::vector<kernel_area>> per_thread(options.nr_threads);
	std::atomic<unsigned> pud_gaps{0};

	run_threads(options.nr_threads, [&](unsigned t) {
		std::mt19937_64 thread_rng(seed_for(options, mode, t));
		per_thread[t] = build_kernel_areas(kernel, share_of(options.nr_pages, options.nr_threads, t),
						   thread_rng, pud_gaps);
	});

	std::vector<kernel_area> areas;
	for (auto &v : per_thread)
		std::move(v.begin(), v.end(), std::back_inserter(areas));
	std::shuffle(areas.begin(), areas.end(), rng);
	return areas;
}

workload kernel_workload(const kvm_mm &init_mm, const std::vector<kernel_area> &areas, std::mt19937_64 &rng)
{
	workload w;

	for (const kernel_area &area : areas) {
		for (size_t i = 0; i < area.frames.size(); i++)
			w.pages.push_back({area.addr + i * page_size, area.executable});
	}

	// The guard page after an area is reserved but never mapped.
	for (size_t i = 0; i < areas.size() && i < 256; i++)
		w.probes.push_back(areas[i].addr + areas[i].frames.size() * page_size);

	auto random = pick_probes(init_mm, 128, rng);
	w.probes.insert(w.probes.end(), random.begin(), random.end());
	return w;
}

// Runs the two guest runs of one address space: one access to nine pages
// in ten plus the probes, followed by the A and D check, and after
// unmap_some() a read of every page.
template <class UnmapSome>
void run_phases(kvm_machine &machine, guest_runtime &runtime, const kvm_mm &mm, const workload &w, guest_mode mode,
		std::mt19937_64 &rng, kvm_space_report &report, UnmapSome unmap_some)
{
	const access_plan plan = plan_access_phase(w, rng);
	const phase_result phase = run_phase(machine, runtime, mm, plan.accesses, mode, report);
	check_accessed_dirty(mm, w, plan, phase, report);

	unmap_some();

	const auto reread = plan_reread_phase(w, rng);
	run_phase(machine, runtime, mm, reread, mode, report);
}

// Removes the first quarter of the areas. The frames stay allocated: the
// pool goes away with the whole check.
void vunmap_quarter(kernel::kernel_space<kvm_geometry> &kernel, const std::vector<kernel_area> &areas)
{
	for (size_t i = 0; i < areas.size() / 4; i++) {
		auto r = kernel.vunmap(areas[i].addr);
		if (!r)
			throw kvm_error("vunmap of " + hex(areas[i].addr) + " failed: " + error_name(r.error()));
	}
}

kvm_space_report check_kernel_space(kvm_machine &machine, const kvm_check_options &options, mm::lock_mode mode)
{
	kvm_space_report report;
	report.space = "kernel";
	report.mode = mode;

	phys::frame_pool pool(options.nr_pages * 2 + 8192);
	auto kernel = kernel::kernel_space<kvm_geometry>::create(pool, mode);
	if (!kernel)
		throw kvm_error("creating the kernel address space failed: " + error_name(kernel.error()));

	std::mt19937_64 rng(seed_for(options, mode, 100));
	const auto areas = build_kernel_mappings(**kernel, options, mode, rng);

	const kvm_mm &init_mm = (*kernel)->init_mm();
	report.tables = mm::count_tables(init_mm);
	stamp_data_frames(pool);

	const workload w = kernel_workload(init_mm, areas, rng);
	report.pages_mapped = w.pages.size();
	plant_returns(init_mm, w);

	guest_runtime runtime(pool, w.pages.size() + w.probes.size());
	runtime.map_into(**kernel);

	// vmap sets PTEs without A and D, so nothing needs clearing.
	require_clean_ptes(init_mm, w);
	run_phases(machine, runtime, init_mm, w, guest_mode::kernel, rng, report,
		   [&] { vunmap_quarter(**kernel, areas); });
	return report;
}

// --- user space: anonymous areas faulted in by concurrent threads ---

struct user_area {
	uint64_t addr;
	uint64_t len;
	unsigned prot;
};

struct user_page {
	uint64_t addr;
	unsigned prot;
};

// Picks read-write for eight areas in ten, read-only for one, and
// read-only and executable for one.
unsigned random_user_prot(std::mt19937_64 &rng)
{
	const auto roll = std::uniform_int_distribution<int>(0, 9)(rng);
	if (roll == 8)
		return user::prot_read;
	if (roll == 9)
		return user::prot_read | user::prot_exec;
	return user::prot_read | user::prot_write;
}

// Creates anonymous areas until they contain at least nr_pages pages. They
// are packed into 8 regions of 64 MiB, each under a different pgd entry,
// so threads that fault them in share PTE and pmd tables while the whole
// set spans several pud tables.
std::vector<user_area> create_user_areas(user::user_space<kvm_geometry> &space, uint64_t nr_pages,
					 std::mt19937_64 &rng)
{
	constexpr unsigned nr_regions = 8;
	constexpr uint64_t region_size = uint64_t{64} << 20;

	std::vector<uint64_t> regions;
	for (unsigned r = 0; r < nr_regions; r++) {
		const uint64_t pgd_index = 1 + r * 31 + std::uniform_int_distribution<uint64_t>(0, 30)(rng);
		const uint64_t pud_index = std::uniform_int_distribution<uint64_t>(0, 511)(rng);
		regions.push_back((pgd_index << 39) | (pud_index << 30));
	}

	std::vector<user_area> areas;
	uint64_t pages = 0;
	while (pages < nr_pages) {
		const uint64_t base = regions[std::uniform_int_distribution<unsigned>(0, nr_regions - 1)(rng)];
		const uint64_t len = std::uniform_int_distribution<uint64_t>(1, 64)(rng) * page_size;
		const uint64_t offset = std::uniform_int_distribution<uint64_t>(0, (region_size - len) / page_size)(rng);
		const uint64_t addr = base + offset * page_size;
		const unsigned prot = random_user_prot(rng);

		auto start = space.mmap(addr, len, prot, user::map_private | user::map_anonymous | user::map_fixed_noreplace);
		if (!start && start.error() == errc::exists)
			continue;
		if (!start)
			throw kvm_error("mmap at " + hex(addr) + " failed: " + error_name(start.error()));

		areas.push_back({addr, len, prot});
		pages += len / page_size;
	}
	return areas;
}

// Every page of every area, in a random order.
std::vector<user_page> shuffled_pages(const std::vector<user_area> &areas, std::mt19937_64 &rng)
{
	std::vector<user_page> pages;
	for (const user_area &a : areas) {
		for (uint64_t offset = 0; offset < a.len; offset += page_size)
			pages.push_back({a.addr + offset, a.prot});
	}
	std::shuffle(pages.begin(), pages.end(), rng);
	return pages;
}

user::access_type fault_type(unsigned prot, std::mt19937_64 &rng)
{
	if ((prot & user::prot_write) && std::uniform_int_distribution<int>(0, 1)(rng))
		return user::access_type::write;
	if (prot & user::prot_exec)
		return user::access_type::exec;
	return user::access_type::read;
}

// Faults in the first nr_pages pages on nr_threads threads. Thread t takes
// pages t, t + nr_threads, and so on, so threads race for the same tables.
void fault_in_pages(user::user_space<kvm_geometry> &space, const std::vector<user_page> &pages,
		    const kvm_check_options &options, mm::lock_mode mode)
{
	run_threads(options.nr_threads, [&](unsigned t) {
		std::mt19937_64 rng(seed_for(options, mode, 300 + t));

		for (uint64_t i = t; i < options.nr_pages; i += options.nr_threads) {
			auto r = space.handle_mm_fault(pages[i].addr, fault_type(pages[i].prot, rng));
			if (!r)
				throw kvm_error("fault at " + hex(pages[i].addr) + " failed: " + error_name(r.error()));
		}
	});
}

// The first nr_pages pages are mapped. The rest stay holes inside their
// areas and become probes, together with random addresses.
workload user_workload(const kvm_mm &mm, const std::vector<user_page> &pages, uint64_t nr_pages,
		       std::mt19937_64 &rng)
{
	workload w;

	for (uint64_t i = 0; i < pages.size(); i++) {
		if (i < nr_pages)
			w.pages.push_back({pages[i].addr, (pages[i].prot & user::prot_exec) != 0});
		else
			w.probes.push_back(pages[i].addr);
	}

	auto random = pick_probes(mm, 128, rng);
	w.probes.insert(w.probes.end(), random.begin(), random.end());
	return w;
}

// Removes the first quarter of the areas, every other one only in its
// first half, which splits its VMA.
void munmap_quarter(user::user_space<kvm_geometry> &space, const std::vector<user_area> &areas)
{
	for (size_t i = 0; i < areas.size() / 4; i++) {
		const uint64_t pages = areas[i].len / page_size;
		const uint64_t len = (i % 2 && pages > 1) ? pages / 2 * page_size : areas[i].len;

		auto r = space.munmap(areas[i].addr, len);
		if (!r)
			throw kvm_error("munmap of " + hex(areas[i].addr) + " failed: " + error_name(r.error()));
	}
}

kvm_space_report check_user_space(kvm_machine &machine, const kvm_check_options &options, mm::lock_mode mode)
{
	kvm_space_report report;
	report.space = "user";
	report.mode = mode;

	phys::frame_pool pool(options.nr_pages * 2 + 8192);
	auto space = user::user_space<kvm_geometry>::create(pool, mode);
	if (!space)
		throw kvm_error("creating the user address space failed: " + error_name(space.error()));

	std::mt19937_64 rng(seed_for(options, mode, 200));
	const auto areas = create_user_areas(**space, options.nr_pages + options.nr_pages / 10, rng);
	const auto pages = shuffled_pages(areas, rng);
	fault_in_pages(**space, pages, options, mode);

	kvm_mm &mm = (*space)->mm();
	report.tables = mm::count_tables(mm);
	stamp_data_frames(pool);

	const workload w = user_workload(mm, pages, options.nr_pages, rng);
	report.pages_mapped = w.pages.size();
	plant_returns(mm, w);

	guest_runtime runtime(pool, w.pages.size() + w.probes.size());
	runtime.map_into(**space);

	// The fault path sets A, and D on a write fault, as it installs a PTE,
	// so both are cleared to give the guest a clean start.
	for (const workload_page &p : w.pages)
		clear_accessed_dirty(mm, p.addr);
	run_phases(machine, runtime, mm, w, guest_mode::user, rng, report, [&] { munmap_quarter(**space, areas); });
	return report;
}

void add_totals(kvm_report &report, const kvm_space_report &space)
{
	report.addresses_verified += space.accesses.verified;
	report.mismatches += space.accesses.mismatches;
	report.faults_expected += space.accesses.faults_expected;
	report.faults_observed += space.accesses.faults_observed;
	report.accessed_dirty_checked += space.accessed_dirty_checked;
	report.accessed_dirty_mismatches += space.accessed_dirty_mismatches;
}

// The recorded problems, one line each, prefixed with space and mode.
std::string first_problems(const kvm_report &report)
{
	std::string text;
	for (const auto &space : report.spaces) {
		for (const auto &p : space.accesses.problems) {
			if (!text.empty())
				text += "\n";
			text += space.space + "/" + std::string(mm::lock_mode_name(space.mode)) + ": " + p;
		}
	}

	if (text.empty())
		text = std::to_string(report.faults_observed) + " page faults observed, " +
		       std::to_string(report.faults_expected) + " expected";
	return text;
}

std::string summary(const kvm_report &report)
{
	return std::to_string(report.addresses_verified) + " accesses matched translate, " +
	       std::to_string(report.faults_observed) + " page faults as predicted, " +
	       std::to_string(report.accessed_dirty_checked) + " PTEs with the expected A and D bits";
}

} // namespace

kvm_report run_kvm_check(const kvm_check_options &options)
{
	kvm_report report;

	if (options.nr_pages == 0 || options.nr_threads == 0) {
		report.status = kvm_check_status::failed;
		report.message = "invalid options: nr_pages and nr_threads must be at least 1";
		return report;
	}

	std::optional<kvm_machine> machine;
	try {
		machine.emplace(options.device_path);
	} catch (const kvm_unavailable &e) {
		report.status = kvm_check_status::skipped;
		report.message = std::string("skipped: ") + e.what();
		return report;
	}
	report.paging = machine->paging_description();

	try {
		for (mm::lock_mode mode : options.modes) {
			if (options.kernel_space)
				report.spaces.push_back(check_kernel_space(*machine, options, mode));
			if (options.user_space)
				report.spaces.push_back(check_user_space(*machine, options, mode));
		}
	} catch (const kvm_error &e) {
		for (const auto &space : report.spaces)
			add_totals(report, space);
		report.status = kvm_check_status::failed;
		report.message = e.what();
		return report;
	}

	for (const auto &space : report.spaces)
		add_totals(report, space);

	const bool passed = report.mismatches == 0 && report.accessed_dirty_mismatches == 0 &&
			    report.faults_observed == report.faults_expected;
	report.status = passed ? kvm_check_status::passed : kvm_check_status::failed;
	report.message = passed ? summary(report) : first_problems(report);
	return report;
}

} // namespace ptl::check
