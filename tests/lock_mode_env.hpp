#pragma once
// The lock mode a test executable runs in. CTest runs the engine tests once
// per mode, naming it in PTL_LOCK_MODE; without it they run in pushdown.

#include <ptl/mm/mm.hpp>

#include <cstdio>
#include <cstdlib>

namespace ptl::test {

inline mm::lock_mode lock_mode_under_test()
{
	const char *name = std::getenv("PTL_LOCK_MODE");
	if (!name)
		return mm::lock_mode::pushdown;

	const auto mode = mm::parse_lock_mode(name);
	if (!mode) {
		std::fprintf(stderr, "PTL_LOCK_MODE=%s is not a lock mode (legacy, pushdown, split, lockless)\n", name);
		std::exit(2);
	}
	return *mode;
}

} // namespace ptl::test
