"""Retention of model versions that still carry erased data.

A deletion erases the records' influence from the version it registers; the versions before
it -- the base model, each superseded version, each candidate that failed its audit -- still
regenerate what was deleted. Once the grace period has passed since the deletion completed,
such a version is *retired*: its aliases go, its weights are deleted from the MLflow artifact
store and from the exports, and the version stays in the registry as a tombstone (its lineage
tags, the reason and the date), so the history of what was served stays auditable. A retired
version, or one that never absorbed a completed deletion, cannot become ``production`` again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from dataclasses import dataclass
from typing import Any

from ..errors import ModelError
from .lineage import TAG_PREFIX
from .registry import PRODUCTION, alias_version

TOMBSTONE = f"{TAG_PREFIX}tombstone"
TOMBSTONE_REASON = f"{TAG_PREFIX}tombstone_reason"
TOMBSTONED_AT = f"{TAG_PREFIX}tombstoned_at"
# The deletions a base model's training data had already absorbed (the ledger at its revision).
ABSORBED = f"{TAG_PREFIX}absorbed_request_ids"


@dataclass(frozen=True)
class Retirement:
    version: str
    reason: str
    due: dt.datetime
    aliases: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "reason": self.reason,
            "due": self.due.isoformat(timespec="seconds"),
            "aliases": list(self.aliases),
        }


def _ids(value: str | None) -> set[str]:
    return {x for x in (value or "").split(",") if x}


def is_retired(mv: Any) -> bool:
    return (mv.tags or {}).get(TOMBSTONE) == "true"


def absorbed_requests(versions: dict[str, Any], version: str) -> set[str]:
    """The deletions whose influence ``version`` no longer has: its own and its ancestors'."""
    found: set[str] = set()
    seen: set[str] = set()
    current: str | None = version
    while current and current not in seen and current in versions:
        seen.add(current)
        tags = versions[current].tags or {}
        if tags.get(f"{TAG_PREFIX}audit_verdict", "pass") == "pass":
            found |= _ids(tags.get(f"{TAG_PREFIX}request_ids"))
        found |= _ids(tags.get(ABSORBED))
        current = tags.get(f"{TAG_PREFIX}parent_version")
    return found


def base_absorbed(ledger: list[dict], model_dir: Any, served_digest: str) -> list[str]:
    """The deletions a base model was trained without: the ledger's, if it trained on the served data.

    A base trained on an older revision (DVC's ``train_base`` stale after a purge) absorbed none.
    """
    import json
    from pathlib import Path

    meta = json.loads((Path(model_dir) / "unlearn_model.json").read_text())
    if (meta.get("training") or {}).get("dataset_digest") != served_digest:
        return []
    return sorted({rid for entry in ledger for rid in entry.get("request_ids", [])})


def _when(ms: int | None) -> dt.datetime:
    return dt.datetime.fromtimestamp((ms or 0) / 1000, tz=dt.timezone.utc)


def _completed(store: Any, name: str) -> dict[str, dt.datetime]:
    from ..state import DONE

    return {r.request_id: r.done_at for r in store.list_requests([DONE], model=name) if r.done_at}


def unabsorbed(client: Any, store: Any, name: str, version: str) -> list[str]:
    """Completed deletions whose data ``version`` was trained on and never unlearned."""
    versions = {str(mv.version): mv for mv in client.search_model_versions(f"name='{name}'")}
    if version not in versions:
        raise ModelError(f"registered model {name!r} has no version {version}")
    return sorted(set(_completed(store, name)) - absorbed_requests(versions, version))


def plan(client: Any, store: Any, name: str, grace_days: float, now: dt.datetime | None = None) -> list[Retirement]:
    """The versions the policy retires now, oldest first (production is never one of them)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    grace = dt.timedelta(days=grace_days)
    done = _completed(store, name)
    versions = {str(mv.version): mv for mv in client.search_model_versions(f"name='{name}'")}
    production = alias_version(client, name, PRODUCTION)
    due: list[Retirement] = []
    for v in sorted(versions, key=int):
        mv = versions[v]
        tags = mv.tags or {}
        if v == production or is_retired(mv):
            continue
        if tags.get(f"{TAG_PREFIX}audit_verdict") == "fail":
            reason = f"failed the audit of {tags.get(f'{TAG_PREFIX}request_ids') or 'its deletion'}"
            since = _when(mv.creation_timestamp)
        else:
            missing = sorted(set(done) - absorbed_requests(versions, v))
            if not missing:
                continue
            reason = f"trained on records erased by {', '.join(missing)}"
            since = min(done[r] for r in missing)
        if since + grace <= now:
            # search_model_versions leaves aliases out; the version itself carries them.
            aliases = client.get_model_version(name, v).aliases or []
            due.append(Retirement(v, reason, since + grace, tuple(sorted(aliases))))
    return due


def _delete_artifacts(uri: str) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(uri).delete_artifacts()


def retire(client: Any, settings: Any, name: str, item: Retirement, now: dt.datetime | None = None) -> None:
    """Apply one retirement: aliases, weights (MLflow, exports, local caches), then the tombstone tags.

    The tags come last, so a retirement cut short is found again by :func:`plan` and redone.
    """
    from ..compliance.runfiles import cache_root
    from ..storage import store_from_settings

    now = now or dt.datetime.now(dt.timezone.utc)
    mv = client.get_model_version(name, item.version)
    for alias in mv.aliases or []:
        client.delete_registered_model_alias(name, alias)
    source = mv.source or ""
    if source.startswith("models:/m-"):
        model_id = source.removeprefix("models:/").split("/")[0]
        with contextlib.suppress(Exception):  # already deleted by an earlier, interrupted retirement
            _delete_artifacts(client.get_logged_model(model_id).artifact_location)
    elif source:
        _delete_artifacts(client.get_model_version_download_uri(name, item.version))
    if mv.run_id:
        with contextlib.suppress(Exception):  # runs of the older layout logged the folder as run artifacts
            _delete_artifacts(f"{client.get_run(mv.run_id).info.artifact_uri}/model")
    if (mv.tags or {}).get(f"{TAG_PREFIX}export_uri"):
        store_from_settings(settings).delete(f"models/{name}/v{item.version}")
    shutil.rmtree(cache_root(settings) / name / f"v{item.version}", ignore_errors=True)
    client.set_model_version_tag(name, item.version, TOMBSTONE_REASON, item.reason)
    client.set_model_version_tag(name, item.version, TOMBSTONED_AT, now.isoformat(timespec="seconds"))
    client.set_model_version_tag(name, item.version, TOMBSTONE, "true")


def prune(
    client: Any, store: Any, settings: Any, name: str, dry_run: bool = False, now: dt.datetime | None = None
) -> list[Retirement]:
    """Retire every version the policy names; returns them (nothing changes with ``dry_run``)."""
    items = plan(client, store, name, settings.retention_grace_days, now)
    if not dry_run:
        for item in items:
            retire(client, settings, name, item, now)
            with contextlib.suppress(Exception):
                store.record_event("version_retired", model=name, version=item.version, reason=item.reason)
    return items


def check_servable(client: Any, store: Any, name: str, version: str) -> None:
    """Refuse to serve a retired version or one that still holds data a completed deletion erased."""
    mv = client.get_model_version(name, version)
    if is_retired(mv):
        tags = mv.tags or {}
        raise ModelError(
            f"version {version} of {name!r} was retired on {tags.get(TOMBSTONED_AT, '?')[:10]} "
            f"({tags.get(TOMBSTONE_REASON, 'no reason recorded')}); its weights are gone"
        )
    if (mv.tags or {}).get(f"{TAG_PREFIX}audit_verdict") == "fail":
        raise ModelError(
            f"version {version} of {name!r} failed the audit of {(mv.tags or {}).get(f'{TAG_PREFIX}request_ids')}; "
            "it is a candidate, never served"
        )
    missing = unabsorbed(client, store, name, version)
    if missing:
        raise ModelError(
            f"version {version} of {name!r} was trained on records erased by {', '.join(missing)}; "
            "serving it would bring them back"
        )
