#pragma once
// A deterministic schedule explorer for the engine's test hooks.
//
// A scenario runs a few threads against fresh state. The explorer runs them
// cooperatively: exactly one thread runs at a time, and every test hook it
// reaches (see ptl/base/hooks.hpp) is a yield point where the running thread
// hands control to the scheduler. At each yield point where more than one
// thread could run next, the scheduler takes the next entry of a choice
// sequence. Schedules are enumerated depth first: each run replays the
// previous run's choices up to its last choice that has an untried option,
// takes that option, and takes option 0 (keep running the current thread)
// at every choice after it. When no choice has an untried option left,
// every schedule has been run.
//
// A thread that spins on a spinlock held by a paused thread reaches the
// lock_spin hook and is blocked until the lock is free, so schedules stay
// finite. When no thread can run and some have not finished, the schedule
// deadlocked: the explorer reports it, releases the spinlocks the blocked
// threads wait for, and lets them finish.
//
// Locks that block in the operating system (std::mutex, std::shared_mutex)
// are invisible to the explorer: a thread that blocks in one while another
// is paused stops the whole run. Scenarios model such a lock with
// model_rwlock, taken around the call that takes the real lock.
//
// Needs a build with PTL_TEST_HOOKS. Without it the engine has no yield
// points and each scenario runs its threads one after the other.

#include <ptl/base/hooks.hpp>

#include <climits>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ptl::explore {

inline constexpr unsigned no_bound = UINT_MAX;

struct options {
	// Maximum number of times a schedule switches away from a thread
	// that could have kept running. Switches forced by a blocked or
	// finished thread do not count. no_bound explores every schedule.
	unsigned preemption_bound = no_bound;
	// Stop after this many schedules, or never when 0.
	uint64_t max_schedules = 0;
};

struct outcome {
	uint64_t schedules = 0;            // schedules run
	bool complete = false;             // every schedule within the bound was run
	std::vector<std::string> problems; // of the first failing schedule
	std::string trace;                 // that schedule, one step per line

	bool ok() const { return problems.empty(); }
	// The problems and the trace of the failing schedule, for a test log.
	std::string report() const;
};

// One run of a scenario: the state it creates, the bodies of its threads,
// and the check once they have all finished. The explorer creates a fresh
// instance for every schedule, so no schedule starts from the state that the
// previous one left.
class instance {
public:
	virtual ~instance() = default;
	virtual unsigned nr_threads() const = 0;
	virtual void run_thread(unsigned index) = 0;
	// Runs on the explorer's thread after every scenario thread finished.
	// Records what is wrong with note_problem().
	virtual void check() = 0;
};

using factory = std::function<std::unique_ptr<instance>()>;

// Runs make()'s instances under every schedule that opts allows, stopping at
// the first schedule with a problem. Only one exploration may run at a time
// in a process, because it installs the process's test hook handler.
outcome explore(const options &opts, const factory &make);

// A yield point of the scenario itself, for a step the engine has no hook
// for (a lockless walk, say). Does nothing outside a scenario thread.
void yield();

// Records a problem of the current schedule. Call it from a scenario thread
// or from instance::check().
void note_problem(std::string problem);

// Records a problem unless ok is true, and returns ok.
bool expect(bool ok, const std::string &problem);

// A reader-writer lock that exists only in the explorer's model. A scenario
// thread takes it around a call that takes a real lock which blocks in the
// operating system, such as a user_space's mmap_lock, so that the explorer
// never resumes a thread that would block on the real lock. Taking it is a
// yield point. Satisfies SharedMutex, so std::unique_lock and
// std::shared_lock work.
class model_rwlock {
public:
	void lock();
	void unlock();
	void lock_shared();
	void unlock_shared();

	bool available(bool exclusive) const { return !writer_ && (!exclusive || readers_ == 0); }

private:
	unsigned readers_ = 0;
	bool writer_ = false;
};

} // namespace ptl::explore
