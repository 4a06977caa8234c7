// The layouts of `ptl bench peers`: which pages are mapped, which frame
// each maps, and the orders the operations visit them in.

#include "peers_internal.hpp"

#include <ptl/tools/snapshot.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <numeric>
#include <random>

namespace ptl::bench::peers {

namespace {

// Dense pages start at 1 GiB, above where a process's text usually sits.
constexpr uint64_t dense_first_vpn = (uint64_t{1} << 30) >> arch::page_shift;

// Scattered pages lie in [1 GiB, 1 GiB + 64 TiB), inside the user half of
// a 4-level x86-64 space (128 TiB).
constexpr uint64_t scattered_first_vpn = dense_first_vpn;
constexpr uint64_t scattered_span_pages = (uint64_t{1} << 46) >> arch::page_shift;

std::vector<uint32_t> identity(uint64_t n)
{
	std::vector<uint32_t> v(n);
	std::iota(v.begin(), v.end(), 0u);
	return v;
}

std::vector<uint32_t> shuffled(uint64_t n, std::mt19937_64 &rng)
{
	auto v = identity(n);
	std::shuffle(v.begin(), v.end(), rng);
	return v;
}

// Sattolo's algorithm: a uniformly random permutation that is one cycle, so
// a chase from any page visits every page before it comes back.
std::vector<uint32_t> random_cycle(uint64_t n, std::mt19937_64 &rng)
{
	auto v = identity(n);
	for (uint64_t i = n - 1; i > 0; i--) {
		std::uniform_int_distribution<uint64_t> pick(0, i - 1);
		std::swap(v[i], v[pick(rng)]);
	}
	return v;
}

// Tables of every level that the pages need: the distinct table spans
// their addresses fall into, plus the pgd.
size_t count_table_frames(const std::vector<uint64_t> &vpns)
{
	size_t frames = 1;

	using arch::level;

	for (level l : {level::p4d, level::pud, level::pmd, level::pte}) {
		if (arch::is_folded<G>(l))
			continue;

		const uint64_t table_span = arch::entry_span<G>(l) * arch::ptrs_per_table<G>(l);
		uint64_t last = ~uint64_t{0};
		for (uint64_t vpn : vpns) {
			const uint64_t table = (vpn << arch::page_shift) / table_span;
			if (table != last)
				frames++;
			last = table;
		}
	}
	return frames;
}

std::vector<mapping> in_order(const std::vector<mapping> &by_address, const std::vector<uint32_t> &order)
{
	std::vector<mapping> v;
	v.reserve(order.size());
	for (uint32_t i : order)
		v.push_back(by_address[i]);
	return v;
}

// Gives every page its frame, and lays out the mappings in each order.
// insert_order empty means address order.
void finish_layout(layout &l, std::mt19937_64 &rng, const std::vector<uint32_t> &insert_order = {})
{
	l.next = l.size() > 1 ? random_cycle(l.size(), rng) : identity(l.size());

	l.by_address.reserve(l.size());
	for (uint64_t i = 0; i < l.size(); i++)
		l.by_address.push_back({l.vpns[i], l.vpns[l.next[i]]});

	l.by_insert = insert_order.empty() ? l.by_address : in_order(l.by_address, insert_order);
	l.by_random = in_order(l.by_address, shuffled(l.size(), rng));
	l.table_frames = count_table_frames(l.vpns);
}

// Bytes of a demo child that touches about `pages` pages: it touches 3 of
// every 4 pages of its mapping.
uint64_t demo_bytes(uint64_t pages)
{
	return (pages * 4 + 2) / 3 * tools::page_bytes;
}

tools::process_image read_replay_image(const peers_options &options, std::string &process)
{
	if (!options.snapshot_path.empty()) {
		tools::snapshot snap = tools::load_snapshot(options.snapshot_path);
		tools::check_snapshot_fits(snap, options.snapshot_path);
		process = fmt::format("snapshot {} of {} ({})", options.snapshot_path, snap.pid, snap.image.status.name);
		return std::move(snap.image);
	}

	if (options.pid != 0) {
		tools::process_image image = tools::read_process_image(options.pid, false);
		process = fmt::format("{} ({})", options.pid, image.status.name);
		return image;
	}

	if (options.progress)
		options.progress(fmt::format("starting a demo child that touches {} pages", options.pages));
	tools::demo_child child(demo_bytes(options.pages));
	tools::process_image image = tools::read_process_image(child.pid(), false);
	process = fmt::format("{} ({}, a demo child)", child.pid(), image.status.name);
	return image;
}

} // namespace

layout make_dense_layout(uint64_t pages, uint64_t seed)
{
	std::mt19937_64 rng(seed);
	layout l;
	l.kind = layout_kind::dense;

	l.vpns.resize(pages);
	std::iota(l.vpns.begin(), l.vpns.end(), dense_first_vpn);
	l.vmas.emplace_back(dense_first_vpn << arch::page_shift, (dense_first_vpn + pages) << arch::page_shift);
	finish_layout(l, rng);
	return l;
}

layout make_scattered_layout(uint64_t pages, uint64_t seed)
{
	std::mt19937_64 rng(seed);
	std::uniform_int_distribution<uint64_t> pick(scattered_first_vpn, scattered_first_vpn + scattered_span_pages - 1);
	layout l;
	l.kind = layout_kind::scattered;

	// Draw until `pages` distinct pages remain; the span is 2^34 pages,
	// so collisions are rare and each round removes them.
	while (l.vpns.size() < pages) {
		while (l.vpns.size() < pages)
			l.vpns.push_back(pick(rng));
		std::sort(l.vpns.begin(), l.vpns.end());
		l.vpns.erase(std::unique(l.vpns.begin(), l.vpns.end()), l.vpns.end());
	}

	l.vmas.emplace_back(scattered_first_vpn << arch::page_shift,
			    (scattered_first_vpn + scattered_span_pages) << arch::page_shift);
	// Inserted in random order, as pages scattered at random would arrive.
	const std::vector<uint32_t> insert_order = shuffled(pages, rng);
	finish_layout(l, rng, insert_order);
	return l;
}

layout make_replay_layout(const peers_options &options, std::string &process)
{
	std::mt19937_64 rng(options.seed);
	layout l;
	l.kind = layout_kind::replay;

	l.image = read_replay_image(options, process);
	if (l.image->pages.empty())
		throw tools::input_error(fmt::format("{} has no present pages in its user half to replay", process));
	if (l.image->pages.size() > (uint64_t{1} << 30))
		throw std::invalid_argument(fmt::format("{} has {} present pages; at most 2^30 can be compared", process,
							l.image->pages.size()));

	l.vpns.reserve(l.image->pages.size());
	for (const auto &page : l.image->pages)
		l.vpns.push_back(page.addr >> arch::page_shift);
	finish_layout(l, rng);
	return l;
}

void prepare_chases(layout &l, const std::vector<unsigned> &thread_counts)
{
	for (unsigned threads : thread_counts) {
		auto &chases = l.chases[threads];
		chases.clear();

		for (unsigned t = 0; t < threads; t++) {
			const uint64_t first = slice_begin(l.size(), t, threads);
			const uint64_t steps = slice_end(l.size(), t, threads) - first;

			uint32_t index = static_cast<uint32_t>(first);
			for (uint64_t s = 0; s < steps; s++)
				index = l.next[index];
			chases.emplace_back(l.vpns[first], l.vpns[index]);
		}
	}
}

size_t pool_frames_for(const layout &l, unsigned max_threads)
{
	// Lockless runs free a losing table after a grace period, so a few
	// per thread and level may be live at once on top of the tree.
	return l.table_frames + size_t{max_threads} * 64 + 256;
}

} // namespace ptl::bench::peers
