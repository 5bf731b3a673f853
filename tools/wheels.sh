# Shared by the GPU-bundle scripts (tools/*-bundle.sh), sourced: wheels for the GPU machine's
# CPython 3.12 on x86-64 Linux, fetched here (it has no network) and unpacked as
# `pip install --no-deps --target` would lay them down.

# download_wheels DIR PIN...: binary wheels, no dependencies, into DIR.
download_wheels() {
  local dir=$1
  shift
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dir" "$@"
}

# unpack_wheels DIR SITE PIN...: the wheels of DIR named by the pins, unpacked into SITE (the
# executable bit restored on bundled libraries, which wheels do not keep).
unpack_wheels() {
  local dir=$1 site=$2
  shift 2
  for pin in "$@"; do
    local name=${pin%%==*} version=${pin##*==}
    python3 -m zipfile -e "$(ls "$dir"/"${name//-/_}"-"$version"-*.whl | head -1)" "$site"
  done
  find "$site" -name '*.so*' -exec chmod 755 {} +
}
