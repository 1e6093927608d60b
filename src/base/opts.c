/* Option tables: command line, INI job files (inih), --help and --print-config from one description. */
#define _GNU_SOURCE
#include "prefopt/opts.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static int name_eq(const char *a, const char *b)
{
    /* "label-smoothing" == "label_smoothing" */
    for (; *a && *b; a++, b++) {
        char x = *a == '_' ? '-' : *a, y = *b == '_' ? '-' : *b;
        if (x != y)
            return 0;
    }
    return *a == *b;
}

static const prefopt_opt *find_exact(const prefopt_opt *opts, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (name_eq(opts[i].name, name))
            return &opts[i];
    return NULL;
}

/* TRL's DPOConfig / SFTConfig / KTOConfig (and transformers' TrainingArguments) names of prefopt options, so a
 * TRL user's keys work in job files and on the command line; used only where the subcommand has the target. */
static const char *const trl_aliases[][2] = {
    {"learning_rate", "lr"},
    {"per_device_train_batch_size", "micro-batch-size"},
    {"per_device_eval_batch_size", "eval-batch-size"},
    {"num_train_epochs", "epochs"},
    {"max_length", "max-len"},
    {"max_prompt_length", "max-prompt-len"},
    {"max_completion_length", "max-new-tokens"},
    {"loss_type", "loss"},
    {"lr_scheduler_type", "lr-scheduler"},
    {"adam_epsilon", "adam-eps"},
    {"logging_steps", "log-interval"},
    {"save_steps", "save-interval"},
    {"eval_steps", "eval-interval"},
    {"output_dir", "run-dir"},
    {"gradient_checkpointing", "activation-checkpoint"},
    {"dataset_text_field", "text"},
    {"f_divergence_type", "f-divergence"},
    {"ref_model_mixup_alpha", "ref-mixup-alpha"},
    {"ref_model_sync_steps", "ref-sync-steps"},
};

static const prefopt_opt *find(const prefopt_opt *opts, int n, const char *name)
{
    const prefopt_opt *o = find_exact(opts, n, name);
    for (size_t i = 0; !o && i < sizeof trl_aliases / sizeof *trl_aliases; i++)
        if (name_eq(trl_aliases[i][0], name))
            o = find_exact(opts, n, trl_aliases[i][1]);
    return o;
}

/* Levenshtein distance of two option names (dashes and underscores equal), capped at 9 */
static int distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 60 || lb > 60)
        return 9;
    int d[61][61];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            char x = a[i - 1] == '_' ? '-' : a[i - 1], y = b[j - 1] == '_' ? '-' : b[j - 1];
            int best = d[i - 1][j - 1] + (x != y);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            d[i][j] = best;
        }
    return d[la][lb] > 9 ? 9 : d[la][lb];
}

/* " (did you mean '--x'?)" for the closest option within a third of the name's length, else "" */
static void did_you_mean_in(const prefopt_opt *opts, int n, const char *const *names, size_t nnames,
                            const char *name, const char *prefix, char *out, size_t outlen)
{
    int best = 99;
    const char *hit = NULL;
    for (int i = 0; i < n; i++) {
        int d = distance(name, opts[i].name);
        if (d < best)
            best = d, hit = opts[i].name;
    }
    for (size_t i = 0; i < nnames; i++) {
        int d = distance(name, names[i]);
        if (d < best)
            best = d, hit = names[i];
    }
    /* a misspelt TRL name (learnig_rate) is closest to the TRL name, where its prefopt option is at hand */
    for (size_t i = 0; i < sizeof trl_aliases / sizeof *trl_aliases; i++) {
        int have = find_exact(opts, n, trl_aliases[i][1]) != NULL;
        for (size_t j = 0; j < nnames && !have; j++)
            have = name_eq(names[j], trl_aliases[i][1]);
        int d = have ? distance(name, trl_aliases[i][0]) : 99;
        if (d < best)
            best = d, hit = trl_aliases[i][0];
    }
    int limit = (int)strlen(name) / 3;
    if (limit < 1)
        limit = 1;
    if (hit && best <= limit)
        snprintf(out, outlen, " (did you mean '%s%s'?)", prefix, hit);
    else
        out[0] = '\0';
}

static void did_you_mean(const prefopt_opt *opts, int n, const char *name, const char *prefix, char *out,
                         size_t outlen)
{
    did_you_mean_in(opts, n, NULL, 0, name, prefix, out, outlen);
}

/* the subcommands the executable has, for [section] checks of job files (set by main) */
static const char *const *known_sections;

void prefopt_opts_set_sections(const char *const *names) { known_sections = names; }

/* Whether any subcommand reads a [common] key (set by main, which lists every subcommand's table). */
static int (*any_reads_key)(const char *key);

void prefopt_opts_set_key_lookup(int (*any_reads)(const char *key)) { any_reads_key = any_reads; }

/* Listing mode: prefopt_opts_parse records the table's names and returns PREFOPT_OPTS_EXIT, touching nothing. */
static int listing;
static char **listed;
static size_t nlisted, caplisted;

void prefopt_opts_listing(int on) { listing = on; }

static void list_table(const prefopt_opt *opts, int n)
{
    for (int i = 0; i < n; i++) {
        if (nlisted == caplisted) {
            size_t cap = caplisted ? 2 * caplisted : 256;
            char **grown = realloc(listed, cap * sizeof *grown);
            if (!grown)
                return;
            listed = grown, caplisted = cap;
        }
        char *copy = strdup(opts[i].name);
        if (copy)
            listed[nlisted++] = copy;
    }
}

static int alias_target(const char *name, const char **target)
{
    for (size_t i = 0; i < sizeof trl_aliases / sizeof *trl_aliases; i++)
        if (name_eq(trl_aliases[i][0], name)) {
            *target = trl_aliases[i][1];
            return 1;
        }
    return 0;
}

int prefopt_opts_listed(const char *key)
{
    const char *alias = NULL;
    int has_alias = alias_target(key, &alias);
    for (size_t i = 0; i < nlisted; i++)
        if (name_eq(listed[i], key) || (has_alias && name_eq(listed[i], alias)))
            return 1;
    return 0;
}

/* The options the last prefopt_opts_parse set from a job file or the command line (not from defaults). */
static const void *given[256];
static int ngiven;

static void mark_given(const prefopt_opt *o)
{
    for (int i = 0; i < ngiven; i++)
        if (given[i] == o->ptr)
            return;
    if (ngiven < (int)(sizeof given / sizeof *given))
        given[ngiven++] = o->ptr;
}

int prefopt_opts_given(const void *ptr)
{
    for (int i = 0; i < ngiven; i++)
        if (given[i] == ptr)
            return 1;
    return 0;
}

static int set_value(const prefopt_opt *o, const char *val, char *err, size_t errlen, const char *where)
{
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case PREFOPT_OPT_INT: {
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end || v < -2147483647L || v > 2147483647L)
            goto bad;
        *(int *)o->ptr = (int)v;
        return 0;
    }
    case PREFOPT_OPT_LONG: {
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end)
            goto bad;
        *(long *)o->ptr = v;
        return 0;
    }
    case PREFOPT_OPT_DOUBLE: {
        double v = strtod(val, &end);
        if (errno || end == val || *end || !isfinite(v)) /* nan and inf are never a setting (issue 22) */
            goto bad;
        *(double *)o->ptr = v;
        return 0;
    }
    case PREFOPT_OPT_STRING: {
        /* Option strings live as long as the process (callers keep pointers into them freely); the registry
         * keeps them reachable, so leak checkers do not report the values of options that went out of scope. */
        static char **owned;
        static size_t nowned, capowned;
        if (nowned == capowned) {
            size_t cap = capowned ? 2 * capowned : 64;
            char **grown = realloc(owned, cap * sizeof *grown);
            if (!grown)
                goto bad;
            owned = grown, capowned = cap;
        }
        char *copy = strdup(val);
        if (!copy)
            goto bad;
        owned[nowned++] = copy;
        *(const char **)o->ptr = copy;
        return 0;
    }
    case PREFOPT_OPT_FLAG:
        if (!strcasecmp(val, "1") || !strcasecmp(val, "true") || !strcasecmp(val, "yes") || !strcasecmp(val, "on"))
            *(int *)o->ptr = 1;
        else if (!strcasecmp(val, "0") || !strcasecmp(val, "false") || !strcasecmp(val, "no") ||
                 !strcasecmp(val, "off"))
            *(int *)o->ptr = 0;
        else
            goto bad;
        return 0;
    }
bad:
    snprintf(err, errlen, "%s: bad value '%s' for option '%s' (%s expected)", where, val, o->name,
             o->type == PREFOPT_OPT_INT || o->type == PREFOPT_OPT_LONG ? "an integer"
             : o->type == PREFOPT_OPT_DOUBLE                          ? "a finite number"
             : o->type == PREFOPT_OPT_FLAG                            ? "true or false"
                                                                      : "a string");
    return -1;
}

static const char *type_word(prefopt_opt_type t)
{
    switch (t) {
    case PREFOPT_OPT_INT:
    case PREFOPT_OPT_LONG:
        return "INT";
    case PREFOPT_OPT_DOUBLE:
        return "NUM";
    case PREFOPT_OPT_STRING:
        return "STR";
    default:
        return "";
    }
}

static void print_help(const char *cmd, const char *summary, const prefopt_opt *opts, int n)
{
    printf("usage: prefopt %s [options]\n\n%s\n\noptions (default in brackets):\n", cmd, summary);
    for (int i = 0; i < n; i++) {
        char lhs[64];
        snprintf(lhs, sizeof lhs, "--%s%s%s", opts[i].name, opts[i].type == PREFOPT_OPT_FLAG ? "" : " ",
                 type_word(opts[i].type));
        printf("  %-28s %s [%s]\n", lhs, opts[i].help, opts[i].def && *opts[i].def ? opts[i].def : "");
    }
    printf("  %-28s %s\n  %-28s %s\n  %-28s %s\n", "--config FILE",
           "read options from an INI job file ([common] and [" /* keep on one line */
           "<subcommand>] sections); the command line wins",
           "--print-config", "print the effective configuration and exit", "--help", "this text");
}

static void print_value(FILE *f, const prefopt_opt *o)
{
    switch (o->type) {
    case PREFOPT_OPT_INT:
    case PREFOPT_OPT_FLAG:
        fprintf(f, "%d", *(int *)o->ptr);
        break;
    case PREFOPT_OPT_LONG:
        fprintf(f, "%ld", *(long *)o->ptr);
        break;
    case PREFOPT_OPT_DOUBLE: { /* the shortest decimal that reads back as the same double: 0.1, not 0.1000...01 */
        double v = *(double *)o->ptr;
        char b[40];
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(b, sizeof b, "%.*g", prec, v);
            if (strtod(b, NULL) == v)
                break;
        }
        fputs(b, f);
        break;
    }
    case PREFOPT_OPT_STRING: {
        const char *s = *(const char **)o->ptr;
        fprintf(f, "%s", s ? s : "");
        break;
    }
    }
}

static void write_config(FILE *f, const char *cmd, const prefopt_opt *opts, int n)
{
    fprintf(f, "[%s]\n", cmd);
    for (int i = 0; i < n; i++) {
        fprintf(f, "%s = ", opts[i].name);
        print_value(f, &opts[i]);
        fputc('\n', f);
    }
}

/* Debian's libinih is built without INI_HANDLER_LINENO, so the reader below counts lines for messages. */
typedef struct {
    FILE *f;
    int line;
} line_reader;

typedef struct {
    const char *cmd, *path;
    const prefopt_opt *opts;
    int n;
    char *err;
    size_t errlen;
    int failed;
    const line_reader *reader;
} ini_ctx;

static char *read_line(char *str, int num, void *stream)
{
    line_reader *r = stream;
    char *s = fgets(str, num, r->f);
    if (s)
        r->line++;
    return s;
}

static int on_ini_value(void *user, const char *section, const char *name, const char *value)
{
    ini_ctx *c = user;
    int lineno = c->reader->line;
    if (c->failed)
        return 0;
    char where[512];
    snprintf(where, sizeof where, "%s:%d", c->path, lineno);
    /* Sections for other subcommands are skipped, so one job file can serve train, eval and generate; a section
     * that is no subcommand (a misspelling: [trian]) would be skipped silently, so it is an error. */
    if (section[0] && strcmp(section, "common") && !name_eq(section, c->cmd)) {
        int known = !known_sections;
        for (const char *const *k = known_sections; k && *k && !known; k++)
            known = name_eq(*k, section);
        if (!known) {
            char list[512] = "[common]";
            for (const char *const *k = known_sections; *k; k++) {
                size_t l = strlen(list);
                snprintf(list + l, sizeof list - l, ", [%s]", *k);
            }
            snprintf(c->err, c->errlen, "%s: unknown section [%s] (sections: %s)", where, section, list);
            c->failed = 1;
            return 0;
        }
        return 1;
    }
    const prefopt_opt *o = find(c->opts, c->n, name);
    if (!o) {
        int common = !strcmp(section, "common") || !section[0];
        /* [common] keys may belong to another subcommand; one that no subcommand reads is a mistake */
        if (common && (!any_reads_key || any_reads_key(name)))
            return 1;
        char hint[160];
        if (common) /* the closest key of any subcommand */
            did_you_mean_in(c->opts, c->n, (const char *const *)listed, nlisted, name, "", hint, sizeof hint);
        else
            did_you_mean(c->opts, c->n, name, "", hint, sizeof hint);
        if (common)
            snprintf(c->err, c->errlen, "%s: option '%s' %s is read by no subcommand%s", where, name,
                     section[0] ? "in section [common]" : "at the top level", hint);
        else
            snprintf(c->err, c->errlen, "%s: unknown option '%s' in section [%s]%s", where, name, section, hint);
        c->failed = 1;
        return 0;
    }
    if (set_value(o, value, c->err, c->errlen, where)) {
        c->failed = 1;
        return 0;
    }
    mark_given(o);
    return 1;
}

int prefopt_opts_parse(const char *cmd, const char *summary, const prefopt_opt *opts, int nopts, int argc,
                       char **argv, char *err, size_t errlen)
{
    err[0] = '\0';
    if (listing) {
        list_table(opts, nopts);
        return PREFOPT_OPTS_EXIT;
    }
    ngiven = 0;
    for (int i = 0; i < nopts; i++)
        if (set_value(&opts[i], opts[i].def ? opts[i].def : "", err, errlen, "default") &&
            opts[i].type != PREFOPT_OPT_STRING) {
            /* An empty default for a number means "0". */
            if (opts[i].def && *opts[i].def)
                return PREFOPT_OPTS_ERROR;
            err[0] = '\0';
            set_value(&opts[i], "0", err, errlen, "default");
        }

    int print_config = 0;
    /* First pass: --help, --config and --print-config, so the file applies before the command line. */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            print_help(cmd, summary, opts, nopts);
            return PREFOPT_OPTS_EXIT;
        }
        if (!strcmp(argv[i], "--print-config"))
            print_config = 1;
        const char *path = NULL;
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "option '--config' needs a file name");
                return PREFOPT_OPTS_ERROR;
            }
            path = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9))
            path = argv[i] + 9;
        if (path) {
            line_reader r = {fopen(path, "r"), 0};
            if (!r.f) {
                snprintf(err, errlen, "%s: cannot open config file: %s", path, strerror(errno));
                return PREFOPT_OPTS_ERROR;
            }
            ini_ctx c = {cmd, path, opts, nopts, err, errlen, 0, &r};
            int rc = ini_parse_stream(read_line, &r, on_ini_value, &c);
            fclose(r.f);
            if (c.failed)
                return PREFOPT_OPTS_ERROR;
            if (rc > 0) {
                snprintf(err, errlen, "%s:%d: INI syntax error", path, rc);
                return PREFOPT_OPTS_ERROR;
            }
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--print-config"))
            continue;
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (!strncmp(a, "--config=", 9))
            continue;
        if (strncmp(a, "--", 2)) {
            snprintf(err, errlen, "unexpected argument '%s' (options start with --; see prefopt %s --help)", a, cmd);
            return PREFOPT_OPTS_ERROR;
        }
        char name[128];
        const char *eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
        if (len >= sizeof name)
            len = sizeof name - 1;
        memcpy(name, a + 2, len);
        name[len] = '\0';
        const prefopt_opt *o = find(opts, nopts, name);
        if (!o) {
            char hint[160];
            did_you_mean(opts, nopts, name, "--", hint, sizeof hint);
            snprintf(err, errlen, "unknown option '--%s'%s (see prefopt %s --help)", name, hint, cmd);
            return PREFOPT_OPTS_ERROR;
        }
        const char *val;
        if (eq)
            val = eq + 1;
        else if (o->type == PREFOPT_OPT_FLAG) { /* --flag, or --flag 0 / --flag false as well as --flag=0 */
            const char *nx = i + 1 < argc ? argv[i + 1] : "";
            static const char *const words[] = {"0", "1", "true", "false", "yes", "no", "on", "off"};
            val = "1";
            for (size_t k = 0; k < sizeof words / sizeof *words; k++)
                if (!strcasecmp(nx, words[k])) {
                    val = argv[++i];
                    break;
                }
        }
        else if (i + 1 < argc)
            val = argv[++i];
        else {
            snprintf(err, errlen, "option '--%s' needs a value", name);
            return PREFOPT_OPTS_ERROR;
        }
        if (set_value(o, val, err, errlen, "command line"))
            return PREFOPT_OPTS_ERROR;
        mark_given(o);
    }
    if (print_config) {
        write_config(stdout, cmd, opts, nopts);
        return PREFOPT_OPTS_EXIT;
    }
    return PREFOPT_OPTS_OK;
}

char *prefopt_opts_text(const char *cmd, const prefopt_opt *opts, int nopts)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    write_config(f, cmd, opts, nopts);
    if (fclose(f)) {
        free(buf);
        return NULL;
    }
    return buf;
}

int prefopt_opts_set_value(const prefopt_opt *o, const char *val, const char *where, char *err, size_t errlen)
{
    return set_value(o, val, err, errlen, where);
}

const prefopt_opt *prefopt_opts_find(const prefopt_opt *opts, int nopts, const char *name)
{
    return find(opts, nopts, name);
}

int prefopt_opts_read_text(const char *text,
                           int (*on)(void *user, const char *section, const char *key, const char *value), void *user)
{
    return ini_parse_string(text, on, user);
}

int prefopt_opts_write(const char *cmd, const prefopt_opt *opts, int nopts, const char *path)
{
    /* under a temporary name, renamed when complete: a reader never sees half a config */
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    write_config(f, cmd, opts, nopts);
    if (fclose(f) || rename(tmp, path)) {
        unlink(tmp);
        return -1;
    }
    return 0;
}
