#include <ptl/tools/replay.hpp>

#include <ptl/arch/registry.hpp>
#include <ptl/mm/walk.hpp>
#include <ptl/tools/proc.hpp>
#include <ptl/tools/snapshot.hpp>
#include <ptl/user/user_space.hpp>

#include <fmt/chrono.h>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

namespace ptl::tools {

namespace {

using clock_type = std::chrono::steady_clock;

// Pages read per pagemap call: 512 KiB of entries.
constexpr size_t pagemap_chunk_pages = 65536;

double seconds_since(clock_type::time_point start)
{
	return std::chrono::duration<double>(clock_type::now() - start).count();
}

void report_progress(const replay_options &options, const std::string &line)
{
	if (options.progress)
		options.progress(line);
}

// Stops a process for as long as it lives, so that its maps, pagemap and
// status describe one moment.
class stopped_process {
public:
	stopped_process(int pid, bool stop) : pid_(stop ? pid : 0)
	{
		if (pid_ && kill(pid_, SIGSTOP) != 0)
			throw input_error(fmt::format("cannot stop process {}: {}", pid, std::strerror(errno)));
	}
	~stopped_process()
	{
		if (pid_)
			kill(pid_, SIGCONT);
	}
	stopped_process(const stopped_process &) = delete;
	stopped_process &operator=(const stopped_process &) = delete;

private:
	int pid_;
};

// Whether the VMA lies in the native geometry's user half; [vsyscall] on
// x86-64 does not.
// NOTE: a build whose native geometry has a smaller user half than this
// machine's (PTL_ARCH=i386 on x86-64) skips the VMAs above it here, even
// when --arch names a geometry that could hold them.
bool in_user_half(const vma_record &vma)
{
	return vma.end <= arch::native::task_size;
}

// Reads the entries of [start, end) in chunks and keeps the present pages.
void read_range_pages(pagemap_reader &pagemap, uint64_t start, uint64_t end, process_image &image)
{
	std::vector<pagemap_entry> chunk;

	for (uint64_t addr = start; addr < end; addr += chunk.size() * page_bytes) {
		chunk.resize(std::min<uint64_t>(pagemap_chunk_pages, (end - addr) / page_bytes));
		pagemap.read(addr, chunk);

		for (size_t i = 0; i < chunk.size(); i++) {
			if (chunk[i].present)
				image.pages.push_back({addr + i * page_bytes, chunk[i].pfn});
			else if (chunk[i].swapped)
				image.swapped++;
		}
	}
}

// Reads the present pages of a VMA. Where the kernel has PAGEMAP_SCAN, only
// the populated ranges are read, which matters for VMAs that reserve
// terabytes and touch little (sanitizer shadow memory, language runtimes'
// heaps); elsewhere the whole VMA is read.
void read_vma_pages(pagemap_reader &pagemap, const vma_record &vma, process_image &image)
{
	const auto ranges = pagemap.scan_populated(vma.start, vma.end);
	if (!ranges) {
		read_range_pages(pagemap, vma.start, vma.end, image);
		return;
	}

	for (const page_range &range : *ranges)
		read_range_pages(pagemap, range.start, range.end, image);
}

unsigned vma_prot(const vma_record &vma)
{
	unsigned prot = 0;
	if (vma.read)
		prot |= user::prot_read;
	if (vma.write)
		prot |= user::prot_write;
	if (vma.exec)
		prot |= user::prot_exec;
	return prot;
}

} // namespace

process_image read_process_image(int pid, bool stop)
{
	process_image image;
	stopped_process stopped(pid, stop);

	image.vmas = read_maps(pid);
	pagemap_reader pagemap(pid);

	std::vector<vma_record> user_vmas;
	for (const auto &vma : image.vmas) {
		if (!in_user_half(vma)) {
			image.vmas_skipped++;
			continue;
		}
		read_vma_pages(pagemap, vma, image);
		user_vmas.push_back(vma);
	}
	image.vmas = std::move(user_vmas);
	image.pfns_visible = pagemap.pfns_visible();
	image.status = read_status(pid);
	check_user_address_space(pid, image.status);
	return image;
}

size_t image_pool_frames(const process_image &image)
{
	// Frames hold only tables (data pages are bare PFNs); the region is
	// reserved, not committed, so a generous size costs nothing.
	return std::max<size_t>(1 << 16, image.pages.size() / 64 + image.vmas.size() * 8);
}

namespace {

// The VMA that ends highest; the image's VMAs are in address order.
uint64_t highest_vma_end(const process_image &image)
{
	return image.vmas.empty() ? 0 : image.vmas.back().end;
}

uint64_t highest_pfn(const process_image &image)
{
	uint64_t pfn = 0;

	if (!image.pfns_visible)
		return 0;
	for (const auto &page : image.pages)
		pfn = std::max(pfn, page.pfn);
	return pfn;
}

// The profiles whose user half and entries hold every VMA and frame of
// the image, comma-separated.
std::string fitting_profiles(const process_image &image)
{
	std::string list;

	for (std::string_view name : arch::profile_names) {
		const bool fits = arch::with_profile(name, [&](auto profile) {
			using P = typename decltype(profile)::type;
			return highest_vma_end(image) <= P::task_size && highest_pfn(image) <= P::format::max_pfn;
		});
		if (fits)
			list += (list.empty() ? "" : ", ") + std::string(name);
	}
	return list.empty() ? "none" : list;
}

} // namespace

template <class G>
void check_image_fits(const process_image &image, std::string_view source)
{
	for (const vma_record &vma : image.vmas) {
		if (vma.end > G::task_size)
			throw input_error(fmt::format("{}: VMA {:#x}-{:#x} ends above the {} user half ({:#x}), so it "
						      "cannot be replayed into {}; geometries that hold it: {}",
						      source, vma.start, vma.end, G::name, G::task_size, G::name,
						      fitting_profiles(image)));
	}

	const uint64_t pfn = highest_pfn(image);
	if (pfn > G::format::max_pfn)
		throw input_error(fmt::format("{}: frame {:#x} is above the largest frame number {} entries hold "
					      "({:#x}); geometries that hold it: {}",
					      source, pfn, G::name, G::format::max_pfn, fitting_profiles(image)));
}

template <class G>
void create_image_vmas(user::user_space<G> &space, const process_image &image)
{
	for (const auto &vma : image.vmas) {
		const unsigned sharing = vma.shared ? user::map_shared : user::map_private;
		auto r = space.mmap(vma.start, vma.end - vma.start, vma_prot(vma),
				    user::map_fixed_noreplace | sharing | user::map_pfnmap);
		if (!r)
			throw std::runtime_error(fmt::format("cannot create VMA {:#x}-{:#x} in the replay: {}", vma.start,
							     vma.end, errc_name(r.error())));
	}
}

// Without visible PFNs every page maps frame 0, which is enough to rebuild
// the same tables.
template <class G>
uint64_t insert_image_pages(user::user_space<G> &space, const process_image &image, size_t first, size_t last)
{
	uint64_t failures = 0;

	for (size_t i = first; i < last; i++) {
		const auto &page = image.pages[i];
		if (!space.insert_pfn(page.addr, image.pfns_visible ? page.pfn : 0))
			failures++;
	}
	return failures;
}

// Splits the pages into one contiguous slice per thread, so neighbouring
// threads race only on the directory tables at slice edges.
template <class G>
double rebuild_image(user::user_space<G> &space, const process_image &image, unsigned threads)
{
	std::atomic<uint64_t> failures{0};
	std::vector<std::thread> workers;
	const size_t n = image.pages.size();
	const auto start = clock_type::now();

	for (unsigned t = 0; t < threads; t++) {
		const size_t first = n * t / threads;
		const size_t last = n * (t + 1) / threads;
		workers.emplace_back([&, first, last] {
			failures.fetch_add(insert_image_pages(space, image, first, last), std::memory_order_relaxed);
		});
	}
	for (auto &w : workers)
		w.join();

	const double elapsed = seconds_since(start);
	if (failures.load() != 0)
		throw std::runtime_error(fmt::format("{} of {} pages could not be inserted", failures.load(), n));
	return elapsed;
}

#define PTL_INSTANTIATE_IMAGE_FUNCTIONS(G)                                                                            \
	template void check_image_fits<G>(const process_image &, std::string_view);                                   \
	template void create_image_vmas<G>(user::user_space<G> &, const process_image &);                             \
	template uint64_t insert_image_pages<G>(user::user_space<G> &, const process_image &, size_t, size_t);        \
	template double rebuild_image<G>(user::user_space<G> &, const process_image &, unsigned);
PTL_FOR_EACH_PROFILE(PTL_INSTANTIATE_IMAGE_FUNCTIONS)
#undef PTL_INSTANTIATE_IMAGE_FUNCTIONS

namespace {

template <class G>
uint64_t count_mismatches(const mm::mm_struct<G> &mm, const process_image &image)
{
	uint64_t mismatches = 0;

	for (const auto &page : image.pages) {
		const auto t = mm::translate(mm, page.addr);
		const uint64_t expected = image.pfns_visible ? page.pfn : 0;
		if (!t || t->pfn != expected)
			mismatches++;
	}
	return mismatches;
}

// Runs of 512 present pages at a 2 MiB-aligned address backed by 512
// contiguous, aligned frames: the kernel may map such a run with one pmd
// entry (a transparent huge page) and no PTE table.
uint64_t count_huge_candidates(const process_image &image)
{
	constexpr uint64_t run = 512;
	uint64_t candidates = 0;

	if (!image.pfns_visible)
		return 0;

	for (size_t i = 0; i + run <= image.pages.size();) {
		const auto &first = image.pages[i];
		const bool aligned = first.addr % (run * page_bytes) == 0 && first.pfn % run == 0;
		const bool contiguous = aligned && image.pages[i + run - 1].addr == first.addr + (run - 1) * page_bytes &&
					image.pages[i + run - 1].pfn == first.pfn + run - 1;
		if (contiguous) {
			candidates++;
			i += run;
		} else {
			i++;
		}
	}
	return candidates;
}

template <class G>
replay_report replay_image(const process_image &image, const replay_options &options)
{
	replay_report report;
	report.arch = std::string(G::name);
	report.threads = options.threads;
	report.command = image.status.name;
	report.pfns_visible = image.pfns_visible;
	report.vmas = image.vmas.size();
	report.vmas_skipped = image.vmas_skipped;
	report.pages_present = image.pages.size();
	report.pages_swapped = image.swapped;
	report.huge_candidates = count_huge_candidates(image);
	if (image.status.vm_pte_kib)
		report.kernel_vm_pte_bytes = *image.status.vm_pte_kib * 1024;
	if (image.status.vm_rss_kib)
		report.kernel_vm_rss_bytes = *image.status.vm_rss_kib * 1024;

	phys::frame_pool pool(image_pool_frames(image));
	auto space = user::user_space<G>::create(pool);
	if (!space)
		throw std::runtime_error(fmt::format("cannot create the replay address space: {}", errc_name(space.error())));

	create_image_vmas(**space, image);
	report_progress(options, fmt::format("inserting {} pages with {} thread{}", image.pages.size(), options.threads,
					     options.threads == 1 ? "" : "s"));
	report.rebuild_seconds = rebuild_image(**space, image, options.threads);
	report.pages_per_second = report.rebuild_seconds > 0 ? image.pages.size() / report.rebuild_seconds : 0;

	const auto verify_start = clock_type::now();
	const auto &mm = (*space)->mm();
	report.mismatches = count_mismatches(mm, image);
	mm::walk_all(mm, [&](uint64_t, auto, arch::level) { report.pages_mapped++; });
	report.verify_seconds = seconds_since(verify_start);

	const auto counters = mm.counters();
	report.tables = counters.nr_tables;
	report.pgtables_bytes = mm.pgtables_bytes();
	report.populates = counters.populates;
	report.races_lost = counters.races_lost;
	return report;
}

} // namespace

namespace {

// Checks that the geometry options.arch names can hold the image, then
// rebuilds and verifies it there. source names the image in errors.
replay_report replay_in_profile(const process_image &image, const replay_options &options, std::string_view source)
{
	return arch::with_profile(options.arch, [&](auto profile) {
		using G = typename decltype(profile)::type;
		check_image_fits<G>(image, source);
		return replay_image<G>(image, options);
	});
}

// Replays a snapshot file as run_replay replays a live process; only the
// source of the image differs.
replay_report replay_snapshot_file(const replay_options &options)
{
	const auto read_start = clock_type::now();
	report_progress(options, fmt::format("loading snapshot {}", options.snapshot_path));
	const snapshot snap = load_snapshot(options.snapshot_path);
	const double read_seconds = seconds_since(read_start);

	replay_report report = replay_in_profile(snap.image, options, options.snapshot_path);
	report.pid = snap.pid;
	report.snapshot_path = options.snapshot_path;
	report.snapshot_time = snap.time;
	report.snapshot_kernel = snap.kernel_release;
	report.read_seconds = read_seconds;
	return report;
}

std::string format_source(const replay_report &r)
{
	if (!r.snapshot_path.empty())
		return fmt::format(", from snapshot {} taken {:%Y-%m-%d %H:%M:%S} UTC on Linux {}", r.snapshot_path,
				   fmt::gmtime(static_cast<std::time_t>(r.snapshot_time)), r.snapshot_kernel);
	return r.demo_child ? ", demo child started by ptl" : "";
}

} // namespace

replay_report run_replay(const replay_options &options)
{
	if (options.threads == 0)
		throw std::invalid_argument("thread count 0 is invalid; use --threads 1 or more");
	if (!options.arch.empty() && !arch::is_profile_name(options.arch))
		throw std::invalid_argument(fmt::format("unknown geometry '{}'; choose from {}", options.arch,
							arch::profile_name_list()));
	if (!options.snapshot_path.empty())
		return replay_snapshot_file(options);

	std::unique_ptr<demo_child> child;
	int pid = options.pid;
	if (pid == 0) {
		report_progress(options, fmt::format("starting a demo child that maps {} MiB", options.demo_bytes >> 20));
		child = std::make_unique<demo_child>(options.demo_bytes);
		pid = child->pid();
	}

	const auto read_start = clock_type::now();
	report_progress(options, fmt::format("reading /proc/{}/maps, pagemap and status", pid));
	const process_image image = read_process_image(pid, options.stop_target);
	const double read_seconds = seconds_since(read_start);

	replay_report report = replay_in_profile(image, options, fmt::format("process {}", pid));
	report.pid = pid;
	report.demo_child = child != nullptr;
	report.read_seconds = read_seconds;
	return report;
}

std::string format_report_text(const replay_report &r)
{
	std::string out;
	out += fmt::format("process          {} ({}){}\n", r.pid, r.command, format_source(r));
	out += fmt::format("geometry         {}\n", r.arch);
	out += fmt::format("vmas             {} replayed, {} outside the user half skipped\n", r.vmas, r.vmas_skipped);
	out += fmt::format("pages            {} present, {} mapped, {} swapped out (not mapped)\n", r.pages_present,
			   r.pages_mapped, r.pages_swapped);
	if (r.pfns_visible)
		out += fmt::format("verification     {} mismatches against the kernel's PFNs\n", r.mismatches);
	else if (!r.snapshot_path.empty())
		out += fmt::format("verification     presence only: the snapshot holds no PFNs (take it as root to "
				   "record frames); {} pages missing\n",
				   r.mismatches);
	else
		out += fmt::format("verification     presence only: the kernel hid PFNs (run as root to compare "
				   "frames); {} pages missing\n",
				   r.mismatches);

	out += "page tables     ";
	for (unsigned i = 0; i < arch::nr_levels; i++) {
		if (i == 0 || r.tables[i] != 0 || i == arch::level_index(arch::level::pte))
			out += fmt::format(" {} {}", arch::level_name(static_cast<arch::level>(i)), r.tables[i]);
	}
	out += "\n";
	out += fmt::format("table bytes      {} KiB below the pgd", r.pgtables_bytes / 1024);
	if (r.kernel_vm_pte_bytes)
		out += fmt::format(", kernel VmPTE {} KiB (ratio {:.3f})", *r.kernel_vm_pte_bytes / 1024,
				   *r.kernel_vm_pte_bytes ? double(r.pgtables_bytes) / double(*r.kernel_vm_pte_bytes) : 0.0);
	out += "\n";
	if (r.huge_candidates)
		out += fmt::format("huge candidates  {} aligned 2 MiB runs of contiguous frames (the kernel may map "
				   "each with one pmd entry and no PTE table)\n",
				   r.huge_candidates);
	out += fmt::format("populates        {} tables published, {} races lost\n", r.populates, r.races_lost);
	out += fmt::format("time             read {:.3f} s, rebuild {:.3f} s with {} thread{} ({:.0f} pages/s), "
			   "verify {:.3f} s\n",
			   r.read_seconds, r.rebuild_seconds, r.threads, r.threads == 1 ? "" : "s", r.pages_per_second,
			   r.verify_seconds);
	return out;
}

std::string format_report_json(const replay_report &r)
{
	nlohmann::json tables;
	for (unsigned i = 0; i < arch::nr_levels; i++)
		tables[std::string(arch::level_name(static_cast<arch::level>(i)))] = r.tables[i];

	nlohmann::json j = {
		{"pid", r.pid},
		{"command", r.command},
		{"demo_child", r.demo_child},
		{"source", r.snapshot_path.empty() ? "process" : "snapshot"},
		{"snapshot", r.snapshot_path.empty() ? nlohmann::json() : nlohmann::json(r.snapshot_path)},
		{"snapshot_time", r.snapshot_path.empty() ? nlohmann::json() : nlohmann::json(r.snapshot_time)},
		{"snapshot_kernel", r.snapshot_path.empty() ? nlohmann::json() : nlohmann::json(r.snapshot_kernel)},
		{"arch", r.arch},
		{"threads", r.threads},
		{"pfns_visible", r.pfns_visible},
		{"vmas", r.vmas},
		{"vmas_skipped", r.vmas_skipped},
		{"pages_present", r.pages_present},
		{"pages_mapped", r.pages_mapped},
		{"pages_swapped", r.pages_swapped},
		{"mismatches", r.mismatches},
		{"huge_candidates", r.huge_candidates},
		{"tables", tables},
		{"pgtables_bytes", r.pgtables_bytes},
		{"kernel_vm_pte_bytes", r.kernel_vm_pte_bytes ? nlohmann::json(*r.kernel_vm_pte_bytes) : nlohmann::json()},
		{"kernel_vm_rss_bytes", r.kernel_vm_rss_bytes ? nlohmann::json(*r.kernel_vm_rss_bytes) : nlohmann::json()},
		{"populates", r.populates},
		{"races_lost", r.races_lost},
		{"read_seconds", r.read_seconds},
		{"rebuild_seconds", r.rebuild_seconds},
		{"verify_seconds", r.verify_seconds},
		{"pages_per_second", r.pages_per_second},
	};
	return j.dump();
}

} // namespace ptl::tools
