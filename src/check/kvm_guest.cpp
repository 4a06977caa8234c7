// The program the KVM guest runs and the frames it lives in: code, GDT,
// TSS, IDT, mailbox, stacks, the access list and the result buffer.

#include <ptl/check/kvm.hpp>

#include <algorithm>
#include <cstring>

#if !defined(__x86_64__)
#error "the KVM check builds an x86-64 guest program and needs an x86-64 host"
#endif

// Layout shared by the guest program and the host. The program reads its
// parameters from a block at the end of its own code, and the page-fault
// handler talks to the host through a mailbox in the system page.
#define PTL_KVM_STR(x) #x
#define PTL_KVM_XSTR(x) PTL_KVM_STR(x)

#define PTL_KVM_PORT_DONE 0x10
#define PTL_KVM_PORT_PAGE_FAULT 0x11
#define PTL_KVM_PORT_EXCEPTION 0x12

#define PTL_KVM_MAILBOX_CR2 0
#define PTL_KVM_MAILBOX_ERROR 8
#define PTL_KVM_MAILBOX_RIP 16
#define PTL_KVM_MAILBOX_INDEX 24
#define PTL_KVM_MAILBOX_RESUME 32
#define PTL_KVM_MAILBOX_VECTOR 40
#define PTL_KVM_MAILBOX_WORDS 48

#define PTL_KVM_USER_CS 0x23 // GDT entry 4, RPL 3
#define PTL_KVM_USER_SS 0x1b // GDT entry 3, RPL 3

// clang-format off
//
// AT&T syntax. Every reference is RIP-relative, so the bytes run wherever
// the guest maps them. Registers of the access loop:
//   rsi  access list, 16 bytes per access: the address, then the guest_op
//   rdi  result buffer, 8 bytes per access
//   rcx  number of accesses
//   rbx  index of the current access
//   r15  stack pointer at the start of the loop, restored after a fault
// The page-fault handler saves and restores what it uses, so the loop only
// loses its stack position, which r15 gives back.
asm(R"(
	.pushsection .rodata.ptl_kvm_guest, "a"
	.balign 16
	.globl ptl_kvm_guest_begin
	.hidden ptl_kvm_guest_begin
ptl_kvm_guest_begin:

	# Entry at CPL0 on the kernel stack. For user mode, iretq to the loop
	# at CPL3 through a frame of ss, rsp, rflags, cs and rip. The rflags
	# value sets only the reserved bit 1, so interrupts stay off.
	.globl ptl_kvm_guest_entry
	.hidden ptl_kvm_guest_entry
ptl_kvm_guest_entry:
	cmpq	$0, .Lparam_user_mode(%rip)
	je	.Laccess_loop
	pushq	$)" PTL_KVM_XSTR(PTL_KVM_USER_SS) R"(
	pushq	.Lparam_user_stack(%rip)
	pushq	$0x2
	pushq	$)" PTL_KVM_XSTR(PTL_KVM_USER_CS) R"(
	leaq	.Laccess_loop(%rip), %rax
	pushq	%rax
	iretq

.Laccess_loop:
	movq	.Lparam_list(%rip), %rsi
	movq	.Lparam_results(%rip), %rdi
	movq	.Lparam_count(%rip), %rcx
	movq	%rsp, %r15
	xorl	%ebx, %ebx
.Lnext_access:
	cmpq	%rcx, %rbx
	jae	.Ldone
	movq	%rbx, %rax
	shlq	$4, %rax
	movq	(%rsi,%rax), %rdx	# address
	movq	8(%rsi,%rax), %rax	# guest_op
	cmpq	$1, %rax
	je	.Lwrite
	cmpq	$2, %rax
	je	.Lfetch
	movq	(%rdx), %rax		# read
	jmp	.Lstore
.Lwrite:
	movq	%rdx, (%rdx)
	movq	(%rdx), %rax
	jmp	.Lstore
.Lfetch:
	movq	%rdx, %rax
	call	*%rdx			# the target is a ret
.Lstore:
	movq	%rax, (%rdi,%rbx,8)
.Lskip_access:
	incq	%rbx
	jmp	.Lnext_access
.Ldone:
	ud2				# the #UD handler reports completion

	# #UD at CPL0, which has no error code. At .Ldone it means the loop
	# finished, so report that and halt. Anywhere else it is a real #UD,
	# reported like any other exception. The loop ends this way because
	# it may run at CPL3, where out needs IOPL 3 or an I/O bitmap. Under
	# kvm_pvm (Linux 6.18), out at CPL3 raised #GP even with IOPL 3, int n
	# failed, and syscall did not reach CPL0, while exceptions were
	# delivered as usual.
	.globl ptl_kvm_guest_invalid_opcode
	.hidden ptl_kvm_guest_invalid_opcode
ptl_kvm_guest_invalid_opcode:
	pushq	%rax
	leaq	.Ldone(%rip), %rax
	cmpq	%rax, 8(%rsp)		# saved rip
	popq	%rax
	jne	.Lreal_invalid_opcode
	outb	%al, $)" PTL_KVM_XSTR(PTL_KVM_PORT_DONE) R"(
	jmp	.Lhalt
.Lreal_invalid_opcode:
	pushq	$6
	jmp	.Lexception

	# #PF at CPL0. The frame is: error code, rip, cs, rflags, rsp, ss.
	# Store CR2, the error code, rip and the access index in the mailbox,
	# exit to the host with out, then either halt or return to the loop
	# at the next access with the stack the loop started with.
	.globl ptl_kvm_guest_page_fault
	.hidden ptl_kvm_guest_page_fault
ptl_kvm_guest_page_fault:
	pushq	%rax
	pushq	%rdx
	movq	.Lparam_mailbox(%rip), %rdx
	movq	%cr2, %rax
	movq	%rax, )" PTL_KVM_XSTR(PTL_KVM_MAILBOX_CR2) R"((%rdx)
	movq	16(%rsp), %rax
	movq	%rax, )" PTL_KVM_XSTR(PTL_KVM_MAILBOX_ERROR) R"((%rdx)
	movq	24(%rsp), %rax
	movq	%rax, )" PTL_KVM_XSTR(PTL_KVM_MAILBOX_RIP) R"((%rdx)
	movq	%rbx, )" PTL_KVM_XSTR(PTL_KVM_MAILBOX_INDEX) R"((%rdx)
	outb	%al, $)" PTL_KVM_XSTR(PTL_KVM_PORT_PAGE_FAULT) R"(
	cmpq	$0, )" PTL_KVM_XSTR(PTL_KVM_MAILBOX_RESUME) R"((%rdx)
	je	.Lhalt
	leaq	.Lskip_access(%rip), %rax
	movq	%rax, 24(%rsp)		# saved rip
	movq	%r15, 48(%rsp)		# saved rsp
	popq	%rdx
	popq	%rax
	addq	$8, %rsp		# the error code
	iretq
.Lhalt:
	hlt
	jmp	.Lhalt

	# Every other exception. One 8-byte stub per vector pushes the vector
	# number. The common part stores it and the two words above it (an
	# error code and rip, or rip and cs) in the mailbox, exits to the host
	# and halts.
	.balign 8
	.globl ptl_kvm_guest_exception_stubs
	.hidden ptl_kvm_guest_exception_stubs
ptl_kvm_guest_exception_stubs:
	.irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.balign 8
	pushq	$\vector
	jmp	.Lexception
	.endr
.Lexception:
	movq	.Lparam_mailbox(%rip), %rax
	popq	)" PTL_KVM_XSTR(PTL_KVM_MAILBOX_VECTOR) R"((%rax)
	movq	(%rsp), %rdx
	movq	%rdx, )" PTL_KVM_XSTR(PTL_KVM_MAILBOX_WORDS) R"((%rax)
	movq	8(%rsp), %rdx
	movq	%rdx, )" PTL_KVM_XSTR(PTL_KVM_MAILBOX_WORDS) R"(+8(%rax)
	outb	%al, $)" PTL_KVM_XSTR(PTL_KVM_PORT_EXCEPTION) R"(
	jmp	.Lhalt

	# Parameters, written by the host before each run.
	.balign 8
	.globl ptl_kvm_guest_params
	.hidden ptl_kvm_guest_params
ptl_kvm_guest_params:
.Lparam_mailbox:	.quad 0
.Lparam_list:		.quad 0
.Lparam_results:	.quad 0
.Lparam_count:		.quad 0
.Lparam_user_mode:	.quad 0
.Lparam_user_stack:	.quad 0

	.globl ptl_kvm_guest_end
	.hidden ptl_kvm_guest_end
ptl_kvm_guest_end:
	.popsection
)");
// clang-format on

extern "C" {
extern const unsigned char ptl_kvm_guest_begin[];
extern const unsigned char ptl_kvm_guest_entry[];
extern const unsigned char ptl_kvm_guest_invalid_opcode[];
extern const unsigned char ptl_kvm_guest_page_fault[];
extern const unsigned char ptl_kvm_guest_exception_stubs[];
extern const unsigned char ptl_kvm_guest_params[];
extern const unsigned char ptl_kvm_guest_end[];
}

namespace ptl::check {

using phys::pfn_t;

namespace {

constexpr uint64_t page_size = arch::page_size;

static_assert(guest_runtime::port_done == PTL_KVM_PORT_DONE);
static_assert(guest_runtime::port_page_fault == PTL_KVM_PORT_PAGE_FAULT);
static_assert(guest_runtime::port_exception == PTL_KVM_PORT_EXCEPTION);

// Offsets of the tables in the system page.
constexpr uint64_t gdt_offset = 0;
constexpr uint64_t nr_gdt_slots = 7; // null, kernel code, kernel data, user data, user code, TSS (two slots)
constexpr uint64_t tss_offset = 0x80;
constexpr uint64_t tss_size = 104;
constexpr uint64_t idt_offset = 0x200;
constexpr uint64_t nr_vectors = 32;
constexpr uint64_t mailbox_offset = 0x800;

static_assert(guest_runtime::gdt_limit == nr_gdt_slots * 8 - 1);
static_assert(guest_runtime::idt_limit == nr_vectors * 16 - 1);
static_assert(guest_runtime::tss_limit == tss_size - 1);
static_assert(guest_runtime::tss_selector == 5 * 8);
static_assert(nr_gdt_slots * 8 <= tss_offset && tss_offset + tss_size <= idt_offset);
static_assert(idt_offset + nr_vectors * 16 <= mailbox_offset);

constexpr uint16_t kernel_cs = guest_runtime::kernel_cs;
constexpr uint64_t access_entry_size = 16;

// Order of the parameter block.
enum param : unsigned { param_mailbox, param_list, param_results, param_count, param_user_mode, param_user_stack };

std::string error_name(errc e)
{
	return std::string(errc_name(e));
}

uint64_t symbol_offset(const unsigned char *symbol)
{
	return static_cast<uint64_t>(symbol - ptl_kvm_guest_begin);
}

uint64_t code_size()
{
	return symbol_offset(ptl_kvm_guest_end);
}

// Segment descriptors, already marked accessed so the processor never
// needs to write them. Bits 40-43 are the type, 44 is S, 45-46 the DPL,
// 47 P, 53 L (64-bit code), 54 D/B and 55 G. Long mode ignores the flat
// 4 GiB limit of code and data segments.
constexpr uint64_t kernel_code_descriptor = 0x00af9b000000ffff;
constexpr uint64_t kernel_data_descriptor = 0x00cf93000000ffff;
constexpr uint64_t user_data_descriptor = 0x00cff3000000ffff;
constexpr uint64_t user_code_descriptor = 0x00affb000000ffff;

// The two slots of a 64-bit TSS descriptor: base and limit split over
// both, type 0xb (busy TSS, as KVM_SET_SREGS loads TR) and present.
std::array<uint64_t, 2> tss_descriptor(uint64_t base)
{
	const uint64_t limit = tss_size - 1;
	const uint64_t low = (limit & 0xffff) | ((base & 0xffffff) << 16) | (uint64_t{0x8b} << 40) |
			     (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);

	return {low, base >> 32};
}

// A 64-bit interrupt gate: handler offset split in three, the kernel code
// selector, no IST, type 0xe, DPL 0, present.
std::array<uint64_t, 2> interrupt_gate(uint64_t handler)
{
	const uint64_t low = (handler & 0xffff) | (uint64_t{kernel_cs} << 16) | (uint64_t{0x8e00} << 32) |
			     (((handler >> 16) & 0xffff) << 48);

	return {low, handler >> 32};
}

template <class T>
void store(std::byte *where, T value)
{
	std::memcpy(where, &value, sizeof(value));
}

template <class T>
T load(const std::byte *where)
{
	T value;
	std::memcpy(&value, where, sizeof(value));
	return value;
}

void write_gate(std::byte *system_page, uint64_t vector, const std::array<uint64_t, 2> &gate)
{
	store(system_page + idt_offset + vector * 16, gate[0]);
	store(system_page + idt_offset + vector * 16 + 8, gate[1]);
}

} // namespace

guest_runtime::guest_runtime(phys::frame_pool &pool, size_t max_accesses) : pool_(pool), max_accesses_(max_accesses)
{
	const size_t list_frames = std::max<size_t>(1, (max_accesses * access_entry_size + page_size - 1) / page_size);
	const size_t result_frames = std::max<size_t>(1, (max_accesses * sizeof(uint64_t) + page_size - 1) / page_size);

	// No destructor runs after a constructor throws, so free here.
	try {
		alloc_region(code_, 1);
		alloc_region(system_, 1);
		alloc_region(kernel_stack_, 1);
		alloc_region(user_stack_, 1);
		alloc_region(list_, list_frames);
		alloc_region(results_, result_frames);
		write_code();
	} catch (...) {
		free_frames();
		throw;
	}
}

guest_runtime::~guest_runtime()
{
	if (unmap_)
		unmap_();

	free_frames();
}

void guest_runtime::free_frames()
{
	for (region *r : {&code_, &system_, &kernel_stack_, &user_stack_, &list_, &results_}) {
		for (pfn_t pfn : r->frames)
			pool_.free(pfn);
		r->frames.clear();
	}
}

void guest_runtime::alloc_region(region &r, size_t nr_frames)
{
	for (size_t i = 0; i < nr_frames; i++) {
		auto pfn = pool_.alloc(phys::alloc_site::data);
		if (!pfn)
			throw kvm_error("frame pool exhausted while allocating the guest program's frames");
		r.frames.push_back(*pfn);
	}
}

void guest_runtime::write_code()
{
	if (code_size() > page_size)
		throw kvm_error("the guest program does not fit in one page");

	// The IDT assumes stub v at stubs + 8 v, each starting with push $v
	// (0x6a, v). A stub that outgrew its 8 bytes would break that.
	for (uint64_t vector = 0; vector < nr_vectors; vector++) {
		const unsigned char *stub = ptl_kvm_guest_exception_stubs + vector * 8;
		if (stub[0] != 0x6a || stub[1] != vector)
			throw kvm_error("exception stub " + std::to_string(vector) + " is not where the IDT expects it");
	}

	std::memcpy(pool_.frame_address(code_.frames[0]), ptl_kvm_guest_begin, code_size());
}

void guest_runtime::map_into(kernel::kernel_space<kvm_geometry> &kernel)
{
	// The code is read-only and executable, and global like the rest of a
	// kernel image.
	constexpr uint64_t code_prot = arch::prot_present | arch::prot_global;
	constexpr uint64_t list_prot = arch::prot_present | arch::prot_global | arch::prot_nx;

	if (mapped_)
		throw kvm_error("the guest program is already mapped");

	std::vector<uint64_t> areas;
	auto map = [&](region &r, uint64_t prot) {
		auto addr = kernel.vmap(r.frames, prot);
		if (!addr)
			throw kvm_error("vmap of the guest program failed: " + error_name(addr.error()));
		r.addr = *addr;
		areas.push_back(*addr);
	};

	try {
		map(code_, code_prot);
		map(system_, kernel::page_kernel);
		map(kernel_stack_, kernel::page_kernel);
		map(user_stack_, kernel::page_kernel);
		map(list_, list_prot);
		map(results_, kernel::page_kernel);
	} catch (...) {
		for (uint64_t addr : areas)
			(void)kernel.vunmap(addr);
		throw;
	}

	pgd_pfn_ = kernel.init_mm().pgd_pfn();
	mapped_ = true;
	unmap_ = [&kernel, areas] {
		for (uint64_t addr : areas)
			(void)kernel.vunmap(addr);
	};
}

void guest_runtime::map_into(user::user_space<kvm_geometry> &user)
{
	if (mapped_)
		throw kvm_error("the guest program is already mapped");

	std::vector<std::pair<uint64_t, uint64_t>> areas;
	auto map = [&](region &r, unsigned prot) {
		const uint64_t len = r.frames.size() * page_size;
		auto addr = user.mmap(0, len, prot, user::map_shared | user::map_pfnmap);
		if (!addr)
			throw kvm_error("mmap of the guest program failed: " + error_name(addr.error()));
		areas.emplace_back(*addr, len);
		r.addr = *addr;

		for (size_t i = 0; i < r.frames.size(); i++) {
			auto inserted = user.insert_pfn(*addr + i * page_size, r.frames[i]);
			if (!inserted)
				throw kvm_error("insert_pfn of the guest program failed: " +
						error_name(inserted.error()));
		}
	};

	try {
		map(code_, user::prot_read | user::prot_exec);
		map(system_, user::prot_read | user::prot_write);
		map(kernel_stack_, user::prot_read | user::prot_write);
		map(user_stack_, user::prot_read | user::prot_write);
		map(list_, user::prot_read);
		map(results_, user::prot_read | user::prot_write);
	} catch (...) {
		for (auto [addr, len] : areas)
			(void)user.munmap(addr, len);
		throw;
	}

	pgd_pfn_ = user.mm().pgd_pfn();
	mapped_ = true;
	unmap_ = [&user, areas] {
		for (auto [addr, len] : areas)
			(void)user.munmap(addr, len);
	};
}

uint64_t guest_runtime::entry_address() const
{
	return code_.addr + symbol_offset(ptl_kvm_guest_entry);
}

uint64_t guest_runtime::kernel_stack_top() const
{
	return kernel_stack_.addr + page_size;
}

uint64_t guest_runtime::gdt_address() const
{
	return system_.addr + gdt_offset;
}

uint64_t guest_runtime::idt_address() const
{
	return system_.addr + idt_offset;
}

uint64_t guest_runtime::tss_address() const
{
	return system_.addr + tss_offset;
}

std::byte *guest_runtime::system_page() const
{
	return static_cast<std::byte *>(pool_.frame_address(system_.frames[0]));
}

void guest_runtime::prepare(std::span<const guest_access> accesses, guest_mode mode)
{
	if (!mapped_)
		throw kvm_error("the guest program is not mapped into an address space");
	if (accesses.size() > max_accesses_)
		throw kvm_error("too many accesses: " + std::to_string(accesses.size()) + " requested, the guest program has room for " +
				std::to_string(max_accesses_));

	write_system_tables();
	write_params(accesses.size(), mode);
	write_accesses(accesses);
	clear_results(accesses.size());
}

void guest_runtime::write_system_tables()
{
	std::byte *page = system_page();
	std::memset(page, 0, page_size);

	const std::array<uint64_t, 5> segments = {0, kernel_code_descriptor, kernel_data_descriptor,
						  user_data_descriptor, user_code_descriptor};
	const auto tss = tss_descriptor(tss_address());
	for (size_t i = 0; i < segments.size(); i++)
		store(page + gdt_offset + i * 8, segments[i]);
	store(page + gdt_offset + 5 * 8, tss[0]);
	store(page + gdt_offset + 6 * 8, tss[1]);

	// RSP0 is the stack an exception at CPL3 switches to. An I/O map base
	// at the end of the TSS means there is no I/O bitmap.
	store<uint64_t>(page + tss_offset + 4, kernel_stack_top());
	store<uint16_t>(page + tss_offset + 102, static_cast<uint16_t>(tss_size));

	const uint64_t stubs = code_.addr + symbol_offset(ptl_kvm_guest_exception_stubs);
	const uint64_t page_fault = code_.addr + symbol_offset(ptl_kvm_guest_page_fault);
	const uint64_t invalid_opcode = code_.addr + symbol_offset(ptl_kvm_guest_invalid_opcode);
	for (uint64_t vector = 0; vector < nr_vectors; vector++) {
		uint64_t handler = stubs + vector * 8;
		if (vector == 6)
			handler = invalid_opcode;
		if (vector == 14)
			handler = page_fault;
		write_gate(page, vector, interrupt_gate(handler));
	}
}

void guest_runtime::write_params(size_t count, guest_mode mode)
{
	std::byte *params = static_cast<std::byte *>(pool_.frame_address(code_.frames[0])) +
			    symbol_offset(ptl_kvm_guest_params);

	store<uint64_t>(params + param_mailbox * 8, system_.addr + mailbox_offset);
	store<uint64_t>(params + param_list * 8, list_.addr);
	store<uint64_t>(params + param_results * 8, results_.addr);
	store<uint64_t>(params + param_count * 8, count);
	store<uint64_t>(params + param_user_mode * 8, mode == guest_mode::user ? 1 : 0);
	store<uint64_t>(params + param_user_stack * 8, user_stack_.addr + page_size);
}

void guest_runtime::write_accesses(std::span<const guest_access> accesses)
{
	constexpr size_t per_frame = page_size / access_entry_size;

	for (size_t i = 0; i < accesses.size(); i++) {
		auto *frame = static_cast<std::byte *>(pool_.frame_address(list_.frames[i / per_frame]));
		std::byte *entry = frame + (i % per_frame) * access_entry_size;

		store<uint64_t>(entry, accesses[i].addr);
		store<uint64_t>(entry + 8, static_cast<uint64_t>(accesses[i].op));
	}
}

void guest_runtime::clear_results(size_t count)
{
	constexpr size_t per_frame = page_size / sizeof(uint64_t);

	for (size_t i = 0; i < count; i++) {
		auto *frame = static_cast<std::byte *>(pool_.frame_address(results_.frames[i / per_frame]));
		store<uint64_t>(frame + (i % per_frame) * sizeof(uint64_t), guest_no_value);
	}
}

std::vector<uint64_t> guest_runtime::read_results(size_t count) const
{
	constexpr size_t per_frame = page_size / sizeof(uint64_t);
	std::vector<uint64_t> values(count);

	for (size_t i = 0; i < count; i++) {
		auto *frame = static_cast<const std::byte *>(pool_.frame_address(results_.frames[i / per_frame]));
		values[i] = load<uint64_t>(frame + (i % per_frame) * sizeof(uint64_t));
	}
	return values;
}

guest_runtime::mailbox_view guest_runtime::read_mailbox() const
{
	const std::byte *mailbox = system_page() + mailbox_offset;
	mailbox_view view;

	view.cr2 = load<uint64_t>(mailbox + PTL_KVM_MAILBOX_CR2);
	view.error_code = load<uint64_t>(mailbox + PTL_KVM_MAILBOX_ERROR);
	view.rip = load<uint64_t>(mailbox + PTL_KVM_MAILBOX_RIP);
	view.index = load<uint64_t>(mailbox + PTL_KVM_MAILBOX_INDEX);
	view.vector = load<uint64_t>(mailbox + PTL_KVM_MAILBOX_VECTOR);
	view.stack_words[0] = load<uint64_t>(mailbox + PTL_KVM_MAILBOX_WORDS);
	view.stack_words[1] = load<uint64_t>(mailbox + PTL_KVM_MAILBOX_WORDS + 8);
	return view;
}

void guest_runtime::set_resume(bool resume)
{
	store<uint64_t>(system_page() + mailbox_offset + PTL_KVM_MAILBOX_RESUME, resume ? 1 : 0);
}

} // namespace ptl::check
