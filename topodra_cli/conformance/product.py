"""A `PRODUCT.yaml` fragment: one checklist entry per requirement the run gave evidence for.

Status follows the run: every check that ran passed -> Implemented; some passed and some failed ->
Partially Implemented; none passed and some failed -> Not Implemented; all skipped -> N/A with the reasons
as notes. Evidence links are `file://` paths relative to the submission directory (where e2e.log, junit.xml
and results.json are to be copied), with the test name as the fragment, as the program's instructions show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import yaml

from topodra_cli.conformance.model import CheckResult, Status
from topodra_cli.conformance.requirements import Requirement, checklist_version


@dataclass(frozen=True)
class Coverage:
    requirement: Requirement
    test: str  # top-level test name, e.g. TestGangScheduling


def _status(results: Sequence[CheckResult]) -> tuple[str, str]:
    leaves = [r for r in results if r.depth > 0] or list(results)
    passed = [r for r in leaves if r.status is Status.PASS]
    failed = [r for r in leaves if r.status is Status.FAIL]
    skipped = [r for r in leaves if r.status is Status.SKIP]
    counts = f"{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped"
    detail = "; ".join(f"{r.name}: {r.message}" for r in failed + skipped if r.message)
    if failed and passed:
        return "Partially Implemented", f"{counts}. {detail}"
    if failed:
        return "Not Implemented", f"{counts}. {detail}"
    if not passed:
        return "N/A", f"not applicable on this cluster: {detail}"
    return "Implemented", counts + (f". {detail}" if detail else "")


def product_fragment(results: Sequence[CheckResult], covered: Sequence[Coverage], kubernetes_version: str,
                     server: str, now: float | None = None) -> str:
    version = checklist_version(kubernetes_version)
    spec: dict[str, list[dict[str, object]]] = {}
    comments: list[str] = []
    for cov in covered:
        mine = [r for r in results if r.parent == cov.test]
        if not mine:
            continue
        req = cov.requirement
        level = req.levels.get(version)
        if level is None:
            comments.append(f"# {cov.test} ({req.id}): no such requirement in the {version} checklist; "
                            "its results stay in the evidence files.")
            continue
        status, summary = _status(mine)
        spec.setdefault(req.category, []).append({
            "id": req.id,
            "description": req.description,
            "level": level,
            "status": status,
            "evidence": [f"file://junit.xml#{cov.test}", f"file://results.json#{cov.test}", "file://e2e.log"],
            "notes": f"topodra conformance {cov.test}: {summary}",
        })
    stamp = datetime.fromtimestamp(now, UTC) if now is not None else datetime.now(UTC)
    head = [
        f"# PRODUCT.yaml entries from `topodra conformance` against {server} (Kubernetes {kubernetes_version}),",
        f"# {stamp.strftime('%Y-%m-%d %H:%M UTC')}. Merge them into spec.<category> of your submission's",
        f"# PRODUCT.yaml (checklist {version}); put e2e.log, junit.xml and results.json beside it.",
        *comments,
    ]
    body = yaml.safe_dump({"metadata": {"kubernetesVersion": f"v{version}"}, "spec": spec},
                          sort_keys=False, width=120, allow_unicode=True)
    return "\n".join(head) + "\n" + body
