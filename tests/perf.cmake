# perf: `prefopt bench` (JSON fields, FLOP counts against the hand formula, loss ln 2 at step 1) and the PMPI
# interposer libprefopt_pmpi.so under a 2-rank job (its summary lists MPI_Allreduce with bytes > 0). Tests never
# assert timings.
prefopt_script_test(test_perf test_perf.sh LABELS "script;perf")
# perf/scaling_model.py (issue 17): its timelines against closed forms, its defaults against the original table.
prefopt_script_test(test_scaling_model test_scaling_model.sh LABELS "script;perf")
