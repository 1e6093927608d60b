/* Per-step metric sums and counts, reduced over data-parallel ranks and written as JSON (see metrics.h). */
#include "prefopt/metrics.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *names[PREFOPT_M_COUNT] = {
    [PREFOPT_M_LOSS] = "loss",
    [PREFOPT_M_REWARDS_CHOSEN] = "rewards/chosen",
    [PREFOPT_M_REWARDS_REJECTED] = "rewards/rejected",
    [PREFOPT_M_REWARDS_ACCURACIES] = "rewards/accuracies",
    [PREFOPT_M_REWARDS_MARGINS] = "rewards/margins",
    [PREFOPT_M_LOGPS_CHOSEN] = "logps/chosen",
    [PREFOPT_M_LOGPS_REJECTED] = "logps/rejected",
    [PREFOPT_M_LOGITS_CHOSEN] = "logits/chosen",
    [PREFOPT_M_LOGITS_REJECTED] = "logits/rejected",
    [PREFOPT_M_NLL_LOSS] = "nll_loss",
    [PREFOPT_M_LOG_ODDS_RATIO] = "log_odds_ratio",
    [PREFOPT_M_LOG_ODDS_CHOSEN] = "log_odds_chosen",
    [PREFOPT_M_KL] = "kl",
    [PREFOPT_M_MEAN_TOKEN_ACCURACY] = "mean_token_accuracy",
    [PREFOPT_M_NUM_TOKENS] = "num_tokens",
};

/* Metrics whose value is the plain sum: the loss is pre-normalised by the global step size. */
static int is_sum(prefopt_metric k)
{
    return k == PREFOPT_M_LOSS || k == PREFOPT_M_NUM_TOKENS;
}

const char *prefopt_metric_name(prefopt_metric k)
{
    return (k >= 0 && k < PREFOPT_M_COUNT) ? names[k] : "?";
}

void prefopt_metrics_reset(prefopt_metrics *m)
{
    memset(m, 0, sizeof *m);
}

void prefopt_metrics_add(prefopt_metrics *m, prefopt_metric k, double sum, double count)
{
    m->sum[k] += sum;
    m->count[k] += count;
}

void prefopt_metrics_reduce(prefopt_metrics *m, const prefopt_reduction *sum)
{
    double buf[2 * PREFOPT_M_COUNT + 1];
    memcpy(buf, m->sum, sizeof m->sum);
    memcpy(buf + PREFOPT_M_COUNT, m->count, sizeof m->count);
    buf[2 * PREFOPT_M_COUNT] = m->kto;
    prefopt_reduce_sum(sum, buf, 2 * PREFOPT_M_COUNT + 1);
    memcpy(m->sum, buf, sizeof m->sum);
    memcpy(m->count, buf + PREFOPT_M_COUNT, sizeof m->count);
    m->kto = buf[2 * PREFOPT_M_COUNT] > 0;
}

void prefopt_metrics_merge(prefopt_metrics *dst, const prefopt_metrics *src)
{
    for (int k = 0; k < PREFOPT_M_COUNT; k++) {
        dst->sum[k] += src->sum[k];
        dst->count[k] += src->count[k];
    }
    dst->kto |= src->kto;
}

int prefopt_metrics_has(const prefopt_metrics *m, prefopt_metric k)
{
    if (k == PREFOPT_M_REWARDS_MARGINS && m->kto)
        return m->count[PREFOPT_M_REWARDS_CHOSEN] > 0 && m->count[PREFOPT_M_REWARDS_REJECTED] > 0;
    return m->count[k] > 0;
}

double prefopt_metrics_value(const prefopt_metrics *m, prefopt_metric k)
{
    if (!prefopt_metrics_has(m, k))
        return NAN;
    if (k == PREFOPT_M_REWARDS_MARGINS && m->kto)
        return m->sum[PREFOPT_M_REWARDS_CHOSEN] / m->count[PREFOPT_M_REWARDS_CHOSEN] -
               m->sum[PREFOPT_M_REWARDS_REJECTED] / m->count[PREFOPT_M_REWARDS_REJECTED];
    return is_sum(k) ? m->sum[k] : m->sum[k] / m->count[k];
}

int prefopt_metrics_to_json(void *obj, const prefopt_metrics *m, const char *prefix)
{
    cJSON *o = obj;
    char key[128];
    for (int k = 0; k < PREFOPT_M_COUNT; k++) {
        if (!prefopt_metrics_has(m, (prefopt_metric)k))
            continue;
        snprintf(key, sizeof key, "%s%s", prefix ? prefix : "", names[k]);
        if (!cJSON_AddNumberToObject(o, key, prefopt_metrics_value(m, (prefopt_metric)k)))
            return -1;
    }
    return 0;
}

char *prefopt_metrics_json_string(const prefopt_metrics *m, const char *prefix, long step)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    char *s = NULL;
    if ((step < 0 || cJSON_AddNumberToObject(o, "step", (double)step)) && prefopt_metrics_to_json(o, m, prefix) == 0)
        s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}
