#!/usr/bin/env bash
# WebAssembly on an AKS node pool: adds the pool (or updates an existing one) with the trigger label —
# which AKS keeps on every node of the pool, including ones added later by scale-out, node image
# upgrades or re-imaging — installs or upgrades the kwasm-agent chart, waits until every node of the
# pool reports its shims proven loaded, and runs a sample Wasm pod on the pool through its RuntimeClass.
#
#   scripts/aks-nodepool.sh --resource-group RG --cluster NAME --nodepool NAME
#                           [--node-count N] [--taint] [--timeout SECONDS] [--dry-run]
#
#   --taint      create the pool with kwasm.sh/provisioning=true:NoSchedule: nothing is scheduled on
#                a node before its shims are ready; the agent removes the taint then.
#   --dry-run    print every command instead of running it.
# Needs az (logged in), helm and kubectl on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

rg="" cluster="" pool="" count=2 taint=false dry=false timeout=900
release=kwasm-agent namespace=kube-system
label_key=kwasm.sh/kwasm-node
taint_spec=kwasm.sh/provisioning=true:NoSchedule
sample_image=${KWASM_SAMPLE_IMAGE:-ghcr.io/spinframework/containerd-shim-spin/examples/spin-rust-hello:v0.23.0}
sample_runtime_class=${KWASM_SAMPLE_RUNTIME_CLASS:-wasmtime-spin-v2}
while [ $# -gt 0 ]; do
  case "$1" in
    --resource-group) rg=${2:?}; shift 2 ;;
    --cluster) cluster=${2:?}; shift 2 ;;
    --nodepool) pool=${2:?}; shift 2 ;;
    --node-count) count=${2:?}; shift 2 ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --taint) taint=true; shift ;;
    --dry-run) dry=true; shift ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
if [ -z "$rg" ] || [ -z "$cluster" ] || [ -z "$pool" ]; then usage; fi
case "$count" in ''|*[!0-9]*) echo "--node-count must be a number" >&2; exit 2 ;; esac
case "$timeout" in ''|*[!0-9]*) echo "--timeout must be a number of seconds" >&2; exit 2 ;; esac

# Every command that changes or reads the cluster goes through run: printed, and run unless --dry-run.
run() {
  printf '+ %s\n' "$*" >&2
  if ! $dry; then "$@"; fi
}

kubeconfig=$(mktemp "${TMPDIR:-/tmp}/kwasm-aks-kubeconfig.XXXXXX")
trap 'rm -f "$kubeconfig"' EXIT
export KUBECONFIG="$kubeconfig"

echo "==> node pool $pool in $cluster ($rg): label $label_key=true$($taint && echo ", taint $taint_spec")" >&2
if ! $dry && az aks nodepool show --resource-group "$rg" --cluster-name "$cluster" --name "$pool" --output none 2>/dev/null; then
  # `--labels` replaces the pool's labels: keep the ones it has.
  labels=$(az aks nodepool show --resource-group "$rg" --cluster-name "$cluster" --name "$pool" \
    --query nodeLabels --output json | python3 -c '
import json, sys
labels = json.load(sys.stdin) or {}
print(" ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != sys.argv[1]))' "$label_key")
  # shellcheck disable=SC2086 # one argument per existing label
  run az aks nodepool update --resource-group "$rg" --cluster-name "$cluster" --name "$pool" \
    --labels $labels "$label_key=true"
  if $taint; then
    run az aks nodepool update --resource-group "$rg" --cluster-name "$cluster" --name "$pool" \
      --node-taints "$taint_spec"
  fi
else
  taint_args=()
  if $taint; then taint_args=(--node-taints "$taint_spec"); fi
  run az aks nodepool add --resource-group "$rg" --cluster-name "$cluster" --name "$pool" \
    --node-count "$count" --os-type Linux --labels "$label_key=true" "${taint_args[@]}"
fi

echo "==> credentials and the kwasm-agent chart" >&2
run az aks get-credentials --resource-group "$rg" --name "$cluster" --file "$kubeconfig" --overwrite-existing
run helm upgrade --install "$release" manifests/helm/kwasm-agent --namespace "$namespace" --wait --timeout 5m

echo "==> waiting for every node of $pool to report its shims loaded (up to ${timeout}s)" >&2
selector="agentpool=$pool"
query='{range .items[*]}{.metadata.name}{"="}{.metadata.labels.kwasm\.sh/kwasm-provisioned}{"\n"}{end}'
if $dry; then
  printf '+ %s\n' "kubectl get nodes --selector $selector --output jsonpath=$query (until every node says true)" >&2
else
  deadline=$(( $(date +%s) + timeout ))
  while :; do
    states=$(kubectl get nodes --selector "$selector" --output "jsonpath=$query")
    total=$(printf '%s\n' "$states" | grep -c '=' || true)
    ready=$(printf '%s\n' "$states" | grep -c '=true$' || true)
    echo "   $ready of $total nodes ready" >&2
    if [ "$total" -gt 0 ] && [ "$ready" -eq "$total" ]; then break; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "nodes not ready after ${timeout}s:" >&2
      printf '%s\n' "$states" | grep -v '=true$' >&2 || true
      echo "see: kubectl describe node NODE (Events), and the kwasm.sh/kwasm-status annotation" >&2
      exit 1
    fi
    sleep 5
  done
fi

echo "==> a sample Wasm pod on RuntimeClass $sample_runtime_class" >&2
pod=kwasm-sample-$pool
manifest=$(cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $pod
  namespace: default
spec:
  runtimeClassName: $sample_runtime_class
  nodeSelector: { agentpool: $pool }
  containers:
    - name: app
      image: $sample_image
      command: ["/"]
EOF
)
if $dry; then
  printf '+ kubectl apply --filename - <<EOF\n%s\nEOF\n' "$manifest" >&2
else
  printf '%s\n' "$manifest" | kubectl apply --filename -
fi
run kubectl wait --namespace default --for=condition=Ready "pod/$pod" --timeout=180s
run kubectl get pod --namespace default "$pod" --output wide
run kubectl delete pod --namespace default "$pod" --wait=false
echo "==> done: every node of $pool runs WebAssembly; new nodes of the pool are provisioned by their own agent" >&2
