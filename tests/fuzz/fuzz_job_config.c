/* libFuzzer harness: the INI job config and command line of `prefopt train` (src/base/opts.c with the train option
 * table of src/train/train.c, which includes the objective and optimizer options).
 * Input: the job file (up to the first NUL), then command-line arguments separated by newlines; the harness runs
 * prefopt_opts_parse("train", argv = {train, --config FILE, args...}).
 * Checked: no crash or sanitizer report; an error is one line and, when only the file was given, names the
 * file; an accepted configuration written as RUN_DIR/config.ini is (prefopt_opts_write) reads back to the
 * same values (what a resumed run relies on), except strings that INI cannot carry (';', '#', newlines, edge
 * white space, over 150 bytes).
 * String options are strdup'd by the parser and never freed (opts.h): run with -detect_leaks=0. */
#include "fuzz_common.h"
#include "prefopt/opts.h"
#include "prefopt/train.h"

#include <ctype.h>
#include <math.h>

enum { MAXOPT = 256, MAXARG = 24 };

static int ini_safe(const char *s)
{
    size_t n = strlen(s);
    return n <= 150 && !strpbrk(s, ";#\n\r\"'[]=") &&
           (n == 0 || (!isspace((unsigned char)s[0]) && !isspace((unsigned char)s[n - 1])));
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static prefopt_train_params p1, p2;
    static prefopt_opt o1[MAXOPT], o2[MAXOPT];
    int n1 = prefopt_train_options(o1, MAXOPT, &p1), n2 = prefopt_train_options(o2, MAXOPT, &p2);
    if (n1 < 0 || n1 != n2)
        abort();
    const char *cfg = fuzz_tmp_path("job.ini"), *back = fuzz_tmp_path("config.ini");
    const unsigned char *nul = memchr(data, 0, size);
    size_t clen = nul ? (size_t)(nul - data) : size;
    fuzz_write_file(cfg, data, clen);
    char *args = NULL;
    char *argv[MAXARG + 4];
    int argc = 0;
    argv[argc++] = "train";
    argv[argc++] = "--config";
    argv[argc++] = (char *)cfg;
    if (nul) {
        size_t alen = size - clen - 1;
        args = malloc(alen + 1);
        memcpy(args, nul + 1, alen);
        args[alen] = '\0';
        for (char *s = args, *e; s && argc < MAXARG; s = e ? e + 1 : NULL) {
            e = strchr(s, '\n');
            if (e)
                *e = '\0';
            /* --help and --print-config print pages to stdout and stop: not what is fuzzed here */
            if (!strcmp(s, "--help") || !strcmp(s, "-h") || !strcmp(s, "--print-config"))
                continue;
            argv[argc++] = s;
        }
    }
    argv[argc] = NULL;
    char err[1024];
    int rc = prefopt_opts_parse("train", "fuzz", o1, n1, argc, argv, err, sizeof err);
    if (rc != PREFOPT_OPTS_OK) {
        if (rc != PREFOPT_OPTS_ERROR || !err[0] || strchr(err, '\n')) {
            fprintf(stderr, "fuzz_job_config: result %d with message '%s'\n", rc, err);
            abort();
        }
        if (!nul && strncmp(err, cfg, strlen(cfg))) {
            fprintf(stderr, "fuzz_job_config: the message does not name the job file: %s\n", err);
            abort();
        }
        free(args);
        return 0;
    }
    if (prefopt_opts_write("train", o1, n1, back))
        abort();
    char *argv2[] = {"train", "--config", (char *)back, NULL};
    rc = prefopt_opts_parse("train", "fuzz", o2, n2, 3, argv2, err, sizeof err);
    int strings_safe = 1;
    for (int i = 0; i < n1; i++)
        if (o1[i].type == PREFOPT_OPT_STRING && !ini_safe(*(const char **)o1[i].ptr))
            strings_safe = 0;
    if (rc != PREFOPT_OPTS_OK) {
        if (strings_safe) {
            fprintf(stderr, "fuzz_job_config: the written config.ini does not parse: %s\n", err);
            abort();
        }
        free(args);
        return 0;
    }
    for (int i = 0; i < n1; i++) {
        int ok = 1;
        switch (o1[i].type) {
        case PREFOPT_OPT_INT:
        case PREFOPT_OPT_FLAG:
            ok = *(int *)o1[i].ptr == *(int *)o2[i].ptr;
            break;
        case PREFOPT_OPT_LONG:
            ok = *(long *)o1[i].ptr == *(long *)o2[i].ptr;
            break;
        case PREFOPT_OPT_DOUBLE: {
            double a = *(double *)o1[i].ptr, b = *(double *)o2[i].ptr;
            ok = a == b || (isnan(a) && isnan(b));
            break;
        }
        case PREFOPT_OPT_STRING: {
            const char *a = *(const char **)o1[i].ptr, *b = *(const char **)o2[i].ptr;
            ok = !ini_safe(a) || !strcmp(a, b);
            break;
        }
        }
        if (!ok) {
            fprintf(stderr, "fuzz_job_config: option '%s' does not survive config.ini\n", o1[i].name);
            abort();
        }
    }
    free(args);
    return 0;
}
