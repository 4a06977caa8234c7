#pragma once
// The KVM check: a guest runs with CR3 pointing at the pgd of a ptl address
// space, so a real x86-64 page walker translates its accesses through
// ptl's tables. That walker is the processor with EPT or NPT, and KVM's
// own software walker where KVM shadows guest page tables. Each access the
// guest makes is compared with what mm::translate reports on the host: the
// frame it reaches, the page fault it raises, and the accessed and dirty
// bits it leaves in the PTE.
//
// The pool is the guest's physical memory: it is registered at
// guest-physical address 0, so guest frame N is pool frame N. Everything
// the guest needs (its code, GDT, IDT, TSS, stacks, the list of accesses
// and the result buffer) lives in pool frames mapped by the address space
// under test, so no other translation takes part.
//
// x86-64 only, with 4-level tables.

#include <ptl/kernel/kernel_space.hpp>
#include <ptl/user/user_space.hpp>

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace ptl::check {

using kvm_geometry = arch::x86_64;
using kvm_mm = mm::mm_struct<kvm_geometry>;

// Error thrown when KVM cannot be used here: the device is missing or not
// open to this user, its API version is not 12, or it rejects VM creation.
// Callers skip.
class kvm_unavailable : public std::runtime_error {
public:
	using std::runtime_error::runtime_error;
};

// Error thrown when an ioctl fails after KVM was found usable, or when the
// guest stops in a way the harness does not expect: an exception other
// than #PF, a triple fault, or an access outside its memory.
class kvm_error : public std::runtime_error {
public:
	using std::runtime_error::runtime_error;
};

// The privilege level the guest performs its accesses at. The exception
// handlers always run at CPL0.
enum class guest_mode {
	kernel, // CPL0
	user,   // CPL3, entered with iretq. The TSS gives the handlers their stack.
};

// An operation the guest performs at an address. The values are the
// operation codes of the guest program.
enum class guest_op : uint64_t {
	read = 0,  // load 8 bytes and report them
	write = 1, // store the address itself there, load it back and report it
	fetch = 2, // call the address, which must contain a ret (0xc3), and report the address
};

struct guest_access {
	uint64_t addr;
	guest_op op;
};

// Bits of the error code that the processor pushes with a page fault (#PF).
inline constexpr uint64_t pf_error_present = 1u << 0; // a protection violation, not a missing page
inline constexpr uint64_t pf_error_write = 1u << 1;
inline constexpr uint64_t pf_error_user = 1u << 2;  // the access was made at CPL3
inline constexpr uint64_t pf_error_fetch = 1u << 4; // an instruction fetch (reported with EFER.NXE set)

// A page fault the guest raised and the host let it skip.
struct guest_fault {
	uint64_t index;      // position of the access in the list
	uint64_t address;    // CR2
	uint64_t error_code; // pf_error_* bits
	uint64_t rip;        // the instruction that faulted
};

// Result value of an access that faulted.
inline constexpr uint64_t guest_no_value = ~uint64_t{0};

// Outcome of one guest run.
struct guest_run {
	std::vector<uint64_t> values;    // one per access, guest_no_value where it faulted
	std::vector<guest_fault> faults; // in the order the guest raised them
	uint64_t exits = 0;              // KVM_RUN returns, each a port write or a halt
	double seconds = 0;              // wall time from the first KVM_RUN to the last exit
};

// The frames of the program the guest runs, allocated from the pool and
// mapped into the address space under test. The runtime unmaps and frees
// them when it is destroyed, so it must not outlive that address space.
class guest_runtime {
public:
	// I/O ports the guest writes to when the list is done, when a page
	// fault is in the mailbox, and when another exception is.
	static constexpr uint16_t port_done = 0x10;
	static constexpr uint16_t port_page_fault = 0x11;
	static constexpr uint16_t port_exception = 0x12;

	// Selectors of the GDT the runtime builds, and the limits of its GDT,
	// IDT and TSS, for loading GDTR, IDTR and TR.
	static constexpr uint16_t kernel_cs = 0x08;
	static constexpr uint16_t kernel_ds = 0x10;
	static constexpr uint16_t tss_selector = 0x28;
	static constexpr uint16_t gdt_limit = 7 * 8 - 1;   // 5 segments and a 16-byte TSS descriptor
	static constexpr uint16_t idt_limit = 32 * 16 - 1; // the 32 exception vectors
	static constexpr uint32_t tss_limit = 104 - 1;     // a 64-bit TSS without I/O bitmap

	// Allocates the frames for a program of up to max_accesses accesses.
	// Throws kvm_error when the pool cannot supply them.
	guest_runtime(phys::frame_pool &pool, size_t max_accesses);
	~guest_runtime();

	guest_runtime(const guest_runtime &) = delete;
	guest_runtime &operator=(const guest_runtime &) = delete;

	// Maps the runtime with vmap: the code read-only and executable, the
	// list read-only, everything else read-write and not executable. All
	// of it is supervisor-only, so only guest_mode::kernel can use it.
	void map_into(kernel::kernel_space<kvm_geometry> &kernel);

	// Maps the runtime as PFN-mapped areas filled with insert_pfn: the code
	// readable and executable, the list read-only, everything else
	// read-write. These are user pages, and the handlers at CPL0 may still
	// use them because the guest runs with SMEP and SMAP off.
	void map_into(user::user_space<kvm_geometry> &user);

	// Writes the program's tables, parameters and access list for a run.
	// Called by kvm_machine::run.
	void prepare(std::span<const guest_access> accesses, guest_mode mode);

	// The result buffer after a run.
	std::vector<uint64_t> read_results(size_t count) const;

	phys::frame_pool &pool() const { return pool_; }
	bool mapped() const { return mapped_; }
	phys::pfn_t pgd_pfn() const { return pgd_pfn_; }
	size_t max_accesses() const { return max_accesses_; }

	// Guest virtual addresses, valid once mapped.
	uint64_t entry_address() const;
	uint64_t kernel_stack_top() const;
	uint64_t gdt_address() const;
	uint64_t idt_address() const;
	uint64_t tss_address() const;

	// Contents of the mailbox. The page-fault handler stores the first
	// four fields, and the handler of any other exception the rest.
	struct mailbox_view {
		uint64_t cr2;
		uint64_t error_code;
		uint64_t rip;
		uint64_t index; // of the access that faulted
		uint64_t vector;
		uint64_t stack_words[2]; // the two words above the vector number
	};
	mailbox_view read_mailbox() const;

	// Tells the page-fault handler to skip the access (true) or halt.
	void set_resume(bool resume);

private:
	struct region {
		std::vector<phys::pfn_t> frames;
		uint64_t addr = 0;
	};

	void alloc_region(region &r, size_t nr_frames);
	void free_frames();
	void write_code();
	void write_system_tables();
	void write_params(size_t count, guest_mode mode);
	void write_accesses(std::span<const guest_access> accesses);
	void clear_results(size_t count);
	std::byte *system_page() const;

	phys::frame_pool &pool_;
	size_t max_accesses_;
	region code_, system_, kernel_stack_, user_stack_, list_, results_;
	bool mapped_ = false;
	phys::pfn_t pgd_pfn_ = 0;
	std::function<void()> unmap_;
};

// Access to KVM: /dev/kvm, opened once. Each run creates a fresh VM and
// vCPU, so no translation that an earlier run cached (in the TLB or in
// KVM's shadow page tables) can hide a change made on the host since.
class kvm_machine {
public:
	// Opens device_path, checks the API version and that a VM can be
	// created. Throws kvm_unavailable when it cannot.
	explicit kvm_machine(const std::string &device_path = "/dev/kvm");
	~kvm_machine();

	kvm_machine(const kvm_machine &) = delete;
	kvm_machine &operator=(const kvm_machine &) = delete;

	// Runs the accesses in a new VM whose memory is the runtime's pool,
	// with CR3 at the pgd of the space the runtime is mapped into. The
	// host lets the guest skip each page fault, and stops it when one
	// access faults twice. Throws kvm_error when the guest stops any
	// other way than by finishing the list.
	guest_run run(guest_runtime &runtime, std::span<const guest_access> accesses, guest_mode mode);

	// How guest page tables are walked on this host, from the KVM module
	// parameters in /sys/module (for example "EPT" or "shadow paging").
	std::string paging_description() const;

private:
	int kvm_fd_ = -1;
	std::vector<std::byte> cpuid_; // the kvm_cpuid2 layout that KVM_GET_SUPPORTED_CPUID filled in
	size_t run_size_ = 0;
};

// The outcome translate predicts for an access: a page fault with its error
// code, or the value the guest must report.
struct expected_outcome {
	bool fault = false;
	uint64_t error_code = 0;
	uint64_t value = 0;
};

// Predicts an access from mm::translate and the frame contents on the
// host. Call it before the guest runs, because a read expects the word
// that the frame contains at the time of the call.
expected_outcome expect_access(const kvm_mm &mm, const guest_access &access, guest_mode mode);

// Counts of a comparison between a guest run and the predictions.
struct access_tally {
	uint64_t verified = 0;        // accesses whose value or fault matched
	uint64_t mismatches = 0;      // accesses that differed
	uint64_t faults_expected = 0; // accesses predicted to fault
	uint64_t faults_observed = 0; // page faults the guest raised
	std::vector<std::string> problems; // the first few mismatches, in words

	void add(const access_tally &other);
};

access_tally compare_run(const guest_run &run, std::span<const guest_access> accesses,
			 std::span<const expected_outcome> expected);

// Clears the accessed and dirty bits of the PTE that maps addr, so that a
// guest run starts from a known state. Returns false when addr has no PTE.
bool clear_accessed_dirty(kvm_mm &mm, uint64_t addr);

// Settings of the whole check.
struct kvm_check_options {
	std::string device_path = "/dev/kvm";
	uint64_t nr_pages = 10000; // distinct 4 KiB pages mapped per address space
	unsigned nr_threads = 4;   // threads that build the mappings at once
	std::vector<mm::lock_mode> modes = {mm::lock_mode::pushdown, mm::lock_mode::lockless};
	bool kernel_space = true; // vmap mappings, guest at CPL0
	bool user_space = true;   // faulted anonymous pages, guest at CPL3
	uint64_t seed = 1;
};

// Counts of one address space in one lock mode.
struct kvm_space_report {
	std::string space; // "kernel" or "user"
	mm::lock_mode mode = mm::lock_mode::pushdown;
	uint64_t pages_mapped = 0;
	std::array<uint64_t, arch::nr_levels> tables{}; // tables per level after the build
	access_tally accesses;
	uint64_t accessed_dirty_checked = 0;
	uint64_t accessed_dirty_mismatches = 0;
	double guest_seconds = 0;
	uint64_t guest_exits = 0;
};

enum class kvm_check_status { passed, failed, skipped };

struct kvm_report {
	kvm_check_status status = kvm_check_status::skipped;
	// "skipped: <reason>" when KVM is not usable, the first problems
	// when the check failed, and a summary when it passed.
	std::string message;
	std::string paging; // kvm_machine::paging_description
	std::vector<kvm_space_report> spaces;

	// Totals over spaces.
	uint64_t addresses_verified = 0;
	uint64_t mismatches = 0;
	uint64_t faults_expected = 0;
	uint64_t faults_observed = 0;
	uint64_t accessed_dirty_checked = 0;
	uint64_t accessed_dirty_mismatches = 0;
};

// Builds random mappings with nr_threads threads in each address space and
// lock mode, lets a guest access every page, and compares the outcomes
// with translate. Each space and mode gets two guest runs. The first
// accesses nine pages in ten once (a read, write or fetch) and probes
// unmapped addresses, and the A and D bits of every page are checked after
// it. The second reads every page after a quarter of the mappings were
// removed. An unusable KVM is not an error: the report's status is then
// skipped, and its message names the reason.
kvm_report run_kvm_check(const kvm_check_options &options);

} // namespace ptl::check
