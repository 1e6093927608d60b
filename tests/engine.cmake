# Engine: distributed matrices and the tensor-parallel transformer.
prefopt_mpi_test(test_dmat 1 test_dmat.c)
prefopt_mpi_test(test_dmat 2 test_dmat.c)
prefopt_mpi_test(test_dmat 4 test_dmat.c)
prefopt_mpi_test(test_model_grad 1 test_model_grad.c test_model_util.c)
prefopt_mpi_test(test_model_grid 2 test_model_grid.c test_model_util.c)
prefopt_mpi_test(test_model_grid 4 test_model_grid.c test_model_util.c)
prefopt_mpi_test(test_model_steps 2 test_model_steps.c test_model_util.c)
