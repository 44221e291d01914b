"""`topodra conformance`: checks that a cluster's accelerators are exposed through DRA, isolated per pod,
gang-scheduled and topology-aligned, with the evidence files the CNCF AI-conformance program reads.

Layers, one way: the CLI (`topodra_cli.conformance_cli`) builds `Options` and calls `runner.run`; the runner
walks the registry's check families (`checks_*`), each driving the cluster through `kube` and `workloads`;
results go to the writers (`gotest`, `junit`, `product`). See docs/conformance.md.
"""
