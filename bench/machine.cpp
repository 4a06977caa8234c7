// Facts about the machine for the report: CPUs, CPU model, memory and load.

#include "bench.hpp"

#include <fstream>
#include <string>
#include <thread>
#include <unistd.h>

namespace ptl::bench {

namespace {

// The value of the first "model name" line of /proc/cpuinfo, or empty where
// the file or the line is missing (some architectures name it otherwise).
std::string cpu_model()
{
	std::ifstream cpuinfo("/proc/cpuinfo");
	std::string line;

	while (std::getline(cpuinfo, line)) {
		if (line.rfind("model name", 0) != 0)
			continue;

		const auto colon = line.find(':');
		if (colon == std::string::npos)
			return {};
		const auto value = line.find_first_not_of(" \t", colon + 1);
		return value == std::string::npos ? std::string() : line.substr(value);
	}
	return {};
}

std::optional<double> load_average()
{
	std::ifstream loadavg("/proc/loadavg");
	double one_minute = 0;

	if (!(loadavg >> one_minute))
		return std::nullopt;
	return one_minute;
}

} // namespace

machine_info read_machine_info()
{
	machine_info m;
	m.cpus = std::thread::hardware_concurrency();
	m.cpu_model = cpu_model();
	m.load_average = load_average();

	const long pages = sysconf(_SC_PHYS_PAGES);
	const long page_bytes = sysconf(_SC_PAGESIZE);
	if (pages > 0 && page_bytes > 0)
		m.memory_bytes = uint64_t(pages) * uint64_t(page_bytes);
	return m;
}

} // namespace ptl::bench
