# Datasets: pack (JSONL -> HDF5), the reader, batches, sampler and cursor (issue 5).
prefopt_mpi_test(test_dataset 1 test_dataset.c)
prefopt_mpi_test(test_dataset 2 test_dataset.c)
set_tests_properties(test_dataset_np1 test_dataset_np2 PROPERTIES TIMEOUT 120)
prefopt_mpi_test(test_dataset_scale 2 test_dataset_scale.c)
set_tests_properties(test_dataset_scale_np2 PROPERTIES TIMEOUT 300)
prefopt_script_test(test_pack test_pack.sh)
set_tests_properties(test_pack PROPERTIES TIMEOUT 300)
