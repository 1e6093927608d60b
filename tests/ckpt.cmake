# Checkpoints, model files, HF import/export (issue 7).
prefopt_script_test(test_hf test_hf.sh)
