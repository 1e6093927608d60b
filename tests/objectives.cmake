# Objectives, metrics and the optimizer (include/prefopt/{objectives,metrics,optim}.h).
prefopt_unit_test(test_objectives test_objectives.c)
