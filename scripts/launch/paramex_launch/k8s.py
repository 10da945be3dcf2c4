"""--backend k8s: Kubernetes manifests for S shards and W workers, written to stdout or a
folder (with a kustomization.yaml), and applied with kubectl when asked.

Shards: a headless Service (publishNotReadyAddresses: the workers' DNS names resolve
before the shards are ready) and a StatefulSet (podManagementPolicy Parallel; each pod's
shard index is its ordinal, which paramex-server adopts from HOSTNAME; native gRPC
startup and readiness probes on grpc.health.v1.Health; a PersistentVolumeClaim per shard
when the server flags name a --checkpoint-dir), and a PodDisruptionBudget that keeps
every shard up. Workers: an Indexed Job (or, with --jobset, a JobSet around it) whose pod
R gets PMX_RANK=R from its completion index, PMX_WORLD_SIZE=W and PMX_SERVERS (the
shards' stable names in shard order), and waits in init containers (paramex health
--wait) until every shard serves. A token file becomes a Secret, mounted into every pod.
"""
import base64
import json
import os
import re
import shutil
import subprocess
import sys

PORT = 50051
METRICS_PORT = 9400  # every shard serves Prometheus metrics here (--metrics-listen)
TOKEN_DIR = "/etc/paramex/token"
CKPT_VOLUME = "checkpoints"
TLS_FLAGS = ("--tls-cert", "--tls-key", "--tls-ca", "--tls-client-ca")


def usage(msg):
    print(f"paramex-launch: --backend k8s: {msg}", file=sys.stderr)
    sys.exit(2)


# ---- YAML: JSON's values written as block YAML ------------------------------------------

PLAIN = re.compile(r"^[A-Za-z_/.][A-Za-z0-9_./:=-]*$")
SPECIAL = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"}


def scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    s = str(v)
    if PLAIN.match(s) and s.lower() not in SPECIAL and not s.endswith(":"):
        return s
    return json.dumps(s)  # a JSON string is a YAML double-quoted scalar


def emit(v, indent=0):
    pad = " " * indent
    lines = []
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, (dict, list)) and x:
                lines.append(f"{pad}{scalar(k)}:")
                lines.extend(emit(x, indent + (0 if isinstance(x, list) else 2)))
            else:
                lines.append(f"{pad}{scalar(k)}: {empty_or_scalar(x)}")
    else:
        for x in v:
            if isinstance(x, (dict, list)) and x:
                sub = emit(x, indent + 2)
                lines.append(f"{pad}- {sub[0][indent + 2:]}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {empty_or_scalar(x)}")
    return lines


def empty_or_scalar(x):
    if isinstance(x, dict):
        return "{}"
    if isinstance(x, list):
        return "[]"
    return scalar(x)


def to_yaml(doc):
    return "\n".join(emit(doc)) + "\n"


# ---- manifests ---------------------------------------------------------------------------

def flag_value(flags, name):
    for i, f in enumerate(flags):
        if f == name and i + 1 < len(flags):
            return flags[i + 1]
        if f.startswith(name + "="):
            return f[len(name) + 1:]
    return None


def labels(a, component):
    return {"app.kubernetes.io/name": "paramex", "app.kubernetes.io/instance": a.name,
            "app.kubernetes.io/component": component}


def shard_addrs(a):
    return [f"{a.name}-{i}.{a.name}.{a.namespace}.svc:{PORT}" for i in range(a.shards)]


def metrics_port(server_flags):
    """The port of the shards' /metrics: a --metrics-listen given among the server flags,
    else METRICS_PORT."""
    given = flag_value(server_flags, "--metrics-listen")
    port = given.rsplit(":", 1)[-1] if given else ""
    if given and not (port.isdigit() and 0 < int(port) < 65536):
        usage(f"--metrics-listen {given}: give a fixed port (HOST:PORT): the pods and the "
              "Service name it")
    return int(port) if given else METRICS_PORT


def grpc_probe(period, failures):
    return {"grpc": {"port": PORT}, "periodSeconds": period, "failureThreshold": failures}


def token_volume(a):
    return [{"name": "token", "secret": {"secretName": f"{a.name}-token",
                                         "defaultMode": 0o400}}]


def token_mount():
    return [{"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}]


def statefulset(a, server_flags):
    given = flag_value(server_flags, "--metrics-listen")  # the user's, or ours on METRICS_PORT
    own = [] if given else ["--metrics-listen", f"0.0.0.0:{METRICS_PORT}"]
    mport = metrics_port(server_flags)
    cmd = [a.server_bin or "paramex-server", "--listen", f"0.0.0.0:{PORT}"] + own + [
           "--shards", str(a.shards), "--workers", str(a.workers)] + server_flags
    c = {"name": "server", "image": a.image, "command": cmd,
         "ports": [{"name": "grpc", "containerPort": PORT},
                   {"name": "metrics", "containerPort": mport}],
         "startupProbe": grpc_probe(2, max(1, int(a.ready_timeout / 2 + 0.5))),
         "readinessProbe": grpc_probe(5, 3)}
    pod = {"terminationGracePeriodSeconds": int(a.stop_timeout + 0.5), "containers": [c]}
    mounts = []
    if a.token_secret:
        cmd += ["--token-file", f"{TOKEN_DIR}/token"]
        mounts += token_mount()
        pod["volumes"] = token_volume(a)
    ckpt = flag_value(server_flags, "--checkpoint-dir")
    spec = {"serviceName": a.name, "replicas": a.shards, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels(a, "server")},
            "template": {"metadata": {"labels": labels(a, "server"),
                                      # Prometheus's kubernetes_sd relabelling convention
                                      # (with --token-file the scrape job must send it)
                                      "annotations": {"prometheus.io/scrape": "true",
                                                      "prometheus.io/port": str(mport),
                                                      "prometheus.io/path": "/metrics"}},
                         "spec": pod}}
    if ckpt:
        mounts.append({"name": CKPT_VOLUME, "mountPath": ckpt})
        spec["volumeClaimTemplates"] = [{
            "metadata": {"name": CKPT_VOLUME},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": a.storage}}}}]
    if mounts:
        c["volumeMounts"] = mounts
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": a.name, "namespace": a.namespace,
                         "labels": labels(a, "server")}, "spec": spec}


def job_spec(a, command):
    env = [{"name": "PMX_SERVERS", "value": ",".join(shard_addrs(a))},
           {"name": "PMX_WORLD_SIZE", "value": str(a.workers)},
           {"name": "PMX_RANK", "valueFrom": {"fieldRef": {
               "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
    wait_flags = []
    if a.token_secret:
        env.append({"name": "PMX_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"})
        wait_flags = ["--token-file", f"{TOKEN_DIR}/token"]
    c = {"name": "worker", "image": a.image, "command": command, "env": env}
    if a.gpus_per_worker:
        c["resources"] = {"limits": {"nvidia.com/gpu": a.gpus_per_worker}}
    waits = [{"name": f"wait-shard-{i}", "image": a.image,
              "command": [a.cli_bin, "health", "--wait", str(int(a.wait_timeout))] + wait_flags
              + [addr]} for i, addr in enumerate(shard_addrs(a))]
    pod = {"restartPolicy": "Never", "initContainers": waits, "containers": [c]}
    if a.token_secret:
        c["volumeMounts"] = token_mount()
        for w in waits:
            w["volumeMounts"] = token_mount()
        pod["volumes"] = token_volume(a)
    return {"completionMode": "Indexed", "completions": a.workers, "parallelism": a.workers,
            "backoffLimit": 0,
            "template": {"metadata": {"labels": labels(a, "worker")}, "spec": pod}}


def workers(a, command):
    meta = {"name": f"{a.name}-workers", "namespace": a.namespace, "labels": labels(a, "worker")}
    if not a.jobset:
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
                "spec": job_spec(a, command)}
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": meta,
            "spec": {"failurePolicy": {"maxRestarts": a.max_restarts},
                     "successPolicy": {"operator": "All", "targetReplicatedJobs": ["workers"]},
                     "replicatedJobs": [{"name": "workers", "replicas": 1,
                                         "template": {"spec": job_spec(a, command)}}]}}


def render(a, server_flags, command, token):
    meta = {"namespace": a.namespace}
    docs = []
    if token is not None:
        docs.append(("secret", {"apiVersion": "v1", "kind": "Secret",
                                "metadata": dict(name=f"{a.name}-token", **meta),
                                "type": "Opaque",
                                "data": {"token": base64.b64encode(token).decode()}}))
    docs.append(("service", {"apiVersion": "v1", "kind": "Service",
                             "metadata": dict(name=a.name, labels=labels(a, "server"), **meta),
                             "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                                      "selector": labels(a, "server"),
                                      "ports": [{"name": "grpc", "port": PORT,
                                                 "targetPort": "grpc"},
                                                {"name": "metrics",
                                                 "port": metrics_port(server_flags),
                                                 "targetPort": "metrics"}]}}))
    docs.append(("statefulset", statefulset(a, server_flags)))
    docs.append(("pdb", {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                         "metadata": dict(name=a.name, **meta),
                         "spec": {"minAvailable": a.shards,
                                  "selector": {"matchLabels": labels(a, "server")}}}))
    docs.append(("jobset" if a.jobset else "job", workers(a, command)))
    return docs


DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def check(a, server_flags):
    if not a.image:
        usage("--image IMAGE is needed (an image with paramex-server, paramex and the "
              "worker command)")
    if not DNS_LABEL.match(a.name) or len(a.name) > 40:
        usage(f"--name '{a.name}' must be a DNS label of at most 40 characters (a-z, 0-9, "
              "'-', starting with a letter): it names the Service, the pods and the Job")
    if not DNS_LABEL.match(a.namespace) or len(a.namespace) > 63:
        usage(f"--namespace '{a.namespace}' is not a DNS label")
    for f in server_flags:
        if f.split("=")[0] in TLS_FLAGS:
            usage(f"{f.split('=')[0]}: TLS is not rendered (kubelet's gRPC probes speak "
                  "plaintext, and the certificates need Secrets of your own); use a token "
                  "(--token-secret FILE) or patch the deploy/k8s base")
    if a.port:
        usage(f"--port: shards listen on {PORT} in their pods")


def main(a, server_flags, command):
    check(a, server_flags)
    kubectl = None
    if a.apply:
        kubectl = shutil.which(a.kubectl)
        if not kubectl:
            usage(f"--apply: '{a.kubectl}' not found on PATH (nothing was applied; "
                  "--output DIR writes the manifests)")
    token = None
    if a.token_secret:
        try:
            with open(a.token_secret, "rb") as f:
                token = f.read().strip()
        except OSError as e:
            usage(f"--token-secret {a.token_secret}: {e.strerror}")
        if not token:
            usage(f"--token-secret {a.token_secret}: the file is empty")
    docs = render(a, server_flags, command, token)
    text = "".join(("---\n" if i else "") + to_yaml(d) for i, (_n, d) in enumerate(docs))
    if a.output:
        try:
            os.makedirs(a.output, exist_ok=True)
            names = []
            for i, (n, d) in enumerate(docs):
                names.append(f"{i:02d}-{n}.yaml")
                with open(os.path.join(a.output, names[-1]), "w") as f:
                    f.write(to_yaml(d))
            with open(os.path.join(a.output, "kustomization.yaml"), "w") as f:
                f.write(to_yaml({"apiVersion": "kustomize.config.k8s.io/v1beta1",
                                 "kind": "Kustomization", "resources": names}))
        except OSError as e:
            usage(f"--output {a.output}: {e.strerror}")
        print(f"[launch] wrote {len(docs)} manifests and kustomization.yaml to {a.output}",
              file=sys.stderr)
    elif not a.apply:
        sys.stdout.write(text)
    if kubectl:
        return subprocess.run([kubectl, "apply", "-f", "-"], input=text.encode()).returncode
    return 0
