# Checkpoints, model files, HF import/export (issue 7).
prefopt_script_test(test_hf test_hf.sh)
prefopt_mpi_test(test_ckpt 4 test_ckpt.c test_model_util.c)
# test_ckpt_kill is driven by its script (it has to be killed and restarted)
add_executable(test_ckpt_kill test_ckpt_kill.c test_model_util.c)
target_link_libraries(test_ckpt_kill PRIVATE prefopt_lib)
target_include_directories(test_ckpt_kill PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_SOURCE_DIR}/tests)
set_target_properties(test_ckpt_kill PROPERTIES ENABLE_EXPORTS ON)
prefopt_script_test(test_ckpt_kill_script test_ckpt_kill.sh)
