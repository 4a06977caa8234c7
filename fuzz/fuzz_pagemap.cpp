// libFuzzer target: pagemap_reader on a file of arbitrary bytes. The first
// 16 bytes choose the address and the number of entries to read. The rest is
// the file, kept in a memfd so that each run does no disk I/O.

#include <ptl/tools/proc.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

namespace {

// Bounds the entries read per input so that one run stays fast.
constexpr uint64_t max_entries = 1 << 16;

uint64_t load(const uint8_t *data)
{
	uint64_t value = 0;
	std::memcpy(&value, data, sizeof(value));
	return value;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 16)
		return 0;

	const uint64_t vaddr = load(data);
	const uint64_t entries = load(data + 8) % max_entries;
	const int fd = memfd_create("ptl-fuzz-pagemap", MFD_CLOEXEC);
	if (fd < 0)
		return 0;
	if (write(fd, data + 16, size - 16) != static_cast<ssize_t>(size - 16)) {
		close(fd);
		return 0;
	}

	try {
		ptl::tools::pagemap_reader reader("/proc/self/fd/" + std::to_string(fd));
		std::vector<ptl::tools::pagemap_entry> out(entries);
		reader.read(vaddr, out);
		for (const auto &entry : out) {
			if (!entry.present && entry.pfn != 0)
				__builtin_trap();
		}
	} catch (const ptl::tools::input_error &) {
	}
	close(fd);
	return 0;
}
