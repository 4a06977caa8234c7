#pragma once
// Typed error results for the library's own API.
//
// libstdc++ 12 ships std::expected only for GCC, and Clang 14 cannot use it,
// so ptl carries this small subset: a value or an errc, never both.

#include <cassert>
#include <string_view>
#include <utility>
#include <variant>

namespace ptl {

enum class errc {
	no_memory,        // the frame pool could not supply a page
	invalid_argument, // zero size, unaligned or overflowing range, bad flags
	no_space,         // no free range of the requested size in an address area
	not_found,        // no mapping or area at the given address
	exists,           // the range overlaps a mapping that is already there
	access_fault,     // the access is not allowed by the mapping's protection
	busy,             // the entry changed under the caller; retry the walk
};

constexpr std::string_view errc_name(errc e)
{
	switch (e) {
	case errc::no_memory:
		return "out of memory";
	case errc::invalid_argument:
		return "invalid argument";
	case errc::no_space:
		return "no free address range";
	case errc::not_found:
		return "not found";
	case errc::exists:
		return "already mapped";
	case errc::access_fault:
		return "access not permitted";
	case errc::busy:
		return "entry changed, retry";
	}
	return "unknown error";
}

struct unexpected {
	errc error;
};

inline unexpected fail(errc e)
{
	return unexpected{e};
}

// A value of type T, or the errc that explains why there is none.
template <class T>
class [[nodiscard]] result {
public:
	result(T value) : v_(std::move(value)) {}
	result(unexpected u) : v_(u) {}

	bool has_value() const { return v_.index() == 0; }
	explicit operator bool() const { return has_value(); }

	T &value() &
	{
		assert(has_value());
		return std::get<0>(v_);
	}
	const T &value() const &
	{
		assert(has_value());
		return std::get<0>(v_);
	}
	T &&value() &&
	{
		assert(has_value());
		return std::get<0>(std::move(v_));
	}
	T &operator*() & { return value(); }
	const T &operator*() const & { return value(); }
	T &&operator*() && { return std::move(*this).value(); }
	T *operator->() { return &value(); }
	const T *operator->() const { return &value(); }

	errc error() const
	{
		assert(!has_value());
		return std::get<1>(v_).error;
	}

private:
	std::variant<T, unexpected> v_;
};

// Success or an errc, for operations that return nothing.
template <>
class [[nodiscard]] result<void> {
public:
	result() = default;
	result(unexpected u) : ok_(false), e_(u.error) {}

	bool has_value() const { return ok_; }
	explicit operator bool() const { return ok_; }
	errc error() const
	{
		assert(!ok_);
		return e_;
	}

private:
	bool ok_ = true;
	errc e_ = errc::invalid_argument;
};

} // namespace ptl
