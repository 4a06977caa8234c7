// A forked child with a known page pattern, for tests and demos of the /proc
// readers.

#include "ptl/tools/proc.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <system_error>
#include <unistd.h>

namespace ptl::tools {

namespace {

// The child's single message to the parent through the pipe.
struct ready_message {
	uint64_t region_start = 0;
	int32_t error = 0; // errno of the failed step, or 0 once the region is ready
	int32_t step = 0;  // which step failed when error is non-zero
};

enum child_step : int32_t {
	step_none = 0,
	step_mmap = 1,
	step_madvise = 2,
};

void send_message(int fd, const ready_message &message)
{
	const char *bytes = reinterpret_cast<const char *>(&message);
	size_t done = 0;
	while (done < sizeof(message)) {
		const ssize_t n = ::write(fd, bytes + done, sizeof(message) - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(1);
		done += static_cast<size_t>(n);
	}
}

void touch_pattern(volatile unsigned char *region, uint64_t bytes)
{
	for (uint64_t page = 0; page < bytes / page_bytes; page++) {
		if (demo_child::page_is_touched(page))
			region[page * page_bytes] = static_cast<unsigned char>(page | 1);
	}
}

// Runs in the child after fork(), so it and its helpers call only
// async-signal-safe functions. Another thread of the parent may have held a
// lock, malloc's among them, at the moment of the fork.
[[noreturn]] void run_child(int read_fd, int write_fd, pid_t parent, uint64_t bytes)
{
	::close(read_fd);

	// The death signal is armed only now, so a parent that died before
	// this point is detected by getppid() instead.
	if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent)
		_exit(1);

	void *region = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED) {
		send_message(write_fd, {0, errno, step_mmap});
		_exit(1);
	}

	// Kernels built without transparent huge pages return EINVAL here, and
	// every page is then a 4 KiB PTE anyway.
	if (::madvise(region, bytes, MADV_NOHUGEPAGE) != 0 && errno != EINVAL) {
		send_message(write_fd, {0, errno, step_madvise});
		_exit(1);
	}

	touch_pattern(static_cast<volatile unsigned char *>(region), bytes);
	send_message(write_fd, {reinterpret_cast<uintptr_t>(region), 0, step_none});

	for (;;)
		::pause();
}

void kill_and_reap(pid_t pid)
{
	::kill(pid, SIGKILL);

	int status = 0;
	while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
	}
}

class fd_guard {
public:
	explicit fd_guard(int fd) : fd_(fd) {}
	~fd_guard() { ::close(fd_); }
	fd_guard(const fd_guard &) = delete;
	fd_guard &operator=(const fd_guard &) = delete;
	int get() const { return fd_; }

private:
	int fd_;
};

// Waits until fd is readable, or throws once ready_timeout_ms have passed.
void wait_readable(int fd, pid_t pid)
{
	using clock = std::chrono::steady_clock;
	const auto deadline = clock::now() + std::chrono::milliseconds(demo_child::ready_timeout_ms);

	for (;;) {
		const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
		if (left.count() <= 0)
			throw std::system_error(ETIMEDOUT, std::generic_category(),
						fmt::format("demo child {} timed out: no readiness report within {} ms "
							    "(check whether the system is short of memory or overloaded)",
							    pid, demo_child::ready_timeout_ms));

		pollfd entry{fd, POLLIN, 0};
		const int ready = ::poll(&entry, 1, static_cast<int>(left.count()));
		if (ready < 0 && errno != EINTR)
			throw std::system_error(errno, std::generic_category(), "demo child: poll on the ready pipe failed");
		if (ready > 0)
			return;
	}
}

ready_message receive_message(int fd, pid_t pid)
{
	ready_message message;
	char *bytes = reinterpret_cast<char *>(&message);
	size_t done = 0;

	while (done < sizeof(message)) {
		wait_readable(fd, pid);

		const ssize_t n = ::read(fd, bytes + done, sizeof(message) - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			throw std::system_error(errno, std::generic_category(), "demo child: read from the ready pipe failed");
		if (n == 0)
			throw std::system_error(ECHILD, std::generic_category(),
						fmt::format("demo child {} exited before it reported readiness", pid));
		done += static_cast<size_t>(n);
	}

	return message;
}

void check_message(const ready_message &message, uint64_t bytes)
{
	if (message.error == 0)
		return;

	const char *call = message.step == step_mmap ? "mmap" : "madvise(MADV_NOHUGEPAGE)";
	throw std::system_error(message.error, std::generic_category(),
				fmt::format("demo child: {} of {} bytes failed", call, bytes));
}

void check_size(uint64_t bytes)
{
	if (bytes == 0 || bytes % page_bytes != 0)
		throw std::system_error(EINVAL, std::generic_category(),
					fmt::format("demo child: size {} bytes is not a positive multiple of {} "
						    "(round it up to whole pages)",
						    bytes, page_bytes));
}

// Forks the child and closes the pipe's write end in the parent, so that
// the read end reports end of file once the child exits.
pid_t fork_child(const int fds[2], uint64_t bytes)
{
	const pid_t parent = ::getpid();

	const pid_t pid = ::fork();
	if (pid < 0) {
		const int error = errno;
		::close(fds[1]);
		throw std::system_error(error, std::generic_category(), "demo child: fork failed");
	}
	if (pid == 0)
		run_child(fds[0], fds[1], parent, bytes);

	::close(fds[1]);
	return pid;
}

} // namespace

demo_child::demo_child(uint64_t bytes)
{
	check_size(bytes);

	int fds[2];
	if (::pipe2(fds, O_CLOEXEC) != 0)
		throw std::system_error(errno, std::generic_category(), "demo child: pipe2 failed");
	const fd_guard read_end(fds[0]);
	const pid_t pid = fork_child(fds, bytes);

	try {
		const ready_message message = receive_message(read_end.get(), pid);
		check_message(message, bytes);
		region_start_ = message.region_start;
	} catch (...) {
		kill_and_reap(pid);
		throw;
	}

	pid_ = pid;
	region_bytes_ = bytes;
}

demo_child::~demo_child()
{
	kill_and_reap(pid_);
}

int demo_child::pid() const
{
	return pid_;
}

uint64_t demo_child::region_start() const
{
	return region_start_;
}

uint64_t demo_child::region_bytes() const
{
	return region_bytes_;
}

} // namespace ptl::tools
