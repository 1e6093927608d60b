# Area "jobs": the embedded demo task (jobs/demo/demo_task.c) and the SLURM job scripts (jobs/) on a real single-node SLURM.
# Script paths are relative to tests/ (the test's working directory is the build's tests/ folder).
prefopt_script_test(jobs_demo_task jobs/demo_task_test.sh LABELS script)
# A real single-node SLURM (munged, slurmctld, slurmd started and stopped by the test; installs slurm-wlm and
# munge when missing and root). slurm_train_test needs `prefopt train` and skips (77) until it exists.
prefopt_script_test(jobs_slurm slurm/slurm_test.sh LABELS slurm)
prefopt_script_test(jobs_slurm_train slurm/slurm_train_test.sh LABELS slurm)
set_tests_properties(jobs_slurm jobs_slurm_train PROPERTIES RUN_SERIAL ON TIMEOUT 600)
# jobs/demo/demo.sh with a few steps (skips until pack/train/generate exist)
prefopt_script_test(jobs_demo_smoke jobs/demo_smoke_test.sh LABELS script)
