#pragma once
// Forcing a race deterministically: one designated thread is held at a test
// hook point until the test releases it, while other threads run through.

#include <ptl/base/hooks.hpp>

#include <atomic>
#include <chrono>
#include <semaphore>
#include <stdexcept>
#include <thread>

namespace ptl::test {

class paused_thread {
public:
	// Holds the thread that calls designate() the first time it reaches
	// point `where` (at `level`, if given).
	explicit paused_thread(hooks::point where, int level = -1)
		: where_(where), level_(level), handler_([this](const hooks::event &e) { on_event(e); })
	{
	}

	// Marks the calling thread as the one to hold.
	static void designate() { designated_ = true; }

	// Waits until the designated thread is held; false after the timeout.
	bool wait_until_paused(std::chrono::seconds timeout = std::chrono::seconds(30))
	{
		return reached_.try_acquire_for(timeout);
	}

	void release() { release_.release(); }

	bool fired() const { return fired_.load(); }

private:
	void on_event(const hooks::event &e)
	{
		if (!designated_ || e.where != where_ || (level_ >= 0 && e.level != static_cast<unsigned>(level_)))
			return;
		if (fired_.exchange(true))
			return;
		reached_.release();
		if (!release_.try_acquire_for(std::chrono::seconds(30)))
			throw std::runtime_error("paused thread was never released");
	}

	static inline thread_local bool designated_ = false;

	hooks::point where_;
	int level_;
	std::atomic<bool> fired_{false};
	std::binary_semaphore reached_{0};
	std::binary_semaphore release_{0};
	hooks::scoped_handler handler_;
};

} // namespace ptl::test
