#pragma once
// Test hooks: named points inside the engine where a test can pause a thread
// to force an interleaving (for example, between allocating a table and
// taking the lock that publishes it). Compiled in only when PTL_TEST_HOOKS
// is defined; otherwise PTL_HOOK expands to nothing.

#include <cstdint>
#include <functional>
#include <string_view>

namespace ptl::hooks {

enum class point {
	populate_after_alloc, // a new table is allocated, no lock is held yet
	populate_locked,      // the populate lock is held, before the re-check
	fault_locked,         // a fault holds the PTE lock, before the re-check
};

std::string_view point_name(point p);

struct event {
	point where;
	unsigned level; // arch::level of the table being populated, if any
	uint64_t addr;
	const void *mm;
};

using handler = std::function<void(const event &)>;

// Installs a handler for as long as the object lives. Only one may be
// installed at a time; the handler runs on the thread that reached the point.
class scoped_handler {
public:
	explicit scoped_handler(handler h);
	~scoped_handler();
	scoped_handler(const scoped_handler &) = delete;
	scoped_handler &operator=(const scoped_handler &) = delete;

private:
	handler h_;
};

void fire(const event &e);

} // namespace ptl::hooks

#if defined(PTL_TEST_HOOKS)
#define PTL_HOOK(where, level, addr, mm) ::ptl::hooks::fire(::ptl::hooks::event{(where), (level), (addr), (mm)})
#else
#define PTL_HOOK(where, level, addr, mm) ((void)0)
#endif
