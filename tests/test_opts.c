/* Option tables: defaults, INI job files, command-line precedence, and the error lines users see. */
#include "prefopt/opts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <unistd.h>

static int failures = 0;
#define CHECK(cond)                                                                                  \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                \
            failures++;                                                                              \
        }                                                                                            \
    } while (0)

static int steps;
static double beta;
static const char *loss;
static int resume;
static long seed;

static const prefopt_opt opts[] = {
    {"steps", PREFOPT_OPT_INT, &steps, "100", "optimizer steps"},
    {"beta", PREFOPT_OPT_DOUBLE, &beta, "0.1", "DPO beta"},
    {"loss", PREFOPT_OPT_STRING, &loss, "dpo", "objective"},
    {"resume", PREFOPT_OPT_FLAG, &resume, "0", "resume"},
    {"seed", PREFOPT_OPT_LONG, &seed, "1234", "seed"},
};
#define NOPTS ((int)(sizeof opts / sizeof opts[0]))

static int parse(char *err, size_t n, int argc, ...)
{
    char *argv[16];
    va_list ap;
    va_start(ap, argc);
    for (int i = 0; i < argc; i++)
        argv[i] = va_arg(ap, char *);
    va_end(ap);
    return prefopt_opts_parse("train", "test", opts, NOPTS, argc, argv, err, n);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

int main(void)
{
    char err[1024];
    CHECK(parse(err, sizeof err, 1, "train") == PREFOPT_OPTS_OK);
    CHECK(steps == 100 && beta == 0.1 && !strcmp(loss, "dpo") && resume == 0 && seed == 1234);

    CHECK(parse(err, sizeof err, 5, "train", "--steps", "7", "--beta=0.25", "--resume") == PREFOPT_OPTS_OK);
    CHECK(steps == 7 && beta == 0.25 && resume == 1);

    /* INI: [common] and [train] apply, other sections are skipped, the command line wins. */
    char path[64];
    snprintf(path, sizeof path, "opts_test_%d.ini", (int)getpid());
    /* [common] may hold keys of other subcommands; [eval] is not read by train */
    write_file(path, "[common]\nseed = 99\nother_cmd_key = 1\n[train]\nsteps = 50\nbeta = 0.5\nloss = ipo\n"
                     "[eval]\nnot_an_option = 3\n");
    CHECK(parse(err, sizeof err, 5, "train", "--config", path, "--steps", "9") == PREFOPT_OPTS_OK);
    CHECK(steps == 9 && beta == 0.5 && !strcmp(loss, "ipo") && seed == 99);

    write_file(path, "[train]\nsteps = 5\nbta = 0.5\n");
    CHECK(parse(err, sizeof err, 3, "train", "--config", path) == PREFOPT_OPTS_ERROR);
    CHECK(strstr(err, path) && strstr(err, ":3:") && strstr(err, "'bta'"));

    write_file(path, "[train]\nsteps = many\n");
    CHECK(parse(err, sizeof err, 3, "train", "--config", path) == PREFOPT_OPTS_ERROR);
    CHECK(strstr(err, ":2:") && strstr(err, "'many'") && strstr(err, "'steps'"));

    write_file(path, "[train\nsteps = 5\n");
    CHECK(parse(err, sizeof err, 3, "train", "--config", path) == PREFOPT_OPTS_ERROR);
    CHECK(strstr(err, "syntax"));
    unlink(path);

    CHECK(parse(err, sizeof err, 3, "train", "--config", "/nonexistent/job.ini") == PREFOPT_OPTS_ERROR);
    CHECK(strstr(err, "/nonexistent/job.ini") && strstr(err, "cannot open"));

    CHECK(parse(err, sizeof err, 2, "train", "--stepz") == PREFOPT_OPTS_ERROR);
    CHECK(strstr(err, "'--stepz'"));
    CHECK(parse(err, sizeof err, 3, "train", "--beta", "x1") == PREFOPT_OPTS_ERROR);
    CHECK(strstr(err, "'x1'") && strstr(err, "'beta'"));
    CHECK(parse(err, sizeof err, 2, "train", "--steps") == PREFOPT_OPTS_ERROR);
    CHECK(strstr(err, "needs a value"));
    CHECK(parse(err, sizeof err, 2, "train", "positional") == PREFOPT_OPTS_ERROR);
    CHECK(parse(err, sizeof err, 3, "train", "--steps", "99999999999") == PREFOPT_OPTS_ERROR);

    /* issue 18: --flag 0 as well as --flag=0; TRL names as aliases; "did you mean"; unknown sections */
    CHECK(parse(err, sizeof err, 4, "train", "--resume", "0", "--steps=2") == PREFOPT_OPTS_OK && resume == 0 && steps == 2);
    CHECK(parse(err, sizeof err, 3, "train", "--resume", "true") == PREFOPT_OPTS_OK && resume == 1);
    CHECK(parse(err, sizeof err, 3, "train", "--resume", "--steps=4") == PREFOPT_OPTS_OK && resume == 1 && steps == 4);
    CHECK(parse(err, sizeof err, 3, "train", "--loss_type", "ipo") == PREFOPT_OPTS_OK && !strcmp(loss, "ipo"));
    CHECK(parse(err, sizeof err, 2, "train", "--bta=0.2") == PREFOPT_OPTS_ERROR);
    CHECK(strstr(err, "did you mean '--beta'?"));
    CHECK(parse(err, sizeof err, 2, "train", "--frobnicate") == PREFOPT_OPTS_ERROR);
    CHECK(!strstr(err, "did you mean"));
    snprintf(path, sizeof path, "opts_sec_%d.ini", (int)getpid());
    write_file(path, "[train]\nloss_type = kto\nstepz = 3\n");
    CHECK(parse(err, sizeof err, 3, "train", "--config", path) == PREFOPT_OPTS_ERROR);
    CHECK(strstr(err, ":3:") && strstr(err, "'stepz'") && strstr(err, "did you mean 'steps'?"));
    static const char *const sections[] = {"train", "eval", "pack", NULL};
    prefopt_opts_set_sections(sections);
    write_file(path, "[common]\nseed = 5\n[trian]\nsteps = 3\n");
    CHECK(parse(err, sizeof err, 3, "train", "--config", path) == PREFOPT_OPTS_ERROR);
    CHECK(strstr(err, ":4:") && strstr(err, "unknown section [trian]") && strstr(err, "[eval]"));
    write_file(path, "[eval]\nnot_a_train_key = 1\n[train]\nlearning_rate_unused = 1\n");
    CHECK(parse(err, sizeof err, 3, "train", "--config", path) == PREFOPT_OPTS_ERROR && strstr(err, "[train]"));
    write_file(path, "[eval]\nnot_a_train_key = 1\n[train]\nsteps = 8\n");
    CHECK(parse(err, sizeof err, 3, "train", "--config", path) == PREFOPT_OPTS_OK && steps == 8);
    unlink(path);

    /* which options the user gave (the others kept their defaults) */
    CHECK(parse(err, sizeof err, 3, "train", "--beta", "0.1") == PREFOPT_OPTS_OK);
    CHECK(prefopt_opts_given(&beta) && !prefopt_opts_given(&steps) && !prefopt_opts_given(&loss));
    CHECK(parse(err, sizeof err, 2, "train", "--loss_type=ipo") == PREFOPT_OPTS_OK);
    CHECK(prefopt_opts_given(&loss) && !prefopt_opts_given(&beta));

    /* [common] keys: the hook says whether another subcommand reads them; listing mode records a table */
    static int other;
    static const prefopt_opt other_opts[] = {{"max-new-tokens", PREFOPT_OPT_INT, &other, "64", "generate's"}};
    prefopt_opts_listing(1);
    CHECK(prefopt_opts_parse("generate", "x", other_opts, 1, 1, (char *[]){"generate"}, err, sizeof err) ==
          PREFOPT_OPTS_EXIT);
    prefopt_opts_listing(0);
    CHECK(other == 0); /* listing applies no default */
    CHECK(prefopt_opts_listed("max_new_tokens") && prefopt_opts_listed("max_completion_length") &&
          !prefopt_opts_listed("beta"));
    prefopt_opts_set_key_lookup(prefopt_opts_listed);
    snprintf(path, sizeof path, "opts_common_%d.ini", (int)getpid());
    write_file(path, "[common]\nmax_new_tokens = 3\nsteps = 4\n");
    CHECK(parse(err, sizeof err, 3, "train", "--config", path) == PREFOPT_OPTS_OK && steps == 4);
    write_file(path, "[common]\nmax_new_tokens = 3\nmax_new_tokenz = 4\n");
    CHECK(parse(err, sizeof err, 3, "train", "--config", path) == PREFOPT_OPTS_ERROR);
    CHECK(strstr(err, ":3:") && strstr(err, "read by no subcommand") && strstr(err, "did you mean 'max-new-tokens'?"));
    write_file(path, "stepz = 4\n");
    CHECK(parse(err, sizeof err, 3, "train", "--config", path) == PREFOPT_OPTS_ERROR);
    CHECK(strstr(err, ":1:") && strstr(err, "at the top level") && strstr(err, "did you mean 'steps'?"));
    prefopt_opts_set_key_lookup(NULL);
    unlink(path);

    /* --print-config writes INI that parses back to the same values. */
    snprintf(path, sizeof path, "opts_round_%d.ini", (int)getpid());
    CHECK(parse(err, sizeof err, 5, "train", "--steps", "3", "--loss", "kto") == PREFOPT_OPTS_OK);
    CHECK(prefopt_opts_write("train", opts, NOPTS, path) == 0);
    CHECK(parse(err, sizeof err, 1, "train") == PREFOPT_OPTS_OK && steps == 100);
    CHECK(parse(err, sizeof err, 3, "train", "--config", path) == PREFOPT_OPTS_OK);
    CHECK(steps == 3 && !strcmp(loss, "kto"));
    /* floats as their shortest decimal, which reads back exactly */
    CHECK(parse(err, sizeof err, 3, "train", "--beta", "0.1") == PREFOPT_OPTS_OK);
    CHECK(prefopt_opts_write("train", opts, NOPTS, path) == 0);
    {
        FILE *f = fopen(path, "r");
        char text[512] = "";
        size_t got = f ? fread(text, 1, sizeof text - 1, f) : 0;
        text[got] = '\0';
        if (f)
            fclose(f);
        CHECK(strstr(text, "beta = 0.1\n") != NULL);
    }
    CHECK(parse(err, sizeof err, 3, "train", "--config", path) == PREFOPT_OPTS_OK && beta == 0.1);
    unlink(path);

    if (failures)
        fprintf(stderr, "test_opts: %d checks failed\n", failures);
    else
        printf("test_opts: all checks passed\n");
    return failures ? 1 : 0;
}
