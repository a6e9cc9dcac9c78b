#!/usr/bin/env bash
# Set up a fresh Debian machine (12 or later) for fedsim's test suite, so that it skips nothing:
# the programs the tests run for real, then torch's CPU build and fedsim with every extra the
# tests use. Run it from anywhere in the repository; it uses sudo for apt when not root.
# Afterwards, as root (the emulation and link-shaping tests need it): python3 -m pytest -q
set -euo pipefail
cd "$(dirname "$0")/.."

# Prometheus (with promtool) and node_exporter: the monitoring tests run them; chromium: the
# dashboard's browser test drives /usr/bin/chromium; iproute2: ip and tc for the shaped-link
# and emulation tests; openssl: a test certificate for the server's TLS; kubernetes-client:
# kubectl kustomize for the manifests (left out where a kubectl is already installed); gcc:
# the install compiles the flow network with mypyc (setup.py; tests/sim/test_compiled.py).
packages=(prometheus prometheus-node-exporter chromium iproute2 openssl gcc)
command -v kubectl >/dev/null || packages+=(kubernetes-client)
if command -v apt-get >/dev/null; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
else
  echo "setup-test-deps: no apt-get here; install these yourself: ${packages[*]}" >&2
fi

python3 -m pip install --quiet --upgrade pip
# torch's CPU build, from PyTorch's own index as deploy/Dockerfile installs it: a bare
# torch==2.13.0 from PyPI is the CUDA build on Linux, several GB.
python3 -m pip install --quiet torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# ray and slurm: the launcher plugins the sweep tests run (Ray) and compose (Submitit); one
# install, so that pip resolves the Ray plugin's cloudpickle cap together with joblib's.
python3 -m pip install --quiet -e '.[test,ray,slurm]'
