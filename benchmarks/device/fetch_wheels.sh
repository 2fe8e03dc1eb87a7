#!/usr/bin/env bash
# Downloads the wheels `wheels.txt` lists into .whl/ at the repository root (git-ignored), for
# CPython 3.12 on x86-64 Linux, and checks that they stay under the 64 MiB a device run carries.
set -euo pipefail
cd "$(dirname "$0")/../.."
PIP=${PIP:-pip}
mkdir -p .whl
grep -v '^#' benchmarks/device/wheels.txt | while read -r requirement _ kind; do
  [ -n "$requirement" ] || continue
  if [ "$kind" = binary ]; then
    $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$requirement"
  else
    $PIP download -q --no-deps --only-binary=:all: -d .whl "$requirement"
  fi
done
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "$(ls .whl/*.whl | wc -l) wheels, $((total / 1024 / 1024)) MiB in .whl/"
if [ "$total" -ge $((64 * 1024 * 1024)) ]; then
  echo "error: the wheels exceed the 64 MiB a device run carries" >&2
  exit 1
fi
