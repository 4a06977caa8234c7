#pragma once
// Checks that every scenario of the explorer runs after each schedule, and
// how a test reports an exploration.

#include "explorer.hpp"

#include <ptl/check/audit.hpp>
#include <ptl/mm/mm.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace ptl::explore {

// Checks a step of a scenario's setup, which runs before the schedule does,
// so its failure is an exception that fails the calling test.
inline void require(bool ok, const std::string &what)
{
	if (!ok)
		throw std::runtime_error("scenario setup failed: " + what);
}

// Records every problem the audit finds in the address spaces.
template <class G>
void expect_audit_ok(std::initializer_list<const mm::mm_struct<G> *> spaces)
{
	const auto report = check::audit<G>(spaces);

	for (const auto &problem : report.problems)
		note_problem("audit: " + problem);
}

// Calls fn(name, lock) for each spinlock of mm: its page_table_lock and the
// split lock of every frame allocated from its pool.
template <class G, class Fn>
void for_each_lock(mm::mm_struct<G> &mm, Fn &&fn)
{
	phys::frame_pool &pool = mm.pool();

	fn(std::string("page_table_lock"), mm.page_table_lock);
	for (phys::pfn_t pfn = 0; pfn < pool.nr_frames(); pfn++) {
		if (pool.site_of(pfn))
			fn("the split lock of frame " + std::to_string(pfn), pool.page_of(pfn).ptl);
	}
}

// Records each lock of mm that is still held once every thread finished.
template <class G>
void expect_no_lock_held(mm::mm_struct<G> &mm)
{
	for_each_lock(mm, [](const std::string &name, sync::spinlock &lock) {
		if (lock.is_locked())
			note_problem(name + " is still held after every thread finished");
	});
}

// Releases a lock that a broken path left held. The analysis cannot know
// that it is held, because only a broken path leaves it so.
inline void release_stray_lock(sync::spinlock &lock) PTL_NO_THREAD_SAFETY_ANALYSIS
{
	lock.unlock();
}

// Releases every lock of mm that a broken path left held, so that tearing
// the instance down does not spin forever on one.
template <class G>
void release_stray_locks(mm::mm_struct<G> &mm)
{
	for_each_lock(mm, [](const std::string &, sync::spinlock &lock) {
		if (lock.is_locked())
			release_stray_lock(lock);
	});
}

// What a test asserts about an exploration: the schedules it ran, how long
// it took, whether every schedule passed, and that it ran at least minimum
// schedules, so that an explorer that stops branching fails the test.
struct exploration {
	std::string name;
	options opts;
	uint64_t minimum;
};

inline std::string describe_bound(const options &opts, const outcome &out)
{
	if (!out.ok())
		return "stopped at the first failing schedule";
	if (!out.complete)
		return "stopped at the schedule limit";
	if (opts.preemption_bound == no_bound)
		return "every schedule";
	return "every schedule with at most " + std::to_string(opts.preemption_bound) + " preemptions";
}

// Runs the exploration and checks it in the calling test. Prints one line
// per exploration on standard output, which docs/TESTING.md quotes.
inline void run_and_expect(const exploration &e, const factory &make)
{
	const auto start = std::chrono::steady_clock::now();
	const outcome out = explore(e.opts, make);
	const auto elapsed = std::chrono::steady_clock::now() - start;
	const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count();

	std::printf("explored %-44s %7llu schedules, %5lld ms, %s\n", e.name.c_str(),
		    static_cast<unsigned long long>(out.schedules), static_cast<long long>(ms),
		    describe_bound(e.opts, out).c_str());
	std::fflush(stdout);

	EXPECT_TRUE(out.ok()) << e.name << ": " << out.report();
	if (out.ok()) {
		EXPECT_GE(out.schedules, e.minimum) << e.name << ": the explorer ran fewer schedules than expected";
	}
}

} // namespace ptl::explore
