#include "explorer.hpp"

#include <ptl/arch/geometry.hpp>
#include <ptl/sync/spinlock.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <semaphore>
#include <sstream>
#include <string_view>
#include <thread>

namespace ptl::explore {

namespace {

// Index of a thread that the explorer does not run: the test's main thread,
// or any other.
constexpr unsigned no_thread = UINT_MAX;

// A schedule that takes longer than this has a thread blocked where the
// explorer cannot see it, or spinning without a yield point.
constexpr auto schedule_timeout = std::chrono::seconds(30);

enum class thread_state {
	runnable,       // at a yield point, or running
	spinning,       // on a spinlock: may run once the lock is free
	waiting_rwlock, // on a model_rwlock: may run once it is available
	finished,
};

// One step of a schedule, for the trace of a failing one.
struct step {
	unsigned thread;
	std::string_view what;
	unsigned level;
	uint64_t addr;
};

// The choice sequence of the depth-first enumeration: for each choice point
// of a schedule, the option taken and the number of options there were.
class choice_trail {
public:
	// Starts a run that replays the current sequence.
	void rewind() { depth_ = 0; }

	// The option to take at the next choice point, which has count
	// options. Nothing when a replay finds a different count there, which
	// means the scenario is not deterministic.
	std::optional<unsigned> next(unsigned count)
	{
		if (depth_ == choices_.size())
			choices_.push_back({0, count});

		const choice &c = choices_[depth_++];
		if (c.count != count)
			return std::nullopt;
		return c.taken;
	}

	// Whether the run just finished reached every recorded choice.
	bool replayed_all() const { return depth_ == choices_.size(); }

	// Moves to the next sequence in depth-first order: the deepest choice
	// with an untried option takes it, and the choices below it are
	// dropped. Returns false when every sequence has been run.
	bool advance()
	{
		while (!choices_.empty() && choices_.back().taken + 1 == choices_.back().count)
			choices_.pop_back();
		if (choices_.empty())
			return false;

		choices_.back().taken++;
		return true;
	}

private:
	struct choice {
		unsigned taken;
		unsigned count;
	};

	std::vector<choice> choices_;
	size_t depth_ = 0;
};

// One run of an instance under the schedule its choice trail selects.
//
// The schedule's fields are shared by its threads without a lock, because
// only the running thread touches them: the semaphore that hands control
// from one thread to the next orders every access.
class schedule {
public:
	schedule(instance &inst, choice_trail &trail, unsigned preemption_bound)
		: inst_(inst), trail_(trail), preemption_bound_(preemption_bound)
	{
		for (unsigned i = 0; i < inst.nr_threads(); i++)
			slots_.push_back(std::make_unique<slot>());
	}

	void run(uint64_t number);

	void at_yield_point(unsigned self, const hooks::event &e);
	void at_lock_spin(unsigned self, const void *lock);
	void before_rwlock(unsigned self, model_rwlock &rwlock, bool exclusive);
	void at_explicit_yield(unsigned self);

	std::vector<std::string> problems;
	std::vector<step> trace;

private:
	struct slot {
		std::binary_semaphore resume{0};
		thread_state state = thread_state::runnable;
		sync::spinlock *lock = nullptr;
		model_rwlock *rwlock = nullptr;
		bool exclusive = false;
	};

	void thread_main(unsigned self);
	void hand_off(unsigned self);
	std::vector<unsigned> candidates(unsigned self) const;
	unsigned pick(const std::vector<unsigned> &options);
	bool can_run(unsigned t) const;
	bool all_finished() const;
	void break_deadlock() PTL_NO_THREAD_SAFETY_ANALYSIS;
	void check_running(unsigned self) const;

	instance &inst_;
	choice_trail &trail_;
	const unsigned preemption_bound_;
	std::vector<std::unique_ptr<slot>> slots_;
	std::binary_semaphore done_{0};
	unsigned running_ = no_thread;
	unsigned preemptions_ = 0;
};

thread_local schedule *current_schedule = nullptr;
thread_local unsigned current_index = no_thread;

// The schedule being run or checked, where note_problem() records.
schedule *active_schedule = nullptr;

bool schedule::can_run(unsigned t) const
{
	const slot &s = *slots_[t];

	switch (s.state) {
	case thread_state::runnable:
		return true;
	case thread_state::spinning:
		return !s.lock->is_locked();
	case thread_state::waiting_rwlock:
		return s.rwlock->available(s.exclusive);
	case thread_state::finished:
		return false;
	}
	return false;
}

bool schedule::all_finished() const
{
	return std::all_of(slots_.begin(), slots_.end(), [](const auto &s) { return s->state == thread_state::finished; });
}

// The threads that may run next, the current one first: option 0 of every
// choice keeps the current thread running, so the first schedule the
// enumeration tries from any prefix is the one without a further switch.
std::vector<unsigned> schedule::candidates(unsigned self) const
{
	std::vector<unsigned> options;

	if (self != no_thread && can_run(self)) {
		options.push_back(self);
		if (preemptions_ >= preemption_bound_)
			return options;
	}

	for (unsigned t = 0; t < slots_.size(); t++) {
		if (t != self && can_run(t))
			options.push_back(t);
	}
	return options;
}

unsigned schedule::pick(const std::vector<unsigned> &options)
{
	if (options.size() == 1)
		return options[0];

	const auto taken = trail_.next(static_cast<unsigned>(options.size()));
	if (!taken) {
		problems.push_back("the scenario is not deterministic: a replayed choice point has " +
				   std::to_string(options.size()) + " options, a different number than before");
		return options[0];
	}
	return options[*taken];
}

// Every thread that has not finished is blocked, so the schedule failed. The
// spinlocks they wait for are held by finished threads (a lock leaked on
// some path) or by each other. Releasing those locks lets the threads finish
// so that the run can end and report. The analysis cannot know the locks
// are held, because only a broken path leaves them so.
void schedule::break_deadlock()
{
	for (unsigned t = 0; t < slots_.size(); t++) {
		slot &s = *slots_[t];

		if (s.state == thread_state::spinning && s.lock->is_locked()) {
			problems.push_back("deadlock: thread " + std::to_string(t) +
					   " spins on a spinlock that no thread that can still run will release");
			s.lock->unlock();
		} else if (s.state == thread_state::waiting_rwlock && !s.rwlock->available(s.exclusive)) {
			std::fprintf(stderr, "explore: thread %u waits for a model_rwlock that no thread releases\n", t);
			std::abort();
		}
	}
}

// Picks the thread to run next and hands control to it. Returns when self is
// picked again, which is at once when self keeps running. A finished self
// returns without waiting.
void schedule::hand_off(unsigned self)
{
	auto options = candidates(self);
	if (options.empty() && !all_finished()) {
		break_deadlock();
		options = candidates(self);
	}

	if (options.empty()) {
		done_.release();
		return;
	}

	const unsigned next = pick(options);
	if (next == self)
		return;

	if (self != no_thread && can_run(self))
		preemptions_++;
	running_ = next;

	const bool self_waits = self != no_thread && slots_[self]->state != thread_state::finished;
	slots_[next]->resume.release();
	if (self_waits)
		slots_[self]->resume.acquire();
}

// A yield point reached by a thread the scheduler did not resume means two
// threads run at once, and no schedule this run reports can be trusted.
void schedule::check_running(unsigned self) const
{
	if (running_ == self)
		return;
	std::fprintf(stderr, "explore: thread %u reached a yield point while thread %u was running\n", self, running_);
	std::abort();
}

void schedule::at_yield_point(unsigned self, const hooks::event &e)
{
	check_running(self);
	trace.push_back({self, hooks::point_name(e.where), e.level, e.addr});
	hand_off(self);
}

void schedule::at_explicit_yield(unsigned self)
{
	check_running(self);
	trace.push_back({self, "yield", 0, 0});
	hand_off(self);
}

void schedule::at_lock_spin(unsigned self, const void *lock)
{
	check_running(self);
	slot &s = *slots_[self];

	// The explorer only resumes this thread once the lock is free, and no
	// other thread runs until this one reaches its next yield point, so
	// its next attempt to take the lock succeeds. The const_cast is for
	// break_deadlock(), which may have to release the lock.
	s.state = thread_state::spinning;
	s.lock = const_cast<sync::spinlock *>(static_cast<const sync::spinlock *>(lock));
	trace.push_back({self, "lock_spin", 0, 0});
	hand_off(self);

	s.state = thread_state::runnable;
	s.lock = nullptr;
}

void schedule::before_rwlock(unsigned self, model_rwlock &rwlock, bool exclusive)
{
	check_running(self);
	slot &s = *slots_[self];

	s.state = thread_state::waiting_rwlock;
	s.rwlock = &rwlock;
	s.exclusive = exclusive;
	trace.push_back({self, exclusive ? "model_rwlock exclusive" : "model_rwlock shared", 0, 0});
	hand_off(self);

	s.state = thread_state::runnable;
	s.rwlock = nullptr;
}

void schedule::thread_main(unsigned self)
{
	current_schedule = this;
	current_index = self;
	slots_[self]->resume.acquire();

	try {
		inst_.run_thread(self);
	} catch (const std::exception &e) {
		problems.push_back("thread " + std::to_string(self) + " threw: " + e.what());
	}

	trace.push_back({self, "finish", 0, 0});
	slots_[self]->state = thread_state::finished;
	current_schedule = nullptr;
	current_index = no_thread;
	hand_off(self);
}

void schedule::run(uint64_t number)
{
	std::vector<std::thread> threads;

	for (unsigned t = 0; t < slots_.size(); t++)
		threads.emplace_back([this, t] { thread_main(t); });

	// The first choice: which thread starts.
	hand_off(no_thread);

	if (!done_.try_acquire_for(schedule_timeout)) {
		std::fprintf(stderr,
			     "explore: schedule %llu did not finish within %lld s: a thread blocked on a lock the "
			     "explorer cannot see, or loops without reaching a yield point\n",
			     static_cast<unsigned long long>(number),
			     static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(schedule_timeout).count()));
		std::abort();
	}

	for (auto &t : threads)
		t.join();
}

void dispatch(const hooks::event &e)
{
	schedule *s = current_schedule;
	if (!s)
		return;

	if (e.where == hooks::point::lock_spin)
		s->at_lock_spin(current_index, e.lock);
	else
		s->at_yield_point(current_index, e);
}

std::string format_trace(const std::vector<step> &trace)
{
	std::ostringstream out;

	for (const step &s : trace) {
		out << "  thread " << s.thread << ": " << s.what;
		if (s.level != 0)
			out << " (" << arch::level_name(static_cast<arch::level>(s.level)) << ")";
		if (s.addr != 0)
			out << " at 0x" << std::hex << s.addr << std::dec;
		out << "\n";
	}
	return out.str();
}

} // namespace

std::string outcome::report() const
{
	std::string s = "after " + std::to_string(schedules) + " schedules:\n";

	for (const auto &p : problems)
		s += "  " + p + "\n";
	s += "failing schedule:\n" + trace;
	return s;
}

outcome explore(const options &opts, const factory &make)
{
	outcome out;
	choice_trail trail;
	hooks::scoped_handler handler(dispatch);

	for (;;) {
		trail.rewind();
		auto inst = make();
		schedule s(*inst, trail, opts.preemption_bound);

		active_schedule = &s;
		s.run(out.schedules + 1);
		inst->check();
		active_schedule = nullptr;

		if (!trail.replayed_all())
			s.problems.push_back("the scenario is not deterministic: a replay ended before its recorded choices");

		out.schedules++;
		if (!s.problems.empty()) {
			out.problems = std::move(s.problems);
			out.trace = format_trace(s.trace);
			return out;
		}

		inst.reset();
		if (!trail.advance()) {
			out.complete = true;
			return out;
		}
		if (opts.max_schedules != 0 && out.schedules >= opts.max_schedules)
			return out;
	}
}

void yield()
{
	if (current_schedule)
		current_schedule->at_explicit_yield(current_index);
}

void note_problem(std::string problem)
{
	if (active_schedule) {
		active_schedule->problems.push_back(std::move(problem));
		return;
	}
	std::fprintf(stderr, "explore: problem outside a schedule: %s\n", problem.c_str());
	std::abort();
}

bool expect(bool ok, const std::string &problem)
{
	if (!ok)
		note_problem(problem);
	return ok;
}

void model_rwlock::lock()
{
	if (current_schedule)
		current_schedule->before_rwlock(current_index, *this, true);
	writer_ = true;
}

void model_rwlock::unlock()
{
	writer_ = false;
}

void model_rwlock::lock_shared()
{
	if (current_schedule)
		current_schedule->before_rwlock(current_index, *this, false);
	readers_++;
}

void model_rwlock::unlock_shared()
{
	readers_--;
}

} // namespace ptl::explore
