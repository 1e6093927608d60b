/* prefopt: what every subcommand that writes files needs to keep a user's earlier files intact (issue 22): room
 * checks before a write (free space, ulimit -f), whole-file copies for copy-modify-rename updates, outputs that
 * alias inputs, control characters in paths, and the exit path after HDF5 lost a file it could not close. No MPI. */
#ifndef PREFOPT_FILES_H
#define PREFOPT_FILES_H

#include "prefopt/common.h"

#include <stdint.h>

/* Fails with "WHAT: it needs about X MiB but the file size limit (ulimit -f) is Y MiB" or "... but the file
 * system of DIR has Y MiB free" when a file of `bytes` bytes cannot be written in the directory of path. */
int prefopt_check_room(const char *path, const char *what, double bytes, prefopt_err *err);

/* Copies src to dst (created or truncated, mode 0644) and fsyncs it; on failure dst is removed and err names the
 * file and the errno. */
int prefopt_copy_file(const char *src, const char *dst, prefopt_err *err);

/* fsync of path's directory (a rename is durable once its directory entry is). */
void prefopt_fsync_dir_of(const char *path);

/* Size of a file in bytes, -1 if it cannot be stat'ed. */
int64_t prefopt_file_size(const char *path);

/* 1 when a and b name the same file: the same device and inode once links are resolved, or, for names that do
 * not exist yet, the same resolved directory and base name. */
int prefopt_same_file(const char *a, const char *b);

/* Fails ("OPTION: 'PATH' is also OTHER_OPTION") when an output names one of the inputs or another output.
 * names[i] is the option for paths[i]; the first n_in are inputs, the rest outputs; empty paths are skipped. */
int prefopt_check_outputs_distinct(const char *const *names, const char *const *paths, int n_in, int n,
                                   prefopt_err *err);

/* Fails ("OPTION: the path contains a control character (byte 0xNN at offset K)") for a path that is written into a
 * file a later run reads back (config.ini, metrics): a newline there would break the file's lines. */
int prefopt_check_path_chars(const char *option, const char *path, prefopt_err *err);

/* After HDF5 failed to close a file it was writing (a full disk), its library state keeps a half-closed file that
 * crashes HDF5's own clean-up at MPI_Finalize (H5F__close_cb, HDF5 1.10) or at exit. The writer calls this; the
 * exit paths (prefopt_exit_error, main) then leave with _exit after the error line, without finalizing. */
void prefopt_set_skip_finalize(void);
int prefopt_skip_finalize(void);

#endif
