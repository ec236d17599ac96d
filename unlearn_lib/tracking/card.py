"""The model card of a registered version: what it erased, from what, and the audit's verdict per gate.

MLflow shows a model version's description on its page; people auditing a deletion start
there, so it names the requests, the parent version, the dataset revisions, the verdict with
every gate, and links to the audit report (an artifact of the run's audit step).
"""

from __future__ import annotations

from typing import Any

from ..audit.gates import gate_status, threshold_text
from .lineage import TAG_PREFIX


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def find_step_run(client: Any, parent_run_id: str, step: str) -> Any | None:
    """The nested MLflow run of one step of a pipeline run (its last attempt)."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{TAG_PREFIX}step` = '{step}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def model_card(tags: dict[str, str], audit: dict, report_links: dict[str, str]) -> str:
    """Markdown for the version's description (``tags`` without the ``unlearn.`` prefix)."""
    verdict = str(audit.get("verdict", "?")).upper()
    lines = [
        f"## Unlearned {tags.get('request_ids', '')} from version {tags.get('parent_version', '?')}",
        "",
        f"**Audit verdict: {verdict}**"
        + ("" if verdict == "PASS" else " - this version is a candidate and was never served."),
        "",
        "| | |",
        "|---|---|",
        f"| requests | {tags.get('request_ids', '')} (basis: {tags.get('bases', '?')}) |",
        f"| batch | {tags.get('batch_id', '')} |",
        f"| forget set | sha256 `{tags.get('forget_set_sha256', '')}` |",
        f"| parent version | {tags.get('parent_version', '?')} |",
        f"| dataset revision before | `{tags.get('dataset_rev_before', '')}` |",
        f"| dataset revision after (purged) | `{tags.get('dataset_rev_after', '')}` |",
        f"| algorithm | {tags.get('algorithm', '')} |",
        f"| audit settings looser than the defaults | {tags.get('audit_relaxed', 'not recorded')} |",
        f"| audit gates inconclusive (within sampling error) | {tags.get('audit_inconclusive', 'not recorded')} |",
        f"| compliance run | {tags.get('run_id', '')} (MLflow run {tags.get('pipeline_run_id', '')}) |",
        "",
        "### Gates",
        "",
        "| gate | value | threshold | samples | result |",
        "|---|---|---|---|---|",
    ]
    metrics = audit.get("metrics") or {}
    for gate in audit.get("gates", []):
        name = gate.get("metric", "?")
        m = metrics.get(name) if isinstance(metrics, dict) else None
        threshold = (m or {}).get("threshold") or {}
        limit = threshold_text(threshold, digits=4) if threshold else f"{gate.get('op', '')} -".strip()
        result = gate_status(gate.get("passed"), gate.get("inconclusive")).lower() or "n/a"
        samples = _fmt((m or {}).get("samples"))
        lines.append(f"| {name} | {_fmt(gate.get('value'))} | {limit} | {samples} | {result} |")
    lines += ["", "### Evidence", ""]
    for label, link in report_links.items():
        lines.append(f"- {label}: {link}")
    lines.append("- `unlearn requests evidence REQ-ID --format html` rebuilds the whole record.")
    return "\n".join(lines) + "\n"
