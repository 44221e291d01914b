"""What every check shares: the client, the options, a fresh inventory, and the namespaces it made.

Everything a run creates lives in namespaces it created (labelled with the run id); `Cleanup` deletes
them, also after Ctrl-C or SIGTERM, and waits (bounded) until they are gone.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass, field

from kubeaccess.errors import ApiError
from kubeaccess.sync import path_escape
from topodra_cli.conformance.inventory import Inventory, read_inventory
from topodra_cli.conformance.kube import Client, get, wait_for
from topodra_cli.conformance.model import CheckFailed, Options
from topodra_cli.conformance.workloads import HOSTNAME, Placement

RUN_LABEL = "topodra.dev/conformance-run"


@dataclass
class Cleanup:
    client: Client
    namespaces: list[str] = field(default_factory=list)

    def delete(self, ns: str) -> None:
        try:
            self.client.request("DELETE", f"/api/v1/namespaces/{path_escape(ns)}",
                                body={"propagationPolicy": "Background"})
        except ApiError as e:
            if not e.not_found:
                raise

    def gone(self, ns: str) -> bool:
        try:
            self.client.get(f"/api/v1/namespaces/{path_escape(ns)}")
            return False
        except ApiError as e:
            if e.not_found:
                return True
            raise

    def all(self, timeout: float = 90.0) -> list[str]:
        """Delete every namespace made so far and wait for them; the ones still there after `timeout`."""
        for ns in self.namespaces:
            with contextlib.suppress(ApiError):  # a namespace still there is reported below
                self.delete(ns)
        deadline = time.monotonic() + timeout
        left = list(self.namespaces)
        while left and time.monotonic() < deadline:
            with contextlib.suppress(ApiError):
                left = [ns for ns in left if not self.gone(ns)]
            if left:
                time.sleep(1)
        return left


@dataclass
class Context:
    client: Client
    opts: Options
    cleanup: Cleanup
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))

    def inventory(self) -> Inventory:
        return read_inventory(self.client, self.opts.node_selector)

    def namespace(self, short: str) -> str:
        """A new namespace for one check family, ready for pods (its default ServiceAccount exists)."""
        name = f"{self.opts.namespace_prefix}{short}-{self.run_id}"
        body = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": {RUN_LABEL: self.run_id}}}
        self.client.request("POST", "/api/v1/namespaces", body=body)
        self.cleanup.namespaces.append(name)
        wait_for(lambda: get(self.client, name, "serviceaccounts", "default"), 60,
                 f"ServiceAccount {name}/default (created by the controller-manager)")
        return name

    def placement(self, inv: Inventory, nodes: list[str] | None = None, node_name: str = "") -> Placement:
        use = nodes if nodes is not None else inv.candidates()
        if not use and not node_name:
            raise CheckFailed("no node to run on: " + describe_no_candidates(inv))
        unlabelled = [n for n in use if HOSTNAME not in inv.nodes[n].labels]
        if unlabelled:
            raise CheckFailed(f"nodes {', '.join(unlabelled)} have no {HOSTNAME} label to select them by")
        return Placement([inv.nodes[n].labels[HOSTNAME] for n in use], inv.tolerations(use or [node_name]), node_name)


def describe_no_candidates(inv: Inventory) -> str:
    sel = ",".join(f"{k}={v}" for k, v in inv.node_selector)
    bits = ["no Ready, schedulable node" + (f" matching {sel}" if sel else "")
            + " has a complete, current pool of topodra.dev ResourceSlices"]
    if not inv.pools:
        bits.append("there is no ResourceSlice of driver topodra.dev at all (is the driver running?)")
    bits.extend(inv.problems)
    return "; ".join(bits)
