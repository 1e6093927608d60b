# Tokenizers (issue 6): the byte-level default, tokenizer.json BPE against reference ids, the tokenize CLI.
prefopt_unit_test(test_tokenizer_byte test_tokenizer_byte.c)
prefopt_unit_test(test_tokenizer_hf test_tokenizer_hf.c)
prefopt_unit_test(test_tokenizer_errors test_tokenizer_errors.c)
prefopt_script_test(test_tokenize_cli test_tokenize_cli.sh)
