# Image for the driver DaemonSet and the extender Deployment (both run `topodra <command>`).
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY driver ./driver
COPY scheduler_plugin ./scheduler_plugin
COPY topodra_cli ./topodra_cli
RUN pip install --no-cache-dir . && rm -rf /src
USER 0
ENTRYPOINT ["topodra"]
