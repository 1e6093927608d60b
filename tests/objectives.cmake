# Objectives, metrics and the optimizer (include/prefopt/{objectives,metrics,optim}.h).
prefopt_unit_test(test_objectives test_objectives.c)
prefopt_mpi_test(test_metrics 2 test_metrics.c)
prefopt_unit_test(test_optim test_optim.c)
