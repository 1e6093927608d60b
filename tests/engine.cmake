# Engine: distributed matrices and the tensor-parallel transformer.
prefopt_unit_test(test_gemm_local test_gemm_local.c)
prefopt_bf16_test(test_gemm_local)
prefopt_mpi_test(test_dmat 1 test_dmat.c)
prefopt_mpi_test(test_dmat 2 test_dmat.c)
prefopt_mpi_test(test_dmat 4 test_dmat.c)
prefopt_mpi_test(test_gradsync 3 test_gradsync.c)
prefopt_mpi_test(test_model_grad 1 test_model_grad.c test_model_util.c)
prefopt_mpi_test(test_model_grid 2 test_model_grid.c test_model_util.c)
prefopt_mpi_test(test_model_grid 4 test_model_grid.c test_model_util.c)
prefopt_mpi_test(test_model_steps 2 test_model_steps.c test_model_util.c)
prefopt_mpi_test(test_model_hfref 1 test_model_hfref.c test_model_util.c)
prefopt_mpi_test(test_model_hfref 4 test_model_hfref.c test_model_util.c)
# the same models in bf16 mixed precision against the float64 reference, within the derived bf16 bound
add_test(NAME test_model_hfref_bf16_np4
         COMMAND ${PREFOPT_MPIEXEC} -n 4 ${PREFOPT_MPI_FLAGS} $<TARGET_FILE:test_model_hfref_exe> bf16
         WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
set_tests_properties(test_model_hfref_bf16_np4 PROPERTIES LABELS mpi TIMEOUT 600 SKIP_RETURN_CODE 77
                     ENVIRONMENT "PREFOPT_SOURCE_DIR=${CMAKE_SOURCE_DIR};BLIS_NUM_THREADS=1;OMP_NUM_THREADS=1;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1")
prefopt_bf16_test(test_model_hfref_bf16_np4)
foreach(np 1 2 4)
  prefopt_mpi_test(test_dmat_bf16 ${np} test_dmat_bf16.c)
  prefopt_bf16_test(test_dmat_bf16_np${np})
endforeach()
foreach(np 1 2 4)
  prefopt_mpi_test(test_model_bf16 ${np} test_model_bf16.c test_model_util.c)
  prefopt_bf16_test(test_model_bf16_np${np})
endforeach()
