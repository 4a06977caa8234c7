#pragma once
// The geometries ptl builds tables for. Each is a compile-time profile; the
// engine is a template over it.

#include <ptl/arch/arm64_format.hpp>
#include <ptl/arch/geometry.hpp>
#include <ptl/arch/pte_format.hpp>

namespace ptl::arch {

// x86-64 with 4 levels: 48-bit virtual addresses, p4d folded into pgd.
struct x86_64 {
	static constexpr std::string_view name = "x86_64";
	using entry_t = uint64_t;
	using format = x86_format<uint64_t, 52, true>;
	//                                       pgd p4d pud pmd pte
	static constexpr std::array<unsigned, 5> shift = {39, 39, 30, 21, 12};
	static constexpr std::array<unsigned, 5> bits = {9, 0, 9, 9, 9};
	static constexpr bool sign_extended = true;
	static constexpr uint64_t task_size = 0x00007ffffffff000;
	static constexpr uint64_t vmalloc_start = 0xffffc90000000000;
	static constexpr uint64_t vmalloc_end = 0xffffe90000000000;
};

// x86-64 with 5 levels (LA57): 57-bit virtual addresses, nothing folded.
struct x86_64_la57 {
	static constexpr std::string_view name = "x86_64_la57";
	using entry_t = uint64_t;
	using format = x86_format<uint64_t, 52, true>;
	static constexpr std::array<unsigned, 5> shift = {48, 39, 30, 21, 12};
	static constexpr std::array<unsigned, 5> bits = {9, 9, 9, 9, 9};
	static constexpr bool sign_extended = true;
	static constexpr uint64_t task_size = 0x00fffffffffff000;
	static constexpr uint64_t vmalloc_start = 0xffa0000000000000;
	static constexpr uint64_t vmalloc_end = 0xffd2000000000000;
};

// i386 without PAE: 2 levels of 1024 32-bit entries; p4d, pud and pmd are
// folded into pgd, which Linux calls the page directory.
struct i386 {
	static constexpr std::string_view name = "i386";
	using entry_t = uint32_t;
	using format = x86_format<uint32_t, 32, false>;
	static constexpr std::array<unsigned, 5> shift = {22, 22, 22, 22, 12};
	static constexpr std::array<unsigned, 5> bits = {10, 0, 0, 0, 10};
	static constexpr bool sign_extended = false;
	static constexpr uint64_t task_size = 0xc0000000;
	static constexpr uint64_t vmalloc_start = 0xf8000000;
	static constexpr uint64_t vmalloc_end = 0xff800000;
};

// i386 with PAE: 3 levels of 64-bit entries. The pgd is the 4-entry
// page-directory-pointer table (bits 31-30); p4d and pud are folded into it;
// pmd and PTE tables have 512 entries. The pgd takes a whole 4 KiB frame,
// of which it uses 32 bytes. Linux allocates the pmd tables together with
// the pgd, because the processor caches the PDPT entries when CR3 is loaded.
// ptl populates them on demand like any other level.
struct i386_pae {
	static constexpr std::string_view name = "i386_pae";
	using entry_t = uint64_t;
	using format = x86_pae_format;
	static constexpr std::array<unsigned, 5> shift = {30, 30, 30, 21, 12};
	static constexpr std::array<unsigned, 5> bits = {2, 0, 0, 9, 9};
	static constexpr bool sign_extended = false;
	static constexpr uint64_t task_size = 0xc0000000;
	static constexpr uint64_t vmalloc_start = 0xf8000000;
	static constexpr uint64_t vmalloc_end = 0xff800000;
};

// arm64 with a 4 KiB granule and 48-bit virtual addresses: translation
// levels 0-3 are pgd, pud, pmd and pte; p4d is folded into pgd.
//
// The hardware has two tables, TTBR0_EL1 for addresses with bits 63-48
// clear (user) and TTBR1_EL1 for addresses with them set (kernel), each
// covering 2^48 bytes. ptl models one table with the upper half
// sign-extended from bit 47, as on x86-64: pgd entries 0-255 hold the user
// half and 256-511 the kernel half, each 2^47 bytes. So a user address must
// be below 2^47, where the hardware allows 2^48. Kernel addresses start at
// 0xffff800000000000, where Linux's 48-bit layout puts the modules and
// vmalloc areas, so the linear map below that is not modelled.
// NOTE: vmalloc_start and vmalloc_end are ptl's choice inside that range,
// not the bounds of a specific Linux version.
struct arm64_4k {
	static constexpr std::string_view name = "arm64_4k";
	using entry_t = uint64_t;
	using format = arm64_format;
	static constexpr std::array<unsigned, 5> shift = {39, 39, 30, 21, 12};
	static constexpr std::array<unsigned, 5> bits = {9, 0, 9, 9, 9};
	static constexpr bool sign_extended = true;
	static constexpr uint64_t task_size = 0x0000800000000000;
	static constexpr uint64_t vmalloc_start = 0xffff800008000000;
	static constexpr uint64_t vmalloc_end = 0xfffffc0000000000;
};

// NOTE: arm64 with a 64 KiB granule (3 levels, 6 + 13 + 13 + 16 bits) is
// not a profile, because ptl's page size is 4 KiB throughout. A 64 KiB
// granule needs 64 KiB tables of 8192 entries and 64 KiB pages, but:
//  - the frame pool hands out 4 KiB frames, each with one struct page
//    (PTE lock, owner);
//  - arch::page_size and page_shift are constants that the fault path,
//    vmalloc, vmap, zap and translate use;
//  - PFNs everywhere count 4 KiB frames, /proc/PID/pagemap's included.

#if defined(PTL_ARCH_X86_64_LA57)
using native = x86_64_la57;
#elif defined(PTL_ARCH_I386)
using native = i386;
#elif defined(PTL_ARCH_I386_PAE)
using native = i386_pae;
#elif defined(PTL_ARCH_ARM64_4K)
using native = arm64_4k;
#else
using native = x86_64;
#endif

} // namespace ptl::arch
