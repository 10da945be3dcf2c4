/* paramex stats ADDR [--json]: the server's counters, tensors and workers, as a table or one JSON object. */
#ifndef PX_CLI_STATS_H
#define PX_CLI_STATS_H

int cmd_stats(int argc, char** argv);

#endif
