# Architecture (issue 15): the layering rule of README "Architecture" over includes and the library's calls,
# with planted violations that must be caught (tests/layering/).
prefopt_script_test(test_layering layering/test_layering.sh LABELS unit)
