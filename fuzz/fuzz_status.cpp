// libFuzzer target: parse_status and check_user_address_space on arbitrary
// text.

#include <ptl/tools/proc.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const std::string_view text(reinterpret_cast<const char *>(data), size);

	try {
		const auto status = ptl::tools::parse_status(text, "fuzz/status");
		ptl::tools::check_user_address_space(1, status);
	} catch (const ptl::tools::input_error &) {
	}
	return 0;
}
