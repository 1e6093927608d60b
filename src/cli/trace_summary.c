/* prefopt trace-summary DIR: rebuilds a traced run's OTF2 archive, Chrome JSON and MPI summary from its spool files
 * (a run that died leaves them up to its last flushed step), prints the summary and draws DIR/timeline.png. */
#include "prefopt/agree.h"
#include "prefopt/opts.h"
#include "prefopt/trace_export.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int prefopt_cmd_trace_summary(int argc, char **argv)
{
    static const char *dir, *png;
    const prefopt_opt opts[] = {
        {"dir", PREFOPT_OPT_STRING, &dir, "", "the directory a run wrote with --trace (required)"},
        {"png", PREFOPT_OPT_STRING, &png, "1", "1: draw DIR/timeline.png with gnuplot (the first traced steps); 0: no"},
    };
    char *args[64];
    int n = 0;
    for (int i = 0; i < argc && n < 62; i++) { /* `prefopt trace-summary DIR` is the short form */
        if (i == 1 && argv[i][0] != '-')
            args[n++] = "--dir";
        args[n++] = argv[i];
    }
    char msg[1024];
    prefopt_err err = {0};
    int rc = prefopt_opts_parse("trace-summary",
                                "Rebuild DIR/otf2, DIR/trace.json and DIR/summary.{txt,json} from the spool files of a "
                                "run traced with --trace DIR (finished or not); print the per-step critical path, "
                                "compute / communication / I/O shares per rank and the MPI summary; draw "
                                "DIR/timeline.png: prefopt trace-summary DIR.",
                                opts, 2, n, args, msg, sizeof msg);
    if (rc == PREFOPT_OPTS_EXIT)
        return 0;
    if (rc == PREFOPT_OPTS_ERROR || !*dir) {
        prefopt_err_set(&err, "%s", rc == PREFOPT_OPTS_ERROR ? msg : "trace-summary needs a directory: prefopt "
                                                                      "trace-summary DIR");
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    if (prefopt_world_rank() != 0)
        return 0;
    if (prefopt_trace_export(dir, stdout, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    printf("wrote %s/otf2/traces.otf2, %s/trace.json, %s/summary.txt, %s/summary.json\n", dir, dir, dir, dir);
    if (strcmp(png, "0")) {
        char cmd[8400];
        snprintf(cmd, sizeof cmd, "cd '%s' && gnuplot timeline.gp", dir);
        int st = system(cmd);
        if (st != 0) {
            prefopt_err_set(&err, "gnuplot failed (status %d) drawing %s/timeline.png (apt-get install gnuplot-nox)",
                            st, dir);
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        }
        printf("wrote %s/timeline.png\n", dir);
    }
    return 0;
}
