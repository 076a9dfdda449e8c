# Shared by the hack/ scripts: install what is missing, print steps. Source it; do not run it.

# Each step says when it began (the clock time), so a slow run shows where its time went.
step() { printf '\n==> %s (%s)\n' "$*" "$(date +%T)"; }
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

# need_go: a `go` command that can build the stack (stack/, built by the image build). The stack
# pins its toolchain (GOTOOLCHAIN=go1.26.8, image/src/stack.rs); any Go from 1.21 on fetches
# that version from the Go module proxy by itself, the ordinary route. Debian 12's own Go (1.19)
# predates that, so a machine without Go gets Debian's golang-1.23 from bookworm-backports.
# Exports BASALT_GO, the go command the build runs.
need_go() {
  local go
  # The Go module proxy is reached over https: Debian's CA bundle (a minimal system lacks it).
  need_apt ca-certificates
  for go in "$(command -v go || true)" /usr/local/go/bin/go /usr/lib/go-1.2[1-9]/bin/go; do
    [ -n "$go" ] && [ -x "$go" ] || continue
    # `go env GOVERSION` exists from 1.16 on; 1.21's added GOTOOLCHAIN.
    case "$(GOTOOLCHAIN=local "$go" env GOVERSION 2>/dev/null)" in
      go1.2[1-9]*|go1.[3-9][0-9]*) export BASALT_GO="$go"; return 0 ;;
    esac
  done
  [ "$(id -u)" -eq 0 ] || die "no Go 1.21 or newer: install one (Debian's golang-1.23-go from bookworm-backports)"
  local list=/etc/apt/sources.list.d/basalt-backports.sources
  if [ ! -f "$list" ]; then
    step "adding bookworm-backports ($list) for Debian's golang-1.23"
    cat >"$list" <<EOS
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
    rm -f /var/lib/apt/periodic/basalt-updated
  fi
  need_apt golang-1.23-go
  export BASALT_GO=/usr/lib/go-1.23/bin/go
  step "Go: $BASALT_GO, which fetches the stack's pinned toolchain from the Go module proxy"
}

# need_stack_tools: what building the stack needs: Go; gcc, libc and libseccomp's static
# library for runc and pause.
need_stack_tools() {
  need_go
  need_apt gcc libc6-dev libseccomp-dev pkg-config
}

# need_stack: the stack itself, built once into the cache (`osctl image stack`; from cold it
# takes the time docs/kubernetes.md gives, then it is cached by its pins).
need_stack() {
  need_stack_tools
  step "the Go-built stack: containerd, runc, CNI plugins, etcd, Kubernetes, CoreDNS (cached by its pins; built once)"
  cargo run -q --locked -p osctl -- image stack
}
