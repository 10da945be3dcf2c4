/* paramex top ADDRS [--interval SECONDS] [--once]: a live view of a running cluster.
 *
 * Every interval it calls ParameterExchange/Stats on each shard of ADDRS (one after the
 * other, each within max(1 s, 2 intervals), at most STATS_TIMEOUT_MS) and prints a frame:
 * one row per shard (address, version min..max, steps/s from the change of version_max,
 * wire bytes/s pushed in and pulled out, memory of history, frame cache and parameters,
 * the newest checkpoint version and the checkpoint failures), then one row per worker rank
 * over the shards (state, last seen, chunks pushed and how many fewer than the worker that
 * pushed most). A rate needs two answers of the same server (same server_id): it is "-"
 * on the first frame of a live view and after a shard failed or restarted. With --once
 * top fetches twice, --interval apart, so that its one frame has real rates.
 *
 * A shard that does not answer shows its error on its row; top goes on. On a terminal
 * each frame replaces the last (ANSI clear and home); elsewhere frames follow each other,
 * separated by a blank line. SIGINT or SIGTERM ends it after the frame in progress (exit
 * 0). Exit: with --once, 0 when every shard answered, 1 otherwise; 2 on a usage error.
 * Strings from the servers are untrusted and printed through one_line (cli_common.h). */
#ifndef PX_CLI_TOP_H
#define PX_CLI_TOP_H

/* argv[0] is "top". Returns the exit status. */
int cmd_top(int argc, char** argv);

#endif
