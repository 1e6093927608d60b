# Many ranks and emulated nodes (issue 17): oversubscribed 8-64 rank runs against one rank, the bad-input cases at
# 64 ranks, and training across Linux network namespaces, with mpiexec and with SLURM (label multinode; skipped where
# namespaces are refused).
prefopt_script_test(test_many_ranks test_many_ranks.sh LABELS "script;mpi;many")
set_tests_properties(test_many_ranks PROPERTIES TIMEOUT 600)
prefopt_script_test(test_errors_mpi_np64 test_errors_mpi.sh LABELS "script;mpi;many")
set_property(TEST test_errors_mpi_np64 APPEND PROPERTY ENVIRONMENT "PREFOPT_ERRORS_NP=64")
prefopt_script_test(test_multinode test_multinode.sh LABELS "script;mpi;multinode")
set_tests_properties(test_multinode PROPERTIES TIMEOUT 300)
prefopt_script_test(test_slurm_multinode test_slurm_multinode.sh LABELS "script;slurm;multinode")
set_tests_properties(test_slurm_multinode PROPERTIES TIMEOUT 600)
