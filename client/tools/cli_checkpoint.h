/* paramex checkpoint ADDR: a checkpoint now; paramex export ADDR|CHECKPOINT --out FILE: the parameters as safetensors. */
#ifndef PX_CLI_CHECKPOINT_H
#define PX_CLI_CHECKPOINT_H

int cmd_checkpoint(int argc, char** argv);
int cmd_export(int argc, char** argv);

#endif
