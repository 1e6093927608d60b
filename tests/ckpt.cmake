# Checkpoints, model files, HF import/export (issue 7).
prefopt_script_test(test_hf test_hf.sh)
prefopt_mpi_test(test_ckpt 4 test_ckpt.c test_model_util.c)
# test_ckpt_kill is driven by its script (it has to be killed and restarted)
add_executable(test_ckpt_kill test_ckpt_kill.c test_model_util.c)
target_link_libraries(test_ckpt_kill PRIVATE prefopt_lib)
target_include_directories(test_ckpt_kill PRIVATE ${PREFOPT_PRIVATE_INCLUDES} ${CMAKE_SOURCE_DIR}/tests)
set_target_properties(test_ckpt_kill PROPERTIES ENABLE_EXPORTS ON)
prefopt_script_test(test_ckpt_kill_script test_ckpt_kill.sh)
# imported weights through the engine vs a numpy reference forward of the HF directory
add_executable(test_hf_forward test_hf_forward.c)
target_link_libraries(test_hf_forward PRIVATE prefopt_lib)
set_target_properties(test_hf_forward PROPERTIES ENABLE_EXPORTS ON)
prefopt_script_test(test_hf_forward_script test_hf_forward.sh)
