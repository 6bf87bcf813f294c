# Sourced by scripts/serve and scripts/test: a Python 3.11+ virtualenv in .venv with the project installed.
# Installs Debian's python3-venv first when this Python cannot create virtualenvs.

ensure_apt_packages() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing Debian packages: ${missing[*]}" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_venv() {  # $1: pip extra ("" or "test")
  local python="${PYTHON:-python3}"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "tornadoproxy needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2; exit 1; }
  if [ ! -x .venv/bin/python ]; then
    "$python" -c 'import ensurepip, venv' 2>/dev/null || ensure_apt_packages python3-venv
    "$python" -m venv .venv
  fi
  local target="."
  [ -n "$1" ] && target=".[$1]"
  # Reinstall only when setup.py, the constraints or the version (tornadoproxy/__init__.py, which
  # setup.py reads) changed since the last install: the package metadata then keeps the version.
  local stamp=".venv/.installed-$1"
  if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ] \
    || [ tornadoproxy/__init__.py -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e "$target"
    touch "$stamp"
  fi
}
