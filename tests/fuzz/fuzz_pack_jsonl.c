/* libFuzzer harness: prefopt pack's JSONL parsing (io/pack/pack.c), end to end.
 * Input: byte 0 chooses the options (kind, truncation, limits, BOS/EOS, --unpair, eval split, tokenizer), the rest
 * is the JSONL file. pack has no per-line entry point, so the bytes are written to a file and prefopt_pack runs on
 * it with the byte-level tokenizer or a small byte-level BPE that has the ChatML markers (strict UTF-8).
 * Checked: no crash or sanitizer report; a failure fills a one-line message naming the input file; a success
 * leaves a dataset that prefopt_dataset_open validates (token scan included) with the counts pack reported, and
 * an input holding a NUL byte never succeeds. */
#include "fuzz_common.h"
#include "prefopt/dataset.h"
#include "prefopt/pack.h"

static prefopt_tokenizer *tok_byte, *tok_bpe;

/* GPT-2's bytes_to_unicode: the printable bytes map to themselves, the others to U+0100.. in order. */
static int byte_char(int b)
{
    static int map[256], done;
    if (!done) {
        int n = 0;
        for (int i = 0; i < 256; i++) {
            int printable = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF);
            map[i] = printable ? i : 256 + n++;
        }
        done = 1;
    }
    return map[b];
}

static prefopt_tokenizer *make_bpe(void)
{
    size_t cap = 1 << 16, n = 0;
    char *j = malloc(cap);
    n += (size_t)snprintf(j + n, cap - n,
                          "{\"added_tokens\":[{\"id\":256,\"content\":\"<|im_start|>\",\"special\":true},"
                          "{\"id\":257,\"content\":\"<|im_end|>\",\"special\":true},"
                          "{\"id\":258,\"content\":\"<|endoftext|>\",\"special\":true}],"
                          "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true},"
                          "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{");
    for (int b = 0; b < 256; b++)
        n += (size_t)snprintf(j + n, cap - n, "%s\"\\u%04x\":%d", b ? "," : "", byte_char(b), b);
    n += (size_t)snprintf(j + n, cap - n, ",\"\\u0120\\u0120\":259,\"ab\":260},\"merges\":[\"\\u0120 \\u0120\",\"a b\"]}}");
    const char *path = fuzz_tmp_path("bpe_tokenizer.json");
    fuzz_write_file(path, j, n);
    free(j);
    prefopt_tokenizer *t = NULL;
    prefopt_err err = {0};
    if (prefopt_tokenizer_load(path, &t, &err)) {
        fprintf(stderr, "fuzz_pack_jsonl: the fixed tokenizer does not load: %s\n", err.msg);
        abort();
    }
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    MPI_Init(argc, argv);
    tok_byte = prefopt_tokenizer_byte();
    tok_bpe = make_bpe();
    return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    if (size < 1)
        return 0;
    const unsigned o0 = data[0];
    const char *in = fuzz_tmp_path("in.jsonl"), *out = fuzz_tmp_path("out.h5"), *ev = fuzz_tmp_path("eval.h5");
    fuzz_write_file(in, data + 1, size - 1);
    static const char *const kinds[4] = {"auto", "pairs", "unpaired", "sft"};
    prefopt_pack_opts o;
    memset(&o, 0, sizeof o);
    o.input = in;
    o.output = out;
    o.kind = kinds[o0 & 3];
    o.truncation = (o0 >> 2) & 1 ? PREFOPT_TRUNC_DROP : PREFOPT_TRUNC_KEEP_END;
    o.max_len = (o0 >> 3) & 1 ? 12 : 0;
    o.max_prompt_len = (o0 >> 3) & 1 ? 5 : 0;
    o.add_bos = o.append_eos = (o0 >> 4) & 1;
    o.unpair = (o0 >> 5) & 1;
    if ((o0 >> 6) & 1) {
        o.eval_output = ev;
        o.eval_fraction = 0.5;
    }
    o.seed = 7;
    o.tok = (o0 >> 7) & 1 ? tok_bpe : tok_byte;
    prefopt_pack_stats st;
    prefopt_err err = {0};
    int rc = prefopt_pack(&o, &st, &err);
    fuzz_check_err(rc, &err);
    if (rc) {
        if (!strstr(err.msg, in) && strncmp(err.msg, "--", 2)) {
            fprintf(stderr, "fuzz_pack_jsonl: the message does not name the input: %s\n", err.msg);
            abort();
        }
        if (access(out, F_OK) == 0) {
            fprintf(stderr, "fuzz_pack_jsonl: failed (%s) but left %s\n", err.msg, out);
            abort();
        }
        return 0;
    }
    /* NUL bytes are refused (cJSON's strings would be cut at them, issue 22): a success had none */
    if (size > 1 && memchr(data + 1, 0, size - 1)) {
        fprintf(stderr, "fuzz_pack_jsonl: an input with a NUL byte was packed\n");
        abort();
    }
    for (int s = 0; s < (o.eval_output ? 2 : 1); s++) {
        prefopt_dataset *ds = NULL;
        prefopt_ds_expect ex = {prefopt_tokenizer_vocab_size(o.tok), prefopt_tokenizer_identity(o.tok), 0};
        if (prefopt_dataset_open(s ? ev : out, MPI_COMM_SELF, &ex, &ds, &err)) {
            fprintf(stderr, "fuzz_pack_jsonl: pack wrote a dataset that does not validate: %s\n", err.msg);
            abort();
        }
        const prefopt_ds_info *info = prefopt_dataset_info(ds);
        if (info->num_examples != st.kept[s] || info->kind != st.kind) {
            fprintf(stderr, "fuzz_pack_jsonl: dataset has %lld examples of kind %d, pack reported %lld of %d\n",
                    (long long)info->num_examples, (int)info->kind, (long long)st.kept[s], (int)st.kind);
            abort();
        }
        for (int f = 0; f < prefopt_ds_kind_nfields(info->kind); f++)
            if (info->num_tokens[f] != st.tokens[s][f]) {
                fprintf(stderr, "fuzz_pack_jsonl: field %d has %lld tokens, pack reported %lld\n", f,
                        (long long)info->num_tokens[f], (long long)st.tokens[s][f]);
                abort();
            }
        prefopt_dataset_close(ds);
    }
    unlink(out);
    unlink(ev);
    return 0;
}
