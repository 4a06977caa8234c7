// The KVM side of the check: /dev/kvm, one fresh VM and vCPU per run, the
// long-mode register state, and the KVM_RUN loop that handles the guest's
// port writes.

#include <ptl/check/kvm.hpp>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace ptl::check {

namespace {

constexpr int expected_api_version = 12;

// Control register and EFER bits of the long-mode state the guest starts in.
constexpr uint64_t cr0_pe = 1ull << 0;  // protected mode
constexpr uint64_t cr0_ne = 1ull << 5;  // native FPU errors, required by VMX
constexpr uint64_t cr0_wp = 1ull << 16; // CPL0 writes honour read-only pages
constexpr uint64_t cr0_pg = 1ull << 31;
constexpr uint64_t cr4_pae = 1ull << 5;
constexpr uint64_t efer_lme = 1ull << 8;
constexpr uint64_t efer_lma = 1ull << 10;
constexpr uint64_t efer_nxe = 1ull << 11; // bit 63 of an entry means no-execute

// linux-libc-dev 6.1 declares the entries of struct kvm_cpuid2 with
// __DECLARE_FLEX_ARRAY, whose empty struct C++ sizes as one byte. In C++
// the struct is 12 bytes and not C's 8, so the ioctl numbers built from it
// encode a size that KVM rejects with EINVAL. The numbers are built here
// from the C layout instead: a u32 count, a u32 of padding, then the
// entries.
struct flex_header {
	uint32_t count;
	uint32_t padding;
};
static_assert(sizeof(flex_header) == 8);
constexpr unsigned long ioctl_get_supported_cpuid = _IOWR(KVMIO, 0x05, flex_header);
constexpr unsigned long ioctl_set_cpuid2 = _IOW(KVMIO, 0x90, flex_header);

std::string error_text(int err)
{
	return std::system_category().message(err);
}

// A file descriptor that closes itself.
class unique_fd {
public:
	unique_fd() = default;
	explicit unique_fd(int fd) : fd_(fd) {}
	~unique_fd()
	{
		if (fd_ >= 0)
			::close(fd_);
	}
	unique_fd(unique_fd &&other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
	unique_fd &operator=(unique_fd &&other) noexcept
	{
		std::swap(fd_, other.fd_);
		return *this;
	}

	int get() const { return fd_; }

private:
	int fd_ = -1;
};

// Issues an ioctl and throws kvm_error naming it when it fails.
template <class Arg>
int checked_ioctl(int fd, unsigned long request, const char *name, Arg arg)
{
	const int r = ::ioctl(fd, request, arg);
	if (r < 0)
		throw kvm_error(std::string(name) + " failed: " + error_text(errno));
	return r;
}

std::string hex(uint64_t value)
{
	char text[24];
	std::snprintf(text, sizeof(text), "%#llx", static_cast<unsigned long long>(value));
	return text;
}

kvm_segment code_segment()
{
	kvm_segment s{};
	s.selector = guest_runtime::kernel_cs;
	s.limit = 0xffffffff;
	s.type = 0xb; // execute/read, accessed
	s.present = 1;
	s.s = 1;
	s.l = 1; // 64-bit code
	s.g = 1;
	return s;
}

kvm_segment data_segment()
{
	kvm_segment s{};
	s.selector = guest_runtime::kernel_ds;
	s.limit = 0xffffffff;
	s.type = 0x3; // read/write, accessed
	s.present = 1;
	s.s = 1;
	s.db = 1;
	s.g = 1;
	return s;
}

kvm_segment task_segment(uint64_t base)
{
	kvm_segment s{};
	s.selector = guest_runtime::tss_selector;
	s.base = base;
	s.limit = guest_runtime::tss_limit;
	s.type = 0xb; // busy 64-bit TSS, as the processor requires for TR
	s.present = 1;
	return s;
}

// A file under /sys/module, or an empty string.
std::string read_module_parameter(const std::string &path)
{
	std::ifstream in(path);
	std::string value;
	in >> value;
	return value;
}

bool module_loaded(const std::string &name)
{
	return ::access(("/sys/module/" + name).c_str(), F_OK) == 0;
}

// One VM with one vCPU whose memory is the whole pool, at guest-physical
// address 0.
class vm_instance {
public:
	vm_instance(int kvm_fd, size_t run_size, const std::vector<std::byte> &cpuid, phys::frame_pool &pool)
		: run_size_(run_size)
	{
		vm_ = unique_fd(checked_ioctl(kvm_fd, KVM_CREATE_VM, "KVM_CREATE_VM", 0UL));

		kvm_userspace_memory_region region{};
		region.slot = 0;
		region.guest_phys_addr = 0;
		region.memory_size = pool.nr_frames() * phys::frame_size;
		region.userspace_addr = reinterpret_cast<uint64_t>(pool.base());
		checked_ioctl(vm_.get(), KVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", &region);

		vcpu_ = unique_fd(checked_ioctl(vm_.get(), KVM_CREATE_VCPU, "KVM_CREATE_VCPU", 0UL));

		// Without the host's CPUID the vCPU lacks long mode and NX, and
		// KVM rejects EFER.LME and EFER.NXE.
		checked_ioctl(vcpu_.get(), ioctl_set_cpuid2, "KVM_SET_CPUID2", cpuid.data());

		void *run = ::mmap(nullptr, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_.get(), 0);
		if (run == MAP_FAILED)
			throw kvm_error("mmap of the vCPU's kvm_run area failed: " + error_text(errno));
		run_ = static_cast<kvm_run *>(run);
	}

	~vm_instance()
	{
		if (run_)
			::munmap(run_, run_size_);
	}

	vm_instance(const vm_instance &) = delete;
	vm_instance &operator=(const vm_instance &) = delete;

	// Puts the vCPU in 64-bit mode at CPL0, paging through the pgd.
	void enter_long_mode(const guest_runtime &runtime)
	{
		kvm_sregs sregs{};
		checked_ioctl(vcpu_.get(), KVM_GET_SREGS, "KVM_GET_SREGS", &sregs);

		sregs.cs = code_segment();
		sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data_segment();
		sregs.tr = task_segment(runtime.tss_address());
		sregs.gdt.base = runtime.gdt_address();
		sregs.gdt.limit = guest_runtime::gdt_limit;
		sregs.idt.base = runtime.idt_address();
		sregs.idt.limit = guest_runtime::idt_limit;

		// CR4.PGE stays clear, so the global bit of kernel PTEs has no
		// effect. SMEP and SMAP stay clear, so CPL0 may use user pages.
		sregs.cr0 = cr0_pe | cr0_ne | cr0_wp | cr0_pg;
		sregs.cr3 = runtime.pgd_pfn() << arch::page_shift;
		sregs.cr4 = cr4_pae;
		sregs.efer = efer_lme | efer_lma | efer_nxe;
		checked_ioctl(vcpu_.get(), KVM_SET_SREGS, "KVM_SET_SREGS", &sregs);

		kvm_regs regs{};
		regs.rip = runtime.entry_address();
		regs.rsp = runtime.kernel_stack_top();
		regs.rflags = 0x2; // only the reserved bit 1, so interrupts are off
		checked_ioctl(vcpu_.get(), KVM_SET_REGS, "KVM_SET_REGS", &regs);
	}

	// Runs until the next exit that needs the host.
	const kvm_run &run()
	{
		while (::ioctl(vcpu_.get(), KVM_RUN, 0) < 0) {
			if (errno != EINTR)
				throw kvm_error("KVM_RUN failed: " + error_text(errno));
		}
		return *run_;
	}

private:
	unique_fd vm_;
	unique_fd vcpu_;
	kvm_run *run_ = nullptr;
	size_t run_size_;
};

std::string describe_exception(const guest_runtime::mailbox_view &mailbox)
{
	return "guest raised exception vector " + std::to_string(mailbox.vector) + " (stack words " +
	       hex(mailbox.stack_words[0]) + ", " + hex(mailbox.stack_words[1]) + ")";
}

std::string describe_exit(const kvm_run &run)
{
	switch (run.exit_reason) {
	case KVM_EXIT_SHUTDOWN:
		return "guest triple-faulted (KVM_EXIT_SHUTDOWN)";
	case KVM_EXIT_MMIO:
		return "guest accessed guest-physical address " + hex(run.mmio.phys_addr) +
		       ", which is outside the pool (KVM_EXIT_MMIO)";
	case KVM_EXIT_FAIL_ENTRY:
		return "VM entry failed, hardware reason " + hex(run.fail_entry.hardware_entry_failure_reason);
	case KVM_EXIT_INTERNAL_ERROR:
		return "KVM internal error, suberror " + std::to_string(run.internal.suberror);
	case KVM_EXIT_HLT:
		return "guest halted before finishing its list";
	case KVM_EXIT_IO:
		return "guest wrote to unknown I/O port " + hex(run.io.port);
	}
	return "unexpected KVM exit reason " + std::to_string(run.exit_reason);
}

// Returns why the guest must stop at this page fault, or nothing when it
// may skip the access and go on. A fault outside the access loop, or a
// second fault of the same access, means that skipping does not work and
// the guest would loop.
std::optional<std::string> reason_to_stop(const guest_runtime::mailbox_view &mailbox, size_t nr_accesses,
					  const guest_run &result)
{
	const std::string fault = "page fault at " + hex(mailbox.cr2) + " (error code " + hex(mailbox.error_code) +
				  ", rip " + hex(mailbox.rip) + ")";

	if (mailbox.index >= nr_accesses)
		return fault + " outside the access loop, at index " + std::to_string(mailbox.index) + " of " +
		       std::to_string(nr_accesses);
	if (!result.faults.empty() && result.faults.back().index == mailbox.index)
		return fault + " again at access " + std::to_string(mailbox.index) + ", which the guest was told to skip";
	return std::nullopt;
}

} // namespace

kvm_machine::kvm_machine(const std::string &device_path)
{
	kvm_fd_ = ::open(device_path.c_str(), O_RDWR | O_CLOEXEC);
	if (kvm_fd_ < 0) {
		const int err = errno;
		if (err == ENOENT)
			throw kvm_unavailable(device_path + " missing");
		throw kvm_unavailable("cannot open " + device_path + ": " + error_text(err));
	}

	try {
		const int version = ::ioctl(kvm_fd_, KVM_GET_API_VERSION, 0);
		if (version < 0)
			throw kvm_unavailable("KVM_GET_API_VERSION failed on " + device_path + ": " + error_text(errno));
		if (version != expected_api_version)
			throw kvm_unavailable("KVM API version " + std::to_string(version) + " at " + device_path +
					      ", expected " + std::to_string(expected_api_version));

		const int run_size = ::ioctl(kvm_fd_, KVM_GET_VCPU_MMAP_SIZE, 0);
		if (run_size <= 0)
			throw kvm_unavailable("KVM_GET_VCPU_MMAP_SIZE failed: " + error_text(errno));
		run_size_ = static_cast<size_t>(run_size);

		// The table of CPUID leaves grows until KVM no longer fails with
		// E2BIG.
		for (uint32_t nent = 64;; nent *= 2) {
			cpuid_.assign(sizeof(flex_header) + nent * sizeof(kvm_cpuid_entry2), std::byte{0});
			const flex_header header{nent, 0};
			std::memcpy(cpuid_.data(), &header, sizeof(header));
			if (::ioctl(kvm_fd_, ioctl_get_supported_cpuid, cpuid_.data()) == 0)
				break;
			if (errno != E2BIG || nent >= 4096)
				throw kvm_unavailable("KVM_GET_SUPPORTED_CPUID failed: " + error_text(errno));
		}

		const int vm = ::ioctl(kvm_fd_, KVM_CREATE_VM, 0UL);
		if (vm < 0)
			throw kvm_unavailable("VM creation refused: " + error_text(errno));
		::close(vm);
	} catch (...) {
		::close(kvm_fd_);
		throw;
	}
}

kvm_machine::~kvm_machine()
{
	::close(kvm_fd_);
}

guest_run kvm_machine::run(guest_runtime &runtime, std::span<const guest_access> accesses, guest_mode mode)
{
	runtime.prepare(accesses, mode);
	runtime.set_resume(true);

	vm_instance vm(kvm_fd_, run_size_, cpuid_, runtime.pool());
	vm.enter_long_mode(runtime);

	guest_run result;
	const auto start = std::chrono::steady_clock::now();

	// NOTE: there is no watchdog. The guest program always ends in a port
	// write, a halt or a fault, but a guest that loops without any of them
	// would block KVM_RUN for good.
	for (;;) {
		const kvm_run &exit = vm.run();
		result.exits++;

		if (exit.exit_reason == KVM_EXIT_IO && exit.io.port == guest_runtime::port_done)
			break;

		if (exit.exit_reason == KVM_EXIT_IO && exit.io.port == guest_runtime::port_page_fault) {
			const auto mailbox = runtime.read_mailbox();
			const auto stop = reason_to_stop(mailbox, accesses.size(), result);
			if (!stop) {
				result.faults.push_back({mailbox.index, mailbox.cr2, mailbox.error_code, mailbox.rip});
				continue;
			}

			// Tell the handler to halt, and check that it did.
			runtime.set_resume(false);
			if (vm.run().exit_reason != KVM_EXIT_HLT)
				throw kvm_error("guest raised a " + *stop + ", and it did not halt when the host stopped it");
			throw kvm_error("guest raised a " + *stop + ". The host stopped it.");
		}

		if (exit.exit_reason == KVM_EXIT_IO && exit.io.port == guest_runtime::port_exception)
			throw kvm_error(describe_exception(runtime.read_mailbox()));

		throw kvm_error(describe_exit(exit));
	}

	result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
	result.values = runtime.read_results(accesses.size());
	return result;
}

std::string kvm_machine::paging_description() const
{
	if (module_loaded("kvm_pvm"))
		return "shadow paging (kvm_pvm: KVM walks the guest tables in software)";

	const std::string ept = read_module_parameter("/sys/module/kvm_intel/parameters/ept");
	if (!ept.empty())
		return ept == "Y" ? "EPT (the processor walks the guest tables)"
				  : "shadow paging (kvm_intel with ept=N: KVM walks the guest tables in software)";

	const std::string npt = read_module_parameter("/sys/module/kvm_amd/parameters/npt");
	if (!npt.empty())
		return npt == "Y" || npt == "1" ? "NPT (the processor walks the guest tables)"
						: "shadow paging (kvm_amd with npt=0: KVM walks the guest tables in software)";

	return "unknown (no kvm_intel, kvm_amd or kvm_pvm module parameters found)";
}

} // namespace ptl::check
