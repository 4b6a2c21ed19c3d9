# Shared helpers for the project's scripts (sourced, not run).

# Installs Debian packages that are missing; $1.. are package names.
# Extra apt options can be passed in APT_OPTS.
apt_install_missing() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  export DEBIAN_FRONTEND=noninteractive
  # Without systemd, package scripts must not try to start services.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  if ! apt-get install -y -q --no-install-recommends ${APT_OPTS:-} "${missing[@]}"; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends ${APT_OPTS:-} "${missing[@]}"
  fi
  rm -f /usr/sbin/policy-rc.d
}

# Makes sure cargo is on PATH (rustup's default location included).
ensure_cargo() {
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: installing the Rust toolchain with rustup" >&2
    apt_install_missing curl ca-certificates gcc libc6-dev
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
}

# Sets KEY = VALUE in a libvirt-style config FILE, idempotently.
set_conf() {
  local file=$1 key=$2 value=$3
  touch "$file"
  sed -i -E "/^[[:space:]]*${key}[[:space:]]*=/d" "$file"
  printf '%s = %s\n' "$key" "$value" >> "$file"
}
