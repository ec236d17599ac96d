"""Talking to a Kubeflow Pipelines API server: connect, link to a run, wait for a run to end.

kfp's client prints links to stdout, warns about server versions and, when the server is
down, retries its health check for half a minute while logging tracebacks; these helpers
turn that into one line each, so the commands keep their own output.
"""

from __future__ import annotations

import contextlib
import io
import ssl
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from unlearn_lib.errors import UnlearnError
from unlearn_lib.redact import redact_url

# KFP's V2beta1RuntimeState values after which a run changes no more.
FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")


class KfpError(UnlearnError):
    """The KFP API server is unreachable or refused a call."""


def run_link(host: str, run_id: str) -> str:
    """The run's page in the KFP UI (served by the same host as the API behind the usual proxy)."""
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """kfp's own "Experiment details: ..." prints and version warnings stay off the console."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _reachable(host: str, timeout: float = 10.0) -> None:
    # Any HTTP answer will do (an authenticating proxy may say 302 or 401): only "nobody there"
    # is refused here, instead of kfp's health-check retries and tracebacks.
    url = f"{host.rstrip('/')}/apis/v2beta1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ssl.SSLError):
            return  # someone answered; whether kfp trusts the certificate is kfp's to say
        raise KfpError(f"KFP at {redact_url(host)} is not reachable: {reason}") from None


def connect(host: str) -> Any:
    """A ``kfp.Client`` for ``host``, or one line saying why there is none."""
    import kfp

    _reachable(host)
    try:
        with quiet():
            return kfp.Client(host=host)
    except Exception as err:
        raise KfpError(f"KFP at {redact_url(host)} refused the connection: {api_error(err)}") from None


def api_error(err: BaseException) -> str:
    """One line from a kfp_server_api exception (its body is JSON with a message) or any other."""
    body = getattr(err, "body", None)
    if body:
        import json

        with contextlib.suppress(ValueError, TypeError, AttributeError):
            data = json.loads(body)
            message = data.get("message") or data.get("error")
            if message:
                return str(message).strip().splitlines()[0]
    status = getattr(err, "status", None)
    text = str(getattr(err, "reason", None) or err).strip().splitlines()
    return f"{status} {text[0] if text else ''}".strip() if status else (text[0] if text else type(err).__name__)


@dataclass
class RunEnd:
    """What waiting for a KFP run came to: its last state, and the run when it ended."""

    state: str
    run: Any | None  # kfp_server_api.V2beta1Run once it ended; None after a timeout
    timed_out: bool = False


def wait_for_run(
    client: Any,
    run_id: str,
    timeout: float | None = None,
    interval: float = 10.0,
    on_state: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RunEnd:
    """Poll the run until it ends or ``timeout`` seconds pass; ``on_state`` hears every new state.

    kfp's ``wait_for_run_completion`` does not count a cancelled run as ended (it would wait
    out the timeout) and gives up on the first network error, hence this loop. A few failed
    polls in a row are tolerated: an API server restarting must not end the wait.
    """
    deadline = None if timeout is None else clock() + timeout
    last, failures = "", 0
    while True:
        try:
            run = client.get_run(run_id)
            failures = 0
        except Exception as err:
            if getattr(err, "status", None) == 404:
                raise KfpError(f"KFP has no run {run_id}") from None
            failures += 1
            if failures >= 5:
                raise KfpError(f"lost contact with KFP while waiting for run {run_id}: {api_error(err)}") from None
            run = None
        if run is not None:
            state = str(run.state or "PENDING").upper()
            if state != last and on_state is not None:
                on_state(state)
            last = state
            if state in FINAL_STATES:
                return RunEnd(state, run)
        if deadline is not None and clock() >= deadline:
            return RunEnd(last or "UNKNOWN", None, timed_out=True)
        pause = interval if deadline is None else max(0.0, min(interval, deadline - clock()))
        time.sleep(pause)


def run_parameters(run: Any) -> dict[str, Any]:
    """The arguments a KFP run was started with, as the API server reports them."""
    config = getattr(run, "runtime_config", None)
    params = getattr(config, "parameters", None) if config is not None else None
    return dict(params or {})


def run_error(run: Any) -> str | None:
    """KFP's own error for a run that did not succeed (a pod that never started, a cancel)."""
    error = getattr(run, "error", None)
    message = getattr(error, "message", None) if error is not None else None
    return str(message).strip().splitlines()[0] if message else None


def wait_and_report(
    client: Any,
    settings: Any,
    host: str,
    kfp_run_id: str,
    timeout: float | None,
    interval: float,
    print_outcome: Callable[[Any, Any], int],
) -> int:
    """Follow a submitted compliance run to its end, then report what the state database says of it.

    0 when its requests are fulfilled; 1 when it failed, or when waiting timed out (the run
    goes on; the link follows it). KFP's state says how the DAG ended; the verdict, version
    and failing step come from the run row, which the steps and the exit handler keep.
    """
    from rich.console import Console
    from rich.markup import escape

    from pipelines.run import outcome_of
    from unlearn_lib.state import RUN_RUNNING, StateStore

    c = Console(soft_wrap=True)
    end = wait_for_run(client, kfp_run_id, timeout, interval, on_state=lambda s: c.print(f"KFP run {kfp_run_id}: {s}"))
    if end.timed_out:
        c.print(
            f"[red]gave up waiting after {timeout:g}s: the KFP run is still {end.state} and goes on; "
            f"follow it at {escape(run_link(host, kfp_run_id))}"
        )
        return 1
    error = run_error(end.run)
    if error:
        c.print(f"[red]KFP: {escape(redact_url(error))}")
    state_run = run_parameters(end.run).get("run_id")
    if not state_run:
        raise KfpError(f"KFP run {kfp_run_id} has no run_id parameter: it is not a compliance run of this version")
    row = StateStore.open(settings).get_run(str(state_run))
    if row is not None and row.state == RUN_RUNNING:
        # The exit handler never ran (a pod that could not start, a cancelled run): nothing was
        # recorded. The lease lapses and `requests run-pending` resumes the run or rolls it back.
        c.print(
            f"[red]the KFP run ended {end.state} but run {state_run} is still running in the state database: "
            "no outcome was recorded; its requests stay claimed until its lease lapses, then "
            "`unlearn requests run-pending` resumes it or rolls it back"
        )
        return 1
    return print_outcome(outcome_of(settings, str(state_run)), settings)
