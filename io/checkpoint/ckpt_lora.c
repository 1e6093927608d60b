/* The LoRA record of a checkpoint (checkpoint.h): root attributes naming the adapters' config and the frozen base
 * they were trained on. */
#define _GNU_SOURCE
#include "ckpt_io.h"

#include <stdlib.h>

#include <stdio.h>
#include <string.h>

uint64_t ck_combine_checksums(const uint64_t *s, int n)
{
    uint64_t total = 0;
    for (int i = 0; i < n; i++) { /* splitmix64 of (index, checksum): a reordering or a swap changes the sum */
        uint64_t x = s[i] + 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
        total += x ^ (x >> 31);
    }
    return total;
}

int ck_write_lora_attrs(hid_t file, const prefopt_lora_config *l, const char *base, uint64_t base_sum)
{
    char s[160];
    /* %.9g: a float's value survives the text */
    snprintf(s, sizeof s, "r=%d alpha=%.9g dropout=%.9g targets=0x%x", l->r, (double)l->alpha, (double)l->dropout,
             l->targets);
    char b[4096];
    /* absolute, so that export finds the base from any directory */
    if (!base[0] || !realpath(base, b))
        snprintf(b, sizeof b, "%s", base);
    int64_t sum = (int64_t)base_sum;
    return ck_attr_str(file, "lora", s, 0, 1) | ck_attr_str(file, "base_model", b, 0, 1) |
           ck_attr_int64(file, "base_checksum", &sum, 1, 1);
}

int ck_read_lora_attrs(hid_t f, const char *path, prefopt_lora_config *lora, char *base, size_t base_len,
                       uint64_t *base_checksum, prefopt_err *err)
{
    memset(lora, 0, sizeof *lora);
    int rc = 1;
    if (H5Aexists(f, "lora") > 0) {
        char s[256] = "";
        double alpha = 0, dropout = 0;
        unsigned targets = 0;
        int64_t sum = 0;
        rc = -1;
        if (ck_attr_str(f, "lora", s, sizeof s, 0) ||
            sscanf(s, "r=%d alpha=%lg dropout=%lg targets=0x%x", &lora->r, &alpha, &dropout, &targets) != 4 ||
            lora->r < 1 || !targets)
            prefopt_err_set(err, "%s: attribute 'lora' is malformed ('%s')", path, s);
        else if (ck_attr_str(f, "base_model", base, base_len, 0) || ck_attr_int64(f, "base_checksum", &sum, 1, 0))
            prefopt_err_set(err, "%s: a LoRA checkpoint without base_model / base_checksum attributes", path);
        else {
            lora->alpha = (float)alpha;
            lora->dropout = (float)dropout;
            lora->targets = targets;
            *base_checksum = (uint64_t)sum;
            rc = 0;
        }
    }
    return rc;
}

int prefopt_ckpt_read_lora(const char *path, prefopt_lora_config *lora, char *base, size_t base_len,
                           uint64_t *base_checksum, prefopt_err *err)
{
    hid_t f;
    if (ck_open(path, MPI_COMM_NULL, &f, err))
        return -1;
    int rc = ck_read_lora_attrs(f, path, lora, base, base_len, base_checksum, err);
    H5Fclose(f);
    return rc;
}
