/* The format's names (kinds, fields, ref datasets) and the helpers every dataset file shares. */
#include "prefopt/dataset.h"
#include "dataset_internal.h"
#include "prefopt/agree.h"

#include <string.h>

static const char *const kind_names[] = {"pairs", "unpaired", "sft"};
static const char *const field_names[3][PREFOPT_DS_MAX_FIELDS] = {
    {"prompt", "chosen", "rejected"}, {"prompt", "completion", NULL}, {"prompt", "completion", NULL}};
static const char *const ref_names[3][2] = {
    {"chosen_logps", "rejected_logps"}, {"completion_logps", NULL}, {"completion_logps", NULL}};

const char *prefopt_ds_kind_name(prefopt_ds_kind k) { return (unsigned)k < 3 ? kind_names[k] : "?"; }
int prefopt_ds_kind_nfields(prefopt_ds_kind k) { return k == PREFOPT_DS_PAIRS ? 3 : 2; }
const char *prefopt_ds_field_name(prefopt_ds_kind k, int f) { return field_names[k][f]; }
int prefopt_ds_kind_nrefs(prefopt_ds_kind k) { return k == PREFOPT_DS_PAIRS ? 2 : 1; }
const char *prefopt_ds_ref_name(prefopt_ds_kind k, int i) { return ref_names[k][i]; }

int prefopt_ds_kind_parse(const char *name, prefopt_ds_kind *k)
{
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, kind_names[i])) {
            *k = (prefopt_ds_kind)i;
            return 0;
        }
    return 1;
}

/* HDF5 prints its whole error stack on failure by default; we report one line of our own instead. */

prefopt_ds_quiet prefopt_ds_h5_quiet(void)
{
    prefopt_ds_quiet q;
    H5Eget_auto2(H5E_DEFAULT, &q.fn, &q.data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return q;
}
void prefopt_ds_h5_loud(prefopt_ds_quiet q) { H5Eset_auto2(H5E_DEFAULT, q.fn, q.data); }

int prefopt_ds_agree(const prefopt_dataset *ds, prefopt_err *err)
{
    return ds->comm == MPI_COMM_NULL ? err->set : prefopt_agree(ds->comm, err);
}

