/* Reading the next step while this one computes (issue 17): a thread of each rank runs the loader on a local
 * (serial HDF5, MPI-free) handle of the dataset, one step ahead of the training loop.
 *
 * Why this shape. The per-step read of the main handle is a collective MPI-IO read over the replica's grid; from
 * a second thread that needs MPI_THREAD_MULTIPLE (prefopt initialises MPI_THREAD_FUNNELED) and the same order of
 * collectives on every rank. A local handle needs neither: each rank reads its replica's share by itself (the
 * ranks of a grid read the same bytes, which the page cache of a node serves once), and the thread never calls
 * MPI. HDF5 (Debian's build is not thread-safe) is entered by one thread at a time: the training loop calls
 * prefopt_ds_prefetch_wait before any HDF5 call of its own (checkpoints, evaluation, the model file). Errors found
 * by the thread are returned with the step they belong to; the caller agrees on them over the world, as for a
 * direct read. */
#include "prefopt/dataset.h"
#include "dataset_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct prefopt_ds_prefetch {
    prefopt_dataset *ds;  /* local handle */
    prefopt_ds_loader *L; /* on ds, one step ahead of the caller's */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int want, busy, ready, quit, failed;
    prefopt_ds_step st;
    prefopt_ds_cursor after;
    prefopt_err err;
};

static void *run(void *arg)
{
    prefopt_ds_prefetch *pf = arg;
    pthread_mutex_lock(&pf->mu);
    for (;;) {
        while (!pf->want && !pf->quit)
            pthread_cond_wait(&pf->cv, &pf->mu);
        if (pf->quit)
            break;
        pf->want = 0, pf->busy = 1;
        pthread_mutex_unlock(&pf->mu);
        prefopt_ds_step st;
        prefopt_err err = {0};
        prefopt_ds_loader_next(pf->L, &st, &err);
        prefopt_ds_cursor after;
        prefopt_ds_loader_get_cursor(pf->L, &after);
        pthread_mutex_lock(&pf->mu);
        pf->st = st, pf->err = err, pf->after = after;
        pf->busy = 0, pf->ready = 1;
        pthread_cond_broadcast(&pf->cv);
    }
    pthread_mutex_unlock(&pf->mu);
    return NULL;
}

int prefopt_ds_prefetch_start(prefopt_dataset *ds, const prefopt_ds_loader *from, prefopt_ds_prefetch **out,
                              prefopt_err *err)
{
    *out = NULL;
    prefopt_ds_prefetch *pf = prefopt_xcalloc(1, sizeof *pf, "prefetch");
    if (prefopt_dataset_open_local(ds, &pf->ds, err) || prefopt_ds_loader_clone(from, pf->ds, &pf->L, err)) {
        prefopt_dataset_close(pf->ds);
        free(pf);
        return 1;
    }
    pthread_mutex_init(&pf->mu, NULL);
    pthread_cond_init(&pf->cv, NULL);
    pf->want = 1; /* the first step is read at once */
    if (pthread_create(&pf->th, NULL, run, pf)) {
        prefopt_err_set(err, "cannot start the data prefetch thread");
        prefopt_ds_loader_free(pf->L);
        prefopt_dataset_close(pf->ds);
        free(pf);
        return 1;
    }
    *out = pf;
    return 0;
}

int prefopt_ds_prefetch_next(prefopt_ds_prefetch *pf, prefopt_ds_step *step, prefopt_ds_cursor *after,
                             prefopt_err *err)
{
    pthread_mutex_lock(&pf->mu);
    if (pf->failed) {
        pthread_mutex_unlock(&pf->mu);
        prefopt_err_set(err, "the data prefetch stopped after an error");
        return 1;
    }
    while (!pf->ready)
        pthread_cond_wait(&pf->cv, &pf->mu);
    *step = pf->st, *after = pf->after;
    memset(&pf->st, 0, sizeof pf->st);
    pf->ready = 0;
    int bad = pf->err.set;
    if (bad) {
        prefopt_err_set(err, "%s", pf->err.msg);
        pf->failed = 1; /* no further read: the caller is on its way out */
    } else {
        pf->want = 1;
        pthread_cond_broadcast(&pf->cv);
    }
    pthread_mutex_unlock(&pf->mu);
    return bad;
}

void prefopt_ds_prefetch_wait(prefopt_ds_prefetch *pf)
{
    if (!pf)
        return;
    pthread_mutex_lock(&pf->mu);
    while (pf->busy || pf->want)
        pthread_cond_wait(&pf->cv, &pf->mu);
    pthread_mutex_unlock(&pf->mu);
}

void prefopt_ds_prefetch_stop(prefopt_ds_prefetch *pf)
{
    if (!pf)
        return;
    pthread_mutex_lock(&pf->mu);
    while (pf->busy || (pf->want && !pf->failed))
        pthread_cond_wait(&pf->cv, &pf->mu);
    pf->quit = 1;
    pthread_cond_broadcast(&pf->cv);
    pthread_mutex_unlock(&pf->mu);
    pthread_join(pf->th, NULL);
    if (pf->ready)
        prefopt_ds_step_free(&pf->st);
    pthread_cond_destroy(&pf->cv);
    pthread_mutex_destroy(&pf->mu);
    prefopt_ds_loader_free(pf->L);
    prefopt_dataset_close(pf->ds);
    free(pf);
}
