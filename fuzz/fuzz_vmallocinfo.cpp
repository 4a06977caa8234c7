// libFuzzer target: parse_vmallocinfo on arbitrary text, checking the
// invariants it promises for the areas it accepts.

#include <ptl/tools/proc.hpp>
#include <ptl/tools/vmallocinfo.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const std::string_view text(reinterpret_cast<const char *>(data), size);

	try {
		const auto info = ptl::tools::parse_vmallocinfo(text, "fuzz/vmallocinfo");
		for (const auto &area : info.areas) {
			if (area.size == 0 || area.size % ptl::tools::page_bytes != 0)
				__builtin_trap();
			if (area.pages && *area.pages > area.size / ptl::tools::page_bytes)
				__builtin_trap();
			if (info.addresses_visible && area.end - area.start != area.size)
				__builtin_trap();
		}
	} catch (const ptl::tools::input_error &) {
	}
	return 0;
}
