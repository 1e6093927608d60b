# Area "jobs": the embedded demo task (io/demo_task.c) and the SLURM job scripts (jobs/) on a real single-node SLURM.
# Script paths are relative to tests/ (the test's working directory is the build's tests/ folder).
prefopt_script_test(jobs_demo_task jobs/demo_task_test.sh LABELS script)
