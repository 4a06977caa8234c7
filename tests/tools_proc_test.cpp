// Tests for the /proc readers and the demo child.

#include "ptl/tools/proc.hpp"
#include "ptl/tools/replay.hpp"
#include "ptl/tools/vmallocinfo.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdlib>
#include <fmt/format.h>
#include <fstream>
#include <sstream>
#include <string>
#include <optional>
#include <sys/mman.h>
#include <sys/wait.h>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace {

using namespace ptl::tools;

// A PID above the kernel's PID_MAX_LIMIT (4194304), so no process has it.
constexpr int missing_pid = INT_MAX;

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

std::string maps_error(std::string_view text)
{
	return input_error_message([&] { parse_maps(text, "test/maps"); });
}

std::string status_error(std::string_view text)
{
	return input_error_message([&] { parse_status(text, "test/status"); });
}

std::string read_text_file(const std::string &path)
{
	std::ifstream file(path);
	std::stringstream text;
	text << file.rdbuf();
	return text.str();
}

// A temporary file that is removed when the object goes out of scope.
class temp_file {
public:
	explicit temp_file(const std::vector<uint64_t> &entries)
	{
		std::string pattern = testing::TempDir() + "ptl_pagemap_XXXXXX";
		const int fd = mkstemp(pattern.data());
		if (fd < 0)
			throw std::system_error(errno, std::generic_category(), "mkstemp failed");
		path_ = pattern;

		const auto bytes = static_cast<ssize_t>(entries.size() * sizeof(uint64_t));
		const ssize_t written = ::write(fd, entries.data(), static_cast<size_t>(bytes));
		::close(fd);
		if (written != bytes)
			throw std::runtime_error("short write to " + path_);
	}

	~temp_file() { ::unlink(path_.c_str()); }

	const std::string &path() const { return path_; }

private:
	std::string path_;
};

constexpr uint64_t bit(unsigned n)
{
	return uint64_t{1} << n;
}

// Lines as the kernel prints them, padded so that the paths line up.
constexpr std::string_view realistic_maps =
	"55d0c8a00000-55d0c8a02000 r--p 00000000 fd:01 1048602                    /usr/bin/cat\n"
	"55d0c8a02000-55d0c8a07000 r-xp 00002000 fd:01 1048602                    /usr/bin/cat\n"
	"55d0c9c4e000-55d0c9c6f000 rw-p 00000000 00:00 0                          [heap]\n"
	"7f2a1c000000-7f2a1c021000 rw-p 00000000 00:00 0 \n"
	"7f2a1c400000-7f2a1c401000 rw-s 00001000 103:02 393224                    /tmp/my data file.bin\n"
	"7ffd4a3b1000-7ffd4a3d2000 rw-p 00000000 00:00 0                          [stack]\n"
	"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";

TEST(ProcMaps, ParsesRealisticText)
{
	const std::vector<vma_record> vmas = parse_maps(realistic_maps, "test/maps");
	ASSERT_EQ(vmas.size(), 7u);

	EXPECT_EQ(vmas[0].start, 0x55d0c8a00000u);
	EXPECT_EQ(vmas[0].end, 0x55d0c8a02000u);
	EXPECT_TRUE(vmas[0].read);
	EXPECT_FALSE(vmas[0].write);
	EXPECT_FALSE(vmas[0].exec);
	EXPECT_FALSE(vmas[0].shared);
	EXPECT_EQ(vmas[0].dev, "fd:01");
	EXPECT_EQ(vmas[0].inode, 1048602u);
	EXPECT_EQ(vmas[0].path, "/usr/bin/cat");
	EXPECT_EQ(vmas[0].pages(), 2u);

	EXPECT_TRUE(vmas[1].exec);
	EXPECT_EQ(vmas[1].offset, 0x2000u);

	EXPECT_EQ(vmas[2].path, "[heap]");
	EXPECT_TRUE(vmas[2].write);

	EXPECT_EQ(vmas[3].path, "");
	EXPECT_EQ(vmas[3].inode, 0u);
	EXPECT_EQ(vmas[3].dev, "00:00");
	EXPECT_EQ(vmas[3].pages(), 0x21u);

	EXPECT_TRUE(vmas[4].shared);
	EXPECT_EQ(vmas[4].offset, 0x1000u);
	EXPECT_EQ(vmas[4].dev, "103:02");
	EXPECT_EQ(vmas[4].path, "/tmp/my data file.bin");

	EXPECT_EQ(vmas[5].path, "[stack]");

	EXPECT_EQ(vmas[6].start, 0xffffffffff600000u);
	EXPECT_EQ(vmas[6].end, 0xffffffffff601000u);
	EXPECT_FALSE(vmas[6].read);
	EXPECT_TRUE(vmas[6].exec);
	EXPECT_EQ(vmas[6].path, "[vsyscall]");
}

TEST(ProcMaps, AcceptsMissingFinalNewline)
{
	const std::vector<vma_record> vmas = parse_maps("1000-3000 rw-p 00000000 00:00 0", "test/maps");
	ASSERT_EQ(vmas.size(), 1u);
	EXPECT_EQ(vmas[0].pages(), 2u);
	EXPECT_EQ(vmas[0].path, "");
}

TEST(ProcMaps, AcceptsEmptyText)
{
	EXPECT_TRUE(parse_maps("", "test/maps").empty());
}

TEST(ProcMaps, AcceptsAdjacentRanges)
{
	const std::vector<vma_record> vmas =
		parse_maps("1000-2000 r--p 00000000 00:00 0\n2000-3000 rw-p 00000000 00:00 0\n", "test/maps");
	EXPECT_EQ(vmas.size(), 2u);
}

TEST(ProcMaps, RejectsMalformedRange)
{
	const std::string message = maps_error("1000-2000 rw-p 00000000 00:00 0\nzz-10 rw-p 00000000 00:00 0\n");
	EXPECT_EQ(message, "test/maps:2: malformed address range 'zz-10' (expected HEX-HEX)");
}

TEST(ProcMaps, RejectsRangeWithoutDash)
{
	const std::string message = maps_error("10002000 rw-p 00000000 00:00 0\n");
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/maps:1:", message);
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "'10002000'", message);
}

TEST(ProcMaps, RejectsOverflowingAddress)
{
	const std::string message = maps_error("1000-10000000000000000 rw-p 00000000 00:00 0\n");
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/maps:1: malformed address range '1000-10000000000000000'",
			    message);
}

TEST(ProcMaps, RejectsInvertedRange)
{
	const std::string message = maps_error("1000-2000 rw-p 00000000 00:00 0\n"
					       "5000-3000 rw-p 00000000 00:00 0\n");
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/maps:2:", message);
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "'5000-3000'", message);
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "start must be below end", message);
}

TEST(ProcMaps, RejectsEmptyRange)
{
	const std::string message = maps_error("3000-3000 rw-p 00000000 00:00 0\n");
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/maps:1:", message);
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "'3000-3000'", message);
}

TEST(ProcMaps, RejectsUnalignedStart)
{
	const std::string message = maps_error("1000-2000 rw-p 00000000 00:00 0\n"
					       "2000-3000 rw-p 00000000 00:00 0\n"
					       "3800-4000 rw-p 00000000 00:00 0\n");
	EXPECT_EQ(message, "test/maps:3: address range '3800-4000' is not aligned to 4096 bytes");
}

TEST(ProcMaps, RejectsUnalignedEnd)
{
	const std::string message = maps_error("1000-2001 rw-p 00000000 00:00 0\n");
	EXPECT_EQ(message, "test/maps:1: address range '1000-2001' is not aligned to 4096 bytes");
}

TEST(ProcMaps, RejectsUnsortedRanges)
{
	const std::string message = maps_error("5000-6000 rw-p 00000000 00:00 0\n"
					       "1000-2000 rw-p 00000000 00:00 0\n");
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/maps:2:", message);
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "'1000-2000'", message);
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "'5000-6000'", message);
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "ascending order", message);
}

TEST(ProcMaps, RejectsOverlappingRanges)
{
	const std::string message = maps_error("1000-3000 rw-p 00000000 00:00 0\n"
					       "2000-4000 rw-p 00000000 00:00 0\n");
	EXPECT_EQ(message, "test/maps:2: address range '2000-4000' overlaps the previous range '1000-3000'");
}

TEST(ProcMaps, RejectsInvalidPermissions)
{
	const std::vector<std::string> invalid = {"rw-", "rw-pp", "Rw-p", "rx-p", "r-wp", "rw-x", "----", "rw-P"};

	for (const std::string &perms : invalid) {
		SCOPED_TRACE(perms);
		const std::string message = maps_error("1000-2000 r--p 00000000 00:00 0\n3000-4000 " + perms +
						       " 00000000 00:00 0\n");
		EXPECT_EQ(message, "test/maps:2: invalid permissions '" + perms +
					   "' (expected 4 characters of [r-][w-][x-][ps])");
	}
}

TEST(ProcMaps, AcceptsEveryValidPermission)
{
	const std::vector<vma_record> vmas = parse_maps("1000-2000 ---p 00000000 00:00 0\n"
							"2000-3000 rwxs 00000000 00:00 0\n",
							"test/maps");
	ASSERT_EQ(vmas.size(), 2u);
	EXPECT_FALSE(vmas[0].read);
	EXPECT_FALSE(vmas[0].write);
	EXPECT_FALSE(vmas[0].exec);
	EXPECT_FALSE(vmas[0].shared);
	EXPECT_TRUE(vmas[1].read);
	EXPECT_TRUE(vmas[1].write);
	EXPECT_TRUE(vmas[1].exec);
	EXPECT_TRUE(vmas[1].shared);
}

TEST(ProcMaps, RejectsMalformedOffset)
{
	const std::string message = maps_error("1000-2000 rw-p 0000g000 00:00 0\n");
	EXPECT_EQ(message, "test/maps:1: malformed offset '0000g000' (expected a hexadecimal number)");
}

TEST(ProcMaps, RejectsMalformedDevice)
{
	const std::string message = maps_error("1000-2000 rw-p 00000000 fd01 0\n");
	EXPECT_EQ(message, "test/maps:1: malformed device 'fd01' (expected MAJOR:MINOR in hexadecimal)");
}

TEST(ProcMaps, RejectsMalformedInode)
{
	const std::string message = maps_error("1000-2000 rw-p 00000000 00:00 -5 /bin/x\n");
	EXPECT_EQ(message, "test/maps:1: malformed inode '-5' (expected a decimal number)");
}

TEST(ProcMaps, RejectsTruncatedLine)
{
	const std::string message = maps_error("1000-2000 rw-p 00000000 00:00\n");
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/maps:1: truncated line '1000-2000 rw-p 00000000 00:00'",
			    message);
}

TEST(ProcMaps, RejectsEmptyLine)
{
	const std::string message = maps_error("1000-2000 rw-p 00000000 00:00 0\n\n3000-4000 rw-p 00000000 00:00 0\n");
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/maps:2: empty line", message);
}

TEST(ProcMaps, EscapesControlCharactersInErrors)
{
	const std::string message = maps_error("1000-2\r000 rw-p 00000000 00:00 0\n");
	EXPECT_EQ(message, "test/maps:1: malformed address range '1000-2\\x0d000' (expected HEX-HEX)");
}

TEST(ProcMaps, RejectsTooManyLines)
{
	std::string text;
	text.reserve((maps_max_lines + 1) * 48);
	for (uint64_t i = 0; i <= maps_max_lines; i++) {
		const uint64_t start = (i + 1) * page_bytes;
		text += fmt::format("{:x}-{:x} rw-p 00000000 00:00 0\n", start, start + page_bytes);
	}

	const std::string message = maps_error(text);
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/maps:1000001: more than 1000000 lines", message);
}

TEST(ProcMaps, AcceptsLineAtLengthLimit)
{
	const std::string prefix = "1000-2000 rw-p 00000000 00:00 0 /";
	const std::string line = prefix + std::string(maps_max_line_bytes - prefix.size(), 'a');
	ASSERT_EQ(line.size(), maps_max_line_bytes);

	const std::vector<vma_record> vmas = parse_maps(line + "\n", "test/maps");
	ASSERT_EQ(vmas.size(), 1u);
	EXPECT_EQ(vmas[0].path.size(), maps_max_line_bytes - prefix.size() + 1);
}

TEST(ProcMaps, RejectsLongLine)
{
	const std::string prefix = "1000-2000 rw-p 00000000 00:00 0 /";
	const std::string line = prefix + std::string(maps_max_line_bytes + 1 - prefix.size(), 'a');

	const std::string message = maps_error("0-1000 rw-p 00000000 00:00 0\n" + line + "\n");
	EXPECT_EQ(message, "test/maps:2: line of 65537 bytes exceeds the limit of 65536 bytes");
}

TEST(ProcMaps, ReadsOwnMaps)
{
	static int static_value = 1;
	int stack_value = 2;
	const auto static_address = reinterpret_cast<uint64_t>(&static_value);
	const auto stack_address = reinterpret_cast<uint64_t>(&stack_value);

	const std::vector<vma_record> vmas = read_maps(getpid());
	ASSERT_FALSE(vmas.empty());

	bool found_static = false;
	bool found_stack = false;
	for (const vma_record &vma : vmas) {
		if (static_address >= vma.start && static_address < vma.end) {
			found_static = true;
			EXPECT_TRUE(vma.write);
		}
		if (stack_address >= vma.start && stack_address < vma.end) {
			found_stack = true;
			EXPECT_EQ(vma.path, "[stack]");
		}
	}
	EXPECT_TRUE(found_static);
	EXPECT_TRUE(found_stack);
}

TEST(ProcMaps, ReadRejectsMissingProcess)
{
	const std::string message = input_error_message([] { read_maps(missing_pid); });
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "no such process: 2147483647", message);
}

TEST(ProcMaps, ReadRejectsInvalidPid)
{
	const std::string message = input_error_message([] { read_maps(0); });
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "invalid process ID 0", message);
}

// Lines copied from a real /proc/PID/status, shortened.
constexpr std::string_view realistic_status = "Name:\tcat\n"
					       "Umask:\t0022\n"
					       "State:\tR (running)\n"
					       "Tgid:\t3307\n"
					       "Uid:\t0\t0\t0\t0\n"
					       "Groups:\t \n"
					       "VmPeak:\t    3060 kB\n"
					       "VmSize:\t    3060 kB\n"
					       "VmHWM:\t    1744 kB\n"
					       "VmRSS:\t    1744 kB\n"
					       "RssAnon:\t     112 kB\n"
					       "VmPTE:\t      48 kB\n"
					       "VmSwap:\t       0 kB\n"
					       "Threads:\t1\n";

TEST(ProcStatus, ParsesRealFormat)
{
	const status_record status = parse_status(realistic_status, "test/status");
	EXPECT_EQ(status.name, "cat");
	EXPECT_EQ(status.vm_size_kib, 3060u);
	EXPECT_EQ(status.vm_rss_kib, 1744u);
	EXPECT_EQ(status.vm_pte_kib, 48u);
}

TEST(ProcStatus, LeavesMissingFieldsEmpty)
{
	const status_record status = parse_status("Name:\tkthreadd\nState:\tS (sleeping)\nThreads:\t1\n", "test/status");
	EXPECT_EQ(status.name, "kthreadd");
	EXPECT_FALSE(status.vm_size_kib.has_value());
	EXPECT_FALSE(status.vm_rss_kib.has_value());
	EXPECT_FALSE(status.vm_pte_kib.has_value());
}

TEST(ProcStatus, KeepsSpacesInName)
{
	const status_record status = parse_status("Name:\t my worker\n", "test/status");
	EXPECT_EQ(status.name, " my worker");
}

TEST(ProcStatus, RejectsMalformedNumber)
{
	const std::string message = status_error("Name:\tcat\nVmSize:\t    3060 kB\nVmRSS:\t    17x4 kB\n");
	EXPECT_EQ(message, "test/status:3: malformed VmRSS value '\\x09    17x4 kB' (expected a decimal number "
			   "followed by ' kB')");
}

TEST(ProcStatus, RejectsMissingUnit)
{
	const std::string message = status_error("Name:\tcat\nVmPTE:\t48\n");
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/status:2: malformed VmPTE value", message);
}

TEST(ProcStatus, RejectsEmptyNumber)
{
	const std::string message = status_error("Name:\tcat\nVmSize:\t kB\n");
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/status:2: malformed VmSize value", message);
}

TEST(ProcStatus, RejectsOverflowingNumber)
{
	const std::string message = status_error("Name:\tcat\nVmSize:\t99999999999999999999999 kB\n");
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/status:2: malformed VmSize value", message);
}

TEST(ProcStatus, RejectsDuplicateField)
{
	const std::string message = status_error("Name:\tcat\nVmRSS:\t1 kB\nVmRSS:\t2 kB\n");
	EXPECT_EQ(message, "test/status:3: duplicate VmRSS field");
}

TEST(ProcStatus, RejectsLineWithoutColon)
{
	const std::string message = status_error("Name:\tcat\nVmRSS 12 kB\n");
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/status:2: malformed line 'VmRSS 12 kB'", message);
}

TEST(ProcStatus, RejectsMissingName)
{
	const std::string message = status_error("VmRSS:\t12 kB\n");
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/status: missing Name field", message);
}

TEST(ProcStatus, ParsesOwnStatus)
{
	const std::string text = read_text_file("/proc/self/status");
	ASSERT_FALSE(text.empty());

	const status_record status = parse_status(text, "/proc/self/status");
	std::string comm = read_text_file("/proc/self/comm");
	if (!comm.empty() && comm.back() == '\n')
		comm.pop_back();
	EXPECT_EQ(status.name, comm);
	ASSERT_TRUE(status.vm_rss_kib.has_value());
	ASSERT_TRUE(status.vm_size_kib.has_value());
	ASSERT_TRUE(status.vm_pte_kib.has_value());
	EXPECT_GT(*status.vm_rss_kib, 0u);
	EXPECT_GE(*status.vm_size_kib, *status.vm_rss_kib);
}

TEST(ProcStatus, ReadsOwnStatus)
{
	const status_record status = read_status(getpid());
	EXPECT_FALSE(status.name.empty());
	ASSERT_TRUE(status.vm_rss_kib.has_value());
	EXPECT_GT(*status.vm_rss_kib, 0u);
}

TEST(ProcStatus, ReadRejectsMissingProcess)
{
	const std::string message = input_error_message([] { read_status(missing_pid); });
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "no such process: 2147483647", message);
}

TEST(Pagemap, DecodesPresentPage)
{
	const pagemap_entry entry = decode_pagemap(bit(63) | bit(56) | 0x12345);
	EXPECT_TRUE(entry.present);
	EXPECT_FALSE(entry.swapped);
	EXPECT_FALSE(entry.file_or_shared);
	EXPECT_TRUE(entry.exclusive);
	EXPECT_FALSE(entry.soft_dirty);
	EXPECT_EQ(entry.pfn, 0x12345u);
}

TEST(Pagemap, DecodesWidestPfn)
{
	const pagemap_entry entry = decode_pagemap(bit(63) | bit(55) | (bit(55) - 1));
	EXPECT_TRUE(entry.present);
	EXPECT_TRUE(entry.soft_dirty);
	EXPECT_EQ(entry.pfn, bit(55) - 1);
}

TEST(Pagemap, DecodesSwappedEntryWithoutPfn)
{
	const pagemap_entry entry = decode_pagemap(bit(62) | 0x7abc1);
	EXPECT_FALSE(entry.present);
	EXPECT_TRUE(entry.swapped);
	EXPECT_EQ(entry.pfn, 0u);
}

TEST(Pagemap, DecodesFileAndSoftDirtyBits)
{
	const pagemap_entry entry = decode_pagemap(bit(63) | bit(61) | bit(55));
	EXPECT_TRUE(entry.present);
	EXPECT_TRUE(entry.file_or_shared);
	EXPECT_TRUE(entry.soft_dirty);
	EXPECT_FALSE(entry.exclusive);
	EXPECT_EQ(entry.pfn, 0u);
}

TEST(Pagemap, DecodesEmptyEntry)
{
	const pagemap_entry entry = decode_pagemap(0);
	EXPECT_FALSE(entry.present);
	EXPECT_FALSE(entry.swapped);
	EXPECT_FALSE(entry.file_or_shared);
	EXPECT_FALSE(entry.exclusive);
	EXPECT_FALSE(entry.soft_dirty);
	EXPECT_EQ(entry.pfn, 0u);
}

TEST(PagemapReader, ReadsFileAtPageOffset)
{
	const temp_file file({0, bit(63) | 7, bit(62) | 5, bit(63) | bit(61) | 9});
	pagemap_reader reader(file.path());
	EXPECT_EQ(reader.path(), file.path());

	std::vector<pagemap_entry> entries(3);
	reader.read(1 * page_bytes + 100, entries);
	EXPECT_TRUE(entries[0].present);
	EXPECT_EQ(entries[0].pfn, 7u);
	EXPECT_TRUE(entries[1].swapped);
	EXPECT_EQ(entries[1].pfn, 0u);
	EXPECT_TRUE(entries[2].file_or_shared);
	EXPECT_EQ(entries[2].pfn, 9u);
	EXPECT_TRUE(reader.pfns_visible());
}

TEST(PagemapReader, ReadsAcrossChunks)
{
	std::vector<uint64_t> raw(20000);
	for (size_t i = 0; i < raw.size(); i++)
		raw[i] = bit(63) | i;
	const temp_file file(raw);
	pagemap_reader reader(file.path());

	std::vector<pagemap_entry> entries(raw.size() - 3);
	reader.read(3 * page_bytes, entries);
	for (size_t i = 0; i < entries.size(); i++) {
		ASSERT_TRUE(entries[i].present) << "page " << i;
		ASSERT_EQ(entries[i].pfn, i + 3) << "page " << i;
	}
}

TEST(PagemapReader, ZeroPfnsAreNotVisible)
{
	const temp_file file({bit(63), bit(63) | bit(56), 0});
	pagemap_reader reader(file.path());

	std::vector<pagemap_entry> entries(3);
	reader.read(0, entries);
	EXPECT_TRUE(entries[0].present);
	EXPECT_FALSE(reader.pfns_visible());
}

TEST(PagemapReader, RejectsShortRead)
{
	const temp_file file({bit(63) | 1, bit(63) | 2});
	pagemap_reader reader(file.path());

	std::vector<pagemap_entry> entries(3);
	const std::string message = input_error_message([&] { reader.read(0, entries); });
	EXPECT_PRED_FORMAT2(testing::IsSubstring, file.path() + ":offset 16: short read, end of file 16 bytes into a 24-byte read", message);
}

TEST(PagemapReader, RejectsRangeBeyondFile)
{
	const temp_file file({bit(63) | 1});
	pagemap_reader reader(file.path());

	std::vector<pagemap_entry> entries(1);
	const std::string message = input_error_message([&] { reader.read(5 * page_bytes, entries); });
	EXPECT_PRED_FORMAT2(testing::IsSubstring, file.path() + ":offset 40: short read", message);
}

TEST(PagemapReader, RejectsMissingFile)
{
	const std::string message = input_error_message([] { pagemap_reader reader(std::string("/nonexistent/pagemap")); });
	EXPECT_EQ(message, "/nonexistent/pagemap: cannot open: No such file or directory");
}

TEST(PagemapReader, RejectsMissingProcess)
{
	const std::string message = input_error_message([] { pagemap_reader reader(missing_pid); });
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "no such process: 2147483647", message);
}

TEST(PagemapReader, MovesOpenFile)
{
	const temp_file file({bit(63) | 4});
	pagemap_reader first(file.path());
	pagemap_reader second(std::move(first));
	EXPECT_EQ(second.path(), file.path());

	pagemap_entry entry;
	second.read(0, std::span(&entry, 1));
	EXPECT_EQ(entry.pfn, 4u);

	const temp_file other({bit(63) | 8});
	pagemap_reader third(other.path());
	third = std::move(second);
	third.read(0, std::span(&entry, 1));
	EXPECT_EQ(entry.pfn, 4u);
}

TEST(PagemapReader, ShowsTouchedPageInSelf)
{
	void *mapping = mmap(nullptr, 2 * page_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(mapping, MAP_FAILED);
	ASSERT_EQ(madvise(mapping, 2 * page_bytes, MADV_NOHUGEPAGE), 0);
	static_cast<volatile char *>(mapping)[0] = 1;

	pagemap_reader reader(getpid());
	EXPECT_EQ(reader.path(), "/proc/" + std::to_string(getpid()) + "/pagemap");
	std::vector<pagemap_entry> entries(2);
	reader.read(reinterpret_cast<uint64_t>(mapping), entries);
	munmap(mapping, 2 * page_bytes);

	EXPECT_TRUE(entries[0].present);
	EXPECT_FALSE(entries[0].file_or_shared);
	EXPECT_FALSE(entries[1].present);
	EXPECT_FALSE(entries[1].swapped);
	EXPECT_EQ(entries[1].pfn, 0u);
	if (geteuid() == 0) {
		EXPECT_NE(entries[0].pfn, 0u);
		EXPECT_TRUE(reader.pfns_visible());
	}
}

constexpr uint64_t demo_bytes = 8 * 1024 * 1024;

TEST(DemoChild, MapsRegionInChild)
{
	const demo_child child(demo_bytes);
	EXPECT_GT(child.pid(), 0);
	EXPECT_NE(child.pid(), getpid());
	EXPECT_EQ(child.region_bytes(), demo_bytes);
	EXPECT_EQ(child.region_start() % page_bytes, 0u);

	const std::vector<vma_record> vmas = read_maps(child.pid());
	const vma_record *region = nullptr;
	for (const vma_record &vma : vmas) {
		if (child.region_start() >= vma.start && child.region_start() < vma.end)
			region = &vma;
	}
	ASSERT_NE(region, nullptr);

	// The kernel may merge the mapping with a neighbor that has the same
	// flags, so the VMA must contain the region but may be larger.
	EXPECT_GE(region->end, child.region_start() + demo_bytes);
	EXPECT_TRUE(region->read);
	EXPECT_TRUE(region->write);
	EXPECT_FALSE(region->exec);
	EXPECT_FALSE(region->shared);
	EXPECT_EQ(region->path, "");
}

TEST(DemoChild, PagemapMatchesTouchPattern)
{
	const demo_child child(demo_bytes);
	pagemap_reader reader(child.pid());

	std::vector<pagemap_entry> entries(demo_bytes / page_bytes);
	reader.read(child.region_start(), entries);

	for (size_t page = 0; page < entries.size(); page++) {
		SCOPED_TRACE("page " + std::to_string(page));
		EXPECT_EQ(entries[page].present, demo_child::page_is_touched(page));
		EXPECT_FALSE(entries[page].swapped);
		EXPECT_FALSE(entries[page].file_or_shared);
		if (entries[page].present) {
			EXPECT_TRUE(entries[page].exclusive);
		}
	}
	if (geteuid() == 0) {
		EXPECT_TRUE(reader.pfns_visible());
	}
}

TEST(DemoChild, StatusCoversTouchedPages)
{
	const demo_child child(demo_bytes);
	const status_record status = read_status(child.pid());

	uint64_t touched_pages = 0;
	for (uint64_t page = 0; page < demo_bytes / page_bytes; page++)
		touched_pages += demo_child::page_is_touched(page) ? 1 : 0;

	ASSERT_TRUE(status.vm_rss_kib.has_value());
	ASSERT_TRUE(status.vm_size_kib.has_value());
	EXPECT_GE(*status.vm_rss_kib, touched_pages * page_bytes / 1024);
	EXPECT_GE(*status.vm_size_kib, demo_bytes / 1024);
}

TEST(DemoChild, DestructorKillsAndReaps)
{
	int pid = 0;
	{
		const demo_child child(page_bytes);
		pid = child.pid();
		EXPECT_EQ(kill(pid, 0), 0);
	}

	errno = 0;
	EXPECT_EQ(kill(pid, 0), -1);
	EXPECT_EQ(errno, ESRCH);
}

TEST(DemoChild, RejectsInvalidSize)
{
	for (const uint64_t bytes : {uint64_t{0}, page_bytes - 1, page_bytes + 1}) {
		SCOPED_TRACE(bytes);
		try {
			const demo_child child(bytes);
			ADD_FAILURE() << "expected std::system_error";
		} catch (const std::system_error &error) {
			EXPECT_EQ(error.code(), std::errc::invalid_argument);
		}
	}
}

TEST(DemoChild, ReportsFailedMmap)
{
	// No address space can hold this, so the child's mmap fails with ENOMEM.
	const uint64_t bytes = uint64_t{1} << 62;
	try {
		const demo_child child(bytes);
		ADD_FAILURE() << "expected std::system_error";
	} catch (const std::system_error &error) {
		EXPECT_EQ(error.code(), std::errc::not_enough_memory);
		EXPECT_PRED_FORMAT2(testing::IsSubstring, "mmap", error.what());
	}
}

std::string vmalloc_error(std::string_view text)
{
	return input_error_message([&] { parse_vmallocinfo(text, "test/vmallocinfo"); });
}

// Lines as a kernel prints them for a reader allowed to see the addresses.
constexpr std::string_view visible_vmallocinfo =
	"0xffffc90000000000-0xffffc90000005000   20480 irq_init_percpu_irqstack+0xed/0x120 vmap\n"
	"0xffffc90000005000-0xffffc90000007000    8192 acpi_os_map_iomem+0x1bc/0x1e0 phys=0x00000000000a0000 ioremap\n"
	"0xffffc90000008000-0xffffc9000000d000   20480 kernel_clone+0xb8/0x400 pages=4 vmalloc N0=4\n"
	"0xffffc9000000d000-0xffffc90000010000   12288 bpf_prog_alloc+0x4a/0x2a0 [bpf_mod] pages=2 vmalloc vpages N0=1 N1=1\n"
	"0xffffc90000010000-0xffffc90000012000    8192 unpurged vm_area\n"
	"0xffffc90000012000-0xffffc90000016000   16384 vm_map_ram\n"
	"0xffffc90000020000-0xffffc90000221000 2101248 0xffffffffc0a01234 pages=512 vmalloc user dma-coherent sparse N0=512\n";

TEST(ProcVmallocinfo, ParsesVisibleAddresses)
{
	const vmallocinfo info = parse_vmallocinfo(visible_vmallocinfo, "test/vmallocinfo");
	EXPECT_TRUE(info.addresses_visible);
	ASSERT_EQ(info.areas.size(), 7u);

	const vmalloc_area &vmap = info.areas[0];
	EXPECT_EQ(vmap.start, 0xffffc90000000000u);
	EXPECT_EQ(vmap.end, 0xffffc90000005000u);
	EXPECT_EQ(vmap.size, 20480u);
	EXPECT_EQ(vmap.caller, "irq_init_percpu_irqstack+0xed/0x120");
	EXPECT_TRUE(vmap.vmap);
	EXPECT_FALSE(vmap.vmalloc);
	EXPECT_FALSE(vmap.pages.has_value());

	EXPECT_TRUE(info.areas[1].ioremap);
	EXPECT_EQ(info.areas[1].phys, 0xa0000u);

	const vmalloc_area &vmalloc = info.areas[2];
	EXPECT_TRUE(vmalloc.vmalloc);
	EXPECT_EQ(vmalloc.pages, 4u);
	ASSERT_EQ(vmalloc.nodes.size(), 1u);
	EXPECT_EQ(vmalloc.nodes[0].node, 0u);
	EXPECT_EQ(vmalloc.nodes[0].pages, 4u);

	EXPECT_EQ(info.areas[3].caller, "bpf_prog_alloc+0x4a/0x2a0 [bpf_mod]");
	EXPECT_TRUE(info.areas[3].vpages);
	ASSERT_EQ(info.areas[3].nodes.size(), 2u);
	EXPECT_EQ(info.areas[3].nodes[1].node, 1u);

	EXPECT_TRUE(info.areas[4].unpurged);
	EXPECT_EQ(info.areas[4].caller, "");
	EXPECT_TRUE(info.areas[5].vm_map_ram);

	const vmalloc_area &last = info.areas[6];
	EXPECT_EQ(last.caller, "0xffffffffc0a01234");
	EXPECT_TRUE(last.user);
	EXPECT_TRUE(last.dma_coherent);
	EXPECT_TRUE(last.sparse);
	EXPECT_TRUE(last.other_flags.empty());
}

// kptr_restrict 0 hashes %pK addresses into 32-bit values that bear no
// relation to the size; these lines come from a Linux 6.18 machine.
TEST(ProcVmallocinfo, AcceptsHashedAddresses)
{
	const vmallocinfo info = parse_vmallocinfo(
		"0x0000000048bc5168-0x00000000fbb439d1   20480 irq_init_percpu_irqstack+0xed/0x120 vmap\n"
		"0x000000008f3577b6-0x0000000082b9487f   20480 kernel_clone+0xb8/0x400 pages=4 vmalloc N0=4\n"
		"0x0000000000b43117-0x00000000b6076acc    8192 unpurged vm_area\n",
		"test/vmallocinfo");
	EXPECT_FALSE(info.addresses_visible);
	ASSERT_EQ(info.areas.size(), 3u);
	EXPECT_EQ(info.areas[1].pages, 4u);
}

TEST(ProcVmallocinfo, AcceptsZeroAddresses)
{
	const vmallocinfo info = parse_vmallocinfo(
		"0x0000000000000000-0x0000000000000000   20480 kernel_clone+0xb8/0x400 pages=4 vmalloc N0=4\n"
		"0x0000000000000000-0x0000000000000000 2097152 pcpu_get_vm_areas+0x0/0x1060 vmalloc\n",
		"test/vmallocinfo");
	EXPECT_FALSE(info.addresses_visible);
	EXPECT_EQ(info.areas.size(), 2u);
}

TEST(ProcVmallocinfo, KeepsUnknownFlagWords)
{
	const vmallocinfo info = parse_vmallocinfo(
		"0xffffc90000000000-0xffffc90000002000 8192 f+0x1/0x2 vmalloc huge_vmap new-flag\n", "test/vmallocinfo");
	ASSERT_EQ(info.areas.size(), 1u);
	EXPECT_EQ(info.areas[0].other_flags, (std::vector<std::string>{"huge_vmap", "new-flag"}));
}

TEST(ProcVmallocinfo, AcceptsEmptyText)
{
	const vmallocinfo info = parse_vmallocinfo("", "test/vmallocinfo");
	EXPECT_TRUE(info.areas.empty());
	EXPECT_FALSE(info.addresses_visible);
}

TEST(ProcVmallocinfo, RejectsMalformedRange)
{
	EXPECT_EQ(vmalloc_error("ffffc90000000000-ffffc90000002000 8192 vmalloc\n"),
		  "test/vmallocinfo:1: malformed address range 'ffffc90000000000-ffffc90000002000' (expected "
		  "0xHEX-0xHEX)");
}

TEST(ProcVmallocinfo, RejectsOverflowingAddress)
{
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/vmallocinfo:1: malformed address range",
			    vmalloc_error("0x1000-0x10000000000000000 8192 vmalloc\n"));
}

TEST(ProcVmallocinfo, RejectsMalformedSize)
{
	EXPECT_EQ(vmalloc_error("0x0-0x0 81x2 vmalloc\n"),
		  "test/vmallocinfo:1: malformed size '81x2' (expected a decimal number of bytes)");
}

TEST(ProcVmallocinfo, RejectsZeroSize)
{
	EXPECT_EQ(vmalloc_error("0x0-0x0 0 vmalloc\n"),
		  "test/vmallocinfo:1: size 0 is not a positive multiple of 4096 bytes");
}

TEST(ProcVmallocinfo, RejectsUnalignedSize)
{
	EXPECT_EQ(vmalloc_error("0x0-0x0 4097 vmalloc\n"),
		  "test/vmallocinfo:1: size 4097 is not a positive multiple of 4096 bytes");
}

TEST(ProcVmallocinfo, RejectsHugeSize)
{
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/vmallocinfo:1: size 18446744073709547520 exceeds the limit",
			    vmalloc_error("0x0-0x0 18446744073709547520 vmalloc\n"));
}

TEST(ProcVmallocinfo, RejectsTruncatedLine)
{
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/vmallocinfo:2: truncated line '0x0-0x0'",
			    vmalloc_error("0x0-0x0 8192 vmalloc\n0x0-0x0\n"));
}

TEST(ProcVmallocinfo, RejectsEmptyLine)
{
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/vmallocinfo:2: empty line",
			    vmalloc_error("0x0-0x0 8192 vmalloc\n\n0x0-0x0 8192 vmalloc\n"));
}

TEST(ProcVmallocinfo, RejectsPagesBeyondSize)
{
	EXPECT_EQ(vmalloc_error("0x0-0x0 8192 f+0x1/0x2 pages=3 vmalloc N0=3\n"),
		  "test/vmallocinfo:1: pages=3 does not fit in size 8192 (2 pages at most)");
}

TEST(ProcVmallocinfo, RejectsNodeCountsThatDisagree)
{
	EXPECT_EQ(vmalloc_error("0x0-0x0 20480 f+0x1/0x2 pages=4 vmalloc N0=1 N1=2\n"),
		  "test/vmallocinfo:1: node counts add up to 3, not pages=4");
	EXPECT_EQ(vmalloc_error("0x0-0x0 20480 f+0x1/0x2 pages=4 vmalloc N0=3 N1=18446744073709551615\n"),
		  "test/vmallocinfo:1: node counts add up to more than pages=4");
}

TEST(ProcVmallocinfo, RejectsNodesWithoutPages)
{
	EXPECT_EQ(vmalloc_error("0x0-0x0 20480 f+0x1/0x2 vmalloc N0=4\n"),
		  "test/vmallocinfo:1: node fields without a pages= field");
}

TEST(ProcVmallocinfo, RejectsNodeAboveLimit)
{
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/vmallocinfo:1: node 1024 in 'N1024=4' is not below the limit",
			    vmalloc_error("0x0-0x0 20480 pages=4 vmalloc N1024=4\n"));
}

TEST(ProcVmallocinfo, RejectsDuplicateFields)
{
	EXPECT_EQ(vmalloc_error("0x0-0x0 20480 pages=4 pages=4\n"), "test/vmallocinfo:1: duplicate pages field");
	EXPECT_EQ(vmalloc_error("0x0-0x0 20480 vmalloc vmalloc\n"), "test/vmallocinfo:1: duplicate 'vmalloc' flag");
	EXPECT_EQ(vmalloc_error("0x0-0x0 20480 pages=4 N0=2 N0=2\n"),
		  "test/vmallocinfo:1: duplicate node field for node 0");
}

TEST(ProcVmallocinfo, RejectsMalformedFieldValues)
{
	EXPECT_EQ(vmalloc_error("0x0-0x0 8192 phys=a0000 ioremap\n"),
		  "test/vmallocinfo:1: malformed phys value 'a0000' (expected 0x followed by hexadecimal digits)");
	EXPECT_EQ(vmalloc_error("0x0-0x0 8192 pages=-1\n"),
		  "test/vmallocinfo:1: malformed pages value '-1' (expected a decimal number)");
	EXPECT_EQ(vmalloc_error("0x0-0x0 8192 pages=1 N0=x\n"),
		  "test/vmallocinfo:1: malformed node field 'N0=x' (expected N<node>=<pages>)");
}

TEST(ProcVmallocinfo, RejectsGarbageBytes)
{
	constexpr char text[] = "0x0-0x0 8192 \x01\xff\x7f garbage\n";
	const std::string message = vmalloc_error(std::string(text, sizeof(text) - 1));
	EXPECT_EQ(message, "test/vmallocinfo:1: unexpected field '\\x01\xff\\x7f' (expected a caller, pages=, phys=, "
			   "N<node>=<pages> or a lowercase flag word)");
}

TEST(ProcVmallocinfo, RejectsTooManyUnknownFlags)
{
	std::string line = "0x0-0x0 8192";
	for (int i = 0; i <= 16; i++)
		line += " flag" + std::to_string(i);
	EXPECT_EQ(vmalloc_error(line), "test/vmallocinfo:1: more than 16 unknown flag words");
}

TEST(ProcVmallocinfo, RejectsInvertedVisibleRange)
{
	EXPECT_EQ(vmalloc_error("0xffffc90000000000-0xffffc90000002000 8192 vmalloc\n"
				"0xffffc90000006000-0xffffc90000004000 8192 vmalloc\n"),
		  "test/vmallocinfo:2: empty or inverted address range '0xffffc90000006000-0xffffc90000004000' (start "
		  "must be below end)");
}

TEST(ProcVmallocinfo, RejectsUnalignedVisibleRange)
{
	EXPECT_EQ(vmalloc_error("0xffffc90000000000-0xffffc90000002000 8192 vmalloc\n"
				"0xffffc90000004800-0xffffc90000006800 8192 vmalloc\n"),
		  "test/vmallocinfo:2: address range '0xffffc90000004800-0xffffc90000006800' is not aligned to 4096 "
		  "bytes");
}

TEST(ProcVmallocinfo, RejectsRangeThatDisagreesWithSize)
{
	EXPECT_PRED_FORMAT2(testing::IsSubstring,
			    "test/vmallocinfo:2: address range '0xffffc90000004000-0xffffc90000008000' spans 16384 "
			    "bytes but the size field is 8192",
			    vmalloc_error("0xffffc90000000000-0xffffc90000002000 8192 vmalloc\n"
					  "0xffffc90000004000-0xffffc90000008000 8192 vmalloc\n"));
}

TEST(ProcVmallocinfo, RejectsOverlappingRanges)
{
	EXPECT_EQ(vmalloc_error("0xffffc90000004000-0xffffc90000008000 16384 vmalloc\n"
				"0xffffc90000010000-0xffffc90000012000 8192 vmalloc\n"
				"0xffffc90000000000-0xffffc90000006000 24576 vmalloc\n"),
		  "test/vmallocinfo:1: address range '0xffffc90000004000-0xffffc90000008000' overlaps "
		  "'0xffffc90000000000-0xffffc90000006000' on line 3");
}

TEST(ProcVmallocinfo, AcceptsUnsortedRanges)
{
	const vmallocinfo info = parse_vmallocinfo("0xffffc90000010000-0xffffc90000012000 8192 vmalloc\n"
						   "0xffffc90000000000-0xffffc90000002000 8192 vmalloc\n",
						   "test/vmallocinfo");
	EXPECT_TRUE(info.addresses_visible);
	EXPECT_EQ(info.areas.size(), 2u);
}

TEST(ProcVmallocinfo, RejectsLongLine)
{
	const std::string line = "0x0-0x0 8192 " + std::string(vmallocinfo_max_line_bytes, 'a');
	EXPECT_EQ(vmalloc_error(line), "test/vmallocinfo:1: line of 4109 bytes exceeds the limit of 4096 bytes");
}

TEST(ProcVmallocinfo, RejectsTooManyLines)
{
	std::string text;
	const std::string line = "0x0-0x0 8192 vmalloc\n";
	text.reserve((vmallocinfo_max_lines + 1) * line.size());
	for (size_t i = 0; i <= vmallocinfo_max_lines; i++)
		text += line;
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/vmallocinfo:4000001: more than 4000000 lines", vmalloc_error(text));
}

TEST(ProcVmallocinfo, ReadsKernelFile)
{
	if (access("/proc/vmallocinfo", R_OK) != 0)
		GTEST_SKIP() << "/proc/vmallocinfo is readable by root only";

	const vmallocinfo info = read_vmallocinfo();
	EXPECT_FALSE(info.areas.empty());
	uint64_t vmalloc_areas = 0;
	for (const vmalloc_area &area : info.areas)
		vmalloc_areas += area.vmalloc ? 1 : 0;
	EXPECT_GT(vmalloc_areas, 0u);
}

TEST(ProcVmallocinfo, ReadRejectsMissingFile)
{
	const std::string message = input_error_message([] { read_vmallocinfo("/nonexistent/vmallocinfo"); });
	EXPECT_EQ(message, "/nonexistent/vmallocinfo: cannot open: No such file or directory");
}

TEST(ProcMaps, RejectsGarbageBytes)
{
	// The three NUL bytes are part of the line, so the length is given.
	constexpr char text[] = "\x7f" "ELF\x02\x01\x01\0\0\0 \xff\xfe\n";
	const std::string message = maps_error(std::string(text, sizeof(text) - 1));
	EXPECT_EQ(message, "test/maps:1: truncated line '\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00 \xff\xfe' (expected "
			   "'START-END PERMS OFFSET DEV INODE [PATH]')");
}

TEST(ProcMaps, AcceptsWholeAddressSpace)
{
	const std::vector<vma_record> vmas = parse_maps("0-fffffffffffff000 rw-p 00000000 00:00 0\n", "test/maps");
	ASSERT_EQ(vmas.size(), 1u);
	EXPECT_EQ(vmas[0].pages(), (uint64_t{1} << 52) - 1);
}

TEST(ProcStatus, RejectsGarbageBytes)
{
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "test/status:1: malformed line '\\x7fELF\\x02'",
			    status_error("\x7f" "ELF\x02\nName:\tx\n"));
}

TEST(ProcStatus, ParsesState)
{
	EXPECT_EQ(parse_status("Name:\tcat\nState:\tR (running)\n", "test/status").state, 'R');
	EXPECT_EQ(parse_status("Name:\tcat\n", "test/status").state, 0);
}

TEST(ProcStatus, RejectsMalformedState)
{
	EXPECT_EQ(status_error("Name:\tcat\nState:\t\n"),
		  "test/status:2: malformed State value '\\x09' (expected an upper-case letter such as 'S')");
	EXPECT_EQ(status_error("Name:\tcat\nState:\tS\nState:\tS\n"), "test/status:3: duplicate State field");
}

TEST(ProcStatus, RejectsZombie)
{
	const status_record status = parse_status("Name:\tcat\nState:\tZ (zombie)\n", "test/status");
	const std::string message = input_error_message([&] { check_user_address_space(77, status); });
	EXPECT_EQ(message, "process 77 (cat) exited while it was read (its state is Z); choose a process that keeps "
			   "running");
}

TEST(ProcStatus, RejectsKernelThread)
{
	const status_record status = parse_status("Name:\tkthreadd\nState:\tS (sleeping)\n", "test/status");
	const std::string message = input_error_message([&] { check_user_address_space(2, status); });
	EXPECT_EQ(message, "process 2 (kthreadd) has no user address space (a kernel thread, or a process that "
			   "exited while it was read)");
}

TEST(ProcStatus, AcceptsUserProcess)
{
	const status_record status = parse_status(realistic_status, "test/status");
	EXPECT_NO_THROW(check_user_address_space(3307, status));
}

// A process that exits after its pagemap was opened: the next read finds no
// address space and reports a short read that names the file and offset.
TEST(PagemapReader, RejectsProcessThatExitsMidRead)
{
	int pid = 0;
	uint64_t start = 0;
	std::optional<pagemap_reader> reader;
	{
		const demo_child child(4 * page_bytes);
		pid = child.pid();
		start = child.region_start();
		reader.emplace(child.pid());
		std::vector<pagemap_entry> entries(4);
		reader->read(start, entries);
		EXPECT_TRUE(entries[0].present);
	}

	std::vector<pagemap_entry> entries(4);
	const std::string message = input_error_message([&] { reader->read(start, entries); });
	EXPECT_PRED_FORMAT2(testing::IsSubstring, fmt::format("/proc/{}/pagemap:offset {}:", pid, start / page_bytes * 8),
			    message);
}

TEST(ProcessImage, RejectsZombie)
{
	const pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0)
		_exit(0);

	siginfo_t info{};
	ASSERT_EQ(waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT), 0);
	const std::string message = input_error_message([&] { read_process_image(pid, false); });
	waitpid(pid, nullptr, 0);
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "exited while it was read", message);
}

TEST(ProcessImage, RejectsKernelThread)
{
	const std::string name = read_text_file("/proc/2/comm");
	if (name != "kthreadd\n")
		GTEST_SKIP() << "PID 2 is not kthreadd in this PID namespace";

	const std::string message = input_error_message([] { read_process_image(2, false); });
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "process 2 ", message);
	EXPECT_PRED_FORMAT2(testing::IsSubstring, "has no user address space", message);
}

} // namespace

// PAGEMAP_SCAN must report exactly the present pages a full read finds. The
// child has more populated runs than one ioctl batch holds (4096), so the
// scan has to continue where the kernel stopped without reporting a run
// twice.
TEST(PagemapReader, ScanMatchesFullRead)
{
	demo_child child(uint64_t{128} << 20);
	pagemap_reader pagemap(child.pid());
	const uint64_t start = child.region_start();
	const uint64_t end = start + child.region_bytes();

	const auto ranges = pagemap.scan_populated(start, end);
	if (!ranges)
		GTEST_SKIP() << "this kernel has no PAGEMAP_SCAN (Linux 6.7 and later)";

	std::vector<bool> in_scan((end - start) / page_bytes, false);
	uint64_t previous_end = start;
	for (const auto &range : *ranges) {
		EXPECT_GE(range.start, previous_end) << "ranges overlap or are out of order";
		EXPECT_LT(range.start, range.end);
		EXPECT_LE(range.end, end);
		EXPECT_TRUE(range.present);
		previous_end = range.end;
		for (uint64_t a = range.start; a < range.end; a += page_bytes)
			in_scan[(a - start) / page_bytes] = true;
	}

	std::vector<pagemap_entry> entries(in_scan.size());
	pagemap.read(start, entries);
	uint64_t mismatches = 0;
	for (size_t i = 0; i < entries.size(); i++)
		mismatches += entries[i].present != in_scan[i];
	EXPECT_EQ(mismatches, 0u);
	EXPECT_GT(ranges->size(), 4096u);
}
