/* TensorFlow's TF_CONFIG (the JSON that TensorFlow's launchers and Kubeflow's TFJob give
 * every task) as paramex reads it:
 *   {"cluster": {"chief": ["c:2222"], "worker": ["w0:2222", "w1:2222"],
 *                "ps": ["p0:2222", "p1:2222"]},
 *    "task": {"type": "worker", "index": 1}}
 * The ps tasks are the shards, in their order; the chief (or TF1's "master") and the
 * workers are the workers, the chief first (rank 0, as in MultiWorkerMirroredStrategy and
 * Estimator, where the chief trains too). Other task types (evaluator) train nothing. */
#ifndef PX_TF_CONFIG_H
#define PX_TF_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef enum px_tf_role {
  PX_TF_NONE = 0, /* no task, or one that trains nothing (evaluator) */
  PX_TF_WORKER,   /* chief, master or worker */
  PX_TF_PS,
} px_tf_role;

typedef struct px_tf_config {
  px_tf_role role;
  char type[24];           /* task.type as given ("" without a task) */
  uint32_t index;          /* task.index (0 when absent, as TensorFlow reads it) */
  uint32_t rank;           /* PX_TF_WORKER: chiefs first, then the workers */
  uint32_t chiefs, workers, ps; /* entries of cluster.chief + cluster.master, .worker, .ps */
  char* ps_list;           /* cluster.ps joined by ',' (NULL when it has none); owned */
  uint16_t ps_port;        /* PX_TF_PS: the port of cluster.ps[index] */
} px_tf_config;

/* Parses json. 0, or -1 with err ("TF_CONFIG: ...", one line) when it is not JSON, not the
 * shape above (a list of strings per job; a dict of task indices is refused), or its task
 * is not in its cluster. */
int px_tf_config_parse(const char* json, px_tf_config* out, char* err, size_t errlen);

void px_tf_config_free(px_tf_config* c);

#endif
