# Tokenizers (issue 6): the byte-level default, tokenizer.json BPE against reference ids, the tokenize CLI.
prefopt_unit_test(test_tokenizer_byte test_tokenizer_byte.c)
prefopt_unit_test(test_tokenizer_hf test_tokenizer_hf.c)
prefopt_unit_test(test_tokenizer_errors test_tokenizer_errors.c)
prefopt_script_test(test_tokenize_cli test_tokenize_cli.sh)
if(PREFOPT_FUZZ)
  # libFuzzer harness for tokenizer.json loading + encode/decode (clang; how to run: top of fuzz_tokenizer.c;
  # tests/fuzz/run_fuzz.sh runs it too). The top CMakeLists instruments the library when PREFOPT_FUZZ is on.
  add_executable(fuzz_tokenizer fuzz_tokenizer.c)
  target_link_libraries(fuzz_tokenizer PRIVATE prefopt_lib)
  target_compile_options(fuzz_tokenizer PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_tokenizer PRIVATE -fsanitize=fuzzer,address,undefined)
  set_target_properties(fuzz_tokenizer PROPERTIES ENABLE_EXPORTS ON)
endif()

# Chat templates (issue 18): the interpreter's own checks (loading, spans, errors), and every vendored real
# template rendered byte-identically to python3-jinja2 set up as transformers sets it up.
prefopt_unit_test(test_chat_template test_chat_template.c)
add_executable(chat_template_tool chat_template_tool.c)
target_link_libraries(chat_template_tool PRIVATE prefopt_lib)
set_target_properties(chat_template_tool PROPERTIES ENABLE_EXPORTS ON)
prefopt_script_test(test_chat_template_ref test_chat_template_ref.sh)
prefopt_script_test(test_pack_chat test_pack_chat.sh)
prefopt_script_test(test_chat_day test_chat_day.sh)
