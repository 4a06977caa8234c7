// libFuzzer target: parse_maps on arbitrary text. Any exception other than
// input_error, and any sanitizer report, is a bug.

#include <ptl/tools/proc.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const std::string_view text(reinterpret_cast<const char *>(data), size);

	try {
		const auto vmas = ptl::tools::parse_maps(text, "fuzz/maps");
		for (const auto &vma : vmas) {
			if (vma.start >= vma.end || vma.start % ptl::tools::page_bytes != 0)
				__builtin_trap();
		}
	} catch (const ptl::tools::input_error &) {
	}
	return 0;
}
