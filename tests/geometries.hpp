#pragma once
// The geometries every engine test runs on.

#include <ptl/arch/profiles.hpp>

#include <gtest/gtest.h>

using all_geometries = ::testing::Types<ptl::arch::x86_64, ptl::arch::x86_64_la57, ptl::arch::i386,
					 ptl::arch::i386_pae, ptl::arch::arm64_4k>;

struct geometry_names {
	template <class G>
	static std::string GetName(int)
	{
		return std::string(G::name);
	}
};

// A user address in the middle of the user half, away from table boundaries
// at every level, so neighbouring addresses share all directory tables.
template <class G>
constexpr uint64_t sample_user_addr()
{
	return G::task_size / 3 & ~uint64_t{0x3fffff};
}
