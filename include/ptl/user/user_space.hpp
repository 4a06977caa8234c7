#pragma once
// A user address space: the page tables (an mm_struct of kind user), the
// VMAs that define what may be mapped where, and the operations a process
// performs on them: mmap, munmap, page faults and vmf_insert_pfn.
//
// Locking:
//   mmap_lock   std::shared_mutex, taken first. Faults and insert_pfn take
//               it shared, so they run in parallel. mmap, munmap and the
//               destructor take it exclusively, so the VMAs never change
//               under a fault.
//   PTE lock    from pte_alloc_map_lock / pte_offset_map_lock, taken under
//               the mmap_lock. Every PTE of this space is installed and
//               cleared under it. In the push-down lock mode it is the mm's
//               page_table_lock, which table population also takes, but
//               only briefly and never while the PTE lock is held.

#include <ptl/mm/free_pgtables.hpp>
#include <ptl/mm/mm.hpp>
#include <ptl/mm/walk.hpp>
#include <ptl/sync/sharded_counter.hpp>
#include <ptl/user/fault.hpp>
#include <ptl/user/fork.hpp>
#include <ptl/user/mprotect.hpp>
#include <ptl/user/vma.hpp>
#include <ptl/user/vma_set.hpp>
#include <ptl/user/zap.hpp>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <vector>

namespace ptl::user {

// mmap protection bits, as PROT_READ, PROT_WRITE and PROT_EXEC.
enum mmap_prot : unsigned {
	prot_none = 0,
	prot_read = 1u << 0,
	prot_write = 1u << 1,
	prot_exec = 1u << 2,
};

// mmap flags. The first five have Linux's MAP_* values.
enum mmap_flags : unsigned {
	map_shared = 0x01,
	map_private = 0x02,
	// Map exactly at addr, replacing whatever the range held (the old
	// pages are zapped first), as MAP_FIXED does.
	map_fixed = 0x10,
	map_anonymous = 0x20,
	// Map exactly at addr, but fail with errc::exists when the range
	// overlaps a VMA, as MAP_FIXED_NOREPLACE does.
	map_fixed_noreplace = 0x100000,
	// ptl's own flag. The area maps frames that the pool does not own,
	// given by mmap's pfn_base or inserted later with insert_pfn, as a
	// device driver's mmap handler would set up.
	map_pfnmap = 0x40000000,
	// ptl's own flag. An anonymous private area that maps each aligned
	// pmd-sized block it wholly contains with one huge pmd leaf, as
	// madvise(MADV_HUGEPAGE) requests of transparent huge pages. Blocks the
	// pool cannot supply contiguously, and the ragged ends, get small
	// pages.
	map_huge = 0x20000000,
};

// Lowest address mmap hands out or accepts with map_fixed, as Linux's
// default vm.mmap_min_addr (64 KiB).
inline constexpr uint64_t mmap_min_addr = 0x10000;

// Snapshot of a user address space's statistics.
struct user_counters {
	uint64_t faults = 0;                // faults that passed the VMA checks
	uint64_t faults_already_mapped = 0; // of those, faults that found the PTE installed
	uint64_t pages_mapped = 0;          // PTEs installed now, anonymous and PFN-mapped
	uint64_t anon_pages = 0;            // anonymous pages mapped now, one data frame each
	uint64_t wp_copies = 0;             // write faults that copied a frame other PTEs share
	uint64_t wp_reuses = 0;             // write faults that made a write-protected PTE writable
};

template <class G>
class user_space {
public:
	using format = typename G::format;

	// Creates an empty address space. Fails with no_memory when the pool
	// cannot supply the pgd.
	static result<std::unique_ptr<user_space>> create(phys::frame_pool &pool,
							   mm::lock_mode mode = mm::lock_mode::pushdown,
							   bool split_pmd = false)
	{
		auto mm = mm::mm_struct<G>::create(pool, mm::mm_kind::user, mode, split_pmd);
		if (!mm)
			return fail(mm.error());
		return std::unique_ptr<user_space>(new user_space(std::move(*mm)));
	}

	// Exit (exit_mmap): zaps every VMA, freeing its anonymous frames, and
	// frees every table below the pgd; the mm then frees the pgd. The
	// pool ends where it was before create().
	~user_space()
	{
		std::unique_lock lock(mmap_lock_);
		// Both ends are aligned at every level, so no huge leaf needs
		// a split and this cannot fail.
		(void)unmap_range(0, G::task_size);
	}

	user_space(const user_space &) = delete;
	user_space &operator=(const user_space &) = delete;

	mm::mm_struct<G> &mm() { return *mm_; }
	const mm::mm_struct<G> &mm() const { return *mm_; }

	// Creates a VMA of len bytes (rounded up to whole pages) and returns its
	// start. prot is a set of mmap_prot bits. flags needs exactly one of
	// map_shared and map_private, exactly one of map_anonymous and
	// map_pfnmap, and at most one of map_fixed and map_fixed_noreplace.
	// Without either, a nonzero addr is a hint that is used when the range
	// there is free, and otherwise the highest free range below task_size
	// is taken. pfn_base makes a map_pfnmap area linear: page i maps frame
	// pfn_base + i.
	//
	// Fails with invalid_argument for a zero or too large len, an
	// unaligned addr (hints included), unknown or conflicting prot or
	// flags, or a fixed range outside [mmap_min_addr, task_size). A
	// pfn_base without map_pfnmap, or one whose last frame exceeds the
	// entry format's maximum, is invalid too. Fails with exists when a
	// map_fixed_noreplace range overlaps a VMA, and with no_space when no
	// free range is large enough.
	result<uint64_t> mmap(uint64_t addr, uint64_t len, unsigned prot, unsigned flags,
			      std::optional<pfn_t> pfn_base = std::nullopt)
	{
		auto valid = validate_mmap(addr, len, prot, flags, pfn_base);
		if (!valid)
			return fail(valid.error());
		len = page_align(len);

		std::unique_lock lock(mmap_lock_);

		auto start = place_mapping(addr, len, flags);
		if (!start)
			return fail(start.error());

		if (flags & map_fixed) {
			auto unmapped = unmap_range(*start, *start + len);
			if (!unmapped)
				return fail(unmapped.error());
		}

		vmas_.insert(make_vma(*start, len, prot, flags, pfn_base));
		return *start;
	}

	// Removes the VMAs in [addr, addr + len), splitting those that cross
	// either end, and zaps their pages. len is rounded up to whole pages,
	// and a range with no VMA in it is not an error. Fails with
	// invalid_argument for an unaligned addr, a zero len, or a range that
	// ends above task_size, and with no_memory, changing nothing, when a
	// huge leaf that crosses an end cannot get the table to split into.
	result<void> munmap(uint64_t addr, uint64_t len)
	{
		if (len == 0 || len > G::task_size || !page_aligned(addr))
			return fail(errc::invalid_argument);
		len = page_align(len);
		if (addr > G::task_size - len)
			return fail(errc::invalid_argument);

		std::unique_lock lock(mmap_lock_);
		return unmap_range(addr, addr + len);
	}

	// Handles a fault at addr (any byte of the page): maps a zeroed data
	// frame in an anonymous VMA, or the frame a linear PFN-mapped VMA has
	// there. A page that is already mapped gets its accessed bit, and its
	// dirty bit on a write, and is otherwise left alone.
	//
	// Fails with not_found when no VMA contains addr, or when a PFN-mapped
	// VMA without pfn_base has nothing mapped there. Fails with
	// access_fault when the VMA's flags forbid the access, and with
	// no_memory when the pool cannot supply a table or the data frame.
	// No lock is held after an error.
	result<void> handle_mm_fault(uint64_t addr, access_type a)
	{
		std::shared_lock lock(mmap_lock_);

		const vm_area *vma = vmas_.lookup(addr);
		if (!vma)
			return fail(errc::not_found);
		if (!access_permitted(*vma, a))
			return fail(errc::access_fault);

		faults_.add(1);
		auto outcome = handle_pte_fault(*mm_, *vma, addr & ~(arch::page_size - 1), a);
		if (!outcome)
			return fail(outcome.error());

		account(*outcome);
		return {};
	}

	// Maps pfn at the page-aligned addr of a PFN-mapped VMA with the VMA's
	// protection (vmf_insert_pfn). Safe to call from many threads at once.
	// Inserting the frame that is already mapped there succeeds.
	//
	// Fails with invalid_argument for an unaligned addr, a pfn above the
	// entry format's maximum, or an anonymous VMA. Fails with not_found
	// when no VMA contains addr, with exists when a different frame is
	// mapped at addr, and with no_memory when the pool cannot supply a
	// table.
	result<void> insert_pfn(uint64_t addr, pfn_t pfn)
	{
		if (!page_aligned(addr) || pfn > format::max_pfn)
			return fail(errc::invalid_argument);

		std::shared_lock lock(mmap_lock_);

		const vm_area *vma = vmas_.lookup(addr);
		if (!vma)
			return fail(errc::not_found);
		if (!vma->is_pfnmap())
			return fail(errc::invalid_argument);

		auto outcome = user::insert_pfn(*mm_, *vma, addr, pfn);
		if (!outcome)
			return fail(outcome.error());

		if (*outcome == fault_outcome::mapped_pfn)
			account(*outcome);
		return {};
	}

	// Sets the protection of the pages in [addr, addr + len) to prot, a set
	// of mmap_prot bits, as mprotect does. VMAs that cross either end are
	// split there, and the PTEs already installed change in place. len is
	// rounded up to whole pages, and a zero len changes nothing. A private
	// anonymous page whose frame another PTE still maps (after fork) stays
	// write-protected until its first write copies it.
	//
	// Fails with invalid_argument for an unaligned addr, unknown prot bits
	// or a range that ends above task_size, and with not_found when part
	// of the range has no VMA (Linux's ENOMEM). Nothing changes then. A
	// huge leaf that crosses an end of the range, or any huge leaf in it
	// for prot_none, is split first. When a split cannot get a table, it
	// fails with no_memory, and only the leaves split until then changed
	// (into PTEs that map the same frames).
	//
	// NOTE: VMAs have no VM_MAY* flags, so mprotect can grant any access,
	// also write to a shared PFN-mapped area that was mapped read-only.
	result<void> mprotect(uint64_t addr, uint64_t len, unsigned prot)
	{
		if ((prot & ~known_prot) || !page_aligned(addr) || len > G::task_size)
			return fail(errc::invalid_argument);
		if (len == 0)
			return {};
		len = page_align(len);
		if (addr > G::task_size - len)
			return fail(errc::invalid_argument);

		std::unique_lock lock(mmap_lock_);
		if (!vmas_.covers(addr, addr + len))
			return fail(errc::not_found);

		auto split = split_huge_leaves_at(addr, addr + len);
		// A huge leaf cannot be a non-present PROT_NONE entry on every
		// format (arm64 tells a block from a table by its valid bit).
		if (split && prot == prot_none)
			split = split_huge_range(*mm_, addr, addr + len);
		if (!split)
			return fail(split.error());

		mprotect_range(*mm_, vmas_, addr, addr + len, vm_prot_flags(prot));
		return {};
	}

	// Creates the child address space of a fork (dup_mmap): a new space on
	// the same pool and in the same lock mode, with a copy of every VMA and
	// of every installed PTE (see fork.hpp). Private anonymous pages become
	// copy-on-write in both spaces. The parent's mmap_lock is held
	// exclusively during the copy, so faults in the parent wait for it.
	//
	// Fails with no_memory when the pool cannot supply the child's tables.
	// The partial child is destroyed then, and the parent keeps its pages,
	// some of them write-protected until their next write fault.
	result<std::unique_ptr<user_space>> fork()
	{
		auto child = create(mm_->pool(), mm_->mode(), mm_->split_pmd());
		if (!child)
			return fail(child.error());

		auto copied = copy_into(**child);
		if (!copied)
			return fail(copied.error());
		return std::move(*child);
	}

	// Copies len bytes from src to user memory at addr, as a store by one
	// of the process's threads: each page is faulted in for writing first
	// when its PTE does not allow the store yet, which breaks copy-on-write
	// sharing. Holds the mmap_lock shared, so the store cannot interleave
	// with fork's write-protection or with munmap.
	//
	// Fails as handle_mm_fault does for the first page it cannot write,
	// and with invalid_argument for a range above task_size or a frame
	// outside the pool. The bytes before that page are written.
	result<void> copy_to_user(uint64_t addr, const void *src, uint64_t len)
	{
		const auto *from = static_cast<const std::byte *>(src);
		return access_user(addr, len, access_type::write, [&](std::byte *frame, uint64_t done, uint64_t n) {
			std::memcpy(frame, from + done, n);
		});
	}

	// Copies len bytes of user memory at addr to dst, as a load by one of
	// the process's threads: pages not mapped yet are faulted in for
	// reading. Fails as copy_to_user does.
	result<void> copy_from_user(void *dst, uint64_t addr, uint64_t len)
	{
		auto *to = static_cast<std::byte *>(dst);
		return access_user(addr, len, access_type::read, [&](std::byte *frame, uint64_t done, uint64_t n) {
			std::memcpy(to + done, frame, n);
		});
	}

	// A copy of the VMA that contains addr (vma_lookup), or nothing.
	std::optional<vm_area> vma_lookup(uint64_t addr) const
	{
		std::shared_lock lock(mmap_lock_);
		return copy_of(vmas_.lookup(addr));
	}

	// A copy of the first VMA that ends above addr (find_vma), or nothing.
	std::optional<vm_area> find_vma(uint64_t addr) const
	{
		std::shared_lock lock(mmap_lock_);
		return copy_of(vmas_.find(addr));
	}

	// A copy of every VMA in address order.
	std::vector<vm_area> vmas() const
	{
		std::shared_lock lock(mmap_lock_);
		std::vector<vm_area> copy;

		copy.reserve(vmas_.size());
		for (const auto &entry : vmas_)
			copy.push_back(entry.second);
		return copy;
	}

	user_counters counters() const
	{
		user_counters c;
		c.faults = static_cast<uint64_t>(faults_.read());
		c.faults_already_mapped = static_cast<uint64_t>(faults_already_mapped_.read());
		c.pages_mapped = static_cast<uint64_t>(pages_mapped_.read());
		c.anon_pages = static_cast<uint64_t>(anon_pages_.read());
		c.wp_copies = static_cast<uint64_t>(wp_copies_.read());
		c.wp_reuses = static_cast<uint64_t>(wp_reuses_.read());
		return c;
	}

private:
	explicit user_space(std::unique_ptr<mm::mm_struct<G>> mm) : mm_(std::move(mm)) {}

	static constexpr unsigned known_prot = prot_read | prot_write | prot_exec;
	static constexpr unsigned known_flags =
		map_shared | map_private | map_fixed | map_anonymous | map_fixed_noreplace | map_pfnmap | map_huge;

	static bool page_aligned(uint64_t addr) { return (addr & (arch::page_size - 1)) == 0; }

	// Rounds up to whole pages. The caller has checked len <= task_size,
	// so the sum cannot wrap.
	static uint64_t page_align(uint64_t len) { return (len + arch::page_size - 1) & ~(arch::page_size - 1); }

	static bool exactly_one(unsigned flags, unsigned a, unsigned b) { return ((flags & a) != 0) != ((flags & b) != 0); }

	static result<void> validate_mmap_flags(unsigned prot, unsigned flags)
	{
		if ((prot & ~known_prot) || (flags & ~known_flags))
			return fail(errc::invalid_argument);
		if (!exactly_one(flags, map_shared, map_private))
			return fail(errc::invalid_argument);
		if (!exactly_one(flags, map_anonymous, map_pfnmap))
			return fail(errc::invalid_argument);
		if ((flags & map_fixed) && (flags & map_fixed_noreplace))
			return fail(errc::invalid_argument);
		if ((flags & map_huge) && (!(flags & map_anonymous) || !(flags & map_private)))
			return fail(errc::invalid_argument);
		return {};
	}

	// A linear area's frames must all fit the entry format, and only a
	// PFN-mapped area has frames of its own.
	static result<void> validate_pfn_base(uint64_t len, unsigned flags, std::optional<pfn_t> pfn_base)
	{
		if (!pfn_base)
			return {};
		if (!(flags & map_pfnmap))
			return fail(errc::invalid_argument);

		const uint64_t last_page = (len - 1) >> arch::page_shift;
		if (*pfn_base > format::max_pfn || last_page > format::max_pfn - *pfn_base)
			return fail(errc::invalid_argument);
		return {};
	}

	static result<void> validate_mmap(uint64_t addr, uint64_t len, unsigned prot, unsigned flags,
					  std::optional<pfn_t> pfn_base)
	{
		if (len == 0 || len > G::task_size || !page_aligned(addr))
			return fail(errc::invalid_argument);

		auto valid_flags = validate_mmap_flags(prot, flags);
		if (!valid_flags)
			return valid_flags;

		if (flags & (map_fixed | map_fixed_noreplace)) {
			if (addr < mmap_min_addr || addr > G::task_size - page_align(len))
				return fail(errc::invalid_argument);
		}
		return validate_pfn_base(len, flags, pfn_base);
	}

	bool range_is_free(uint64_t addr, uint64_t len) const
	{
		return addr >= mmap_min_addr && addr <= G::task_size - len && !vmas_.overlaps(addr, addr + len);
	}

	// Chooses the start of a new VMA (get_unmapped_area). Called with the
	// mmap_lock held exclusively.
	result<uint64_t> place_mapping(uint64_t addr, uint64_t len, unsigned flags) const
	{
		if (flags & map_fixed)
			return addr;
		if (flags & map_fixed_noreplace) {
			if (vmas_.overlaps(addr, addr + len))
				return fail(errc::exists);
			return addr;
		}

		if (addr != 0 && range_is_free(addr, len))
			return addr;

		auto start = vmas_.find_free_range(len, mmap_min_addr, G::task_size);
		if (!start)
			return fail(errc::no_space);
		return *start;
	}

	// The vm_flags of a set of mmap_prot bits.
	static uint32_t vm_prot_flags(unsigned prot)
	{
		uint32_t flags = vm_none;

		if (prot & prot_read)
			flags |= vm_read;
		if (prot & prot_write)
			flags |= vm_write;
		if (prot & prot_exec)
			flags |= vm_exec;
		return flags;
	}

	static vm_area make_vma(uint64_t start, uint64_t len, unsigned prot, unsigned flags, std::optional<pfn_t> pfn_base)
	{
		vm_area vma;
		vma.start = start;
		vma.end = start + len;

		vma.flags |= vm_prot_flags(prot);
		if (flags & map_shared)
			vma.flags |= vm_shared;
		if (flags & map_pfnmap)
			vma.flags |= vm_pfnmap;
		if (flags & map_huge)
			vma.flags |= vm_hugepage;

		vma.pfn_base = pfn_base;
		return vma;
	}

	// Removes the VMAs of [start, end), zaps their pages and frees the
	// tables that leaves empty. Called with the mmap_lock held exclusively.
	result<void> unmap_range(uint64_t start, uint64_t end)
	{
		auto split = split_huge_leaves_at(start, end);
		if (!split)
			return split;

		vmas_.split_at(start);
		vmas_.split_at(end);

		const std::vector<vm_area> removed = vmas_.remove_range(start, end);
		if (removed.empty())
			return {};

		for (const vm_area &vma : removed)
			account_zap(zap_page_range(*mm_, vma, vma.start, vma.end));
		free_pgtables(removed.front().start, removed.back().end);
		return {};
	}

	// Splits the huge leaves that cross start or end, so that a change of
	// [start, end) leaves the rest of each leaf mapped (split_huge_pmd at
	// the VMA boundaries, as __split_vma does). Called with the mmap_lock
	// held exclusively.
	// Fails with no_memory, changing nothing, when a split cannot get a
	// table.
	result<void> split_huge_leaves_at(uint64_t start, uint64_t end)
	{
		mm::walk_guard<G> walk(*mm_);

		auto r = split_huge_pmd_address(*mm_, start);
		if (r)
			r = split_huge_pmd_address(*mm_, end);
		return r;
	}

	// Frees the tables below [start, end) that map nothing now, keeping
	// those that also cover a VMA below or above (free_pgtables). The
	// exclusive mmap_lock keeps faults, and so populates, out of the
	// bounds meanwhile.
	void free_pgtables(uint64_t start, uint64_t end)
	{
		const uint64_t floor = vmas_.end_below(start);
		const uint64_t ceiling = vmas_.start_above(end);
		mm::table_batch batch;

		{
			mm::walk_guard<G> walk(*mm_);
			mm::free_pgd_range(*mm_, start, end, floor, ceiling, batch);
		}

		// After every page-table lock is dropped: waits for the
		// lockless walkers, then frees.
		mm::free_table_batch(*mm_, batch);
	}

	void account(fault_outcome outcome)
	{
		switch (outcome) {
		case fault_outcome::mapped_anon:
			anon_pages_.add(1);
			pages_mapped_.add(1);
			break;
		case fault_outcome::mapped_huge:
			anon_pages_.add(huge_pmd_pages<G>());
			pages_mapped_.add(huge_pmd_pages<G>());
			break;
		case fault_outcome::mapped_pfn:
			pages_mapped_.add(1);
			break;
		case fault_outcome::already_mapped:
			faults_already_mapped_.add(1);
			break;
		case fault_outcome::wp_copied:
			wp_copies_.add(1);
			break;
		case fault_outcome::wp_reused:
			wp_reuses_.add(1);
			break;
		}
	}

	// Copies every VMA and its PTEs into child (dup_mmap). The parent's
	// mmap_lock is taken first; the child's cannot be contended, because
	// no other thread can reach the child yet.
	result<void> copy_into(user_space &child)
	{
		std::unique_lock lock(mmap_lock_);
		std::unique_lock child_lock(child.mmap_lock_);

		for (const auto &entry : vmas_) {
			const vm_area &vma = entry.second;
			copy_counts counts;

			// The VMA goes in first, so that the child's teardown zaps
			// what a failed copy left behind.
			child.vmas_.insert(vma);
			auto copied = copy_page_range(*child.mm_, *mm_, vma, counts);
			child.account_copy(counts);
			if (!copied)
				return copied;
		}
		return {};
	}

	void account_copy(const copy_counts &counts)
	{
		pages_mapped_.add(static_cast<int64_t>(counts.pages));
		anon_pages_.add(static_cast<int64_t>(counts.anon_pages));
	}

	// Whether the PTE entry lets a user access of kind a go ahead without
	// a fault: present, accessed, and writable and dirty for a write.
	static bool access_allowed_by(uint64_t prot, access_type a)
	{
		if (!(prot & arch::prot_present) || !(prot & arch::prot_accessed))
			return false;
		if (a == access_type::write)
			return (prot & arch::prot_write) && (prot & arch::prot_dirty);
		return true;
	}

	// The frame that user page addr maps for an access of kind a, faulting
	// it in first when its PTE does not allow the access. Called with the
	// mmap_lock held shared.
	result<pfn_t> fault_in_page(uint64_t addr, access_type a)
	{
		const vm_area *vma = vmas_.lookup(addr);
		if (!vma)
			return fail(errc::not_found);
		if (!access_permitted(*vma, a))
			return fail(errc::access_fault);

		// A successful fault leaves the PTE as the access needs it, and
		// only a caller of the exclusive mmap_lock can take that away.
		// The second try is for a lockless fault that lost its race.
		for (int attempt = 0; attempt < 3; attempt++) {
			const auto t = mm::translate(*mm_, addr);
			if (t && access_allowed_by(t->prot, a))
				return t->pfn;

			faults_.add(1);
			auto outcome = handle_pte_fault(*mm_, *vma, addr, a);
			if (!outcome)
				return fail(outcome.error());
			account(*outcome);
		}
		return fail(errc::busy);
	}

	// Runs copy(frame bytes, bytes done, n) over each page's part of
	// [addr, addr + len), holding the mmap_lock shared throughout.
	template <class Copy>
	result<void> access_user(uint64_t addr, uint64_t len, access_type a, Copy copy)
	{
		if (len > G::task_size || addr > G::task_size - len)
			return fail(errc::invalid_argument);

		std::shared_lock lock(mmap_lock_);
		uint64_t done = 0;

		while (done < len) {
			const uint64_t at = addr + done;
			const uint64_t offset = at & (arch::page_size - 1);
			const uint64_t n = std::min(len - done, arch::page_size - offset);

			auto pfn = fault_in_page(at - offset, a);
			if (!pfn)
				return fail(pfn.error());
			// A PFN-mapped frame may lie outside the pool, with no
			// memory behind it here.
			if (!mm_->pool().valid_pfn(*pfn))
				return fail(errc::invalid_argument);

			copy(static_cast<std::byte *>(mm_->pool().frame_address(*pfn)) + offset, done, n);
			done += n;
		}
		return {};
	}

	void account_zap(const zap_counts &counts)
	{
		pages_mapped_.add(-static_cast<int64_t>(counts.pages));
		anon_pages_.add(-static_cast<int64_t>(counts.anon_pages));
	}

	static std::optional<vm_area> copy_of(const vm_area *vma)
	{
		if (!vma)
			return std::nullopt;
		return *vma;
	}

	std::unique_ptr<mm::mm_struct<G>> mm_;
	mutable std::shared_mutex mmap_lock_;
	vma_set vmas_;

	sync::sharded_counter faults_;
	sync::sharded_counter faults_already_mapped_;
	sync::sharded_counter pages_mapped_;
	sync::sharded_counter anon_pages_;
	sync::sharded_counter wp_copies_;
	sync::sharded_counter wp_reuses_;
};

} // namespace ptl::user
