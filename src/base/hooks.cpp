#include <ptl/base/hooks.hpp>

#include <atomic>
#include <stdexcept>

namespace ptl::hooks {

namespace {
std::atomic<const handler *> installed{nullptr};
}

std::string_view point_name(point p)
{
	switch (p) {
	case point::populate_after_alloc:
		return "populate_after_alloc";
	case point::populate_locked:
		return "populate_locked";
	case point::fault_locked:
		return "fault_locked";
	case point::populate_before_publish:
		return "populate_before_publish";
	case point::populate_published:
		return "populate_published";
	case point::populate_free_loser:
		return "populate_free_loser";
	case point::pte_before_install:
		return "pte_before_install";
	case point::zap_before_clear:
		return "zap_before_clear";
	case point::zap_before_free:
		return "zap_before_free";
	case point::vmap_before_set:
		return "vmap_before_set";
	case point::vunmap_before_clear:
		return "vunmap_before_clear";
	case point::wp_copy_unlocked:
		return "wp_copy_unlocked";
	case point::tables_before_grace:
		return "tables_before_grace";
	case point::lock_spin:
		return "lock_spin";
	}
	return "unknown";
}

scoped_handler::scoped_handler(handler h) : h_(std::move(h))
{
	const handler *expected = nullptr;
	if (!installed.compare_exchange_strong(expected, &h_, std::memory_order_acq_rel))
		throw std::logic_error("a test hook handler is already installed");
}

scoped_handler::~scoped_handler()
{
	installed.store(nullptr, std::memory_order_release);
}

void fire(const event &e)
{
	const handler *h = installed.load(std::memory_order_acquire);
	if (h)
		(*h)(e);
}

} // namespace ptl::hooks
