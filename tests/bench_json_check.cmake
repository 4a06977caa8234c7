# Checks the shape of a `ptl bench --json` report with CMake's JSON parser,
# so the test needs no tool beyond the build's own.
#
# Usage: cmake -DJSON_FILE=PATH -DRESULTS=N -DLIMITS=N -P bench_json_check.cmake
# Prints one line per problem and fails when there is any.

file(READ "${JSON_FILE}" json)
set(problems 0)

function(report_problem text)
	message("  ${text}")
	math(EXPR count "${problems} + 1")
	set(problems ${count} PARENT_SCOPE)
endfunction()

# Fails unless the member at the given path is a number above zero.
function(expect_positive label)
	string(JSON value ERROR_VARIABLE error GET "${json}" ${ARGN})
	if(error)
		report_problem("${label}: ${error}")
	elseif(NOT value GREATER 0)
		report_problem("${label} is ${value}, expected a number above 0")
	endif()
	set(problems ${problems} PARENT_SCOPE)
endfunction()

function(expect_length member expected)
	string(JSON length ERROR_VARIABLE error LENGTH "${json}" ${member})
	if(error)
		report_problem("${member}: ${error}")
	elseif(NOT length EQUAL expected)
		report_problem("${member} has ${length} entries, expected ${expected}")
	endif()
	set(problems ${problems} PARENT_SCOPE)
endfunction()

string(JSON type ERROR_VARIABLE error TYPE "${json}")
if(error OR NOT type STREQUAL "OBJECT")
	message(FATAL_ERROR "  the report is not one JSON object: ${error}")
endif()

expect_positive("machine.cpus" machine cpus)
expect_positive("total_seconds" total_seconds)
expect_length(results ${RESULTS})
expect_length(limits ${LIMITS})

math(EXPR last_limit "${LIMITS} - 1")
foreach(i RANGE ${last_limit})
	foreach(field median min max cpu_percent)
		expect_positive("limits[${i}].per_second.${field}" limits ${i} per_second ${field})
	endforeach()
endforeach()

math(EXPR last_result "${RESULTS} - 1")
foreach(i RANGE ${last_result})
	foreach(field median min max cpu_percent)
		expect_positive("results[${i}].per_second.${field}" results ${i} per_second ${field})
	endforeach()
	expect_positive("results[${i}].units_per_run" results ${i} units_per_run)
	expect_positive("results[${i}].threads" results ${i} threads)
	expect_positive("results[${i}].ratio_to_one_thread" results ${i} ratio_to_one_thread)
	expect_positive("results[${i}].fraction_of_limit" results ${i} fraction_of_limit)
	expect_positive("results[${i}].ratio_to_legacy" results ${i} ratio_to_legacy)

	string(JSON locks ERROR_VARIABLE error GET "${json}" results ${i} locks)
	if(error)
		report_problem("results[${i}].locks: ${error}")
	endif()
	string(JSON lock_name ERROR_VARIABLE error GET "${json}" results ${i} locks 0 name)
	if(NOT lock_name STREQUAL "page_table_lock")
		report_problem("results[${i}].locks[0].name is '${lock_name}', expected page_table_lock")
	endif()
endforeach()

if(problems GREATER 0)
	message(FATAL_ERROR "  ${problems} problems in ${JSON_FILE}")
endif()
