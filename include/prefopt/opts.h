/* prefopt: subcommand options. Each subcommand declares one table; the same table drives command-line
 * parsing, the job config file (INI), --help (every option with its default) and --print-config.
 * Precedence: defaults < config file (--config FILE) < command line. */
#ifndef PREFOPT_OPTS_H
#define PREFOPT_OPTS_H

#include <stddef.h>

typedef enum {
    PREFOPT_OPT_INT,    /* int* */
    PREFOPT_OPT_LONG,   /* long* */
    PREFOPT_OPT_DOUBLE, /* double* */
    PREFOPT_OPT_STRING, /* const char** (points into storage owned by the parser; never freed) */
    PREFOPT_OPT_FLAG    /* int*: "--name" sets 1; "--name=0", "--name 0" (0/1/true/false/yes/no/on/off), "name = 0" */
} prefopt_opt_type;

typedef struct {
    const char *name;  /* long name without dashes, e.g. "beta"; the INI key is the same (dashes or underscores) */
    prefopt_opt_type type;
    void *ptr;
    const char *def;   /* default as text ("" for an empty string); applied by prefopt_opts_parse */
    const char *help;
} prefopt_opt;

enum { PREFOPT_OPTS_OK = 0, PREFOPT_OPTS_EXIT = 1, PREFOPT_OPTS_ERROR = 2 };

/* Parses argv[1..argc-1] (argv[0] is the subcommand name). Handles --help (prints usage to stdout),
 * --config FILE (INI: keys in [cmd] and in [common] sections and at top level apply; unknown keys are errors
 * naming the file, line and key, with the closest option as "did you mean"; TRL's config names, e.g.
 * learning_rate or per_device_train_batch_size, are aliases of prefopt's) and --print-config (prints the effective configuration as INI).
 * Positional arguments are not accepted. Returns PREFOPT_OPTS_OK to go on, PREFOPT_OPTS_EXIT after --help or
 * --print-config, PREFOPT_OPTS_ERROR with a one-line message in err. Call on every rank with the same argv:
 * the result is the same everywhere and needs no agreement. */
int prefopt_opts_parse(const char *cmd, const char *summary, const prefopt_opt *opts, int nopts, int argc,
                       char **argv, char *err, size_t errlen);

/* The subcommands of the executable (NULL-terminated; kept, not copied): a job file's [section] that is neither
 * [common] nor one of them is an error naming it. Unset: every section is accepted. */
void prefopt_opts_set_sections(const char *const *names);

/* Hook for [common] keys of job files: any_reads(key) says whether some subcommand reads the key; a [common]
 * (or top-level) key that none reads is an error naming the file and line. Unset: every [common] key passes. */
void prefopt_opts_set_key_lookup(int (*any_reads)(const char *key));

/* Listing mode (on = 1): prefopt_opts_parse only records the names of the table it is given and returns
 * PREFOPT_OPTS_EXIT (no defaults applied, nothing printed), so a subcommand called in this mode lists its options;
 * prefopt_opts_listed(key) then says whether a recorded table has the key (dashes/underscores and TRL names alike). */
void prefopt_opts_listing(int on);
int prefopt_opts_listed(const char *key);

/* 1 when the last prefopt_opts_parse set the option pointing at ptr from a job file or the command line, 0 when it
 * kept its default (so a run directory's value may stand in for an option the user did not give). */
int prefopt_opts_given(const void *ptr);

/* The effective configuration as INI text ([cmd] section), malloc'd (free it); NULL when out of memory. */
char *prefopt_opts_text(const char *cmd, const prefopt_opt *opts, int nopts);

/* The entry of opts named name (dashes/underscores and TRL names alike), or NULL. */
const prefopt_opt *prefopt_opts_find(const prefopt_opt *opts, int nopts, const char *name);
/* Sets one option from text as a job file would (where: "FILE:LINE" for the message); 0, or -1 with err. */
int prefopt_opts_set_value(const prefopt_opt *o, const char *val, const char *where, char *err, size_t errlen);

/* Calls on(user, section, key, value) for each key of INI text (such as prefopt_opts_text wrote); on returns
 * nonzero to go on. Returns 0, or the line of the first syntax error. */
int prefopt_opts_read_text(const char *text,
                           int (*on)(void *user, const char *section, const char *key, const char *value), void *user);

/* Writes the effective configuration as INI ([cmd] section) to a file, for run directories (under a temporary
 * name, then renamed). */
int prefopt_opts_write(const char *cmd, const prefopt_opt *opts, int nopts, const char *path);

#endif
