"""Kubernetes API access shared by the driver, the extender and the harness.

One small module per concern, each importable on its own so that a process pays only for what it uses
(the driver never loads aiohttp, the extender never loads urllib3's pool code):

- `errors`       ApiError (any failed call, HTTP or not) and CredentialsError (no usable credentials)
- `credentials`  kubeconfig / in-cluster service account -> `Credentials`, TLS context, bearer token
- `backoff`      exponential backoff with jitter
- `stream`       watch stream bytes -> JSON events, for both clients
- `sync`         `KubeClient`, a thread-safe urllib3 REST client (driver, harness, tests, benchmarks)
- `aio`          `AsyncKube`, paginated list, watch and JSON calls over aiohttp (extender)
"""
