"""A Codex phase: ``codex exec --json`` in a job container under the job policy, with its artifacts and limit.

:class:`CodexPhase` runs one phase of a run on this worker's shard:

* the job container gets the shard's login (the :class:`~agent.jobs.launcher.JobLauncher`), the run's
  workspace volume at ``/workspace``, ``CODEX_PHASE_TIMEOUT`` as its wall-clock limit (CODEX-E043),
  and Codex's own token-endpoint overrides when the worker has them (staging and tests);
* a later phase resumes the run's Codex session (``codex exec resume <id>``), whose files live in the
  shard's ``CODEX_HOME``: the reason every phase of a run is pinned to one shard;
* the JSONL stream, the final message and the outcome become the run's artifacts
  (:mod:`agent.jobs.artifacts`), and a phase already completed is never run again; nor is one whose
  job finished while its worker was away (:mod:`agent.jobs.harvest`);
* a run that dies of its login (refresh token reused, expired or revoked; not logged in) is not a
  job failure: the volume is marked revoked (:mod:`agent.login.revocation`) and CODEX-E034 is raised,
  which the task base turns into a requeue with the gate closed;
* a run that meets the login's usage limit is not a job failure either: the volume is marked
  limited until the reset time (:mod:`agent.login.usage`) and CODEX-E036 is raised, requeued the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from agent.errors import JobFailedError, LoginRevokedError, PhaseRequestError, UsageLimitError
from agent.jobs import reconcile, workspaces
from agent.jobs.artifacts import OUTCOME_FILE, RunArtifacts, checked_name
from agent.jobs.codex_output import StreamSummary, auth_failure, summarize
from agent.jobs.launcher import WORKSPACE_PATH, JobLauncher
from agent.jobs.phase_options import PhaseOptions, hide_values, phase_options
from agent.jobs.policy import workspace_name
from agent.jobs.seed import seed_path, seed_workspace
from agent.login import revocation, usage
from agent.login.auth import inspect_auth_file
from agent.settings.config import AgentConfig

__all__ = [
    "PROMPT_LIMIT",
    "exec_argv",
    "CodexPhase",
]

log = structlog.get_logger(__name__)

PROMPT_LIMIT = 100_000
"""Characters a phase prompt may have (it travels in the task message and the job's argv)."""


def exec_argv(
    prompt: str, session_id: str | None = None, workdir: str = WORKSPACE_PATH, options: Sequence[str] = ()
) -> list[str]:
    """``codex exec --json`` for a new session, or resuming ``session_id``.

    ``options`` (checked by :mod:`agent.jobs.phase_options`) go right before the positionals, after
    ``resume`` when resuming; ``--`` ends the options, so a prompt that looks like a flag
    (``--dangerously-bypass-approvals-and-sandbox``) stays a prompt.
    """
    argv = ["codex", "exec", "--json", "--skip-git-repo-check", "-C", workdir]
    if session_id:
        return [*argv, "resume", *options, "--", session_id, prompt]
    return [*argv, *options, "--", prompt]


class CodexPhase:
    """Runs phases of runs on this worker's shard.

    Args:
        launcher: the job launcher of the running task (its shard, volume and audit context);
            its configuration gives the image, limit, network, artifacts root, CODEX_HOME and the
            Codex endpoint overrides its jobs get.
    """

    def __init__(self, launcher: JobLauncher) -> None:
        self.launcher = launcher
        self.config: AgentConfig = launcher.config

    def _facts(self) -> dict[str, Any]:
        return self.config.shard_facts(self.launcher.volume_name)

    def run(
        self,
        *,
        run_id: str,
        phase: str,
        prompt: str,
        resume: bool = False,
        task_id: str | None = None,
        model: str | None = None,
        codex_args: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        seed: str | None = None,
        final: bool = False,
    ) -> dict[str, Any]:
        """Run (or find completed) one phase; returns its outcome.

        The outcome carries ``final_message`` (Codex's last agent message), ``usage`` and
        ``session_id``, besides the artifacts directory on the worker.

        Args:
            model: the model (``codex exec -m``); None: the login's config decides.
            codex_args: extra Codex arguments from the allow-list of :mod:`agent.jobs.phase_options`
                (the model, the reasoning effort).
            env: extra environment of the job (names on that module's allow-list); the values
                never reach a log, an error, an artifact or the outcome.
            seed: a directory or tar file under ``CODEX_SEED_ROOT`` unpacked into the run's
                workspace before this phase, when the workspace is new (:mod:`agent.jobs.seed`).
            final: this phase ends the run: once it has completed, the run's workspace volume is
                removed (:mod:`agent.jobs.workspaces`); its artifacts and session stay.

        Raises:
            PhaseRequestError: CODEX-E044, a bad run id, phase, prompt, model, Codex argument or
                env name, or nothing to resume.
            LoginRevokedError: CODEX-E034, the run found the login dead (the volume is marked).
            UsageLimitError: CODEX-E036, the run met the login's usage limit (the volume is marked).
            JobFailedError: CODEX-E042, Codex failed for another reason.
            JobTimeoutError: CODEX-E043, the wall-clock limit was reached.
            DockerUnavailableError, JobRejectedError: CODEX-E040, CODEX-E041.
        """
        facts = self._facts()
        run_id = checked_name("run_id", run_id, facts)
        phase = checked_name("phase", phase, facts)
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > PROMPT_LIMIT:
            raise PhaseRequestError(
                **facts,
                field="prompt",
                value=str(prompt)[:40],
                cause="empty, not text, or too long",
                accepted=f"non-empty text of at most {PROMPT_LIMIT} characters",
            )
        options = phase_options(facts, model=model, codex_args=codex_args, env=env)
        seed_from = seed_path(self.config.seed_root, seed, facts) if seed is not None else None
        if self.config.job_image is None:
            raise PhaseRequestError(
                **facts,
                field="CODEX_JOB_IMAGE",
                value="none",
                cause="no job image to run Codex in",
                accepted="an image with the Codex CLI, e.g. codex-worker-agent/job:dev",
            )
        artifacts = RunArtifacts(self.config.artifacts_root, run_id)
        done = artifacts.outcome(phase)
        if done is None:  # a job of this task's earlier delivery may have finished (or still run)
            reconcile.settle_earlier_job(self.launcher.client, self.config, run_id, task_id)
            done = artifacts.outcome(phase)
        if done is not None:
            duplicate = done.get("task_id") == task_id
            log.info(
                "codex.phase.skipped",
                run_id=run_id,
                phase=phase,
                task_id=task_id,
                reason="duplicate delivery" if duplicate else "completed earlier",
                completed_by=done.get("task_id"),
                harvested=done.get("harvested"),
            )
            if final:
                workspaces.remove_run_workspace(self.launcher.client, self.config, run_id)
            return {**done, "skipped": True}
        session = artifacts.session_id() if resume else None
        if resume and session is None:
            raise PhaseRequestError(
                **facts,
                field="resume",
                value="true",
                cause=f"run {run_id} has no earlier Codex session on this shard",
                accepted="false for a run's first phase",
            )
        outcome = self._execute(artifacts, phase, prompt, session, task_id, options, seed_from)
        if final:
            workspaces.remove_run_workspace(self.launcher.client, self.config, run_id)
        return outcome

    def _execute(
        self,
        artifacts: RunArtifacts,
        phase: str,
        prompt: str,
        session: str | None,
        task_id: str | None,
        options: PhaseOptions | None = None,
        seed_from: Path | None = None,
    ) -> dict[str, Any]:
        options = options or PhaseOptions()
        env = {**options.env, **dict(self.config.codex_endpoints)}
        assert self.config.job_image is not None
        workspace = workspace_name(self.launcher.volume_name or "", artifacts.run_id)
        seeded = None
        if seed_from is not None and not any(artifacts.directory.glob(f"*/{OUTCOME_FILE}")):  # a new workspace
            seeded = seed_workspace(
                self.launcher,
                self.config.job_image,
                artifacts.directory,
                seed_from,
                workspace,
                self.config.phase_timeout,
                self._facts(),
            )
        started = time.time()
        artifacts.begin(
            phase,
            {
                "task_id": task_id,
                "run_id": artifacts.run_id,
                "phase": phase,
                "resumed_session": session,
                "started_at": started,
            },
        )
        result = self.launcher.run(
            self.config.job_image,
            exec_argv(prompt, session, options=options.argv()),
            environment=env,
            workspace=workspace,
            timeout=self.config.phase_timeout,
            check=False,
            describe=lambda output: summarize(output).audit_fields(),
        )  # the launcher's policy gives the job CODEX_JOB_NETWORK
        output = hide_values(result.output, options.env)  # a task's token echoed by Codex stays out
        summary = summarize(output)
        headroom = usage.read_headroom(self.config.codex_home)
        if headroom is not None:
            log.info(
                "codex.usage.snapshot", run_id=artifacts.run_id, task_id=task_id, **headroom.to_dict(), **self._facts()
            )
        if not result.ok:
            self._raise_limit(summary, output, headroom, started, task_id, artifacts.run_id)
            self._raise_failure(output, result.exit_code, result.container_id, task_id, artifacts.run_id)
        outcome = {
            "status": "completed",
            "run_id": artifacts.run_id,
            "phase": phase,
            "task_id": task_id,
            **self._facts(),
            "container_id": result.container_id,
            "exit_code": result.exit_code,
            "session_id": summary.session_id,
            "resumed_session": session,
            "usage": summary.usage,
            "final_message": summary.final_message,
            **options.summary(),
            "seed": seeded,
            "duration_s": round(result.duration_s, 3),
            "started_at": started,
            "completed_at": time.time(),
        }
        events = "".join(f"{line}\n" for line in output.splitlines() if line.startswith("{"))
        outcome["artifacts"] = str(
            artifacts.record(phase, events=events, final_message=summary.final_message, outcome=outcome)
        )
        return outcome

    def _raise_limit(
        self,
        summary: StreamSummary,
        output: str,
        headroom: usage.Headroom | None,
        started: float,
        task_id: str | None,
        run_id: str,
    ) -> None:
        """CODEX-E036 when the run met a usage limit (and its login is not dead): mark the volume first."""
        if auth_failure(output) is not None:
            return
        other_lines = "\n".join(line for line in output.splitlines() if not line.startswith("{"))
        hit = usage.classify(summary.failure, other_lines, headroom, started=started)
        if hit is None:
            return
        limit = usage.limit_for(hit, headroom, run_id=run_id, task_id=task_id, worker=self.config.worker_name)
        usage.record(self.config.codex_home, limit)
        facts = self._facts()
        log.error(
            "codex.usage.limited",
            run_id=run_id,
            task_id=task_id,
            kind=limit.kind,
            limit=limit.error_type,
            window=limit.window,
            resets_at=limit.resets_at,
            reset_known=limit.reset_known,
            **facts,
        )
        raise UsageLimitError(**facts, **limit.facts())

    def _raise_failure(self, output: str, exit_code: int, container_id: str, task_id: str | None, run_id: str) -> None:
        reason = auth_failure(output)
        facts = self._facts()
        if reason is None:
            raise JobFailedError(
                **facts,
                container_id=container_id[:12],
                image=self.config.job_image,
                exit_code=exit_code,
                output_tail=output[-2000:],
            )
        auth = inspect_auth_file(self.config.codex_home)
        revocation.record(
            self.config.codex_home,
            revocation.Revocation(
                reason, auth.fingerprint, time.time(), run_id=run_id, task_id=task_id, worker=self.config.worker_name
            ),
        )
        log.error("codex.login.revoked", reason=reason, run_id=run_id, task_id=task_id, **facts)
        raise LoginRevokedError(**facts, cause=reason)
