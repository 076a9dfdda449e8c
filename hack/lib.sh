# Shared by the hack/ scripts: install what is missing, print steps. Source it; do not run it.

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# not_installed PKG...: prints those of the Debian packages that are not installed.
not_installed() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

# need_apt PKG...: installs the Debian packages that are not installed yet.
need_apt() {
  local missing
  mapfile -t missing < <(not_installed "$@")
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)"
  step "installing Debian packages: ${missing[*]}"
  if [ ! -f /var/lib/apt/periodic/basalt-updated ] ||
     [ -z "$(find /var/lib/apt/periodic/basalt-updated -mmin -1440 2>/dev/null)" ]; then
    apt-get update -qq
    mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/basalt-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Installing can remove a package that was there (a newer qemu-utils from backports conflicts
  # with Debian's qemu-system-x86): install what is gone again, at versions that fit together.
  mapfile -t missing < <(not_installed "$@")
  [ ${#missing[@]} -eq 0 ] && return 0
  step "installing again what the install removed: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# need_rust: the toolchain pinned in rust-toolchain.toml, with rustfmt and clippy.
need_rust() {
  command -v cargo >/dev/null || {
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  }
  command -v cargo >/dev/null || die "cargo is not installed: install rustup and the toolchain in rust-toolchain.toml"
  # rustup reads rust-toolchain.toml; this fails clearly if the pinned toolchain is absent.
  cargo --version >/dev/null || die "the toolchain pinned in rust-toolchain.toml is not installed"
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
}

# need_docker: Debian's docker.io, and a Docker engine that answers — started here (detached,
# its log in /var/log/basalt-dockerd.log) when none does. Sets BASALT_STARTED_DOCKERD to its
# pid when this started it.
need_docker() {
  need_apt docker.io
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1 && return 0
  step "starting dockerd"
  setsid dockerd </dev/null >/var/log/basalt-dockerd.log 2>&1 &
  BASALT_STARTED_DOCKERD=$!
  for _ in $(seq 1 60); do
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "dockerd did not answer within 30 s: see /var/log/basalt-dockerd.log"
}
