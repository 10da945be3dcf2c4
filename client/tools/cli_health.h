/* paramex health ADDR [--wait SECONDS] [--service NAME]: the server's grpc.health.v1 status; exit 0 when SERVING. */
#ifndef PX_CLI_HEALTH_H
#define PX_CLI_HEALTH_H

int cmd_health(int argc, char** argv);

#endif
