#!/usr/bin/env bash
# Installs every Debian 12 package prefopt builds, tests and runs with (as root; a no-op when all are present).
set -euo pipefail
pkgs=(build-essential cmake pkg-config clang libclang-rt-14-dev
      openmpi-bin libopenmpi-dev libscalapack-openmpi-dev libhdf5-openmpi-dev hdf5-tools
      libblis-dev libdnnl-dev libcjson-dev libotf2-trace-dev otf2-tools libinih-dev libpcre2-dev nettle-dev libutf8proc-dev
      gnuplot-nox python3-h5py python3-numpy python3-jinja2
      slurm-wlm munge
      strace \
      iproute2 util-linux)   # emulated nodes: network namespaces, veth, bridge; unshare (tests/test_multinode.sh)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
