#!/usr/bin/env bash
# Run the test suite on one Python version: scripts/test-python.sh 3.15 [pytest arguments...]
#
# 3.12 and 3.13 come from pyenv when it has them (~/.pyenv/versions/3.12.*); otherwise, and for
# 3.14 and 3.15 always, from Debian's unstable suite in a chroot under the cache folder
# ($ASGIRELOAD_PYTHONS_CACHE, default /var/cache/asgireload-pythons); ASGIRELOAD_PYTHONS_CHROOT=1
# takes 3.12 and 3.13 from the chroot too. Needs root for the chroot.
#
# Idempotent and fast once it has run: the chroot, its packages and each version's venv are kept;
# a run reinstalls only the project (editable, from this work tree) and runs pytest in the tree.
# Everything it mounts is unmounted on exit, however it exits.
set -euo pipefail

version=${1:?usage: scripts/test-python.sh VERSION [pytest arguments...] (VERSION: 3.12 to 3.15)}
shift
case "$version" in
  3.1[1-9]) ;;
  *) echo "test-python.sh: unknown Python version '$version' (expected 3.11 to 3.15)" >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${ASGIRELOAD_PYTHONS_CACHE:-/var/cache/asgireload-pythons}
root="$cache/sid"
mkdir -p "$cache"

# --- where the machine's Debian packages come from (its own apt configuration) -----------------
debian_mirror() {
  local file uri
  for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    uri=$(grep -hoE '^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)[a-z]+://[^[:space:]]+/debian/?' "$file" \
      | grep -oE '[a-z]+://[^[:space:]]+' | head -n 1 || true)
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  echo "test-python.sh: no Debian mirror found in /etc/apt/sources.list*; cannot build the chroot" >&2
  exit 1
}

# --- the chroot's mounts, undone on exit --------------------------------------------------------
mounted=()
unmount_all() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -R "${mounted[$i]}" 2>/dev/null || umount -R -l "${mounted[$i]}" 2>/dev/null || true
  done
  mounted=()
}
trap unmount_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

unmount_stale() {  # what a run killed before its trap could run (SIGKILL) left mounted
  local target
  { awk '{print $2}' /proc/self/mounts | grep -E "^$root/" || true; } | sort -r | while read -r target; do
    umount -R "$target" 2>/dev/null || umount -R -l "$target" 2>/dev/null || true
  done
  if awk '{print $2}' /proc/self/mounts | grep -qE "^$root/"; then
    echo "test-python.sh: cannot unmount what is mounted under $root; unmount it by hand" >&2
    exit 1
  fi
}

mount_into() {  # mount_into TARGET mount-arguments...
  local target=$1; shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounted+=("$target")
}

mount_chroot() {
  mount_into "$root/proc" -t proc proc
  mount_into "$root/dev" --rbind /dev
  mount --make-rslave "$root/dev"
  mount_into "$root/tmp" -t tmpfs -o mode=1777 tmpfs
  mount_into "$root/src" --bind "$repo"
  local dir  # the local package folders the machine's pip configuration points at, if any
  for dir in /opt/wheels /opt/pypi /opt/pypi-more; do
    [ -d "$dir" ] && mount_into "$root$dir" --bind -o ro "$dir"
  done
  return 0
}

copy_host_configuration() {  # CA bundle, resolver and pip configuration, refreshed every run
  local path
  for path in /etc/resolv.conf /etc/hosts /etc/ssl/certs/ca-certificates.crt /etc/pip.conf \
              /etc/xdg/pip /root/.config/pip; do
    if [ -e "$path" ]; then
      mkdir -p "$root$(dirname "$path")"
      rm -rf "${root:?}$path"
      cp -rL "$path" "$root$path"
    fi
  done
  # a mirror that serves a snapshot of unstable has a Release file past its Valid-Until date
  echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99asgireload-snapshot"
}

in_chroot() {  # the host's PIP_* and certificate variables, nothing else of its environment
  local -a vars=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
                 LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "CI=${CI:-}" TERM=dumb)
  local name
  for name in $(compgen -e); do
    case "$name" in
      PIP_*|SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|http_proxy|https_proxy|no_proxy)
        vars+=("$name=${!name}") ;;
    esac
  done
  chroot "$root" /usr/bin/env -i "${vars[@]}" "$@"
}

ensure_chroot() {
  if [ ! -e "$root/.asgireload-ready" ]; then
    command -v debootstrap >/dev/null || {
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    local mirror; mirror=$(debian_mirror)
    echo "test-python.sh: building a Debian unstable chroot in $root (from $mirror)" >&2
    rm -rf --one-file-system "$root"  # (nothing is mounted there: see unmount_stale)
    debootstrap --variant=minbase --include=ca-certificates sid "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
    touch "$root/.asgireload-ready"
  fi
}

ensure_packages() {  # python$version, its venv module, Chromium, ss, git and tmux (every test
  # dependency has a binary wheel for 3.12 to 3.15: no compiler), installed once per version and list
  local packages="python$version python$version-venv chromium chromium-driver iproute2 git tmux"
  local marker="$root/.asgireload-packages-$version-$(echo "$packages" | cksum | cut -d' ' -f1)"
  [ -e "$marker" ] && return 0
  in_chroot apt-get update -qq
  # shellcheck disable=SC2086  # the list is words
  in_chroot apt-get install -y -qq --no-install-recommends $packages >/dev/null
  touch "$marker"
}

run_in_chroot() {
  exec 9>"$cache/lock"
  flock 9  # one run at a time per cache: the mounts are shared
  unmount_stale
  ensure_chroot
  copy_host_configuration
  mount_chroot
  ensure_packages
  local venv="/opt/venv-$version"
  [ -x "$root$venv/bin/python" ] || in_chroot "python$version" -m venv "$venv"
  quiet_pip in_chroot "$venv/bin/python" -m pip install --quiet -e "/src[test]"
  local status=0
  in_chroot /bin/sh -c 'cd /src && exec "$0" -m pytest -p no:cacheprovider "$@"' "$venv/bin/python" "$@" \
    || status=$?
  return "$status"
}

quiet_pip() {  # pip, less its warnings about the configured package folders a machine lacks
  "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}

run_with_pyenv() {  # $1: the interpreter (pyenv's, or the machine's own)
  local venv="$cache/venv-$version"
  [ -x "$venv/bin/python" ] || "$1" -m venv "$venv"
  shift
  quiet_pip "$venv/bin/python" -m pip install --quiet -e "$repo[test]"
  cd "$repo" && "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
}

pyenv_python=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$version".*/bin/python3 2>/dev/null | sort -V | tail -n 1 || true)
if [ "$version" = "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ]; then
  run_with_pyenv "$(command -v python3)" "$@"
elif [ -n "$pyenv_python" ] && [ -z "${ASGIRELOAD_PYTHONS_CHROOT:-}" ]; then
  run_with_pyenv "$pyenv_python" "$@"
else
  run_in_chroot "$@"
fi
