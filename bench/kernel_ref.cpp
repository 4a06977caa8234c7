// The real kernel beside ptl, measured in the same run: write faults on a
// fresh anonymous mapping against ptl's fault path, and MAP_POPULATE of a
// memfd whose pages are resident against ptl's vmap of a page array.

#include "peers_internal.hpp"

#include <ptl/kernel/kernel_space.hpp>

#include <fmt/core.h>

#include <cerrno>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

namespace ptl::bench::peers {

namespace {

[[noreturn]] void throw_errno(std::string_view what)
{
	throw std::runtime_error(fmt::format("{} failed: {}", what, std::strerror(errno)));
}

// Seconds for `threads` threads to write one byte to each page of their
// slice of a fresh private anonymous mapping: one page fault per page, each
// allocating and zeroing a 4 KiB page. Transparent huge pages are turned
// off for the mapping, so no fault maps more than one page.
double kernel_anon_fault_seconds(uint64_t pages, unsigned threads)
{
	const size_t len = pages * arch::page_size;
	void *area = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (area == MAP_FAILED)
		throw_errno("mmap of the anonymous area");
	if (madvise(area, len, MADV_NOHUGEPAGE) != 0) {
		munmap(area, len);
		throw_errno("madvise(MADV_NOHUGEPAGE)");
	}

	auto *bytes = static_cast<volatile char *>(area);
	const double seconds = run_threads(threads, [&](unsigned t) {
				       const uint64_t last = slice_end(pages, t, threads);
				       for (uint64_t page = slice_begin(pages, t, threads); page < last; page++)
					       bytes[page * arch::page_size] = 1;
			       }).seconds;

	munmap(area, len);
	return seconds;
}

// A memfd whose pages are all resident: each was written once, so that
// populating a mapping of it only fills page tables and zeroes nothing.
class resident_memfd {
public:
	explicit resident_memfd(uint64_t pages) : len_(pages * arch::page_size)
	{
		fd_ = memfd_create("ptl-bench-populate", MFD_CLOEXEC);
		if (fd_ < 0)
			throw_errno("memfd_create");
		if (ftruncate(fd_, static_cast<off_t>(len_)) != 0)
			fail("ftruncate of the memfd");

		void *area = mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
		if (area == MAP_FAILED)
			fail("mmap of the memfd");
		for (size_t offset = 0; offset < len_; offset += arch::page_size)
			static_cast<volatile char *>(area)[offset] = 1;
		munmap(area, len_);
	}

	~resident_memfd() { close(fd_); }

	resident_memfd(const resident_memfd &) = delete;
	resident_memfd &operator=(const resident_memfd &) = delete;

	// Seconds for `threads` threads to map their slice of the memfd with
	// MAP_POPULATE, one mmap call each. The unmapping is not timed.
	double populate_seconds(unsigned threads)
	{
		const uint64_t pages = len_ / arch::page_size;
		std::vector<std::pair<void *, size_t>> maps(threads, {MAP_FAILED, 0});

		const double seconds = run_threads(threads, [&](unsigned t) {
					       const uint64_t first = slice_begin(pages, t, threads);
					       const size_t len = (slice_end(pages, t, threads) - first) * arch::page_size;
					       if (len == 0)
						       return;
					       maps[t] = {mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
							       fd_, static_cast<off_t>(first * arch::page_size)),
							  len};
				       }).seconds;

		bool failed = false;
		for (const auto &[addr, len] : maps) {
			if (addr == MAP_FAILED)
				failed = failed || len != 0;
			else
				munmap(addr, len);
		}
		if (failed)
			throw std::runtime_error("mmap(MAP_POPULATE) of the memfd failed");
		return seconds;
	}

private:
	[[noreturn]] void fail(std::string_view what)
	{
		const int error = errno;
		close(fd_);
		errno = error;
		throw_errno(what);
	}

	size_t len_;
	int fd_ = -1;
};

// ptl's range populate: each thread maps its slice of a page array with one
// vmap call in a kernel address space, which populates every table the
// range needs and sets every PTE. The frames are bare frame numbers, as a
// hypervisor's guest frames would be.
class ptl_vmap {
public:
	explicit ptl_vmap(uint64_t pages) : pool_(pool_frames(pages)), pfns_(pages)
	{
		for (uint64_t i = 0; i < pages; i++)
			pfns_[i] = 1 + i;
		pool_.prefault(pool_.nr_frames());
	}

	double run(mm::lock_mode mode, unsigned threads)
	{
		reset_frame_order(pool_);
		auto space = kernel::kernel_space<G>::create(pool_, mode);
		if (!space)
			throw_failure("creating the kernel address space", space.error());

		std::vector<uint64_t> addrs(threads, 0);
		const double seconds = run_threads(threads, [&](unsigned t) {
					       const uint64_t first = slice_begin(pfns_.size(), t, threads);
					       const uint64_t last = slice_end(pfns_.size(), t, threads);
					       if (first == last)
						       return;
					       auto addr = (*space)->vmap(std::span(pfns_).subspan(first, last - first));
					       if (!addr)
						       throw_failure("vmap", addr.error());
					       addrs[t] = *addr;
				       }).seconds;

		for (uint64_t addr : addrs) {
			if (addr != 0)
				(void)(*space)->vunmap(addr);
		}
		return seconds;
	}

private:
	// PTE tables for the pages and a table per thread's range boundary,
	// the directories above them, and the guard pages' tables.
	static size_t pool_frames(uint64_t pages) { return pages / 256 + 1024; }

	phys::frame_pool pool_;
	std::vector<phys::pfn_t> pfns_;
};

void add_sample(std::map<std::pair<std::string, unsigned>, std::vector<double>> &samples, const std::string &name,
		unsigned threads, uint64_t pages, double seconds)
{
	samples[{name, threads}].push_back(seconds > 0 ? double(pages) / seconds : 0);
}

std::string thread_label(unsigned threads)
{
	return fmt::format("{} thread{}", threads, threads == 1 ? "" : "s");
}

} // namespace

std::vector<kernel_result> run_kernel_comparison(const peers_options &options,
						 const std::function<void(const std::string &)> &note)
{
	const uint64_t pages = options.pages;
	bench_options fault_options;
	fault_options.pages = pages;

	note("kernel comparison: preparing the memfd and ptl's pools");
	resident_memfd memfd(pages);
	std::unique_ptr<scenario> fault = options.run_ptl ? make_fault(fault_options) : nullptr;
	std::optional<ptl_vmap> vmap;
	if (options.run_ptl)
		vmap.emplace(pages);

	std::map<std::pair<std::string, unsigned>, std::vector<double>> samples;
	std::vector<std::string> order;
	const auto record = [&](const std::string &name, unsigned threads, double seconds) {
		if (std::find(order.begin(), order.end(), name) == order.end())
			order.push_back(name);
		add_sample(samples, name, threads, pages, seconds);
	};

	for (unsigned r = 0; r < options.repeat; r++) {
		for (unsigned threads : options.threads) {
			note(fmt::format("kernel comparison: {}, repeat {} of {}", thread_label(threads), r + 1,
					 options.repeat));
			record("kernel anonymous fault", threads, kernel_anon_fault_seconds(pages, threads));
			record("kernel MAP_POPULATE", threads, memfd.populate_seconds(threads));

			for (mm::lock_mode mode : options.run_ptl ? options.modes : std::vector<mm::lock_mode>{}) {
				const std::string m(mm::lock_mode_name(mode));
				record("ptl fault " + m, threads, fault->run(mode, threads).time.seconds);
				record("ptl vmap " + m, threads, vmap->run(mode, threads));
			}
		}
	}

	std::vector<kernel_result> results;
	for (const std::string &name : order) {
		for (unsigned threads : options.threads) {
			const auto &rates = samples.at({name, threads});
			results.push_back({name, threads, pages,
					   {median_of(rates), *std::min_element(rates.begin(), rates.end()),
					    *std::max_element(rates.begin(), rates.end())}});
		}
	}
	return results;
}

} // namespace ptl::bench::peers
