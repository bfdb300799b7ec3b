"""deploy/kubernetes validates offline against the Kubernetes API schemas, and agrees with the agent.

No cluster can run on these machines: ``kubernetes-validate`` checks every document against the
OpenAPI schemas of a real Kubernetes release (strict: an unknown field fails), and the rest of the
tests check what a schema cannot: one claim per shard, the probe is a real ``codex-agent`` command
line, non-root everywhere but the one init step, jobs pinned to their worker's node.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli.commands import cli
from agent.settings import defaults

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate absent (pip install -e .[test])"
)

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES = "1.32.0"
"""The oldest release the manifests need: the pod-index label (1.28), ValidatingAdmissionPolicy v1
(1.30), the pod name in service-account tokens (1.32)."""


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = [
        (f"{path.name}:{doc['kind']}/{doc['metadata'].get('name') or doc['metadata'].get('generateName')}", doc)
        for path in sorted(MANIFESTS.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert found, f"no manifests under {MANIFESTS}"
    return found


def one(kind: str, file: str | None = None) -> dict[str, Any]:
    matches = [doc for name, doc in documents() if doc["kind"] == kind and (file is None or name.startswith(file))]
    assert len(matches) == 1, f"{len(matches)} {kind} documents"
    return matches[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize(("name", "doc"), documents(), ids=[name for name, _ in documents()])
def test_every_document_validates_strictly(name: str, doc: dict[str, Any]) -> None:
    """Each document is a valid object of its kind in Kubernetes 1.32, with no unknown field."""
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda s: s["spec"].__setitem__("replicas", "three"),
        lambda s: s["spec"]["template"]["spec"]["containers"][0].__setitem__("readinesProbe", {}),
        lambda s: s["spec"]["volumeClaimTemplates"][0]["spec"].pop("resources") and s["spec"].pop("selector"),
    ],
    ids=["wrong-type", "misspelt-field", "missing-required"],
)
def test_the_validator_catches_a_broken_statefulset(breakage: Any) -> None:
    """The same StatefulSet, broken three ways, is refused: the validation above can fail."""
    broken = yaml.safe_load(yaml.safe_dump(one("StatefulSet")))
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


class TestWorkers:
    def test_one_read_write_once_claim_per_shard_kept_on_delete(self) -> None:
        """Each shard's pod gets its own ReadWriteOnce claim; scaling down or deleting keeps the logins."""
        spec = one("StatefulSet")["spec"]
        (claim,) = spec["volumeClaimTemplates"]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
        mounts = {m["name"]: m["mountPath"] for m in spec["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == defaults.JOB_HOME  # CODEX_HOME in the images

    def test_the_shard_is_the_ordinal_and_the_volume_is_the_claim(self) -> None:
        """CODEX_SHARD_INDEX comes from the pod-index label, CODEX_VOLUME_NAME names the claim, CODEX_SHARDS = replicas."""
        sts = one("StatefulSet")
        env = env_of(sts["spec"]["template"]["spec"]["containers"][0])
        assert env["CODEX_SHARD_INDEX"] == {
            "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
        }
        claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        assert env["CODEX_VOLUME_NAME"] == f"{claim}-$(POD_NAME)"  # the StatefulSet's claim naming
        assert int(env["CODEX_SHARDS"]) == sts["spec"]["replicas"]

    def test_every_variable_is_one_the_agent_documents(self) -> None:
        """No invented setting: each variable of the worker is in README's configuration table."""
        rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", (ROOT / "README.md").read_text(), re.M))
        env = env_of(one("StatefulSet")["spec"]["template"]["spec"]["containers"][0])
        assert set(env) - {"POD_NAME"} <= rows, sorted(set(env) - rows)

    def test_readiness_is_the_status_probe_and_it_parses(self) -> None:
        """Ready means a live agent with its gate open: the real ``codex-agent status --probe``."""
        container = one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]
        command = container["readinessProbe"]["exec"]["command"]
        assert command == ["codex-agent", "status", "--probe"]
        context = cli.commands["status"].make_context("status", command[2:])
        assert context.params["probe"] is True
        assert "livenessProbe" not in container  # a closed gate is a login to fix, not a restart

    def test_non_root_except_the_one_init_step(self) -> None:
        """The pod runs as uid 1000 with no privilege; only the volume's chown runs as root, with two capabilities."""
        pod = one("StatefulSet")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert "fsGroup" not in pod["securityContext"]  # it would make the login volume group-writable (E023)
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
            assert "runAsUser" not in ctx and "add" not in ctx["capabilities"]
        (init,) = pod["initContainers"]
        assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}

    def test_a_stop_waits_for_the_running_phase(self) -> None:
        """The grace period outlasts the phase limit, as the compose file's stop_grace_period does."""
        sts = one("StatefulSet")
        env = env_of(sts["spec"]["template"]["spec"]["containers"][0])
        assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= int(env["CODEX_PHASE_TIMEOUT"]) + 60

    def test_the_disruption_budget_covers_the_workers_one_at_a_time(self) -> None:
        sts, pdb = one("StatefulSet"), one("PodDisruptionBudget")
        assert pdb["spec"]["selector"] == sts["spec"]["selector"]
        assert pdb["spec"]["maxUnavailable"] == 1


class TestJobs:
    def test_a_job_is_pinned_to_its_workers_node_and_mounts_its_claim(self) -> None:
        """The job pod schedules beside codex-worker-0 (same node) and mounts that worker's claim."""
        sts, job = one("StatefulSet"), one("Job")
        pod = job["spec"]["template"]["spec"]
        (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        worker = term["labelSelector"]["matchLabels"]["statefulset.kubernetes.io/pod-name"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert (
            claims == [f"{claim}-{worker}"]
            and worker == f"{sts['metadata']['name']}-{job['metadata']['labels']['codex.shard']}"
        )

    def test_a_job_runs_under_the_job_policy(self) -> None:
        """Non-root, no privilege, read-only root, no retries, the phase's wall-clock limit."""
        job = one("Job")
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 3600

    def test_the_admission_policy_is_bound_and_denies(self) -> None:
        policy, binding = one("ValidatingAdmissionPolicy"), one("ValidatingAdmissionPolicyBinding")
        assert binding["spec"]["policyName"] == policy["metadata"]["name"]
        assert binding["spec"]["validationActions"] == ["Deny"] and policy["spec"]["failurePolicy"] == "Fail"
