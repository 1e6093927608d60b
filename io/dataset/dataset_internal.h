/* Private to the dataset files (dataset.c, dataset_loader.c, pack.c). */
#ifndef PREFOPT_DATASET_INTERNAL_H
#define PREFOPT_DATASET_INTERNAL_H

#include "prefopt/dataset.h"

#include <hdf5.h>

MPI_Comm prefopt_ds_comm(const prefopt_dataset *ds);
const char *prefopt_ds_path(const prefopt_dataset *ds);             /* the file, for messages */
const uint8_t *prefopt_ds_labels(const prefopt_dataset *ds);       /* [N] or NULL */
const double *prefopt_ds_ref(const prefopt_dataset *ds, int r);    /* [N] or NULL */
/* H5Pget_mpio_actual_io_mode of the last token read (tests check the reads really are collective). */
int prefopt_ds_last_io_mode(const prefopt_dataset *ds);
/* A scalar fixed-length string attribute (h5dump shows it plainly; h5py reads bytes). Non-zero on failure. */
int prefopt_ds_write_str_attr(hid_t obj, const char *name, const char *val);

#endif
