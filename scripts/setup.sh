#!/usr/bin/env bash
# Sets up everything workgen needs on a Debian machine: system packages (bubblewrap for the
# sandbox, e2fsprogs for each activity's own filesystem, the system python3 that runs its
# supervisor, squashfs-tools and mmdebstrap to build and unpack Golem VM images) and a virtual
# environment in .venv with the package and its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
[ -x /usr/bin/python3 ] || need+=(python3-minimal)
# Images: mksquashfs/unsquashfs make and unpack them, mmdebstrap builds them from Debian's
# packages (the rendering example's POV-Ray comes in such an image, not on this machine).
command -v unsquashfs >/dev/null 2>&1 || need+=(squashfs-tools)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
# mkfs.ext4 makes each activity's own bounded filesystem (a loop-mounted image).
[ -x /sbin/mkfs.ext4 ] || [ -x /usr/sbin/mkfs.ext4 ] || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing system packages: ${need[*]}; install them (as root: apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.workgen-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi

# yapapi, the other Python SDK, in an environment of its own (its pinned dependencies stay apart
# from ours): the interop tests run requestors written against it on the devnet.
interop=.venv/interop/yapapi
if [ ! -x "$interop/bin/python" ] || [ ! -f "$interop/.installed" ]; then
  "$python" -m venv "$interop"
  "$interop/bin/python" -m pip install -q --disable-pip-version-check "yapapi==0.13.1"
  touch "$interop/.installed"
fi

# golem-js, the JavaScript SDK, and its task executor, from npm (Node is on the machine), for
# the same tests.
if command -v npm >/dev/null 2>&1; then
  js=.venv/interop/golem-js
  if [ ! -f "$js/.installed-2" ]; then
    mkdir -p "$js"
    npm install --silent --no-audit --no-fund --prefix "$js" "@golem-sdk/golem-js@3.6.0" \
      "@golem-sdk/task-executor@2.0.1"
    touch "$js/.installed-2"
  fi
fi
