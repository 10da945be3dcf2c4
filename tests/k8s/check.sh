#!/usr/bin/env bash
# paramex-launch --backend k8s, offline (no cluster runs here): the rendered manifests
# validate against the real schemas (check.mjs: kubernetes-models, and ajv with the JobSet
# CRD schema), kubectl kustomize renders them and deploy/k8s, the pieces agree, the
# validation catches a broken manifest, deploy/k8s is what the launcher renders, --apply
# hands kubectl the same documents, and each usage error exits 2 with its line.
# Usage: tests/k8s/check.sh LAUNCHER   (node_modules: scripts/deps.sh runs npm ci here)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
launch=${1:?usage: check.sh LAUNCHER}
[[ -d $here/node_modules/kubernetes-models ]] || {
  echo "check.sh: $here/node_modules is missing: run scripts/deps.sh (npm ci there)" >&2
  exit 1
}
tmp=$(mktemp -d /tmp/pmx-k8s-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { echo "ok: $1"; passed=$((passed + 1)); }
bad() { echo "FAILED: $1" >&2; failed=$((failed + 1)); }
validate() { node "$here/check.mjs" "$@" >"$tmp/check.out" 2>&1; }

# renders DIR ARGS...: one render into DIR, validated as files and through kustomize
renders() {
  local dir=$1 what=$2
  shift 2
  if ! "$launch" --backend k8s --output "$dir" "$@" 2>"$tmp/err"; then
    bad "$what: render failed: $(cat "$tmp/err")"
  elif ! validate "$dir"/*.yaml; then
    bad "$what: $(tail -n 3 "$tmp/check.out")"
  elif ! kubectl kustomize "$dir" >"$dir.kustomized" 2>"$tmp/err"; then
    bad "$what: kubectl kustomize: $(cat "$tmp/err")"
  elif ! validate "$dir.kustomized"; then
    bad "$what (kustomized): $(tail -n 3 "$tmp/check.out")"
  else
    ok "$what: $(tail -n 1 "$tmp/check.out")"
  fi
}
echo secret-token-1 >"$tmp/token"
renders "$tmp/job" "Indexed Job" --shards 2 --workers 4 --image paramex:test -- paramex-train-demo
renders "$tmp/jobset" "JobSet, token, checkpoints, GPUs" --shards 3 --workers 5 --jobset \
  --max-restarts 2 --image reg.example/paramex:1 --namespace ml --name llm-ps \
  --token-secret "$tmp/token" --checkpoint-dir /ckpt --checkpoint-every 50 \
  --gpus-per-worker 1 -- python3 train.py --epochs 3

# stdout: one multi-document YAML stream, the same documents as the folder
if "$launch" --backend k8s --shards 2 --workers 4 --image paramex:test -- paramex-train-demo \
     >"$tmp/stdout.yaml" && validate "$tmp/stdout.yaml" &&
   [[ $(cat "$tmp"/job/0*.yaml | grep -vc '^---$') == $(grep -vc '^---$' "$tmp/stdout.yaml") ]]; then
  ok "stdout render"
else
  bad "stdout render: $(tail -n 3 "$tmp/check.out")"
fi

# the validation can fail: a schema violation, a JobSet violation, and disagreement
broken() {
  local what=$1 file=$2 from=$3 to=$4
  cp -r "$tmp/jobset" "$tmp/broken"
  sed -i "s|$from|$to|" "$tmp/broken/$file"
  if cmp -s "$tmp/jobset/$file" "$tmp/broken/$file"; then
    bad "broken $what: '$from' not in $file"
  elif validate "$tmp/broken"/*.yaml; then
    bad "broken $what: check.mjs accepted it"
  else
    ok "broken $what refused: $(tail -n 1 "$tmp/check.out" | cut -c1-150)"
  fi
  rm -rf "$tmp/broken"
}
broken "StatefulSet replicas" 02-statefulset.yaml "replicas: 3" "replicas: three"
broken "JobSet maxRestarts" 04-jobset.yaml "maxRestarts: 2" "maxRestarts: twice"
broken "PMX_SERVERS" 04-jobset.yaml "llm-ps-2.llm-ps.ml.svc:50051\"" "llm-ps-9.llm-ps.ml.svc:50051\""
broken "probe port" 02-statefulset.yaml "port: 50051" "port: 50052"

# deploy/k8s is the launcher's render with the arguments its README names
args=$(sed -n 's/^# render: paramex-launch //p' "$root/deploy/k8s/kustomization.yaml")
if [[ -z $args ]]; then
  bad "deploy/k8s/kustomization.yaml names no '# render:' command"
else
  eval "set -- $args"
  "$launch" --output "$tmp/deploy" "$@" 2>/dev/null
  if diff -r -x kustomization.yaml "$tmp/deploy" "$root/deploy/k8s" >"$tmp/diff"; then
    ok "deploy/k8s is the current render"
  else
    bad "deploy/k8s differs from a fresh render (re-render it): $(head -n 5 "$tmp/diff")"
  fi
  if kubectl kustomize "$root/deploy/k8s" >"$tmp/deploy.out" && validate "$tmp/deploy.out"; then
    ok "kubectl kustomize deploy/k8s: $(tail -n 1 "$tmp/check.out")"
  else
    bad "kubectl kustomize deploy/k8s: $(tail -n 3 "$tmp/check.out")"
  fi
fi

# --apply: kubectl apply -f - gets the documents
cat >"$tmp/kubectl" <<EOF
#!/bin/sh
echo "\$@" >"$tmp/kubectl.args"
cat >"$tmp/kubectl.in"
EOF
chmod +x "$tmp/kubectl"
if "$launch" --backend k8s --apply --kubectl "$tmp/kubectl" --shards 2 --workers 4 \
     --image paramex:test -- paramex-train-demo >"$tmp/apply.out" &&
   [[ $(cat "$tmp/kubectl.args") == "apply -f -" ]] && cmp -s "$tmp/kubectl.in" "$tmp/stdout.yaml"; then
  ok "--apply runs 'kubectl apply -f -' with the render"
else
  bad "--apply: args '$(cat "$tmp/kubectl.args" 2>/dev/null)'"
fi

# usage errors: exit 2, one line naming the problem, nothing written
usage() {
  local want=$1
  shift
  rm -rf "$tmp/none"
  local rc=0
  "$launch" --backend k8s --output "$tmp/none" "$@" >"$tmp/out" 2>&1 || rc=$?
  if ((rc == 2)) && grep -qF -- "$want" "$tmp/out" && [[ ! -e $tmp/none ]]; then
    ok "usage error: $want"
  else
    bad "usage error: exit $rc, want 2 and '$want'; output: $(cat "$tmp/out")"
  fi
}
usage "--image IMAGE is needed" --shards 2 --workers 4 -- demo
usage "'/nonexistent/kubectl' not found" --apply --kubectl /nonexistent/kubectl \
  --shards 2 --workers 4 --image i -- demo
usage "--name 'Paramex_1' must be a DNS label" --name Paramex_1 --shards 1 --workers 1 --image i -- demo
usage "--tls-cert: TLS is not rendered" --tls-cert c.pem --shards 1 --workers 1 --image i -- demo
usage "--token-secret $tmp/nope: No such file or directory" --token-secret "$tmp/nope" \
  --shards 1 --workers 1 --image i -- demo
usage "--port: shards listen on 50051" --port 6000 --shards 1 --workers 1 --image i -- demo

echo "k8s: $passed passed, $failed failed"
((failed == 0))
