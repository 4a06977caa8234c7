#pragma once
// Test hooks: named points inside the engine where a test can pause a thread
// to force an interleaving (for example, between allocating a table and
// taking the lock that publishes it). Compiled in only when PTL_TEST_HOOKS
// is defined. Otherwise PTL_HOOK and PTL_HOOK_LOCK_SPIN expand to nothing.
//
// The schedule explorer (tests/explore) treats every point as a yield point:
// a thread that reaches one hands control to a scheduler that runs one
// thread at a time.

#include <cstdint>
#include <functional>
#include <string_view>

namespace ptl::hooks {

enum class point {
	populate_after_alloc, // a new table is allocated, no lock is held yet
	populate_locked,      // the populate lock is held, before the re-check
	fault_locked,         // a fault holds the PTE lock, before the re-check

	// The re-check found the entry empty (under the populate lock), or
	// in lockless mode the compare-and-swap is next. The new table is
	// about to be published.
	populate_before_publish,
	// The new table is published. The populate lock, if the mode takes
	// one, is still held.
	populate_published,
	// A populate lost the race and is about to free its table. No lock
	// is held, except the legacy walk's page_table_lock.
	populate_free_loser,
	// A PTE is about to be set: under the PTE lock, or just before the
	// compare-and-swap in lockless mode.
	pte_before_install,
	// A zap holds the PTE lock and is about to clear one PTE.
	zap_before_clear,
	// A zap has dropped the PTE lock and is about to free the data frames
	// it cleared.
	zap_before_free,
	// A kernel map is about to set one PTE of the range it owns.
	vmap_before_set,
	// A kernel unmap is about to clear one PTE of the range it owns.
	vunmap_before_clear,
	// A write fault on a frame that other PTEs share has dropped the PTE
	// lock to copy the frame. It retakes the lock next.
	wp_copy_unlocked,
	// An unmap has unlinked the empty tables it found, dropped every
	// page-table lock, and is about to wait for the grace period after
	// which it frees them.
	tables_before_grace,
	// A thread found a spinlock taken and spins on it. event::lock is the
	// spinlock. Fires on every turn of the spin loop.
	lock_spin,
};

std::string_view point_name(point p);

struct event {
	point where;
	unsigned level;   // arch::level of the table being populated, if any
	uint64_t addr;    // 0 where the point has no address at hand
	const void *mm;   // the address space, or null where the point has none at hand
	const void *lock; // the spinlock, for lock_spin only
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
#define PTL_HOOK(where, level, addr, mm) \
	::ptl::hooks::fire(::ptl::hooks::event{(where), (level), (addr), (mm), nullptr})
#define PTL_HOOK_LOCK_SPIN(lock) \
	::ptl::hooks::fire(::ptl::hooks::event{::ptl::hooks::point::lock_spin, 0, 0, nullptr, (lock)})
#else
#define PTL_HOOK(where, level, addr, mm) ((void)0)
#define PTL_HOOK_LOCK_SPIN(lock) ((void)0)
#endif
