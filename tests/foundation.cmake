# Foundation: option tables, the CLI surface, the banner and BLAS binding, error agreement under MPI.
prefopt_unit_test(test_opts test_opts.c)
prefopt_mpi_test(test_agree 3 test_agree.c)
prefopt_script_test(test_cli test_cli.sh)
prefopt_script_test(test_bf16_cli test_bf16_cli.sh)
