/* hot_set_only: hot_set.c with every write in the hot set (none uniform over the rest
 * of the buffer), the moving hot set on its own.
 * Usage: hot_set_only --mib M --seconds S [--fork-every-ms T] [--seed X] */
#define HOT_THRESHOLD 65536
#define WORKLOAD_NAME "hot_set_only"
#include "hot_set.c"
