// The explorer itself, on scenarios whose schedules can be counted by hand.
// It must run each interleaving exactly once and honour a preemption bound.
// It must block a thread that spins on a held lock, report a deadlock, and
// find the one schedule that loses an update.

#include "explorer.hpp"

#include <ptl/sync/spinlock.hpp>

#include <gtest/gtest.h>

#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>

using namespace ptl;

namespace {

// Each thread appends its letter, yields, and repeats: the log of a
// schedule is the order in which the threads' segments ran.
class independent_steps : public explore::instance {
public:
	independent_steps(unsigned nr_threads, unsigned nr_yields, std::set<std::string> &logs)
		: nr_threads_(nr_threads), nr_yields_(nr_yields), logs_(logs)
	{
	}

	unsigned nr_threads() const override { return nr_threads_; }

	void run_thread(unsigned index) override
	{
		const char letter = static_cast<char>('a' + index);

		for (unsigned i = 0; i < nr_yields_; i++) {
			log_ += letter;
			explore::yield();
		}
		log_ += letter;
	}

	void check() override { logs_.insert(log_); }

private:
	const unsigned nr_threads_;
	const unsigned nr_yields_;
	std::set<std::string> &logs_;
	std::string log_;
};

// Thread 0 holds a spinlock across two yield points, and thread 1 takes it
// once. A thread that finds the other inside the critical section reports it.
class lock_holder : public explore::instance {
public:
	unsigned nr_threads() const override { return 2; }

	void run_thread(unsigned index) override PTL_NO_THREAD_SAFETY_ANALYSIS
	{
		lock_.lock();
		enter();
		if (index == 0) {
			explore::yield();
			explore::yield();
		}
		leave();
		lock_.unlock();
	}

	void check() override { explore::expect(!lock_.is_locked(), "the lock is still held"); }

private:
	void enter() { explore::expect(++inside_ == 1, "two threads are inside the critical section"); }
	void leave() { inside_--; }

	sync::spinlock lock_;
	int inside_ = 0;
};

// Thread 0 takes the lock and never releases it. Thread 1 then spins forever
// unless the explorer reports the deadlock and breaks it.
class leaked_lock : public explore::instance {
public:
	unsigned nr_threads() const override { return 2; }

	void run_thread(unsigned index) override PTL_NO_THREAD_SAFETY_ANALYSIS
	{
		lock_.lock();
		if (index == 1)
			lock_.unlock();
	}

	void check() override {}

	~leaked_lock() override PTL_NO_THREAD_SAFETY_ANALYSIS
	{
		if (lock_.is_locked())
			lock_.unlock();
	}

private:
	sync::spinlock lock_;
};

// Two read-modify-write increments with a yield point between the read and
// the write: one schedule interleaves them and loses an update.
class lost_update : public explore::instance {
public:
	unsigned nr_threads() const override { return 2; }

	void run_thread(unsigned) override
	{
		const int seen = counter_;
		explore::yield();
		counter_ = seen + 1;
	}

	void check() override { explore::expect(counter_ == 2, "counter is " + std::to_string(counter_) + ", expected 2"); }

private:
	int counter_ = 0;
};

// A reader and a writer of a model_rwlock, each yielding inside it.
class reader_writer : public explore::instance {
public:
	unsigned nr_threads() const override { return 2; }

	void run_thread(unsigned index) override
	{
		if (index == 0) {
			std::shared_lock guard(rwlock_);
			readers_++;
			explore::expect(!writing_, "a reader runs while the writer holds the lock");
			explore::yield();
			readers_--;
		} else {
			std::unique_lock guard(rwlock_);
			writing_ = true;
			explore::expect(readers_ == 0, "the writer runs while a reader holds the lock");
			explore::yield();
			writing_ = false;
		}
	}

	void check() override {}

private:
	explore::model_rwlock rwlock_;
	int readers_ = 0;
	bool writing_ = false;
};

uint64_t factorial(unsigned n)
{
	return n <= 1 ? 1 : n * factorial(n - 1);
}

// Interleavings of nr_threads sequences of nr_segments steps each: the
// multinomial coefficient (nr_threads * nr_segments)! / (nr_segments!)^nr_threads.
uint64_t interleavings(unsigned nr_threads, unsigned nr_segments)
{
	uint64_t n = factorial(nr_threads * nr_segments);

	for (unsigned t = 0; t < nr_threads; t++)
		n /= factorial(nr_segments);
	return n;
}

} // namespace

TEST(Explorer, TwoThreadsEveryInterleavingOnce)
{
	std::set<std::string> logs;

	const auto out = explore::explore({}, [&] { return std::make_unique<independent_steps>(2, 2, logs); });

	EXPECT_TRUE(out.ok()) << out.report();
	EXPECT_TRUE(out.complete);
	EXPECT_EQ(out.schedules, interleavings(2, 3));
	EXPECT_EQ(logs.size(), out.schedules) << "some schedule ran twice";
}

TEST(Explorer, ThreeThreadsEveryInterleavingOnce)
{
	std::set<std::string> logs;

	const auto out = explore::explore({}, [&] { return std::make_unique<independent_steps>(3, 1, logs); });

	EXPECT_TRUE(out.ok()) << out.report();
	EXPECT_EQ(out.schedules, interleavings(3, 2));
	EXPECT_EQ(logs.size(), out.schedules) << "some schedule ran twice";
}

// With no preemption allowed, each thread runs to its end once started, so
// the schedules are the orders in which the threads start.
TEST(Explorer, PreemptionBoundZeroRunsThreadsInTurn)
{
	std::set<std::string> logs;
	explore::options opts;
	opts.preemption_bound = 0;

	const auto out = explore::explore(opts, [&] { return std::make_unique<independent_steps>(3, 2, logs); });

	EXPECT_TRUE(out.ok()) << out.report();
	EXPECT_TRUE(out.complete);
	EXPECT_EQ(out.schedules, factorial(3));
	EXPECT_EQ(logs.size(), out.schedules);
}

// One preemption allows more schedules than none and fewer than all of them,
// and still runs each of them once.
TEST(Explorer, PreemptionBoundOneIsSmallerThanFull)
{
	std::set<std::string> logs;
	explore::options opts;
	opts.preemption_bound = 1;

	const auto bounded = explore::explore(opts, [&] { return std::make_unique<independent_steps>(2, 3, logs); });
	const uint64_t full = interleavings(2, 4);

	EXPECT_TRUE(bounded.ok()) << bounded.report();
	EXPECT_TRUE(bounded.complete);
	EXPECT_GT(bounded.schedules, 2u);
	EXPECT_LT(bounded.schedules, full);
	EXPECT_EQ(logs.size(), bounded.schedules);
}

TEST(Explorer, MaxSchedulesStopsEarly)
{
	std::set<std::string> logs;
	explore::options opts;
	opts.max_schedules = 5;

	const auto out = explore::explore(opts, [&] { return std::make_unique<independent_steps>(2, 2, logs); });

	EXPECT_TRUE(out.ok()) << out.report();
	EXPECT_FALSE(out.complete);
	EXPECT_EQ(out.schedules, 5u);
}

TEST(Explorer, SpinningThreadWaitsForPausedHolder)
{
	const auto out = explore::explore({}, [] { return std::make_unique<lock_holder>(); });

	EXPECT_TRUE(out.ok()) << out.report();
	EXPECT_TRUE(out.complete);
	EXPECT_GE(out.schedules, 3u);
}

TEST(Explorer, LeakedLockIsReportedAsDeadlock)
{
	const auto out = explore::explore({}, [] { return std::make_unique<leaked_lock>(); });

	ASSERT_FALSE(out.ok());
	EXPECT_NE(out.problems.front().find("deadlock"), std::string::npos) << out.report();
	EXPECT_NE(out.trace.find("lock_spin"), std::string::npos) << out.report();
}

TEST(Explorer, LostUpdateIsFound)
{
	const auto out = explore::explore({}, [] { return std::make_unique<lost_update>(); });

	ASSERT_FALSE(out.ok());
	EXPECT_NE(out.problems.front().find("counter is 1"), std::string::npos) << out.report();
	EXPECT_GE(out.schedules, 2u);
}

TEST(Explorer, ModelRwlockExcludesWriter)
{
	const auto out = explore::explore({}, [] { return std::make_unique<reader_writer>(); });

	EXPECT_TRUE(out.ok()) << out.report();
	EXPECT_TRUE(out.complete);
	EXPECT_GE(out.schedules, 2u);
}
