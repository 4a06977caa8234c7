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
