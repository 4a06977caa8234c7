// Tests for snapshot files: the format, saving and loading, capture from a
// live process, replay of stored snapshots of real processes, and every
// class of bad input the loader rejects.

#include "ptl/tools/snapshot.hpp"

#include <ptl/mm/walk.hpp>
#include <ptl/user/user_space.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>
#include <thread>
#include <csignal>
#include <ctime>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <string>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <system_error>
#include <unistd.h>
#include <utility>
#include <vector>

namespace {

using namespace ptl::tools;
using G = ptl::arch::native;

template <class Function>
std::string input_error_message(Function &&function)
{
	try {
		function();
	} catch (const input_error &error) {
		return error.what();
	}
	ADD_FAILURE() << "expected input_error, but nothing was thrown";
	return {};
}

#define EXPECT_CONTAINS(haystack, needle) EXPECT_PRED_FORMAT2(testing::IsSubstring, needle, haystack)

// A temporary directory that is removed with its contents.
class temp_dir {
public:
	temp_dir()
	{
		std::string pattern = testing::TempDir() + "ptl_snapshot_XXXXXX";
		if (!mkdtemp(pattern.data()))
			throw std::system_error(errno, std::generic_category(), "mkdtemp failed");
		path_ = pattern;
	}
	~temp_dir() { std::filesystem::remove_all(path_); }

	std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }
	const std::string &path() const { return path_; }

private:
	std::string path_;
};

void write_file(const std::string &path, std::span<const uint8_t> bytes)
{
	std::ofstream out(path, std::ios::binary);
	out.write(reinterpret_cast<const char *>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

vma_record make_vma(uint64_t start, uint64_t end, std::string path = {})
{
	vma_record vma;
	vma.start = start;
	vma.end = end;
	vma.read = true;
	vma.write = true;
	vma.dev = "00:00";
	vma.path = std::move(path);
	return vma;
}

// A small image with the shapes the format has to handle: a file mapping,
// pages on contiguous and scattered frames, a gap, and a shared VMA.
snapshot make_snapshot()
{
	snapshot snap;
	snap.pid = 4242;
	snap.time = 1'700'000'000;
	snap.kernel_release = "6.1.0-18-amd64";
	snap.machine = "x86_64";

	vma_record text = make_vma(0x400000, 0x408000, "/usr/bin/demo tool");
	text.write = false;
	text.exec = true;
	text.offset = 0x2000;
	text.dev = "fd:01";
	text.inode = 1048602;
	vma_record heap = make_vma(0x1000000, 0x1010000, "[heap]");
	vma_record shared = make_vma(0x7f0000000000, 0x7f0000004000);
	shared.shared = true;
	shared.dev = "103:02";
	snap.image.vmas = {text, heap, shared};

	snap.image.pages = {
		{0x400000, 0x1000}, {0x401000, 0x1001}, {0x402000, 0x1002}, // one run
		{0x405000, 0x900},					    // a frame below the previous run
		{0x1000000, 0x5000}, {0x1001000, 0x7000},		    // adjacent pages, scattered frames
		{0x7f0000003000, 0x1fffff},
	};
	snap.image.pfns_visible = true;
	snap.image.status.name = "demo";
	snap.image.status.vm_pte_kib = 48;
	snap.image.status.vm_rss_kib = 1744;
	snap.image.swapped = 3;
	snap.image.vmas_skipped = 1;
	return snap;
}

void expect_same_image(const snapshot &a, const snapshot &b)
{
	EXPECT_EQ(a.pid, b.pid);
	EXPECT_EQ(a.time, b.time);
	EXPECT_EQ(a.kernel_release, b.kernel_release);
	EXPECT_EQ(a.machine, b.machine);
	EXPECT_EQ(a.page_size, b.page_size);
	EXPECT_EQ(a.image.status.name, b.image.status.name);
	EXPECT_EQ(a.image.status.vm_pte_kib, b.image.status.vm_pte_kib);
	EXPECT_EQ(a.image.status.vm_rss_kib, b.image.status.vm_rss_kib);
	EXPECT_EQ(a.image.status.vm_size_kib, b.image.status.vm_size_kib);
	EXPECT_EQ(a.image.pfns_visible, b.image.pfns_visible);
	EXPECT_EQ(a.image.swapped, b.image.swapped);
	EXPECT_EQ(a.image.vmas_skipped, b.image.vmas_skipped);

	ASSERT_EQ(a.image.vmas.size(), b.image.vmas.size());
	for (size_t i = 0; i < a.image.vmas.size(); i++) {
		SCOPED_TRACE("VMA " + std::to_string(i));
		const vma_record &x = a.image.vmas[i];
		const vma_record &y = b.image.vmas[i];
		EXPECT_EQ(x.start, y.start);
		EXPECT_EQ(x.end, y.end);
		EXPECT_EQ(x.read, y.read);
		EXPECT_EQ(x.write, y.write);
		EXPECT_EQ(x.exec, y.exec);
		EXPECT_EQ(x.shared, y.shared);
		EXPECT_EQ(x.offset, y.offset);
		EXPECT_EQ(x.dev, y.dev);
		EXPECT_EQ(x.inode, y.inode);
		EXPECT_EQ(x.path, y.path);
	}

	ASSERT_EQ(a.image.pages.size(), b.image.pages.size());
	for (size_t i = 0; i < a.image.pages.size(); i++) {
		ASSERT_EQ(a.image.pages[i].addr, b.image.pages[i].addr) << "page " << i;
		ASSERT_EQ(a.image.pages[i].pfn, b.image.pages[i].pfn) << "page " << i;
	}
}

// ---- hand-built files for the bad-input tests ----

// Builds a snapshot body field by field, so that a test can write exactly
// the malformed field it is about.
class body_builder {
public:
	body_builder &varint(uint64_t value)
	{
		while (value >= 0x80) {
			bytes_.push_back(static_cast<uint8_t>(value | 0x80));
			value >>= 7;
		}
		bytes_.push_back(static_cast<uint8_t>(value));
		return *this;
	}

	body_builder &raw(std::initializer_list<uint8_t> bytes)
	{
		bytes_.insert(bytes_.end(), bytes);
		return *this;
	}

	body_builder &string(std::string_view text)
	{
		varint(text.size());
		bytes_.insert(bytes_.end(), text.begin(), text.end());
		return *this;
	}

	// Appends valid metadata. Flags 1 means that the runs carry frame
	// numbers.
	body_builder &metadata(uint64_t flags = 1, std::string_view command = "demo")
	{
		varint(page_bytes).varint(flags).varint(42).varint(1'700'000'000);
		string(command).string("6.1.0").string("x86_64");
		return varint(0).varint(0).varint(0).varint(0).varint(0);
	}

	// Appends a read-write anonymous VMA that starts gap pages above the
	// previous one.
	body_builder &vma(uint64_t gap, uint64_t pages, std::string_view path = {})
	{
		varint(gap).varint(pages).varint(3).varint(0).varint(0).varint(0).varint(0);
		return string(path);
	}

	const std::vector<uint8_t> &bytes() const { return bytes_; }

private:
	std::vector<uint8_t> bytes_;
};

void put_le(std::vector<uint8_t> &out, uint64_t value, size_t bytes)
{
	for (size_t i = 0; i < bytes; i++)
		out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

// Wraps a body in a valid header and checksum.
std::vector<uint8_t> frame(const body_builder &body, uint64_t version = snapshot_version)
{
	std::vector<uint8_t> file(snapshot_magic, snapshot_magic + sizeof(snapshot_magic));
	put_le(file, version, 4);
	put_le(file, body.bytes().size(), 8);
	file.insert(file.end(), body.bytes().begin(), body.bytes().end());
	put_le(file, detail::crc32(file), 4);
	return file;
}

// Offset of the body in the file.
constexpr size_t body_offset = 20;

std::string decode_error(const std::vector<uint8_t> &bytes, const snapshot_limits &limits = {})
{
	return input_error_message([&] { decode_snapshot(bytes, "test.snap", limits); });
}

// Valid metadata and one VMA of 16 pages at page 0x10; a test appends the
// run section.
body_builder one_vma_body()
{
	body_builder body;
	body.metadata().varint(1).vma(0x10, 16);
	return body;
}

// ---- format ----

TEST(SnapshotCrc32, MatchesStandardCheckValue)
{
	const std::string check = "123456789";
	EXPECT_EQ(detail::crc32(std::span(reinterpret_cast<const uint8_t *>(check.data()), check.size())), 0xcbf43926u);
	EXPECT_EQ(detail::crc32({}), 0u);
}

TEST(SnapshotFormat, StartsWithMagicVersionAndLength)
{
	const std::vector<uint8_t> bytes = encode_snapshot(make_snapshot());
	ASSERT_GT(bytes.size(), 24u);

	EXPECT_EQ(std::memcmp(bytes.data(), "PTLSNAP\0", 8), 0);
	EXPECT_EQ(bytes[8], 1u);
	EXPECT_EQ(bytes[9] | bytes[10] | bytes[11], 0u);
	uint64_t body_bytes = 0;
	for (int i = 0; i < 8; i++)
		body_bytes |= uint64_t{bytes[12 + i]} << (8 * i);
	EXPECT_EQ(body_bytes, bytes.size() - 24);
}

TEST(SnapshotFormat, RoundTripsEveryField)
{
	const snapshot original = make_snapshot();
	const snapshot decoded = decode_snapshot(encode_snapshot(original), "test.snap");
	expect_same_image(original, decoded);
}

TEST(SnapshotFormat, RoundTripsPresenceOnly)
{
	snapshot original = make_snapshot();
	original.image.pfns_visible = false;
	for (auto &page : original.image.pages)
		page.pfn = 0;
	original.image.status.vm_pte_kib.reset();

	const snapshot decoded = decode_snapshot(encode_snapshot(original), "test.snap");
	expect_same_image(original, decoded);
}

TEST(SnapshotFormat, IgnoresFramesWhenPresenceOnly)
{
	snapshot original = make_snapshot();
	original.image.pfns_visible = false;

	const snapshot decoded = decode_snapshot(encode_snapshot(original), "test.snap");
	ASSERT_EQ(decoded.image.pages.size(), original.image.pages.size());
	for (const auto &page : decoded.image.pages)
		EXPECT_EQ(page.pfn, 0u);
}

TEST(SnapshotFormat, StoresContiguousPagesAsOneRun)
{
	constexpr uint64_t pages = uint64_t{1} << 20;
	snapshot snap = make_snapshot();
	snap.image.vmas = {make_vma(0x7f0000000000, 0x7f0000000000 + pages * page_bytes)};
	snap.image.pages.clear();
	for (uint64_t i = 0; i < pages; i++)
		snap.image.pages.push_back({0x7f0000000000 + i * page_bytes, 0x200000 + i});

	const std::vector<uint8_t> bytes = encode_snapshot(snap);
	EXPECT_LT(bytes.size(), 128u);

	const snapshot decoded = decode_snapshot(bytes, "test.snap");
	ASSERT_EQ(decoded.image.pages.size(), pages);
	EXPECT_EQ(decoded.image.pages.back().addr, 0x7f0000000000 + (pages - 1) * page_bytes);
	EXPECT_EQ(decoded.image.pages.back().pfn, 0x200000 + pages - 1);
}

TEST(SnapshotFormat, SplitsRunsAtVmaBoundaries)
{
	snapshot snap = make_snapshot();
	snap.image.vmas = {make_vma(0x10000, 0x12000), make_vma(0x12000, 0x14000)};
	snap.image.pages = {{0x10000, 7}, {0x11000, 8}, {0x12000, 9}, {0x13000, 10}};

	const snapshot decoded = decode_snapshot(encode_snapshot(snap), "test.snap");
	expect_same_image(snap, decoded);
}

TEST(SnapshotFormat, RoundTripsExtremeValues)
{
	snapshot snap = make_snapshot();
	const uint64_t top = 0xfffffffffffff000; // 2^64 - 4096, the highest end a range can have
	snap.image.vmas = {make_vma(0, page_bytes), make_vma(top - page_bytes, top)};
	snap.image.vmas[1].offset = UINT64_MAX;
	snap.image.vmas[1].inode = UINT64_MAX;
	snap.image.vmas[1].dev = "fff:fffff";
	snap.image.pages = {{0, 0}, {top - page_bytes, (uint64_t{1} << 55) - 1}};
	snap.image.swapped = UINT64_MAX;
	snap.time = INT64_MAX;
	snap.pid = 4 * 1024 * 1024;

	const snapshot decoded = decode_snapshot(encode_snapshot(snap), "test.snap");
	expect_same_image(snap, decoded);
}

TEST(SnapshotEncode, RejectsPageOutsideVmas)
{
	snapshot snap = make_snapshot();
	snap.image.pages.push_back({0x7f0000010000, 1});
	EXPECT_THROW(encode_snapshot(snap), std::invalid_argument);
}

TEST(SnapshotEncode, RejectsUnsortedPages)
{
	snapshot snap = make_snapshot();
	std::swap(snap.image.pages[0], snap.image.pages[1]);
	EXPECT_THROW(encode_snapshot(snap), std::invalid_argument);
}

TEST(SnapshotEncode, RejectsOverlappingVmas)
{
	snapshot snap = make_snapshot();
	snap.image.vmas[1].start = 0x404000;
	snap.image.pages.clear();
	EXPECT_THROW(encode_snapshot(snap), std::invalid_argument);
}

TEST(SnapshotEncode, RejectsMalformedDevice)
{
	snapshot snap = make_snapshot();
	snap.image.vmas[0].dev = "fd01";
	EXPECT_THROW(encode_snapshot(snap), std::invalid_argument);
}

// ---- files ----

TEST(SnapshotFile, SaveThenLoadRoundTrips)
{
	const temp_dir dir;
	const snapshot original = make_snapshot();

	const size_t bytes = save_snapshot(original, dir.file("a.snap"));
	EXPECT_EQ(std::filesystem::file_size(dir.file("a.snap")), bytes);

	const snapshot loaded = load_snapshot(dir.file("a.snap"));
	expect_same_image(original, loaded);
}

TEST(SnapshotFile, SaveLeavesOnlyTheFile)
{
	const temp_dir dir;
	save_snapshot(make_snapshot(), dir.file("a.snap"));
	save_snapshot(make_snapshot(), dir.file("a.snap"));

	std::vector<std::string> names;
	for (const auto &entry : std::filesystem::directory_iterator(dir.path()))
		names.push_back(entry.path().filename());
	ASSERT_EQ(names.size(), 1u);
	EXPECT_EQ(names[0], "a.snap");
	EXPECT_EQ(std::filesystem::status(dir.file("a.snap")).permissions() & std::filesystem::perms::all,
		  std::filesystem::perms(0644));
}

TEST(SnapshotFile, SaveRejectsMissingDirectory)
{
	const temp_dir dir;
	const std::string path = dir.file("missing/a.snap");
	const std::string message = input_error_message([&] { save_snapshot(make_snapshot(), path); });
	EXPECT_CONTAINS(message, path + ": cannot create: No such file or directory");
}

TEST(SnapshotFile, LoadRejectsMissingFile)
{
	const std::string message = input_error_message([] { load_snapshot("/nonexistent/a.snap"); });
	EXPECT_EQ(message, "/nonexistent/a.snap: cannot open: No such file or directory (check the path)");
}

TEST(SnapshotFile, LoadRejectsDirectory)
{
	const temp_dir dir;
	const std::string message = input_error_message([&] { load_snapshot(dir.path()); });
	EXPECT_EQ(message, dir.path() + ": is a directory (expected a snapshot file)");
}

TEST(SnapshotFile, LoadRejectsOversizedFile)
{
	const temp_dir dir;
	save_snapshot(make_snapshot(), dir.file("a.snap"));

	snapshot_limits limits;
	limits.max_file_bytes = 64;
	const std::string message = input_error_message([&] { load_snapshot(dir.file("a.snap"), limits); });
	EXPECT_CONTAINS(message, dir.file("a.snap") + ": file of ");
	EXPECT_CONTAINS(message, "exceeds the limit of 64 bytes");
}

TEST(SnapshotFile, LoadRejectsGarbageFile)
{
	const temp_dir dir;
	const std::vector<uint8_t> garbage = {0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0};
	write_file(dir.file("garbage"), garbage);

	const std::string message = input_error_message([&] { load_snapshot(dir.file("garbage")); });
	EXPECT_EQ(message, dir.file("garbage") + ":offset 0: not a ptl snapshot: the file starts with "
						 "'\\x7fELF\\x02\\x01\\x01\\x00', not 'PTLSNAP' (write one with "
						 "'ptl snapshot')");
}

TEST(SnapshotFile, ReadRejectsFileThatGrows)
{
	const temp_dir dir;
	const std::string path = dir.file("a.snap");
	save_snapshot(make_snapshot(), path);

	const auto append = [&] {
		std::ofstream out(path, std::ios::binary | std::ios::app);
		out << "more";
	};
	std::once_flag once;
	const std::string message = input_error_message(
		[&] { detail::read_binary_file(path, 1 << 20, [&] { std::call_once(once, append); }); });
	EXPECT_CONTAINS(message, path + ": file changed while it was read");
}

TEST(SnapshotFile, ReadRejectsFileThatShrinks)
{
	const temp_dir dir;
	const std::string path = dir.file("a.snap");
	save_snapshot(make_snapshot(), path);

	std::once_flag once;
	const std::string message = input_error_message([&] {
		detail::read_binary_file(path, 1 << 20, [&] { std::call_once(once, [&] { truncate(path.c_str(), 10); }); });
	});
	EXPECT_CONTAINS(message, path + ": file changed while it was read");
}

// An open file outlives its name, so a snapshot deleted during the read is
// still read whole and consistent.
TEST(SnapshotFile, ReadSurvivesUnlinkDuringRead)
{
	const temp_dir dir;
	const std::string path = dir.file("a.snap");
	const size_t size = save_snapshot(make_snapshot(), path);

	const std::vector<uint8_t> bytes = detail::read_binary_file(path, 1 << 20, [&] { unlink(path.c_str()); });
	EXPECT_EQ(bytes.size(), size);
	EXPECT_NO_THROW(decode_snapshot(bytes, path));
}

TEST(SnapshotFile, LoadsFromPipe)
{
	const temp_dir dir;
	const std::string fifo = dir.file("fifo");
	ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
	const std::vector<uint8_t> bytes = encode_snapshot(make_snapshot());

	std::thread writer([&] { write_file(fifo, bytes); });
	const snapshot loaded = load_snapshot(fifo);
	writer.join();
	EXPECT_EQ(loaded.image.pages.size(), make_snapshot().image.pages.size());
}

// ---- bad input: header and checksum ----

// An empty span's data() may be null. Under UBSan this also checks that
// the magic comparison never passes it to memcmp.
TEST(SnapshotDecode, RejectsEmptyFile)
{
	EXPECT_EQ(decode_error({}), "test.snap:offset 0: truncated: 0 bytes are shorter than the 24-byte header and "
				    "checksum");
}

TEST(SnapshotDecode, RejectsWrongMagic)
{
	std::vector<uint8_t> bytes = encode_snapshot(make_snapshot());
	bytes[3] = 'X';
	EXPECT_CONTAINS(decode_error(bytes), "test.snap:offset 0: not a ptl snapshot: the file starts with 'PTLXNAP\\x00'");
}

TEST(SnapshotDecode, RejectsUnsupportedVersion)
{
	EXPECT_EQ(decode_error(frame(one_vma_body().varint(0), 2)),
		  "test.snap:offset 8: format version 2 is not supported (this ptl reads version 1)");
}

TEST(SnapshotDecode, RejectsTruncatedFile)
{
	std::vector<uint8_t> bytes = encode_snapshot(make_snapshot());
	const size_t full = bytes.size();
	bytes.resize(full - 10);
	EXPECT_EQ(decode_error(bytes), fmt::format("test.snap:offset 12: the header gives a body of {} bytes, but the "
						   "file contains {} (truncated; copy the file again or take a new "
						   "snapshot)",
						   full - 24, full - 34));
}

TEST(SnapshotDecode, RejectsTrailingBytes)
{
	std::vector<uint8_t> bytes = encode_snapshot(make_snapshot());
	bytes.push_back(0);
	EXPECT_CONTAINS(decode_error(bytes), "(trailing bytes;");
}

TEST(SnapshotDecode, RejectsWrongChecksum)
{
	std::vector<uint8_t> bytes = encode_snapshot(make_snapshot());
	bytes[body_offset + 5] ^= 0x10;
	const std::string message = decode_error(bytes);
	EXPECT_CONTAINS(message, fmt::format("test.snap:offset {}: checksum mismatch: the file stores CRC-32 0x",
					     bytes.size() - 4));
	EXPECT_CONTAINS(message, "so the file is corrupt");
}

// ---- bad input: malformed fields ----

TEST(SnapshotDecode, RejectsFieldCutShort)
{
	body_builder body;
	body.varint(page_bytes).raw({0x81}); // flags with a continuation bit and nothing after
	EXPECT_EQ(decode_error(frame(body)), "test.snap:offset 22: truncated flags: the body ends inside it");
}

TEST(SnapshotDecode, RejectsOverlongVarint)
{
	body_builder body;
	body.raw({0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02});
	EXPECT_EQ(decode_error(frame(body)), "test.snap:offset 20: page size does not fit in 64 bits");
}

TEST(SnapshotDecode, RejectsUnsupportedPageSize)
{
	body_builder body;
	body.varint(65536);
	EXPECT_EQ(decode_error(frame(body)),
		  "test.snap:offset 20: page size 65536 is not supported (this ptl replays 4096-byte pages)");
}

TEST(SnapshotDecode, RejectsUnknownFlags)
{
	body_builder body;
	body.varint(page_bytes).varint(3);
	EXPECT_EQ(decode_error(frame(body)), "test.snap:offset 22: unknown flags 0x3 (this ptl knows only 0x1)");
}

TEST(SnapshotDecode, RejectsZeroPid)
{
	body_builder body;
	body.varint(page_bytes).varint(1).varint(0);
	EXPECT_CONTAINS(decode_error(frame(body)), "test.snap:offset 23: PID 0 is invalid");
}

TEST(SnapshotDecode, RejectsOversizedString)
{
	body_builder body;
	body.varint(page_bytes).varint(1).varint(42).varint(0).varint(1 << 20);
	EXPECT_EQ(decode_error(frame(body)),
		  "test.snap:offset 25: length of the command name 1048576 exceeds the limit of 256");
}

TEST(SnapshotDecode, RejectsStringPastEnd)
{
	body_builder body;
	body.varint(page_bytes).varint(1).varint(42).varint(0).varint(200).raw({'a', 'b'});
	EXPECT_CONTAINS(decode_error(frame(body)), "truncated command name: 200 bytes promised, 2 left");
}

TEST(SnapshotDecode, RejectsControlCharacterInName)
{
	body_builder body;
	body.metadata(1, "bad\nname");
	EXPECT_CONTAINS(decode_error(frame(body)), "command name 'bad\\x0aname' contains a control character");
}

TEST(SnapshotDecode, RejectsNewlineInPath)
{
	body_builder body;
	body.metadata().varint(1).vma(0x10, 1, "/tmp/a\nb");
	EXPECT_CONTAINS(decode_error(frame(body)), "VMA 0 path '/tmp/a\\x0ab' contains a NUL or newline");
}

TEST(SnapshotDecode, RejectsDeviceAboveLimit)
{
	body_builder body;
	body.metadata().varint(1).varint(0x10).varint(1).varint(3).varint(0).varint(0x1000).varint(0).varint(0);
	body.string("").varint(0);
	EXPECT_CONTAINS(decode_error(frame(body)), "VMA 0 device major 4096 exceeds the limit of 4095");
}

TEST(SnapshotDecode, RejectsUnexpectedBytesAfterRuns)
{
	body_builder body = one_vma_body();
	body.varint(0).raw({0xde, 0xad});
	EXPECT_CONTAINS(decode_error(frame(body)), "2 unexpected bytes after the last run");
}

// ---- bad input: counts and ranges ----

TEST(SnapshotDecode, RejectsCountBeyondBytesLeft)
{
	body_builder body;
	body.metadata().varint(900'000).vma(0, 1);
	EXPECT_CONTAINS(decode_error(frame(body)), "VMA count 900000 cannot fit in the ");
}

TEST(SnapshotDecode, RejectsVmaCountAboveLimit)
{
	body_builder body;
	body.metadata().varint(maps_max_lines + 1);
	EXPECT_CONTAINS(decode_error(frame(body)), "VMA count 1000001 exceeds the limit of 1000000");
}

TEST(SnapshotDecode, RejectsRunCountAboveLimit)
{
	body_builder body = one_vma_body();
	body.varint(11);
	for (int i = 0; i < 11; i++)
		body.varint(0).varint(1).varint(0);

	snapshot_limits limits;
	limits.max_pages = 10;
	EXPECT_CONTAINS(decode_error(frame(body), limits), "run count 11 exceeds the limit of 10");
}

TEST(SnapshotDecode, RejectsPagesAboveLimit)
{
	body_builder body = one_vma_body();
	body.varint(1).varint(0x10).varint(11).varint(0);

	snapshot_limits limits;
	limits.max_pages = 10;
	EXPECT_CONTAINS(decode_error(frame(body), limits), "more than 10 present pages, the limit for one snapshot");
}

TEST(SnapshotDecode, RejectsRangeBeyondAddressSpace)
{
	body_builder body;
	body.metadata().varint(1).vma(uint64_t{1} << 52, 1);
	EXPECT_CONTAINS(decode_error(frame(body)), "VMA 0 starts beyond the end of a 64-bit address space");
}

TEST(SnapshotDecode, RejectsVmaEndBeyondAddressSpace)
{
	body_builder body;
	body.metadata().varint(1).vma(0x10, UINT64_MAX);
	EXPECT_CONTAINS(decode_error(frame(body)), "VMA 0 ends beyond the end of a 64-bit address space");
}

TEST(SnapshotDecode, RejectsEmptyVma)
{
	body_builder body;
	body.metadata().varint(1).vma(0x10, 0);
	EXPECT_CONTAINS(decode_error(frame(body)), "VMA 0 is empty (page count 0)");
}

TEST(SnapshotDecode, RejectsRunOutsideVmas)
{
	body_builder body = one_vma_body(); // pages 0x10-0x20
	body.varint(1).varint(0x30).varint(1).varint(0);
	EXPECT_CONTAINS(decode_error(frame(body)), "run 0 (0x30000-0x31000) is not inside one VMA");
}

TEST(SnapshotDecode, RejectsRunCrossingVmaEnd)
{
	body_builder body = one_vma_body();
	body.varint(1).varint(0x1f).varint(2).varint(0);
	const std::string message = decode_error(frame(body));
	EXPECT_CONTAINS(message, "run 0 (0x1f000-0x21000) is not inside one VMA");
	EXPECT_CONTAINS(message, "test.snap:offset ");
}

TEST(SnapshotDecode, RejectsEmptyRun)
{
	body_builder body = one_vma_body();
	body.varint(1).varint(0x10).varint(0).varint(0);
	EXPECT_CONTAINS(decode_error(frame(body)), "run 0 is empty (page count 0)");
}

TEST(SnapshotDecode, RejectsNegativeFrame)
{
	body_builder body = one_vma_body();
	body.varint(1).varint(0x10).varint(1).varint(1); // zigzag 1 is -1
	EXPECT_CONTAINS(decode_error(frame(body)), "run 0 starts at a negative frame number");
}

TEST(SnapshotDecode, RejectsFrameAboveLimit)
{
	body_builder body = one_vma_body();
	body.varint(1).varint(0x10).varint(2).varint(((uint64_t{1} << 55) - 1) * 2);
	EXPECT_CONTAINS(decode_error(frame(body)), "run 0 ends at a frame number above the 55-bit limit");
}

TEST(SnapshotDecode, AcceptsMinimalBody)
{
	body_builder body = one_vma_body();
	body.varint(2).varint(0x10).varint(2).varint(2 * 100).varint(1).varint(1).varint(2 * 5);
	const snapshot snap = decode_snapshot(frame(body), "test.snap");

	ASSERT_EQ(snap.image.vmas.size(), 1u);
	EXPECT_EQ(snap.image.vmas[0].start, 0x10000u);
	EXPECT_EQ(snap.image.vmas[0].end, 0x20000u);
	ASSERT_EQ(snap.image.pages.size(), 3u);
	EXPECT_EQ(snap.image.pages[0].addr, 0x10000u);
	EXPECT_EQ(snap.image.pages[0].pfn, 100u);
	EXPECT_EQ(snap.image.pages[1].pfn, 101u);
	EXPECT_EQ(snap.image.pages[2].addr, 0x13000u);
	EXPECT_EQ(snap.image.pages[2].pfn, 107u);
}

// ---- capture and replay ----

TEST(SnapshotReplay, RejectsVmaAboveUserHalf)
{
	snapshot snap = make_snapshot();
	snap.image.vmas.push_back(make_vma(G::task_size, G::task_size + page_bytes));
	const std::string message = input_error_message([&] { check_snapshot_fits(snap, "test.snap"); });
	EXPECT_CONTAINS(message, "test.snap: VMA ");
	EXPECT_CONTAINS(message, "ends above the " + std::string(G::name) + " user half");
}

// Rebuilds the image's address space and returns every present leaf as
// (address, frame), in address order.
std::vector<std::pair<uint64_t, uint64_t>> replay_translations(const process_image &image)
{
	ptl::phys::frame_pool pool(image_pool_frames(image));
	auto space = ptl::user::user_space<G>::create(pool);
	if (!space)
		throw std::runtime_error("cannot create the replay address space");
	create_image_vmas(**space, image);
	rebuild_image(**space, image, 2);

	std::vector<std::pair<uint64_t, uint64_t>> leaves;
	const auto &mm = (*space)->mm();
	ptl::mm::walk_all(mm, [&](uint64_t addr, auto, ptl::arch::level) {
		const auto t = ptl::mm::translate(mm, addr);
		leaves.emplace_back(addr, t ? t->pfn : UINT64_MAX);
	});
	return leaves;
}

TEST(SnapshotCapture, RoundTripGivesIdenticalTranslations)
{
	const demo_child child(2 << 20);
	const snapshot captured = capture_snapshot(child.pid(), true);
	ASSERT_FALSE(captured.image.pages.empty());

	const temp_dir dir;
	save_snapshot(captured, dir.file("demo.snap"));
	const snapshot loaded = load_snapshot(dir.file("demo.snap"));
	expect_same_image(captured, loaded);

	const auto live = replay_translations(captured.image);
	const auto replayed = replay_translations(loaded.image);
	EXPECT_EQ(live.size(), captured.image.pages.size());
	EXPECT_EQ(live, replayed);
}

TEST(SnapshotCapture, RecordsWhereAndWhen)
{
	const demo_child child(page_bytes);
	const int64_t before = std::time(nullptr);
	const snapshot snap = capture_snapshot(child.pid(), false);

	struct utsname names {};
	ASSERT_EQ(uname(&names), 0);
	EXPECT_EQ(snap.pid, child.pid());
	EXPECT_EQ(snap.kernel_release, names.release);
	EXPECT_EQ(snap.machine, names.machine);
	EXPECT_EQ(snap.page_size, page_bytes);
	EXPECT_GE(snap.time, before);
	EXPECT_LE(snap.time, std::time(nullptr));
	EXPECT_TRUE(snap.image.status.vm_rss_kib.has_value());
	EXPECT_TRUE(snap.image.status.vm_pte_kib.has_value());
}

TEST(SnapshotCapture, RejectsExitedProcess)
{
	const pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0)
		_exit(0);

	// Wait until the child is a zombie, without reaping it.
	siginfo_t info{};
	ASSERT_EQ(waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT), 0);
	const std::string message = input_error_message([&] { capture_snapshot(pid, false); });
	waitpid(pid, nullptr, 0);

	EXPECT_CONTAINS(message, fmt::format("process {} ", pid));
	EXPECT_CONTAINS(message, "exited while it was read");
}

TEST(SnapshotCapture, RejectsMissingProcess)
{
	const std::string message = input_error_message([] { capture_snapshot(INT_MAX, false); });
	EXPECT_CONTAINS(message, "no such process: 2147483647");
}

// Snapshots of real processes taken with `ptl snapshot`: the demo child with
// 1 MiB, as root and as an unprivileged user (presence only), and an idle
// bash. None had swapped or huge pages, so the rebuilt tables must take the
// bytes the kernel reported as VmPTE.
class StoredSnapshot : public testing::TestWithParam<const char *> {};

TEST_P(StoredSnapshot, ReplaysLikeTheKernel)
{
	const std::string path = std::string(PTL_TEST_DATA_DIR) + "/snapshots/" + GetParam();
	if (G::task_size < 0x7ffffffff000)
		GTEST_SKIP() << "the stored snapshots are of x86-64 processes";

	const snapshot snap = load_snapshot(path);
	replay_options options;
	options.snapshot_path = path;
	options.threads = 2;
	const replay_report report = run_replay(options);

	EXPECT_EQ(report.snapshot_path, path);
	EXPECT_EQ(report.pid, snap.pid);
	EXPECT_EQ(report.command, snap.image.status.name);
	EXPECT_EQ(report.pfns_visible, snap.image.pfns_visible);
	EXPECT_GT(report.pages_present, 0u);
	EXPECT_EQ(report.pages_present, snap.image.pages.size());
	EXPECT_EQ(report.pages_mapped, report.pages_present);
	EXPECT_EQ(report.mismatches, 0u);
	ASSERT_TRUE(report.kernel_vm_pte_bytes.has_value());
	EXPECT_EQ(report.pgtables_bytes, *report.kernel_vm_pte_bytes);
}

INSTANTIATE_TEST_SUITE_P(Files, StoredSnapshot,
			 testing::Values("demo-1mib.ptlsnap", "demo-1mib-presence.ptlsnap", "bash.ptlsnap"),
			 [](const auto &info) {
				 std::string name = info.param;
				 name = name.substr(0, name.find('.'));
				 std::replace(name.begin(), name.end(), '-', '_');
				 return name;
			 });

TEST(StoredSnapshot, PresenceOnlyFileHoldsNoFrames)
{
	const snapshot snap = load_snapshot(std::string(PTL_TEST_DATA_DIR) + "/snapshots/demo-1mib-presence.ptlsnap");
	EXPECT_FALSE(snap.image.pfns_visible);
	for (const auto &page : snap.image.pages)
		ASSERT_EQ(page.pfn, 0u);
}

} // namespace
