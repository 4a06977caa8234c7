#pragma once
// Clang thread-safety annotations. Under GCC they expand to nothing; the
// Clang build runs with -Wthread-safety so the compiler checks every caller.

#if defined(__clang__)
#define PTL_TSA(x) __attribute__((x))
#else
#define PTL_TSA(x)
#endif

#define PTL_CAPABILITY(name) PTL_TSA(capability(name))
#define PTL_SCOPED_CAPABILITY PTL_TSA(scoped_lockable)
#define PTL_GUARDED_BY(lock) PTL_TSA(guarded_by(lock))
#define PTL_PT_GUARDED_BY(lock) PTL_TSA(pt_guarded_by(lock))
#define PTL_REQUIRES(...) PTL_TSA(requires_capability(__VA_ARGS__))
#define PTL_EXCLUDES(...) PTL_TSA(locks_excluded(__VA_ARGS__))
#define PTL_ACQUIRE(...) PTL_TSA(acquire_capability(__VA_ARGS__))
#define PTL_RELEASE(...) PTL_TSA(release_capability(__VA_ARGS__))
#define PTL_TRY_ACQUIRE(...) PTL_TSA(try_acquire_capability(__VA_ARGS__))
#define PTL_ASSERT_CAPABILITY(x) PTL_TSA(assert_capability(x))
#define PTL_RETURN_CAPABILITY(x) PTL_TSA(lock_returned(x))
#define PTL_NO_THREAD_SAFETY_ANALYSIS PTL_TSA(no_thread_safety_analysis)
