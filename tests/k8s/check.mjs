// Validates the manifests of one paramex-launch --backend k8s render, offline:
//   node tests/k8s/check.mjs FILE...   (YAML files, several documents each allowed)
// Built-in kinds against kubernetes-models' schemas, the JobSet against its CRD schema
// (jobset.schema.json, with ajv), and then that the pieces agree: the Service and the
// StatefulSet's serviceName, selectors and labels, the gRPC port of the container, the
// Service and the probes, --shards/--workers against the replicas and completions, and
// PMX_SERVERS against the shards' stable DNS names. Prints one line per document; exits 1
// naming the first thing that is wrong.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import YAML from "yaml";
import Ajv from "ajv";

const here = path.dirname(fileURLToPath(import.meta.url));
function fail(msg) {
  console.error(`check.mjs: ${msg}`);
  process.exit(1);
}
function expect(cond, msg) {
  if (!cond) fail(msg);
}
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const docs = [];
for (const f of process.argv.slice(2)) {
  for (const d of YAML.parseAllDocuments(fs.readFileSync(f, "utf8"))) {
    expect(d.errors.length === 0, `${f}: ${d.errors[0]}`);
    const o = d.toJS();
    if (o && o.kind !== "Kustomization") docs.push({ file: f, o });
  }
}
expect(docs.length > 0, "no manifests given");

const schema = JSON.parse(fs.readFileSync(path.join(here, "jobset.schema.json"), "utf8"));
const jobset = new Ajv({ strict: false, allErrors: true, validateFormats: false }).compile(schema);

for (const { file, o } of docs) {
  const where = `${file}: ${o.kind} ${o.metadata?.name}`;
  if (o.apiVersion === "jobset.x-k8s.io/v1alpha2" && o.kind === "JobSet") {
    expect(jobset(o), `${where}: ${JSON.stringify(jobset.errors)}`);
  } else {
    let mod;
    try {
      mod = await import(`kubernetes-models/${o.apiVersion}/${o.kind}`);
    } catch (e) {
      fail(`${where}: no schema for ${o.apiVersion} ${o.kind}`);
    }
    try {
      new mod[o.kind](o).validate();
    } catch (e) {
      fail(`${where}: ${e.message}`);
    }
  }
  console.log(`valid ${o.apiVersion} ${o.kind} ${o.metadata.name}`);
}

const one = (kind) => {
  const all = docs.filter((d) => d.o.kind === kind).map((d) => d.o);
  expect(all.length <= 1, `${all.length} ${kind} documents`);
  return all[0];
};
const svc = one("Service"), sts = one("StatefulSet"), pdb = one("PodDisruptionBudget");
const secret = one("Secret"), job = one("Job"), js = one("JobSet");
expect(svc && sts && pdb && (job || js) && !(job && js),
       "want a Service, a StatefulSet, a PodDisruptionBudget and a Job or a JobSet");
const ns = sts.metadata.namespace;
for (const d of docs) expect(d.o.metadata.namespace === ns, `${d.o.kind} not in namespace ${ns}`);

// the shards
expect(svc.spec.clusterIP === "None" && svc.spec.publishNotReadyAddresses === true,
       "the Service is not headless with publishNotReadyAddresses");
expect(sts.spec.serviceName === svc.metadata.name,
       `StatefulSet serviceName ${sts.spec.serviceName}, Service ${svc.metadata.name}`);
expect(sts.spec.podManagementPolicy === "Parallel", "shards not started in parallel");
const podLabels = sts.spec.template.metadata.labels;
const within = (sel) => Object.entries(sel).every(([k, v]) => podLabels[k] === v);
expect(within(sts.spec.selector.matchLabels), "StatefulSet selector misses its pods");
expect(within(svc.spec.selector), "Service selector misses the shard pods");
expect(same(pdb.spec.selector.matchLabels, sts.spec.selector.matchLabels),
       "PodDisruptionBudget selects other pods than the StatefulSet");
expect(pdb.spec.minAvailable === sts.spec.replicas, "PodDisruptionBudget lets a shard go");
const server = sts.spec.template.spec.containers[0];
const grpcPort = server.ports.find((p) => p.name === "grpc")?.containerPort;
const svcPort = svc.spec.ports.find((p) => p.name === "grpc");
expect(grpcPort && svcPort && svcPort.port === grpcPort && svcPort.targetPort === "grpc",
       `Service port ${JSON.stringify(svcPort)} does not reach container port ${grpcPort}`);
for (const probe of ["startupProbe", "readinessProbe"])
  expect(server[probe]?.grpc?.port === grpcPort, `${probe} is not a gRPC probe on ${grpcPort}`);
const arg = (cmd, flag) => {
  const i = cmd.indexOf(flag);
  return i >= 0 ? cmd[i + 1] : undefined;
};
expect(arg(server.command, "--listen") === `0.0.0.0:${grpcPort}`, "shards listen elsewhere");
expect(Number(arg(server.command, "--shards")) === sts.spec.replicas,
       `--shards ${arg(server.command, "--shards")}, replicas ${sts.spec.replicas}`);
expect(!server.command.includes("--shard"), "a fixed --shard: every pod would be one shard");

// the workers
const jspec = job ? job.spec : js.spec.replicatedJobs[0].template.spec;
if (js) expect(js.spec.replicatedJobs.length === 1 && js.spec.replicatedJobs[0].replicas === 1,
               "the JobSet holds more than one Job of workers");
expect(jspec.completionMode === "Indexed" && jspec.completions === jspec.parallelism,
       "workers are not one Indexed Job running every index at once");
expect(Number(arg(server.command, "--workers")) === jspec.completions,
       `--workers ${arg(server.command, "--workers")}, completions ${jspec.completions}`);
const pod = jspec.template.spec;
const worker = pod.containers[0];
const env = Object.fromEntries(worker.env.map((e) => [e.name, e]));
const want = Array.from({ length: sts.spec.replicas },
                        (_, i) => `${sts.metadata.name}-${i}.${svc.metadata.name}.${ns}.svc:${grpcPort}`);
expect(env.PMX_SERVERS?.value === want.join(","),
       `PMX_SERVERS ${env.PMX_SERVERS?.value}, the shards are ${want.join(",")}`);
expect(Number(env.PMX_WORLD_SIZE?.value) === jspec.completions, "PMX_WORLD_SIZE != completions");
expect(env.PMX_RANK?.valueFrom?.fieldRef?.fieldPath ===
       "metadata.annotations['batch.kubernetes.io/job-completion-index']",
       "PMX_RANK is not the completion index");
const waits = pod.initContainers.map((c) => c.command[c.command.length - 1]);
expect(same(waits, want), `the workers wait for ${waits}, the shards are ${want}`);

// the token
if (secret) {
  const mountOf = (c) => c.volumeMounts?.find((m) => m.name === "token")?.mountPath;
  const vol = (spec) => spec.volumes?.find((v) => v.name === "token")?.secret?.secretName;
  const file = `${mountOf(server)}/token`;
  expect(secret.data?.token, "the Secret has no token");
  expect(vol(sts.spec.template.spec) === secret.metadata.name && vol(pod) === secret.metadata.name,
         "the token Secret is not mounted in both kinds of pods");
  expect(arg(server.command, "--token-file") === file, "the shards do not read the token");
  expect(env.PMX_TOKEN_FILE?.value === `${mountOf(worker)}/token`, "the workers do not read it");
  for (const c of pod.initContainers)
    expect(arg(c.command, "--token-file") === `${mountOf(c)}/token`, `${c.name} has no token`);
}
console.log(`agree: ${sts.spec.replicas} shards (${want[0]} ...), ${jspec.completions} workers`);
