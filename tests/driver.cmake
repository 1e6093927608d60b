# The training driver and its tools: run control, plotting.
prefopt_mpi_test(test_runctl 2 test_runctl.c)
prefopt_script_test(test_plot test_plot.sh)
prefopt_script_test(test_train test_train.sh)
prefopt_script_test(test_generate_eval test_generate_eval.sh)
prefopt_script_test(test_trl_config test_trl_config.sh)
prefopt_script_test(test_dp_sync test_dp_sync.sh)
prefopt_script_test(test_lora_train test_lora_train.sh)
