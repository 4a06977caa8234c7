// The structures of `ptl bench peers`, each behind the same three calls
// (insert, lookup, remove), and the run cycle that times them alike.

#include "peers_internal.hpp"

#include <ptl/mm/walk.hpp>
#include <ptl/user/user_space.hpp>

#include <Judy.h>
#include <absl/container/flat_hash_map.h>
#include <absl/synchronization/mutex.h>
// libcds declares ThreadSanitizer's annotation functions itself when
// __SANITIZE_THREAD__ is set, with prototypes that conflict with absl's,
// so a ThreadSanitizer build includes it without them. The peers are not
// tested under ThreadSanitizer (see tests/CMakeLists.txt).
#if defined(__SANITIZE_THREAD__)
#pragma push_macro("__SANITIZE_THREAD__")
#undef __SANITIZE_THREAD__
#include <cds/container/feldman_hashmap_hp.h>
#include <cds/gc/hp.h>
#include <cds/init.h>
#pragma pop_macro("__SANITIZE_THREAD__")
#else
#include <cds/container/feldman_hashmap_hp.h>
#include <cds/gc/hp.h>
#include <cds/init.h>
#endif
#include <oneapi/tbb/concurrent_hash_map.h>

#include <fmt/core.h>

#include <climits>
#include <malloc.h>
#include <mutex>
#include <optional>
#include <unordered_map>

namespace ptl::bench::peers {

namespace {

// std::unordered_map under one std::mutex, for every call.
class std_map {
public:
	bool insert(uint64_t vpn, uint64_t pfn)
	{
		std::lock_guard lock(mutex_);
		return map_.emplace(vpn, pfn).second;
	}

	uint64_t lookup(uint64_t vpn)
	{
		std::lock_guard lock(mutex_);
		auto it = map_.find(vpn);
		return it == map_.end() ? no_frame : it->second;
	}

	bool remove(uint64_t vpn)
	{
		std::lock_guard lock(mutex_);
		return map_.erase(vpn) == 1;
	}

private:
	std::mutex mutex_;
	std::unordered_map<uint64_t, uint64_t> map_;
};

// absl::flat_hash_map under absl::Mutex: a writer lock for inserts and
// removals, a reader lock for lookups, so lookups run in parallel.
class absl_map {
public:
	bool insert(uint64_t vpn, uint64_t pfn)
	{
		absl::WriterMutexLock lock(&mutex_);
		return map_.emplace(vpn, pfn).second;
	}

	uint64_t lookup(uint64_t vpn)
	{
		absl::ReaderMutexLock lock(&mutex_);
		auto it = map_.find(vpn);
		return it == map_.end() ? no_frame : it->second;
	}

	bool remove(uint64_t vpn)
	{
		absl::WriterMutexLock lock(&mutex_);
		return map_.erase(vpn) == 1;
	}

private:
	absl::Mutex mutex_;
	absl::flat_hash_map<uint64_t, uint64_t> map_;
};

// tbb::concurrent_hash_map with a lock per bucket. std::allocator instead of
// TBB's default, so that its memory comes from the C heap that is measured.
class tbb_map {
public:
	using map_type = tbb::concurrent_hash_map<uint64_t, uint64_t, tbb::tbb_hash_compare<uint64_t>,
						  std::allocator<std::pair<const uint64_t, uint64_t>>>;

	bool insert(uint64_t vpn, uint64_t pfn) { return map_.insert({vpn, pfn}); }

	uint64_t lookup(uint64_t vpn)
	{
		map_type::const_accessor accessor;
		return map_.find(accessor, vpn) ? accessor->second : no_frame;
	}

	bool remove(uint64_t vpn) { return map_.erase(vpn); }

private:
	map_type map_;
};

// libcds needs cds::Initialize() and one hazard-pointer collector for the
// process before any map exists, and every thread that touches a map must
// be attached to the library. The main thread stays attached, because a
// map's destructor retires its nodes on the thread that runs it.
class cds_runtime {
public:
	static void start(unsigned max_threads)
	{
		static cds_runtime runtime(max_threads);
	}

private:
	explicit cds_runtime(unsigned max_threads)
	{
		cds::Initialize();
		// Hazard pointers per thread (0: the default of 8), and room for
		// the workers plus the main thread.
		gc_ = std::make_unique<cds::gc::HP>(0, max_threads + 1);
		cds::threading::Manager::attachThread();
	}

	~cds_runtime()
	{
		cds::threading::Manager::detachThread();
		gc_.reset();
		cds::Terminate();
	}

	std::unique_ptr<cds::gc::HP> gc_;
};

// cds::container::FeldmanHashMap: a lock-free multi-level array indexed by
// the key's bits. A 64-bit key is its own hash, as the library suggests for
// fixed-size keys.
class cds_map {
public:
	static void attach_thread() { cds::threading::Manager::attachThread(); }
	static void detach_thread() { cds::threading::Manager::detachThread(); }

	bool insert(uint64_t vpn, uint64_t pfn) { return map_.insert(vpn, pfn); }

	uint64_t lookup(uint64_t vpn)
	{
		uint64_t pfn = no_frame;
		map_.find(vpn, [&](const std::pair<const uint64_t, uint64_t> &item) { pfn = item.second; });
		return pfn;
	}

	bool remove(uint64_t vpn) { return map_.erase(vpn); }

private:
	cds::container::FeldmanHashMap<cds::gc::HP, uint64_t, uint64_t> map_;
};

// JudyL under one std::mutex. Judy arrays are not safe for concurrent
// writers, and a reader must not run beside a writer.
class judy_map {
public:
	~judy_map() { JudyLFreeArray(&array_, PJE0); }

	bool insert(uint64_t vpn, uint64_t pfn)
	{
		std::lock_guard lock(mutex_);
		PPvoid_t slot = JudyLIns(&array_, vpn, PJE0);
		if (slot == nullptr || slot == PPJERR)
			return false;
		*reinterpret_cast<Word_t *>(slot) = pfn;
		return true;
	}

	uint64_t lookup(uint64_t vpn)
	{
		std::lock_guard lock(mutex_);
		PPvoid_t slot = JudyLGet(array_, vpn, PJE0);
		return slot == nullptr || slot == PPJERR ? no_frame : *reinterpret_cast<Word_t *>(slot);
	}

	bool remove(uint64_t vpn)
	{
		std::lock_guard lock(mutex_);
		return JudyLDel(&array_, vpn, PJE0) == 1;
	}

private:
	std::mutex mutex_;
	Pvoid_t array_ = nullptr;
};

// ptl through its public user-space API, as a hypervisor would use it: the
// pages' ranges are PFN-mapped VMAs, insert is vmf_insert_pfn, lookup is a
// lockless walk through the thread's walk cursor, and removal is munmap of
// the page.
class ptl_map {
public:
	ptl_map(phys::frame_pool &pool, mm::lock_mode mode, const layout &l)
	{
		auto space = user::user_space<G>::create(pool, mode);
		if (!space)
			throw_failure("creating the user address space", space.error());
		space_ = std::move(*space);

		if (l.image)
			tools::create_image_vmas(*space_, *l.image);
		for (const auto &[start, end] : l.vmas)
			map_range(start, end);
	}

	bool insert(uint64_t vpn, uint64_t pfn) { return space_->insert_pfn(vpn << arch::page_shift, pfn).has_value(); }

	// Inside a thread_scope, lookups go through a walk cursor of the
	// thread, which reuses the PTE table of the previous lookup. The scope's
	// end drops it: a cursor holds off every unmap until it is gone.
	static void attach_thread() { thread_cursor().enabled = true; }

	static void detach_thread()
	{
		thread_cursor().cursor.reset();
		thread_cursor().mm = nullptr;
		thread_cursor().enabled = false;
	}

	uint64_t lookup(uint64_t vpn)
	{
		const uint64_t addr = vpn << arch::page_shift;
		auto &c = thread_cursor();
		if (!c.enabled) {
			const auto t = mm::translate(space_->mm(), addr);
			return t ? t->pfn : no_frame;
		}

		if (c.mm != &space_->mm()) {
			c.cursor.reset();
			c.cursor.emplace(space_->mm());
			c.mm = &space_->mm();
		}
		const auto t = c.cursor->translate(addr);
		return t ? t->pfn : no_frame;
	}

	bool remove(uint64_t vpn) { return space_->munmap(vpn << arch::page_shift, arch::page_size).has_value(); }

	// Table frames live in the pool, outside the C heap: each costs its
	// 4 KiB and the pool's metadata of one frame.
	uint64_t outside_heap_bytes() const
	{
		const auto counters = space_->mm().counters();
		uint64_t tables = 0;
		for (uint64_t n : counters.nr_tables)
			tables += n;
		return tables * (phys::frame_size + sizeof(phys::page));
	}

private:
	void map_range(uint64_t start, uint64_t end)
	{
		auto r = space_->mmap(start, end - start, user::prot_read | user::prot_write,
				      user::map_shared | user::map_pfnmap | user::map_fixed_noreplace);
		if (!r)
			throw_failure("mmap of the mapped range", r.error());
	}

	struct cursor_slot {
		bool enabled = false;
		const mm::mm_struct<G> *mm = nullptr;
		std::optional<mm::walk_cursor<G>> cursor;
	};

	static cursor_slot &thread_cursor()
	{
		static thread_local cursor_slot slot;
		return slot;
	}

	std::unique_ptr<user::user_space<G>> space_;
};

// Calls the structure's thread hooks where it has them (libcds).
template <class Map>
class thread_scope {
public:
	thread_scope()
	{
		if constexpr (requires { Map::attach_thread(); })
			Map::attach_thread();
	}

	~thread_scope()
	{
		if constexpr (requires { Map::detach_thread(); })
			Map::detach_thread();
	}

	thread_scope(const thread_scope &) = delete;
	thread_scope &operator=(const thread_scope &) = delete;
};

template <class Map>
uint64_t outside_heap_bytes(const Map &map)
{
	if constexpr (requires { map.outside_heap_bytes(); })
		return map.outside_heap_bytes();
	else
		return 0;
}

[[noreturn]] void throw_wrong_frame(const std::string &name, uint64_t vpn, uint64_t found, uint64_t expected)
{
	throw std::runtime_error(fmt::format("{}: lookup of page {:#x} returned frame {:#x}, expected {:#x}", name,
					     vpn, found, expected));
}

// One structure's run: the timed operations in order, each on `threads`
// threads over disjoint slices, and the memory after the inserts.
template <class Map>
class cycle {
public:
	cycle(const std::string &name, const layout &l, unsigned threads) : name_(name), l_(l), threads_(threads) {}

	template <class Make>
	cycle_sample run(Make &&make, cycle_ops ops)
	{
		cycle_sample sample;

		const int64_t heap_before = static_cast<int64_t>(heap_bytes_in_use());
		std::unique_ptr<Map> map = make();

		sample.seconds[0] = timed([&](unsigned t) { insert_slice(*map, t); });
		const int64_t heap_growth = static_cast<int64_t>(heap_bytes_in_use()) - heap_before;
		sample.bytes_per_page = double(heap_growth + int64_t(outside_heap_bytes(*map))) / double(l_.size());

		if (ops == cycle_ops::all)
			sample.seconds[1] = timed([&](unsigned t) { lookup_slice(*map, l_.by_address, t); });
		sample.seconds[2] = timed([&](unsigned t) { lookup_slice(*map, l_.by_random, t); });
		if (ops == cycle_ops::all)
			sample.seconds[3] = timed([&](unsigned t) { chase_slice(*map, t); });
		sample.seconds[4] = timed([&](unsigned t) { remove_slice(*map, t); });

		check_removed(*map);
		map.reset();
		sample.cpu_percent = thread_seconds_ > 0 ? 100.0 * cpu_seconds_ / thread_seconds_ : 0;
		return sample;
	}

private:
	template <class Body>
	double timed(Body &&body)
	{
		const run_timing timing = run_threads(threads_, [&](unsigned t) {
			thread_scope<Map> scope;
			body(t);
		});
		cpu_seconds_ += timing.cpu_seconds;
		thread_seconds_ += timing.seconds * threads_;
		return timing.seconds;
	}

	uint64_t first(unsigned t) const { return slice_begin(l_.size(), t, threads_); }
	uint64_t last(unsigned t) const { return slice_end(l_.size(), t, threads_); }

	void insert_slice(Map &map, unsigned t)
	{
		for (uint64_t k = first(t); k < last(t); k++) {
			const mapping m = l_.by_insert[k];
			if (!map.insert(m.vpn, m.pfn))
				throw std::runtime_error(fmt::format("{}: insert of page {:#x} failed", name_, m.vpn));
		}
	}

	// Looks up the thread's slice of the mappings in their order.
	void lookup_slice(Map &map, const std::vector<mapping> &mappings, unsigned t)
	{
		for (uint64_t k = first(t); k < last(t); k++) {
			const mapping m = mappings[k];
			const uint64_t found = map.lookup(m.vpn);
			if (found != m.pfn) [[unlikely]]
				throw_wrong_frame(name_, m.vpn, found, m.pfn);
		}
	}

	// Each lookup's page is the frame that the previous lookup found, so
	// no two lookups overlap in time, and the chase reads no other memory.
	void chase_slice(Map &map, unsigned t)
	{
		const auto [start, expected_end] = l_.chases.at(threads_)[t];
		uint64_t vpn = start;

		for (uint64_t k = first(t); k < last(t); k++) {
			const uint64_t found = map.lookup(vpn);
			if (found == no_frame) [[unlikely]]
				throw std::runtime_error(fmt::format("{}: the chase found no frame at page {:#x}", name_, vpn));
			vpn = found;
		}

		if (vpn != expected_end)
			throw std::runtime_error(fmt::format("{}: the chase from page {:#x} ended at page {:#x}, expected "
							     "{:#x}",
							     name_, start, vpn, expected_end));
	}

	void remove_slice(Map &map, unsigned t)
	{
		for (uint64_t k = first(t); k < last(t); k++) {
			const uint64_t vpn = l_.by_insert[k].vpn;
			if (!map.remove(vpn))
				throw std::runtime_error(fmt::format("{}: removal of page {:#x} failed", name_, vpn));
		}
	}

	// Looks up a sample of the removed pages, which must all be gone.
	void check_removed(Map &map)
	{
		thread_scope<Map> scope;
		const uint64_t step = std::max<uint64_t>(1, l_.size() / 64);

		for (uint64_t i = 0; i < l_.size(); i += step) {
			const uint64_t found = map.lookup(l_.vpns[i]);
			if (found != no_frame)
				throw_wrong_frame(name_ + " after removal", l_.vpns[i], found, no_frame);
		}
	}

	const std::string &name_;
	const layout &l_;
	const unsigned threads_;
	double cpu_seconds_ = 0;
	double thread_seconds_ = 0;
};

template <class Map>
structure make_peer(std::string name)
{
	structure s{name, false, {}};
	s.run = [name](const layout &l, unsigned threads, cycle_ops ops) {
		return cycle<Map>(name, l, threads).run([] { return std::make_unique<Map>(); }, ops);
	};
	return s;
}

structure make_ptl(mm::lock_mode mode, phys::frame_pool &pool)
{
	const std::string name = fmt::format("ptl-{}", mm::lock_mode_name(mode));
	structure s{name, true, {}};

	s.run = [name, mode, &pool](const layout &l, unsigned threads, cycle_ops ops) {
		// Untimed: take frames in ascending order, as every run does.
		reset_frame_order(pool);
		return cycle<ptl_map>(name, l, threads).run([&] { return std::make_unique<ptl_map>(pool, mode, l); }, ops);
	};
	return s;
}

} // namespace

void configure_heap()
{
	// Without mmap for large blocks and without trimming, freed memory
	// stays in the heap and the next run reuses it without page faults.
	mallopt(M_MMAP_MAX, 0);
	mallopt(M_TRIM_THRESHOLD, INT_MAX);
}

uint64_t heap_bytes_in_use()
{
	const struct mallinfo2 info = mallinfo2();
	return info.uordblks + info.hblkhd;
}

std::vector<structure> make_structures(const peers_options &options, phys::frame_pool &pool)
{
	std::vector<structure> structures;

	for (peer_kind peer : options.peers) {
		switch (peer) {
		case peer_kind::std_map:
			structures.push_back(make_peer<std_map>(std::string(peer_name(peer))));
			break;
		case peer_kind::absl_map:
			structures.push_back(make_peer<absl_map>(std::string(peer_name(peer))));
			break;
		case peer_kind::tbb_map:
			structures.push_back(make_peer<tbb_map>(std::string(peer_name(peer))));
			break;
		case peer_kind::cds_map:
			cds_runtime::start(options.threads.back());
			structures.push_back(make_peer<cds_map>(std::string(peer_name(peer))));
			break;
		case peer_kind::judy:
			structures.push_back(make_peer<judy_map>(std::string(peer_name(peer))));
			break;
		}
	}

	if (options.run_ptl) {
		for (mm::lock_mode mode : options.modes)
			structures.push_back(make_ptl(mode, pool));
	}
	return structures;
}

} // namespace ptl::bench::peers
