/* safetensors: header parsing and validation, fp16/bf16 -> fp32 reads, and a streaming fp32 writer.
 * Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:[b,e]}, ...,
 * "__metadata__": {...}}, then the data; offsets are relative to the end of the header. */
#define _GNU_SOURCE
#include "prefopt/hf.h"

#include "prefopt/gemm_local.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u << 20) /* the spec's own limit */

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = prefopt_xmalloc(n, "string");
    memcpy(d, s, n);
    return d;
}

static int add_file(prefopt_st_set *s, const char *path, prefopt_err *err)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        prefopt_err_set(err, "%s: cannot open: %s", path, strerror(errno));
        return 1;
    }
    const char *label = base_name(path);
    struct stat st;
    fstat(fd, &st);
    uint64_t fsize = (uint64_t)st.st_size;
    unsigned char lenbuf[8];
    if (fsize < 8 || pread(fd, lenbuf, 8, 0) != 8) {
        prefopt_err_set(err, "%s: truncated: shorter than the 8-byte header length", label);
        close(fd);
        return 1;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | lenbuf[i];
    if (hlen > ST_MAX_HEADER || hlen + 8 > fsize) {
        prefopt_err_set(err, "%s: header length %llu is invalid for a file of %llu bytes (truncated or not safetensors)",
                        label, (unsigned long long)hlen, (unsigned long long)fsize);
        close(fd);
        return 1;
    }
    char *hdr = prefopt_xmalloc(hlen + 1, "safetensors header");
    ssize_t got = pread(fd, hdr, hlen, 8);
    close(fd);
    if (got != (ssize_t)hlen) {
        prefopt_err_set(err, "%s: cannot read the header", label);
        free(hdr);
        return 1;
    }
    hdr[hlen] = '\0';
    cJSON *root = cJSON_Parse(hdr);
    free(hdr);
    if (!cJSON_IsObject(root)) {
        prefopt_err_set(err, "%s: header is not a JSON object", label);
        cJSON_Delete(root);
        return 1;
    }
    int fi = s->nfiles++;
    s->paths = realloc(s->paths, sizeof(char *) * (size_t)s->nfiles);
    s->labels = realloc(s->labels, sizeof(char *) * (size_t)s->nfiles);
    s->paths[fi] = xstrdup(path);
    s->labels[fi] = xstrdup(label);
    uint64_t data0 = 8 + hlen;
    int rc = 0;
    cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        if (!strcmp(e->string, "__metadata__"))
            continue;
        prefopt_st_tensor t;
        memset(&t, 0, sizeof t);
        if (strlen(e->string) >= sizeof t.name) {
            prefopt_err_set(err, "%s: tensor name '%.60s...' too long", label, e->string);
            rc = 1;
            break;
        }
        strcpy(t.name, e->string);
        t.file = fi;
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2) {
            prefopt_err_set(err, "%s: tensor '%s': header entry lacks dtype, shape or data_offsets", label, t.name);
            rc = 1;
            break;
        }
        int esz;
        if (!strcmp(dt->valuestring, "F32"))
            t.dtype = PREFOPT_ST_F32, esz = 4;
        else if (!strcmp(dt->valuestring, "F16"))
            t.dtype = PREFOPT_ST_F16, esz = 2;
        else if (!strcmp(dt->valuestring, "BF16"))
            t.dtype = PREFOPT_ST_BF16, esz = 2;
        else {
            prefopt_err_set(err, "%s: tensor '%s': dtype %s is not supported (F32, F16, BF16 are)", label, t.name,
                            dt->valuestring);
            rc = 1;
            break;
        }
        t.ndim = cJSON_GetArraySize(sh);
        if (t.ndim > 4) {
            prefopt_err_set(err, "%s: tensor '%s': %d dimensions", label, t.name, t.ndim);
            rc = 1;
            break;
        }
        uint64_t numel = 1;
        for (int d = 0; d < t.ndim; d++) {
            cJSON *x = cJSON_GetArrayItem(sh, d);
            /* integers up to 2^53 (exact in JSON's doubles); the product must not overflow either */
            if (!cJSON_IsNumber(x) || !(x->valuedouble >= 0 && x->valuedouble <= 9007199254740992.0) ||
                x->valuedouble != floor(x->valuedouble)) {
                prefopt_err_set(err, "%s: tensor '%s': bad shape", label, t.name);
                rc = 1;
                break;
            }
            t.shape[d] = (int64_t)x->valuedouble;
            if (__builtin_mul_overflow(numel, (uint64_t)t.shape[d], &numel)) {
                prefopt_err_set(err, "%s: tensor '%s': shape too large", label, t.name);
                rc = 1;
                break;
            }
        }
        if (!rc && __builtin_mul_overflow(numel, (uint64_t)esz, &numel)) {
            prefopt_err_set(err, "%s: tensor '%s': shape too large", label, t.name);
            rc = 1;
        }
        if (rc)
            break;
        cJSON *b = cJSON_GetArrayItem(of, 0), *en = cJSON_GetArrayItem(of, 1);
        if (!cJSON_IsNumber(b) || !cJSON_IsNumber(en) || !(en->valuedouble >= b->valuedouble) ||
            !(b->valuedouble >= 0) || en->valuedouble > 9007199254740992.0 || b->valuedouble != floor(b->valuedouble) ||
            en->valuedouble != floor(en->valuedouble)) {
            prefopt_err_set(err, "%s: tensor '%s': bad data_offsets", label, t.name);
            rc = 1;
            break;
        }
        t.begin = data0 + (uint64_t)b->valuedouble;
        t.end = data0 + (uint64_t)en->valuedouble;
        if (t.end - t.begin != numel) { /* numel now counts bytes */
            prefopt_err_set(err, "%s: tensor '%s': data_offsets span %llu bytes, shape and dtype need %llu", label,
                            t.name, (unsigned long long)(t.end - t.begin), (unsigned long long)numel);
            rc = 1;
            break;
        }
        if (t.end > fsize) {
            prefopt_err_set(err, "%s: truncated: tensor '%s' ends at byte %llu but the file has %llu bytes", label,
                            t.name, (unsigned long long)t.end, (unsigned long long)fsize);
            rc = 1;
            break;
        }
        s->t = realloc(s->t, sizeof *s->t * (size_t)(s->ntensors + 1));
        s->t[s->ntensors++] = t;
    }
    cJSON_Delete(root);
    return rc;
}

int prefopt_st_open_file(const char *path, prefopt_st_set **out, prefopt_err *err)
{
    prefopt_st_set *s = prefopt_xcalloc(1, sizeof *s, "safetensors set");
    if (add_file(s, path, err)) {
        prefopt_st_free(s);
        return 1;
    }
    *out = s;
    return 0;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = prefopt_xmalloc((size_t)n + 1, path);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    buf[got] = '\0';
    if (len)
        *len = got;
    return buf;
}

int prefopt_st_open_dir(const char *dir, prefopt_st_set **out, prefopt_err *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (access(path, F_OK) == 0)
        return prefopt_st_open_file(path, out, err);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char *txt = slurp(path, NULL);
    if (!txt) {
        prefopt_err_set(err, "%s: neither model.safetensors nor model.safetensors.index.json found", dir);
        return 1;
    }
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        prefopt_err_set(err, "model.safetensors.index.json: key 'weight_map' missing or not an object");
        cJSON_Delete(root);
        return 1;
    }
    prefopt_st_set *s = prefopt_xcalloc(1, sizeof *s, "safetensors set");
    int rc = 0;
    cJSON *e;
    cJSON_ArrayForEach(e, wm)
    {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) {
            prefopt_err_set(err, "model.safetensors.index.json: weight_map['%s'] is not a file name", e->string);
            rc = 1;
            break;
        }
        int known = 0;
        for (int i = 0; i < s->nfiles; i++)
            known |= !strcmp(s->labels[i], e->valuestring);
        if (!known) {
            snprintf(path, sizeof path, "%s/%s", dir, e->valuestring);
            if ((rc = add_file(s, path, err)))
                break;
        }
    }
    /* every tensor the index names must be in the shard it names */
    if (!rc) {
        cJSON_ArrayForEach(e, wm)
        {
            const prefopt_st_tensor *t = prefopt_st_find(s, e->string);
            if (!t || strcmp(s->labels[t->file], e->valuestring)) {
                prefopt_err_set(err, "model.safetensors.index.json: tensor '%s' is not in shard %s", e->string,
                                e->valuestring);
                rc = 1;
                break;
            }
        }
    }
    cJSON_Delete(root);
    if (rc) {
        prefopt_st_free(s);
        return 1;
    }
    *out = s;
    return 0;
}

void prefopt_st_free(prefopt_st_set *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->nfiles; i++) {
        free(s->paths[i]);
        free(s->labels[i]);
    }
    free(s->paths);
    free(s->labels);
    free(s->t);
    free(s);
}

const prefopt_st_tensor *prefopt_st_find(const prefopt_st_set *s, const char *name)
{
    for (int i = 0; i < s->ntensors; i++)
        if (!strcmp(s->t[i].name, name))
            return &s->t[i];
    return NULL;
}

int64_t prefopt_st_numel(const prefopt_st_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= t->shape[d];
    return n;
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0)
            bits = sign;
        else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
        }
    } else if (exp == 0x1f)
        bits = sign | 0x7f800000u | man << 13;
    else
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int prefopt_st_read_f32(const prefopt_st_set *s, const prefopt_st_tensor *t, float *out, prefopt_err *err)
{
    int fd = open(s->paths[t->file], O_RDONLY);
    if (fd < 0) {
        prefopt_err_set(err, "%s: cannot open: %s", s->labels[t->file], strerror(errno));
        return 1;
    }
    size_t bytes = t->end - t->begin;
    /* fp32 goes straight into out; half types are read into the upper half of out and widened front to back,
     * which never overwrites an unread element */
    int64_t n = prefopt_st_numel(t);
    unsigned char *raw = t->dtype == PREFOPT_ST_F32 ? (unsigned char *)out : (unsigned char *)out + n * 2;
    size_t done = 0;
    while (done < bytes) {
        ssize_t r = pread(fd, raw + done, bytes - done, (off_t)(t->begin + done));
        if (r <= 0) {
            prefopt_err_set(err, "%s: tensor '%s': read failed (truncated file?)", s->labels[t->file], t->name);
            close(fd);
            return 1;
        }
        done += (size_t)r;
    }
    close(fd);
    if (t->dtype == PREFOPT_ST_F16) {
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
            out[i] = half_to_float(h);
        }
    } else if (t->dtype == PREFOPT_ST_BF16) {
        for (int64_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)(raw[2 * i] | raw[2 * i + 1] << 8) << 16;
            memcpy(&out[i], &bits, 4);
        }
    }
    /* weights that are NaN or Inf would be imported and give finite-but-wrong or null results later */
    int64_t nf = 0;
    for (int64_t i = 0; i < n; i++)
        nf += !isfinite(out[i]);
    if (nf) {
        prefopt_err_set(err, "%s: tensor '%s' has %lld non-finite values (NaN or Inf)", s->labels[t->file], t->name,
                        (long long)nf);
        return 1;
    }
    return 0;
}

/* ---- writer ---------------------------------------------------------------------------------------------- */

struct prefopt_st_writer {
    FILE *f;
    char *path;
    int n, next, bf16;
    char **names;
    uint64_t *sizes;
};

prefopt_st_writer *prefopt_st_writer_open(const char *path, int n, const char *const *names, const int *ndims,
                                          const int64_t (*shapes)[2], prefopt_err *err)
{
    return prefopt_st_writer_open_dtype(path, n, names, ndims, shapes, PREFOPT_ST_F32, err);
}

prefopt_st_writer *prefopt_st_writer_open_dtype(const char *path, int n, const char *const *names, const int *ndims,
                                                const int64_t (*shapes)[2], prefopt_st_dtype dtype, prefopt_err *err)
{
    const int bf16 = dtype == PREFOPT_ST_BF16;
    const uint64_t esz = bf16 ? 2 : 4;
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    prefopt_st_writer *w = prefopt_xcalloc(1, sizeof *w, "safetensors writer");
    w->n = n;
    w->bf16 = bf16;
    w->names = prefopt_xcalloc((size_t)n, sizeof(char *), "names");
    w->sizes = prefopt_xcalloc((size_t)n, sizeof(uint64_t), "sizes");
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        cJSON *e = cJSON_AddObjectToObject(root, names[i]);
        cJSON_AddStringToObject(e, "dtype", bf16 ? "BF16" : "F32");
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        uint64_t numel = 1;
        for (int d = 0; d < ndims[i]; d++) {
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)shapes[i][d]));
            numel *= (uint64_t)shapes[i][d];
        }
        cJSON *of = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + numel * esz)));
        off += numel * esz;
        w->names[i] = xstrdup(names[i]);
        w->sizes[i] = numel * esz;
    }
    char *hdr = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    size_t hlen = strlen(hdr), padded = (hlen + 7) & ~(size_t)7; /* keeps the fp32 data 8-byte aligned */
    w->f = fopen(path, "wb");
    w->path = xstrdup(path);
    if (!w->f) {
        prefopt_err_set(err, "%s: cannot create: %s", path, strerror(errno));
        free(hdr);
        prefopt_st_writer_close(w, NULL);
        return NULL;
    }
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    fwrite(lenbuf, 1, 8, w->f);
    fwrite(hdr, 1, hlen, w->f);
    for (size_t i = hlen; i < padded; i++)
        fputc(' ', w->f);
    free(hdr);
    return w;
}

int prefopt_st_writer_put(prefopt_st_writer *w, const char *name, const float *data, prefopt_err *err)
{
    if (w->next >= w->n || strcmp(w->names[w->next], name)) {
        prefopt_err_set(err, "%s: tensor '%s' written out of the declared order", w->path, name);
        return 1;
    }
    /* the file is little-endian, as is every machine prefopt runs on (x86-64, aarch64) */
    size_t wrote;
    if (w->bf16) {
        size_t n = w->sizes[w->next] / 2;
        uint16_t *h = prefopt_xmalloc(2 * n + 2, "bf16 tensor");
        prefopt_bf16_from_f32(h, data, n);
        wrote = fwrite(h, 1, 2 * n, w->f);
        free(h);
    } else {
        wrote = fwrite(data, 1, w->sizes[w->next], w->f);
    }
    if (wrote != w->sizes[w->next]) {
        prefopt_err_set(err, "%s: write of tensor '%s' failed: %s", w->path, name, strerror(errno));
        return 1;
    }
    w->next++;
    return 0;
}

int prefopt_st_writer_close(prefopt_st_writer *w, prefopt_err *err)
{
    int rc = 0;
    if (w->f) {
        if (w->next != w->n) {
            prefopt_err_set(err, "%s: only %d of %d tensors written", w->path, w->next, w->n);
            rc = 1;
        }
        if (fflush(w->f) || fsync(fileno(w->f))) {
            prefopt_err_set(err, "%s: write failed: %s", w->path, strerror(errno));
            rc = 1;
        }
        fclose(w->f);
    }
    for (int i = 0; i < w->n; i++)
        free(w->names[i]);
    free(w->names);
    free(w->sizes);
    free(w->path);
    free(w);
    return rc;
}
