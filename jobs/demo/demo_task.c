/* prefopt_demo_task: the embedded demo's task. A deterministic generator of programmatically checkable tasks
 * (no network) and the checker that scores generated completions.
 *
 *   prefopt_demo_task gen --out-dir DIR --seed S [--task add|reverse] [--digits D] [--n-sft N] [--n-pairs N]
 *                         [--n-eval N] [--wrong-frac F]
 *       writes DIR/sft.jsonl          {"prompt","completion"}   (a share F of the completions is wrong)
 *              DIR/pairs.jsonl        {"prompt","chosen","rejected"}   (correct vs plausible wrong answer)
 *              DIR/eval_prompts.jsonl {"prompt","answer"}   (held out: no prompt occurs in sft or pairs)
 *              DIR/eval_pairs.jsonl   {"prompt","chosen","rejected"} on the held-out prompts (reward accuracy)
 *   prefopt_demo_task check --prompts eval_prompts.jsonl --generations gen.jsonl [--label NAME]
 *       reads generations {"index":i,"prompt":"...","completion":"...","ids":[...]} (one per eval prompt),
 *       prints "accuracy A (c/n)" and one JSON line {"label","n","correct","accuracy","well_formed"[,"kl"]}; with
 *       "logp" and "ref_logp" in every line (prefopt generate --ref), "kl" = mean(logp - ref_logp): for sampled
 *       generations an estimate of KL(policy || reference) in nats per sample.
 *
 * Tasks: "add": "12+345=" -> "357" (operands 0 .. 10^D-1); wrong answers are a dropped carry or one digit off
 * by one. "reverse": "rev:abcd=" -> "dcba" (3-6 letters a-h); wrong answers swap two neighbouring letters or
 * change one letter (same length). Output depends only on the arguments: the generator is splitmix64 and
 * the JSON is written unformatted in a fixed key order, so the same seed gives byte-identical files. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- deterministic random numbers --------------------------------------------------------------------- */
typedef struct {
    uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [0, n) without modulo bias */
static uint64_t rng_below(rng_t *r, uint64_t n)
{
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = rng_next(r);
    while (x >= lim);
    return x % n;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "prefopt_demo_task: error: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* ---- a set of strings (prompts), open addressing on FNV-1a ------------------------------------------- */
typedef struct {
    char **slot;
    size_t cap, n;
} strset;

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static int strset_has(const strset *t, const char *s)
{
    if (!t->cap)
        return 0;
    for (size_t i = fnv1a(s) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        if (!t->slot[i])
            return 0;
        if (!strcmp(t->slot[i], s))
            return 1;
    }
}

static void strset_add(strset *t, const char *s)
{
    if (2 * (t->n + 1) > t->cap) {
        strset old = *t;
        t->cap = old.cap ? 2 * old.cap : 1024;
        t->slot = calloc(t->cap, sizeof *t->slot);
        if (!t->slot)
            die("out of memory");
        t->n = 0;
        for (size_t i = 0; i < old.cap; i++)
            if (old.slot[i]) {
                size_t j = fnv1a(old.slot[i]) & (t->cap - 1);
                while (t->slot[j])
                    j = (j + 1) & (t->cap - 1);
                t->slot[j] = old.slot[i];
                t->n++;
            }
        free(old.slot);
    }
    size_t i = fnv1a(s) & (t->cap - 1);
    for (; t->slot[i]; i = (i + 1) & (t->cap - 1))
        if (!strcmp(t->slot[i], s))
            return;
    t->slot[i] = strdup(s);
    if (!t->slot[i])
        die("out of memory");
    t->n++;
}

static void strset_free(strset *t)
{
    for (size_t i = 0; i < t->cap; i++)
        free(t->slot[i]);
    free(t->slot);
    memset(t, 0, sizeof *t);
}

/* ---- the tasks -------------------------------------------------------------------------------------- */
enum { TASK_ADD, TASK_REVERSE };

typedef struct {
    int task;
    int digits;
} task_cfg;

typedef struct {
    char prompt[64];
    char answer[32];
    unsigned long a, b; /* add: the operands */
} item;

static unsigned long pow10ul(int d)
{
    unsigned long p = 1;
    while (d-- > 0)
        p *= 10;
    return p;
}

/* Size of the prompt space (for checking that the requested counts fit). */
static double task_space(const task_cfg *c)
{
    if (c->task == TASK_ADD) {
        double m = (double)pow10ul(c->digits);
        return m * m;
    }
    double s = 0;
    for (int len = 3; len <= 6; len++) {
        double p = 1;
        for (int k = 0; k < len; k++)
            p *= 8;
        s += p;
    }
    return s;
}

static void task_draw(const task_cfg *c, rng_t *r, item *it)
{
    memset(it, 0, sizeof *it);
    if (c->task == TASK_ADD) {
        unsigned long m = pow10ul(c->digits);
        it->a = (unsigned long)rng_below(r, m);
        it->b = (unsigned long)rng_below(r, m);
        snprintf(it->prompt, sizeof it->prompt, "%lu+%lu=", it->a, it->b);
        snprintf(it->answer, sizeof it->answer, "%lu", it->a + it->b);
    } else {
        int len = 3 + (int)rng_below(r, 4);
        char w[8];
        for (int k = 0; k < len; k++)
            w[k] = (char)('a' + rng_below(r, 8));
        w[len] = 0;
        snprintf(it->prompt, sizeof it->prompt, "rev:%s=", w);
        for (int k = 0; k < len; k++)
            it->answer[k] = w[len - 1 - k];
        it->answer[len] = 0;
    }
}

/* Digit-wise sum that forgets every carry, e.g. 58+67 -> "15" (the correct answer is 125). */
static void add_no_carry(unsigned long a, unsigned long b, char *out, size_t outlen)
{
    unsigned long r = 0, p = 1;
    while (a || b) {
        r += ((a % 10 + b % 10) % 10) * p;
        p *= 10;
        a /= 10;
        b /= 10;
    }
    snprintf(out, outlen, "%lu", r);
}

/* A plausible wrong answer, never equal to the correct one. */
static void task_wrong(const task_cfg *c, rng_t *r, const item *it, char *out, size_t outlen)
{
    if (c->task == TASK_ADD) {
        add_no_carry(it->a, it->b, out, outlen);
        if (strcmp(out, it->answer) && rng_below(r, 2) == 0)
            return; /* the sum had a carry: drop it, half the time */
        /* one digit off by one; the leading digit never becomes 0 (unless the answer is one digit) */
        snprintf(out, outlen, "%s", it->answer);
        size_t n = strlen(out);
        size_t k = (size_t)rng_below(r, n);
        int d = out[k] - '0';
        int up = (int)rng_below(r, 2);
        if (d == 9)
            up = 0;
        else if (d == 0 || (k == 0 && n > 1 && d == 1))
            up = 1; /* no negative digit, no leading zero */
        out[k] = (char)('0' + d + (up ? 1 : -1));
        return;
    }
    size_t n = strlen(it->answer);
    snprintf(out, outlen, "%s", it->answer);
    /* same length as the answer (a length difference would let DPO learn "end later/earlier" instead of the
     * task): swap two neighbouring, different letters (2/3 of the time, when there are any), else replace one
     * letter by its alphabet neighbour */
    size_t cand[8], nc = 0;
    for (size_t k = 0; k + 1 < n; k++)
        if (out[k] != out[k + 1])
            cand[nc++] = k;
    if (nc && rng_below(r, 3) != 0) {
        size_t k = cand[rng_below(r, nc)];
        char t = out[k];
        out[k] = out[k + 1];
        out[k + 1] = t;
        return;
    }
    size_t k = (size_t)rng_below(r, n);
    out[k] = out[k] == 'a' ? 'b' : out[k] == 'h' ? 'g' : (char)(out[k] + (rng_below(r, 2) ? 1 : -1));
}

/* ---- gen --------------------------------------------------------------------------------------------- */
static FILE *open_out(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        die("cannot write %s: %s", path, strerror(errno));
    return f;
}

static void put_json(FILE *f, const char *path, const char *const *keys, const char *const *vals, int n)
{
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; i < n; i++)
        cJSON_AddStringToObject(o, keys[i], vals[i]);
    char *s = cJSON_PrintUnformatted(o);
    if (!s || fprintf(f, "%s\n", s) < 0)
        die("cannot write %s", path);
    free(s);
    cJSON_Delete(o);
}

static void close_out(FILE *f, const char *dir, const char *name)
{
    if (fclose(f))
        die("cannot write %s/%s: %s", dir, name, strerror(errno));
}

static long parse_long(const char *opt, const char *v, long lo, long hi)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        die("%s: expected an integer in [%ld, %ld], got '%s'", opt, lo, hi, v);
    return x;
}

static int cmd_gen(int argc, char **argv)
{
    const char *out_dir = NULL;
    uint64_t seed = 0;
    int have_seed = 0;
    long n_sft = 20000, n_pairs = 10000, n_eval = 500;
    double wrong_frac = 0.35;
    task_cfg cfg = {TASK_ADD, 2};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: prefopt_demo_task gen --out-dir DIR --seed S [--task add|reverse] [--digits D (add: 1-4, "
                   "default 2)]\n"
                   "       [--n-sft N (20000)] [--n-pairs N (10000)] [--n-eval N (500)] [--wrong-frac F (0.35)]\n");
            return 0;
        }
        if (i + 1 >= argc)
            die("%s needs a value (see gen --help)", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--out-dir"))
            out_dir = v;
        else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            seed = strtoull(v, &end, 0);
            if (errno || end == v || *end || v[0] == '-')
                die("--seed: expected a non-negative integer, got '%s'", v);
            have_seed = 1;
        } else if (!strcmp(a, "--task")) {
            if (!strcmp(v, "add"))
                cfg.task = TASK_ADD;
            else if (!strcmp(v, "reverse"))
                cfg.task = TASK_REVERSE;
            else
                die("--task: expected add or reverse, got '%s'", v);
        } else if (!strcmp(a, "--digits"))
            cfg.digits = (int)parse_long(a, v, 1, 4);
        else if (!strcmp(a, "--n-sft"))
            n_sft = parse_long(a, v, 0, 100000000);
        else if (!strcmp(a, "--n-pairs"))
            n_pairs = parse_long(a, v, 0, 100000000);
        else if (!strcmp(a, "--n-eval"))
            n_eval = parse_long(a, v, 1, 100000000);
        else if (!strcmp(a, "--wrong-frac")) {
            char *end;
            wrong_frac = strtod(v, &end);
            if (end == v || *end || !(wrong_frac >= 0 && wrong_frac <= 1))
                die("--wrong-frac: expected a number in [0, 1], got '%s'", v);
        } else
            die("unknown option '%s' (see gen --help)", a);
    }
    if (!out_dir || !have_seed)
        die("gen needs --out-dir DIR and --seed S");
    /* the held-out prompts are at most a quarter of the space, so training prompts remain plentiful */
    if ((double)n_eval > task_space(&cfg) / 4)
        die("--n-eval %ld is more than a quarter of the task's %.0f distinct prompts", n_eval, task_space(&cfg));
    if (mkdir(out_dir, 0777) && errno != EEXIST)
        die("cannot create %s: %s", out_dir, strerror(errno));

    rng_t r = {seed ^ 0x70726566u}; /* "pref" */
    strset held = {0};
    item it;
    char wrong[32];

    /* held-out prompts first: distinct, and reserved so no training example uses them */
    FILE *fe = open_out(out_dir, "eval_prompts.jsonl");
    for (long i = 0; i < n_eval; i++) {
        do
            task_draw(&cfg, &r, &it);
        while (strset_has(&held, it.prompt));
        strset_add(&held, it.prompt);
        const char *k[] = {"prompt", "answer"}, *v[] = {it.prompt, it.answer};
        put_json(fe, "eval_prompts.jsonl", k, v, 2);
    }
    close_out(fe, out_dir, "eval_prompts.jsonl");

    /* SFT: exactly round(n_sft * wrong_frac) wrong completions, at positions chosen by a shuffle */
    long n_wrong = (long)(wrong_frac * (double)n_sft + 0.5);
    unsigned char *is_wrong = calloc((size_t)n_sft + 1, 1);
    if (!is_wrong)
        die("out of memory");
    for (long i = 0; i < n_wrong; i++)
        is_wrong[i] = 1;
    for (long i = n_sft - 1; i > 0; i--) {
        long j = (long)rng_below(&r, (uint64_t)i + 1);
        unsigned char t = is_wrong[i];
        is_wrong[i] = is_wrong[j];
        is_wrong[j] = t;
    }
    FILE *fs = open_out(out_dir, "sft.jsonl");
    for (long i = 0; i < n_sft; i++) {
        do
            task_draw(&cfg, &r, &it);
        while (strset_has(&held, it.prompt));
        const char *comp = it.answer;
        if (is_wrong[i]) {
            task_wrong(&cfg, &r, &it, wrong, sizeof wrong);
            comp = wrong;
        }
        const char *k[] = {"prompt", "completion"}, *v[] = {it.prompt, comp};
        put_json(fs, "sft.jsonl", k, v, 2);
    }
    close_out(fs, out_dir, "sft.jsonl");
    free(is_wrong);

    FILE *fp = open_out(out_dir, "pairs.jsonl");
    for (long i = 0; i < n_pairs; i++) {
        do
            task_draw(&cfg, &r, &it);
        while (strset_has(&held, it.prompt));
        task_wrong(&cfg, &r, &it, wrong, sizeof wrong);
        const char *k[] = {"prompt", "chosen", "rejected"}, *v[] = {it.prompt, it.answer, wrong};
        put_json(fp, "pairs.jsonl", k, v, 3);
    }
    close_out(fp, out_dir, "pairs.jsonl");

    /* held-out preference pairs on the held-out prompts (reward accuracy), drawn again in the same order */
    FILE *fh = open_out(out_dir, "eval_pairs.jsonl");
    {
        char path[4096];
        snprintf(path, sizeof path, "%s/eval_prompts.jsonl", out_dir);
        FILE *fr = fopen(path, "r");
        if (!fr)
            die("cannot read back %s: %s", path, strerror(errno));
        char *line = NULL;
        size_t lcap = 0;
        while (getline(&line, &lcap, fr) > 0) {
            cJSON *o = cJSON_Parse(line);
            cJSON *pr = cJSON_GetObjectItemCaseSensitive(o, "prompt");
            cJSON *an = cJSON_GetObjectItemCaseSensitive(o, "answer");
            if (!cJSON_IsString(pr) || !cJSON_IsString(an))
                die("%s: unexpected line", path);
            memset(&it, 0, sizeof it);
            snprintf(it.prompt, sizeof it.prompt, "%s", pr->valuestring);
            snprintf(it.answer, sizeof it.answer, "%s", an->valuestring);
            if (cfg.task == TASK_ADD && sscanf(it.prompt, "%lu+%lu=", &it.a, &it.b) != 2)
                die("%s: unexpected prompt %s", path, it.prompt);
            task_wrong(&cfg, &r, &it, wrong, sizeof wrong);
            const char *k[] = {"prompt", "chosen", "rejected"}, *v[] = {it.prompt, it.answer, wrong};
            put_json(fh, "eval_pairs.jsonl", k, v, 3);
            cJSON_Delete(o);
        }
        free(line);
        fclose(fr);
    }
    close_out(fh, out_dir, "eval_pairs.jsonl");
    strset_free(&held);
    printf("demo_task: %s: %ld sft (%ld wrong), %ld pairs, %ld held-out prompts (task %s, seed %" PRIu64 ")\n",
           out_dir, n_sft, n_wrong, n_pairs, n_eval, cfg.task == TASK_ADD ? "add" : "reverse", seed);
    return 0;
}

/* ---- check ------------------------------------------------------------------------------------------- */
typedef struct {
    char *prompt, *answer;
    int seen, correct, well_formed, has_logp;
    double log_ratio; /* logp - ref_logp of the generation (prefopt generate --ref) */
} eval_item;

static char *read_line(FILE *f, size_t *cap, char **buf)
{
    ssize_t n = getline(buf, cap, f);
    if (n < 0)
        return NULL;
    while (n > 0 && ((*buf)[n - 1] == '\n' || (*buf)[n - 1] == '\r'))
        (*buf)[--n] = 0;
    return *buf;
}

static int blank(const char *s)
{
    for (; *s; s++)
        if (!isspace((unsigned char)*s))
            return 0;
    return 1;
}

/* The answer a completion gives: text up to the first end-of-sequence marker or newline, trimmed. */
static void extract_answer(const char *comp, char *out, size_t outlen)
{
    size_t n = strlen(comp);
    const char *eos = strstr(comp, "<|eos|>");
    if (eos && (size_t)(eos - comp) < n)
        n = (size_t)(eos - comp);
    const char *nl = memchr(comp, '\n', n);
    if (nl)
        n = (size_t)(nl - comp);
    while (n && isspace((unsigned char)*comp)) {
        comp++;
        n--;
    }
    while (n && isspace((unsigned char)comp[n - 1]))
        n--;
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, comp, n);
    out[n] = 0;
}

static int well_formed(const char *ans, const char *expected)
{
    int digits = isdigit((unsigned char)expected[0]);
    if (!*ans)
        return 0;
    for (const char *p = ans; *p; p++)
        if (digits ? !isdigit((unsigned char)*p) : !islower((unsigned char)*p))
            return 0;
    return 1;
}

static int cmd_check(int argc, char **argv)
{
    const char *prompts = NULL, *gens = NULL, *label = "";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: prefopt_demo_task check --prompts eval_prompts.jsonl --generations gen.jsonl [--label NAME]\n"
                   "  one generation per prompt: {\"index\":i,\"prompt\":\"...\",\"completion\":\"...\",\"ids\":[...]}\n"
                   "  prints the accuracy and a JSON line; exit 1 on a malformed or inconsistent file\n");
            return 0;
        }
        if (i + 1 >= argc)
            die("%s needs a value (see check --help)", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--prompts"))
            prompts = v;
        else if (!strcmp(a, "--generations"))
            gens = v;
        else if (!strcmp(a, "--label"))
            label = v;
        else
            die("unknown option '%s' (see check --help)", a);
    }
    if (!prompts || !gens)
        die("check needs --prompts FILE and --generations FILE");

    char *buf = NULL;
    size_t cap = 0;
    eval_item *items = NULL;
    size_t n = 0, ncap = 0;
    FILE *f = fopen(prompts, "r");
    if (!f)
        die("cannot open %s: %s", prompts, strerror(errno));
    for (long line = 1; read_line(f, &cap, &buf); line++) {
        if (blank(buf))
            continue;
        cJSON *o = cJSON_Parse(buf);
        cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt");
        cJSON *ans = cJSON_GetObjectItemCaseSensitive(o, "answer");
        if (!o || !cJSON_IsString(p) || !cJSON_IsString(ans))
            die("%s:%ld: expected a JSON object with string fields \"prompt\" and \"answer\"", prompts, line);
        if (n == ncap) {
            ncap = ncap ? 2 * ncap : 256;
            items = realloc(items, ncap * sizeof *items);
            if (!items)
                die("out of memory");
        }
        items[n++] = (eval_item){strdup(p->valuestring), strdup(ans->valuestring), 0, 0, 0, 0, 0.0};
        cJSON_Delete(o);
    }
    fclose(f);
    if (!n)
        die("%s: no prompts", prompts);

    f = fopen(gens, "r");
    if (!f)
        die("cannot open %s: %s", gens, strerror(errno));
    char got[256];
    for (long line = 1; read_line(f, &cap, &buf); line++) {
        if (blank(buf))
            continue;
        cJSON *o = cJSON_Parse(buf);
        if (!o || !cJSON_IsObject(o))
            die("%s:%ld: not a JSON object", gens, line);
        cJSON *idx = cJSON_GetObjectItemCaseSensitive(o, "index");
        cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt");
        cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "completion");
        cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "ids");
        if (!cJSON_IsNumber(idx) || idx->valuedouble != (double)(long)idx->valuedouble)
            die("%s:%ld: \"index\" must be an integer", gens, line);
        if (!cJSON_IsString(c))
            die("%s:%ld: \"completion\" must be a string", gens, line);
        if (ids && !cJSON_IsArray(ids))
            die("%s:%ld: \"ids\" must be an array", gens, line);
        long i = (long)idx->valuedouble;
        if (i < 0 || (size_t)i >= n)
            die("%s:%ld: index %ld is outside the %zu prompts of %s", gens, line, i, n, prompts);
        if (p && (!cJSON_IsString(p) || strcmp(p->valuestring, items[i].prompt)))
            die("%s:%ld: prompt of index %ld is not %s's prompt \"%s\"", gens, line, i, prompts, items[i].prompt);
        if (items[i].seen)
            die("%s:%ld: a second generation for index %ld", gens, line, i);
        items[i].seen = 1;
        cJSON *lp = cJSON_GetObjectItemCaseSensitive(o, "logp");
        cJSON *rlp = cJSON_GetObjectItemCaseSensitive(o, "ref_logp");
        if ((lp || rlp) && !(cJSON_IsNumber(lp) && cJSON_IsNumber(rlp)))
            die("%s:%ld: \"logp\" and \"ref_logp\" must both be numbers", gens, line);
        if (lp) {
            items[i].has_logp = 1;
            items[i].log_ratio = lp->valuedouble - rlp->valuedouble;
        }
        extract_answer(c->valuestring, got, sizeof got);
        items[i].correct = !strcmp(got, items[i].answer);
        items[i].well_formed = well_formed(got, items[i].answer);
        cJSON_Delete(o);
    }
    fclose(f);
    free(buf);

    size_t correct = 0, wf = 0, missing = 0, nlp = 0;
    double kl = 0;
    for (size_t i = 0; i < n; i++) {
        if (!items[i].seen) {
            if (!missing)
                fprintf(stderr, "prefopt_demo_task: error: %s has no generation for index %zu (prompt \"%s\")\n",
                        gens, i, items[i].prompt);
            missing++;
        }
        correct += (size_t)items[i].correct;
        wf += (size_t)items[i].well_formed;
        nlp += (size_t)items[i].has_logp;
        kl += items[i].log_ratio;
    }
    if (missing)
        die("%s: %zu of %zu prompts have no generation", gens, missing, n);
    double acc = (double)correct / (double)n;
    if (nlp && nlp != n)
        die("%s: %zu of %zu generations carry logp/ref_logp: all or none", gens, nlp, n);
    printf("%s%saccuracy %.4f (%zu/%zu), well-formed %zu", label, *label ? ": " : "", acc, correct, n, wf);
    if (nlp)
        printf(", mean log(pi/ref) of the completions %.4f nats", kl / (double)n);
    printf("\n");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "label", label);
    cJSON_AddNumberToObject(o, "n", (double)n);
    cJSON_AddNumberToObject(o, "correct", (double)correct);
    cJSON_AddNumberToObject(o, "accuracy", acc);
    cJSON_AddNumberToObject(o, "well_formed", (double)wf);
    if (nlp) /* with sampled (temperature 1) generations, an estimate of KL(policy || reference) per sample */
        cJSON_AddNumberToObject(o, "kl", kl / (double)n);
    char *s = cJSON_PrintUnformatted(o);
    printf("%s\n", s);
    free(s);
    cJSON_Delete(o);
    for (size_t i = 0; i < n; i++) {
        free(items[i].prompt);
        free(items[i].answer);
    }
    free(items);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "gen"))
        return cmd_gen(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "check"))
        return cmd_check(argc - 1, argv + 1);
    FILE *f = argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? stdout : stderr;
    fprintf(f, "usage: prefopt_demo_task gen --out-dir DIR --seed S [options]   (gen --help)\n"
               "       prefopt_demo_task check --prompts eval_prompts.jsonl --generations gen.jsonl   (check --help)\n");
    return f == stdout ? 0 : 2;
}
