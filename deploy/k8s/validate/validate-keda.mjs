// Validates KEDA resources against KEDA's own schema, as the npm package
// @kubernetes-models/keda carries it (generated from KEDA's API types; MIT).
// Reads a JSON array of resources on stdin, writes one result per resource:
//   [{"kind": ..., "name": ..., "ok": true|false, "error": "..."}]
// tests/unit/test_deploy.py installs the package (npm ci, package-lock.json) and runs it.
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { ScaledJob } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledJob";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { ClusterTriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/ClusterTriggerAuthentication";

const MODELS = { ScaledObject, ScaledJob, TriggerAuthentication, ClusterTriggerAuthentication };

let input = "";
for await (const chunk of process.stdin) input += chunk;

const results = JSON.parse(input).map((resource) => {
  const name = resource?.metadata?.name ?? null;
  const Model = MODELS[resource?.kind];
  if (resource?.apiVersion !== "keda.sh/v1alpha1" || !Model) {
    return { kind: resource?.kind ?? null, name, ok: false, error: "not a KEDA keda.sh/v1alpha1 resource" };
  }
  try {
    new Model(resource).validate();
    return { kind: resource.kind, name, ok: true, error: null };
  } catch (err) {
    return { kind: resource.kind, name, ok: false, error: String(err?.message ?? err) };
  }
});
process.stdout.write(JSON.stringify(results));
