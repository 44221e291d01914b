"""topodra DRA driver: discovery, topology, ResourceSlices, kubelet plugin."""
