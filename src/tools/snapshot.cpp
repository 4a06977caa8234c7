// Taking a snapshot of a live process, and checking that a loaded one fits
// the geometry this ptl replays.

#include "ptl/tools/snapshot.hpp"

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fmt/format.h>
#include <sys/utsname.h>

namespace ptl::tools {

snapshot capture_snapshot(int pid, bool stop)
{
	snapshot snap;
	snap.image = read_process_image(pid, stop);
	check_user_address_space(pid, snap.image.status);
	snap.pid = pid;
	snap.time = static_cast<int64_t>(std::time(nullptr));

	struct utsname names {};
	if (::uname(&names) != 0)
		throw std::runtime_error(fmt::format("uname failed: {}", std::strerror(errno)));
	snap.kernel_release = names.release;
	snap.machine = names.machine;
	return snap;
}

void check_snapshot_fits(const snapshot &snap, std::string_view source)
{
	using G = arch::native;

	for (const vma_record &vma : snap.image.vmas) {
		if (vma.end > G::task_size)
			throw input_error(fmt::format("{}: VMA {:#x}-{:#x} ends above the {} user half ({:#x}), so this "
						      "build cannot replay it; build ptl with a larger PTL_ARCH",
						      source, vma.start, vma.end, G::name, G::task_size));
	}
}

} // namespace ptl::tools
