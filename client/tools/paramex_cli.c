/* paramex: command-line tool for a running paramex-server.
 *
 *   paramex health ADDR [--wait SECONDS] [--service NAME]   grpc.health.v1 Check
 *   paramex stats ADDRS [--json]                            ParameterExchange/Stats
 *   paramex top ADDRS [--interval SECONDS] [--once]         Stats of every shard, live
 *   paramex checksum ADDRS [--json]                         xxh64 of every whole tensor
 *   paramex checkpoint ADDR [--timeout SECONDS]             ParameterExchange/Checkpoint
 *   paramex export ADDRS|CHECKPOINT --out FILE.safetensors  parameters as safetensors
 * ADDRS is one server's HOST:PORT or the shards of a model, comma-separated in shard order.
 *   paramex version | --help
 * Every command that talks to a server takes --tls-ca/--tls-cert/--tls-key/
 * --tls-server-name/--token-file (or PMX_TLS_CA, ..., PMX_TOKEN_FILE, PMX_TOKEN).
 *
 * Exit status: 0 success (health: SERVING), 1 failure (RPC error, NOT_SERVING), 2 usage.
 * Talks to the server only through common/rpc; messages are (de)serialised with
 * protobuf-c. Strings from the server are untrusted: control characters are replaced
 * before they reach the terminal and JSON output is always valid UTF-8. */
#include <stdio.h>
#include <string.h>

#include "cli_checkpoint.h"
#include "cli_common.h"
#include "cli_health.h"
#include "cli_model.h"
#include "cli_stats.h"
#include "cli_top.h"

static void top_usage(FILE* out) {
  fputs("usage: paramex COMMAND [ARGS]\n"
        "\n"
        "commands:\n"
        "  health ADDR [--wait SECONDS] [--service NAME]\n"
        "                  check a server's gRPC health; exit 0 when SERVING\n"
        "  stats ADDRS [--json]\n"
        "                  print a server's counters, tensors and workers (with several\n"
        "                  shards: each shard's, then the model's combined)\n"
        "  top ADDRS [--interval SECONDS] [--once]\n"
        "                  a live view: per shard version, steps/s, bytes/s in and out,\n"
        "                  memory and checkpoints; per worker state, last seen and lag\n"
        "                  (--once: one frame, rates over one interval; exit 1 when a\n"
        "                  shard did not answer)\n"
        "  checksum ADDRS [--json]\n"
        "                  pull every tensor and print the xxh64 of each whole tensor\n"
        "  checkpoint ADDR [--timeout SECONDS]\n"
        "                  have the server write a checkpoint now; prints its path\n"
        "  export ADDRS|CHECKPOINT --out FILE.safetensors\n"
        "                  write the parameters (no optimizer state) as safetensors\n"
        "  version         print the version\n"
        "  help            show this help\n"
        "\n"
        "ADDRS: HOST:PORT of one server, or the shards of a model, comma-separated in\n"
        "shard order (HOST:PORT,HOST:PORT,...).\n"
        "Run 'paramex COMMAND --help' for the flags of a command.\n"
        "Exit status: 0 success, 1 failure, 2 usage error.\n",
        out);
}

/* ---- main --------------------------------------------------------------------------- */

int main(int argc, char** argv) {
  if (argc < 2) {
    top_usage(stderr);
    return 2;
  }
  const char* cmd = argv[1];
  if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
    top_usage(stdout);
    return 0;
  }
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
    if (argc > 2) {
      fprintf(stderr, "paramex: version: unexpected argument '%s'\n", argv[2]);
      return 2;
    }
    printf("paramex %s\n", PX_VERSION);
    return fflush(stdout) == 0 ? 0 : 1;
  }
  if (strcmp(cmd, "health") == 0) return cmd_health(argc - 1, argv + 1);
  if (strcmp(cmd, "stats") == 0) return cmd_stats(argc - 1, argv + 1);
  if (strcmp(cmd, "top") == 0) return cmd_top(argc - 1, argv + 1);
  if (strcmp(cmd, "checkpoint") == 0) return cmd_checkpoint(argc - 1, argv + 1);
  if (strcmp(cmd, "export") == 0) return cmd_export(argc - 1, argv + 1);
  if (strcmp(cmd, "checksum") == 0) return cmd_checksum(argc - 1, argv + 1);
  if (cmd[0] == '-')
    fprintf(stderr, "paramex: unknown flag %s (try 'paramex --help')\n", cmd);
  else
    fprintf(stderr, "paramex: unknown command '%s' (try 'paramex --help')\n", cmd);
  return 2;
}
