#!/usr/bin/env bash
# Builds and packs what tools/device-check.sh needs on a GPU machine that has no Rust toolchain
# and no network: the release binary and the test executables (stripped, in one archive), the
# Vulkan/EGL loader packages, and the diffusers wheels for tools/bench_torch.py.
#
#   tools/device-pack.sh            # writes .device/ (git-ignored through .git/info/exclude)
#
# Then carry `.device` (and nothing else needs building there):
#   bash tools/device-check.sh      # on the GPU machine, from the repository root
#
# Run on x86-64 Linux (the GPU machine's architecture). Needs network for apt-get download and
# pip download; everything else is local.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(uname -m)" = x86_64 ] || { echo "build on x86-64: the GPU machine is x86-64" >&2; exit 1; }
out=.device
grep -qsx "/$out/" .git/info/exclude || echo "/$out/" >>.git/info/exclude
rm -rf "$out" && mkdir -p "$out/bin" "$out/gl" "$out/whl"

echo "== building the release binary and the test executables"
cargo build --release --quiet
cargo test --release --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' >"$out/tests.txt"
cp target/release/ddim "$out/bin/ddim"
# Only the executables device-check.sh runs (the GPU tests, verify and bench): the device tool
# carries at most 64 MiB, the tracked tree (about 38 MB, the training checkpoint among it) included.
while read -r name exe; do
  case $name in gpu_* | verify_cli | bench_cli) cp "$exe" "$out/bin/test-$name" ;; esac
done <"$out/tests.txt"
strip "$out"/bin/*
# The test executables find fixtures and the binary through paths compiled in (the manifest
# and target directories of this checkout); device-check.sh recreates them there.
echo "$(pwd)" >"$out/manifest_dir"
XZ_OPT=-9 tar -C "$out" -cJf "$out/bin.tar.xz" bin && rm -rf "$out/bin"

echo "== Vulkan and EGL loaders (Debian packages, unpacked there only if the machine lacks them)"
lists=/tmp/ddim-device-apt
mkdir -p "$lists/partial"
o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$lists"
apt-get $o update -qq
(cd "$out/gl" && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

echo "== diffusers wheels for tools/bench_torch.py (PyTorch with CUDA is already there)"
py="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp"
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q $py $plat -d "$out/whl" diffusers==0.42.1 importlib_metadata zipp regex
du -sh "$out" "$out"/*
