#pragma once
// Choosing a profile at run time: the profiles a command line may name with
// --arch, and the dispatch from a name to the template instance for it.

#include <ptl/arch/profiles.hpp>

#include <array>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace ptl::arch {

// Expands X(profile) once for each profile, for explicit instantiations of
// templates whose definitions live in one source file.
#define PTL_FOR_EACH_PROFILE(X)                                                                                        \
	X(::ptl::arch::x86_64)                                                                                        \
	X(::ptl::arch::x86_64_la57)                                                                                   \
	X(::ptl::arch::i386)                                                                                          \
	X(::ptl::arch::i386_pae)                                                                                      \
	X(::ptl::arch::arm64_4k)

inline constexpr std::array<std::string_view, 5> profile_names = {x86_64::name, x86_64_la57::name, i386::name,
								   i386_pae::name, arm64_4k::name};

inline bool is_profile_name(std::string_view name)
{
	for (std::string_view known : profile_names) {
		if (known == name)
			return true;
	}
	return false;
}

// The profile names, comma-separated, for messages.
inline std::string profile_name_list()
{
	std::string list;
	for (std::string_view name : profile_names) {
		if (!list.empty())
			list += ", ";
		list += name;
	}
	return list;
}

// Calls f(std::type_identity<G>{}) for the profile G called name, or for the
// native profile when name is empty, and returns what f returns. Throws
// std::invalid_argument for an unknown name.
template <class F>
decltype(auto) with_profile(std::string_view name, F &&f)
{
	if (name.empty())
		return f(std::type_identity<native>{});
	if (name == x86_64::name)
		return f(std::type_identity<x86_64>{});
	if (name == x86_64_la57::name)
		return f(std::type_identity<x86_64_la57>{});
	if (name == i386::name)
		return f(std::type_identity<i386>{});
	if (name == i386_pae::name)
		return f(std::type_identity<i386_pae>{});
	if (name == arm64_4k::name)
		return f(std::type_identity<arm64_4k>{});
	throw std::invalid_argument("unknown geometry '" + std::string(name) + "'; choose from " + profile_name_list());
}

} // namespace ptl::arch
