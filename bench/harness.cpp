// The thread harness and the store-limit tables.

#include "scenario.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <thread>
#include <time.h>
#include <unistd.h>

namespace ptl::bench {

namespace {

using clock_type = std::chrono::steady_clock;

// Waits for the start signal. Yields rather than spins, because a machine
// with fewer cores than threads must still run the threads that are late.
void wait_for_start(const std::atomic<bool> &go)
{
	while (!go.load(std::memory_order_acquire))
		std::this_thread::yield();
}

void wait_until_ready(const std::atomic<unsigned> &ready, unsigned threads)
{
	while (ready.load(std::memory_order_acquire) != threads)
		std::this_thread::yield();
}

double thread_cpu_seconds()
{
	timespec ts{};
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
}

} // namespace

run_timing run_threads(unsigned threads, const std::function<void(unsigned)> &body)
{
	std::atomic<unsigned> ready{0};
	std::atomic<bool> go{false};
	std::vector<clock_type::time_point> finished(threads);
	std::vector<double> cpu_seconds(threads);
	std::vector<std::exception_ptr> errors(threads);
	std::vector<std::thread> workers;

	for (unsigned i = 0; i < threads; i++) {
		workers.emplace_back([&, i] {
			ready.fetch_add(1, std::memory_order_release);
			wait_for_start(go);

			const double cpu_start = thread_cpu_seconds();
			try {
				body(i);
			} catch (...) {
				errors[i] = std::current_exception();
			}
			finished[i] = clock_type::now();
			cpu_seconds[i] = thread_cpu_seconds() - cpu_start;
		});
	}

	wait_until_ready(ready, threads);
	const auto start = clock_type::now();
	go.store(true, std::memory_order_release);

	for (auto &w : workers)
		w.join();

	for (const auto &e : errors) {
		if (e)
			std::rethrow_exception(e);
	}

	run_timing timing;
	auto last = start;
	for (unsigned i = 0; i < threads; i++) {
		last = std::max(last, finished[i]);
		timing.cpu_seconds += cpu_seconds[i];
	}
	timing.seconds = std::chrono::duration<double>(last - start).count();
	return timing;
}

run_timing run_limit_passes(unsigned threads, uint64_t entries, const std::function<void(unsigned)> &body)
{
	const uint64_t passes = std::max<uint64_t>(1, (limit_min_entries + entries - 1) / std::max<uint64_t>(entries, 1));

	run_timing timing = run_threads(threads, [&](unsigned i) {
		for (uint64_t pass = 0; pass < passes; pass++)
			body(i);
	});
	timing.seconds /= double(passes);
	timing.cpu_seconds /= double(passes);
	return timing;
}

void check_memory(std::string_view scenario, uint64_t pages, uint64_t bytes)
{
	const long free_pages = sysconf(_SC_AVPHYS_PAGES);
	const long page_bytes = sysconf(_SC_PAGESIZE);
	if (free_pages <= 0 || page_bytes <= 0)
		return;

	const uint64_t free_bytes = uint64_t(free_pages) * uint64_t(page_bytes);
	if (bytes > free_bytes / 4 * 3)
		throw std::invalid_argument(fmt::format("{} with {} pages needs {} MiB of memory, more than 3/4 of the "
							"{} MiB free; use fewer pages",
							scenario, pages, bytes >> 20, free_bytes >> 20));
}

void reset_frame_order(phys::frame_pool &pool)
{
	if (pool.in_use() != 0)
		throw std::logic_error(fmt::format("reset_frame_order: {} frames are still in use", pool.in_use()));

	std::vector<phys::pfn_t> frames;
	frames.reserve(pool.nr_frames());
	for (;;) {
		auto pfn = pool.alloc(phys::alloc_site::data);
		if (!pfn)
			break;
		frames.push_back(*pfn);
	}

	// The last frame freed is the first one taken again.
	std::sort(frames.begin(), frames.end(), std::greater<>());
	for (phys::pfn_t pfn : frames)
		pool.free(pfn);
}

void throw_failure(std::string_view what, errc error)
{
	throw std::runtime_error(fmt::format("{} failed: {}", what, errc_name(error)));
}

} // namespace ptl::bench
