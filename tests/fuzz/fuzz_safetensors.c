/* libFuzzer harness: safetensors header parsing and tensor reads (io/hf/safetensors.c, hf.h).
 * Input starting with '{': a model.safetensors.index.json in a directory that also holds two fixed, valid shards
 * (a.safetensors: "x" F32 [2,3] and "y" BF16 [4]; b.safetensors: "z" F16 [2]) -> prefopt_st_open_dir.
 * Any other input: a whole .safetensors file (8-byte length, JSON header, data) -> prefopt_st_open_file.
 * Checked: no crash or sanitizer report; failures fill a one-line message; every tensor a successful open lists
 * has a consistent size (numel * dtype size == end - begin, no overflow, inside its file) and reads back. */
#include "fuzz_common.h"
#include "prefopt/hf.h"

#include <math.h>

#include <sys/stat.h>

static char dir[512];

static void put_shard(const char *name, const char *hdr, const void *payload, size_t plen)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t h = strlen(hdr);
    unsigned char *buf = malloc(8 + h + plen);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, hdr, h);
    memcpy(buf + 8 + h, payload, plen);
    fuzz_write_file(path, buf, 8 + h + plen);
    free(buf);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    snprintf(dir, sizeof dir, "%s", fuzz_tmp_path("stdir"));
    mkdir(dir, 0700);
    float x[6] = {1, 2, 3, 4, 5, 6};
    unsigned char a[24 + 8];
    memcpy(a, x, 24);
    for (int i = 0; i < 8; i++)
        a[24 + i] = (unsigned char)(i * 37);
    put_shard("a.safetensors",
              "{\"x\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
              "\"y\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},\"__metadata__\":{\"format\":\"pt\"}}",
              a, sizeof a);
    unsigned char b[4] = {0x00, 0x3c, 0x01, 0x80}; /* 1.0, -subnormal */
    put_shard("b.safetensors", "{\"z\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", b, sizeof b);
    return 0;
}

static void check_set(const prefopt_st_set *s)
{
    for (int i = 0; i < s->ntensors; i++) {
        const prefopt_st_tensor *t = &s->t[i];
        if (t->file < 0 || t->file >= s->nfiles || t->ndim < 0 || t->ndim > 4) {
            fprintf(stderr, "fuzz_safetensors: tensor '%s': file %d of %d, %d dims\n", t->name, t->file, s->nfiles,
                    t->ndim);
            abort();
        }
        uint64_t numel = 1, bytes = 0;
        int over = 0;
        for (int d = 0; d < t->ndim; d++)
            over |= t->shape[d] < 0 || __builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel);
        over |= __builtin_mul_overflow(numel, t->dtype == PREFOPT_ST_F32 ? 4u : 2u, &bytes);
        struct stat stt;
        if (stat(s->paths[t->file], &stt))
            abort();
        if (over || t->end < t->begin || t->end - t->begin != bytes || t->end > (uint64_t)stt.st_size) {
            fprintf(stderr, "fuzz_safetensors: tensor '%s' accepted with an inconsistent size: shape", t->name);
            for (int d = 0; d < t->ndim; d++)
                fprintf(stderr, " %lld", (long long)t->shape[d]);
            fprintf(stderr, ", bytes [%llu, %llu) of a %lld-byte file\n", (unsigned long long)t->begin,
                    (unsigned long long)t->end, (long long)stt.st_size);
            abort();
        }
        if (prefopt_st_find(s, t->name) == NULL)
            abort();
        float *out = malloc(numel * sizeof(float) + 1);
        prefopt_err err = {0};
        int rc = prefopt_st_read_f32(s, t, out, &err);
        fuzz_check_err(rc, &err);
        /* non-finite weights are refused (issue 22), and only they: checked against the values read */
        int64_t nf = 0;
        for (uint64_t k = 0; k < numel && (!rc || strstr(err.msg, "non-finite")); k++)
            nf += !isfinite(out[k]);
        if ((rc && strstr(err.msg, "non-finite")) != (nf > 0)) {
            fprintf(stderr, "fuzz_safetensors: tensor '%s': %lld non-finite values, read %s\n", t->name,
                    (long long)nf, rc ? err.msg : "accepted");
            abort();
        }
        if (rc && nf)
            rc = 0;
        if (rc) {
            fprintf(stderr, "fuzz_safetensors: tensor '%s' validated but does not read: %s\n", t->name, err.msg);
            abort();
        }
        free(out);
    }
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    prefopt_st_set *s = NULL;
    prefopt_err err = {0};
    int rc;
    if (size && data[0] == '{') {
        char path[600];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        fuzz_write_file(path, data, size);
        rc = prefopt_st_open_dir(dir, &s, &err);
    } else {
        const char *path = fuzz_tmp_path("model.safetensors");
        fuzz_write_file(path, data, size);
        rc = prefopt_st_open_file(path, &s, &err);
    }
    fuzz_check_err(rc, &err);
    if (!rc) {
        check_set(s);
        prefopt_st_free(s);
    }
    return 0;
}
