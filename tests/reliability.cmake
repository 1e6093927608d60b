# Reliability (issue 11): the error discipline under MPI and injected faults. The fuzz harnesses of tests/fuzz are
# built with -DPREFOPT_FUZZ=ON (clang) and run by tests/fuzz/run_fuzz.sh from tests/run.sh, not by ctest.
prefopt_script_test(test_errors_mpi test_errors_mpi.sh LABELS "script;mpi")
prefopt_mpi_test(test_memcheck 2 test_memcheck.c)
prefopt_script_test(test_faults test_faults.sh LABELS "script;mpi")
# The red team's cases of issue 22 (data loss on a full disk, crashes, silent wrong results, unclear messages)
prefopt_script_test(test_redteam test_redteam.sh LABELS "script;mpi")
