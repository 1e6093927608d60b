# --trace: OTF2 archive, Chrome JSON, MPI summary (2 and 4 ranks), trace-summary of a killed run.
prefopt_script_test(test_trace test_trace.sh)
