// Reading and writing snapshot files.

#include "ptl/tools/snapshot.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <stdexcept>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>

namespace ptl::tools {

namespace {

class fd_guard {
public:
	explicit fd_guard(int fd) : fd_(fd) {}
	~fd_guard()
	{
		if (fd_ >= 0)
			::close(fd_);
	}
	fd_guard(const fd_guard &) = delete;
	fd_guard &operator=(const fd_guard &) = delete;
	int get() const { return fd_; }
	int release() { return std::exchange(fd_, -1); }

private:
	int fd_;
};

struct stat stat_or_throw(int fd, const std::string &path)
{
	struct stat info {};
	if (::fstat(fd, &info) != 0)
		throw input_error(fmt::format("{}: cannot stat: {}", path, std::strerror(errno)));
	return info;
}

// Returns what to do about a failed open, for the end of the message.
std::string_view open_hint(int error)
{
	if (error == ENOENT || error == ENOTDIR)
		return " (check the path)";
	if (error == EACCES || error == EPERM)
		return " (check the file's permissions)";
	return "";
}

bool same_version(const struct stat &before, const struct stat &after)
{
	return before.st_size == after.st_size && before.st_mtim.tv_sec == after.st_mtim.tv_sec &&
	       before.st_mtim.tv_nsec == after.st_mtim.tv_nsec;
}

void check_readable_kind(const struct stat &info, const std::string &path, size_t max_bytes)
{
	if (S_ISDIR(info.st_mode))
		throw input_error(fmt::format("{}: is a directory (expected a snapshot file)", path));

	if (S_ISREG(info.st_mode) && static_cast<uint64_t>(info.st_size) > max_bytes)
		throw input_error(fmt::format("{}: file of {} bytes exceeds the limit of {} bytes", path, info.st_size,
					      max_bytes));
}

} // namespace

namespace detail {

std::vector<uint8_t> read_binary_file(const std::string &path, size_t max_bytes,
				      const std::function<void()> &between_reads)
{
	const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		throw input_error(fmt::format("{}: cannot open: {}{}", path, std::strerror(errno), open_hint(errno)));
	const fd_guard guard(fd);
	const struct stat before = stat_or_throw(fd, path);
	check_readable_kind(before, path, max_bytes);

	std::vector<uint8_t> bytes;
	constexpr size_t chunk_bytes = 1 << 20;
	for (;;) {
		const size_t used = bytes.size();
		bytes.resize(used + chunk_bytes);
		const ssize_t n = ::read(fd, bytes.data() + used, chunk_bytes);
		if (n < 0 && errno == EINTR) {
			bytes.resize(used);
			continue;
		}
		if (n < 0)
			throw input_error(fmt::format("{}:offset {}: read failed: {}", path, used, std::strerror(errno)));
		bytes.resize(used + static_cast<size_t>(n));
		if (n == 0)
			break;
		if (bytes.size() > max_bytes)
			throw input_error(fmt::format("{}: file is longer than the limit of {} bytes", path, max_bytes));
		if (between_reads)
			between_reads();
	}

	// A pipe has no size to compare. A regular file must be unchanged
	// after the read, because otherwise the bytes may mix two versions.
	const struct stat after = stat_or_throw(fd, path);
	const bool regular = S_ISREG(before.st_mode);
	if (regular && (!same_version(before, after) || static_cast<uint64_t>(after.st_size) != bytes.size()))
		throw input_error(fmt::format("{}: file changed while it was read ({} bytes before, {} after, {} read); "
					      "copy it somewhere stable first",
					      path, before.st_size, after.st_size, bytes.size()));
	return bytes;
}

} // namespace detail

namespace {

// Returns the mkostemp pattern of a temporary file next to path, so that the
// final rename stays within one file system.
std::string temporary_pattern(const std::string &path)
{
	return path + ".tmp.XXXXXX";
}

void write_all(int fd, const std::string &path, std::span<const uint8_t> bytes)
{
	size_t done = 0;
	while (done < bytes.size()) {
		const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			throw std::runtime_error(fmt::format("{}: write failed at offset {}: {}", path, done,
							     std::strerror(errno)));
		done += static_cast<size_t>(n);
	}
}

void finish_file(int fd, const std::string &temporary)
{
	if (::fchmod(fd, 0644) != 0 || ::fsync(fd) != 0)
		throw std::runtime_error(fmt::format("{}: cannot set permissions or flush: {}", temporary,
						     std::strerror(errno)));
}

} // namespace

size_t save_snapshot(const snapshot &snap, const std::string &path)
{
	const std::vector<uint8_t> bytes = encode_snapshot(snap);

	std::string temporary = temporary_pattern(path);
	fd_guard fd(::mkostemp(temporary.data(), O_CLOEXEC));
	if (fd.get() < 0)
		throw input_error(fmt::format("{}: cannot create: {} (check that the directory exists and is "
					      "writable)",
					      path, std::strerror(errno)));

	try {
		write_all(fd.get(), temporary, bytes);
		finish_file(fd.get(), temporary);
		if (::close(fd.release()) != 0)
			throw std::runtime_error(fmt::format("{}: close failed: {}", temporary, std::strerror(errno)));
		if (::rename(temporary.c_str(), path.c_str()) != 0)
			throw input_error(fmt::format("{}: cannot replace it with {}: {}", path, temporary,
						      std::strerror(errno)));
	} catch (...) {
		::unlink(temporary.c_str());
		throw;
	}
	return bytes.size();
}

snapshot load_snapshot(const std::string &path, const snapshot_limits &limits)
{
	const std::vector<uint8_t> bytes = detail::read_binary_file(path, limits.max_file_bytes);
	return decode_snapshot(bytes, path, limits);
}

} // namespace ptl::tools
