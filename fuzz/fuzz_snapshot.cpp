// libFuzzer target: decode_snapshot on arbitrary bytes.
//
// Random bytes almost never carry a valid CRC-32, so inputs whose first
// byte is even are framed first: the target rewrites the body length and
// the checksum so that the fuzzer reaches the body decoder. Odd inputs are
// decoded as they are, which covers the header and checksum checks.

#include <ptl/tools/snapshot.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace {

constexpr size_t header_bytes = 20;
constexpr size_t checksum_bytes = 4;

// Small limits keep each run fast; the checks are the same as with the
// defaults.
constexpr ptl::tools::snapshot_limits limits{1 << 20, 1 << 20};

void store(std::vector<uint8_t> &bytes, size_t offset, uint64_t value, size_t width)
{
	for (size_t i = 0; i < width; i++)
		bytes[offset + i] = static_cast<uint8_t>(value >> (8 * i));
}

// Makes bytes a well-framed snapshot around whatever body it holds.
void frame(std::vector<uint8_t> &bytes)
{
	if (bytes.size() < header_bytes + checksum_bytes)
		return;

	const uint64_t body_bytes = bytes.size() - header_bytes - checksum_bytes;
	for (size_t i = 0; i < sizeof(ptl::tools::snapshot_magic); i++)
		bytes[i] = static_cast<uint8_t>(ptl::tools::snapshot_magic[i]);
	store(bytes, 8, ptl::tools::snapshot_version, 4);
	store(bytes, 12, body_bytes, 8);
	const size_t checksum_at = bytes.size() - checksum_bytes;
	store(bytes, checksum_at, ptl::tools::detail::crc32(std::span(bytes).first(checksum_at)), 4);
}

void check_image(const ptl::tools::snapshot &snap)
{
	const auto &image = snap.image;
	for (size_t i = 1; i < image.pages.size(); i++) {
		if (image.pages[i].addr <= image.pages[i - 1].addr)
			__builtin_trap();
	}
	for (size_t i = 1; i < image.vmas.size(); i++) {
		if (image.vmas[i].start < image.vmas[i - 1].end)
			__builtin_trap();
	}
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	std::vector<uint8_t> bytes(data, data + size);
	if (!bytes.empty() && bytes[0] % 2 == 0)
		frame(bytes);

	try {
		const auto snap = ptl::tools::decode_snapshot(bytes, "fuzz/snapshot", limits);
		check_image(snap);

		// A decoded snapshot must encode again and decode to the same pages.
		const auto again = ptl::tools::decode_snapshot(ptl::tools::encode_snapshot(snap), "fuzz/again", limits);
		if (again.image.pages.size() != snap.image.pages.size() || again.image.vmas.size() != snap.image.vmas.size())
			__builtin_trap();
	} catch (const ptl::tools::input_error &) {
	}
	return 0;
}
