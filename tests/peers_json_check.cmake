# Checks the shape of a `ptl bench peers --json` report with CMake's JSON
# parser, so the test needs no tool beyond the build's own.
#
# Usage: cmake -DJSON_FILE=PATH -DRESULTS=N -DKERNEL=N -DSWEEP=N -DRATIOS=N
#              -DTARGETS=N -P peers_json_check.cmake
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
expect_positive("page_metadata_bytes" page_metadata_bytes)
expect_length(results ${RESULTS})
expect_length(kernel ${KERNEL})
expect_length(sweep ${SWEEP})
expect_length(ratios ${RATIOS})
expect_length(targets ${TARGETS})

set(operations insert lookup-order lookup-random lookup-chase remove)

if(RESULTS GREATER 0)
	math(EXPR last "${RESULTS} - 1")
	foreach(i RANGE ${last})
		foreach(op ${operations})
			foreach(field median min max)
				expect_positive("results[${i}].per_second.${op}.${field}" results ${i} per_second ${op} ${field})
			endforeach()
		endforeach()
		# Under AddressSanitizer mallinfo2() does not see the heap, so
		# the peers' bytes per page read 0 there.
		if(NOT "$ENV{PTL_PEERS_HEAP_UNMEASURED}" STREQUAL "1")
			expect_positive("results[${i}].bytes_per_page" results ${i} bytes_per_page)
		endif()
		expect_positive("results[${i}].pages" results ${i} pages)
		expect_positive("results[${i}].threads" results ${i} threads)
	endforeach()
endif()

if(KERNEL GREATER 0)
	math(EXPR last "${KERNEL} - 1")
	foreach(i RANGE ${last})
		foreach(field median min max)
			expect_positive("kernel[${i}].per_second.${field}" kernel ${i} per_second ${field})
		endforeach()
	endforeach()
endif()

if(SWEEP GREATER 0)
	math(EXPR last "${SWEEP} - 1")
	foreach(i RANGE ${last})
		foreach(op insert lookup-random remove)
			expect_positive("sweep[${i}].ns_per_page.${op}" sweep ${i} ns_per_page ${op})
		endforeach()
	endforeach()
endif()

if(RATIOS GREATER 0)
	math(EXPR last "${RATIOS} - 1")
	foreach(i RANGE ${last})
		expect_positive("ratios[${i}].ratio" ratios ${i} ratio)
	endforeach()
endif()

if(TARGETS GREATER 0)
	math(EXPR last "${TARGETS} - 1")
	foreach(i RANGE ${last})
		expect_positive("targets[${i}].measured" targets ${i} measured)
		string(JSON met ERROR_VARIABLE error TYPE "${json}" targets ${i} met)
		if(NOT met STREQUAL "BOOLEAN")
			report_problem("targets[${i}].met is ${met}, expected a boolean")
		endif()
	endforeach()
endif()

if(problems GREATER 0)
	message(FATAL_ERROR "  ${problems} problems in ${JSON_FILE}")
endif()
