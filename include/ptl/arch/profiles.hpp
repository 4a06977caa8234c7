#pragma once
// The geometries ptl builds tables for. Each is a compile-time profile; the
// engine is a template over it.

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

#if defined(PTL_ARCH_X86_64_LA57)
using native = x86_64_la57;
#elif defined(PTL_ARCH_I386)
using native = i386;
#else
using native = x86_64;
#endif

} // namespace ptl::arch
