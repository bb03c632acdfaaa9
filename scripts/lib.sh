# Shared by scripts/up and scripts/test: find or install what webstack needs on Debian.

# Ensures a Rust toolchain; explains how to get one when it is missing.
need_cargo() {
    if command -v cargo >/dev/null 2>&1; then return 0; fi
    if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; return 0; fi
    echo "webstack needs a Rust toolchain (cargo, Rust 1.85 or newer)." >&2
    echo "Install it with rustup (https://rustup.rs), or on Debian 13: apt-get install cargo" >&2
    exit 1
}

# Installs Debian packages that provide the given commands, when they are missing.
# Usage: need_packages command:package ...   (NO_RECOMMENDS=1: without recommended packages)
need_packages() {
    local missing=()
    for pair in "$@"; do
        local cmd=${pair%%:*} pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
    done
    install_packages "${missing[@]}"
}

# Installs Debian packages that provide the given modules of Debian's Python (/usr/bin/python3),
# when they are missing. Usage: need_python_modules module:package ...
need_python_modules() {
    local missing=()
    for pair in "$@"; do
        local module=${pair%%:*} pkg=${pair#*:}
        /usr/bin/python3 -c "import $module" >/dev/null 2>&1 || missing+=("$pkg")
    done
    install_packages "${missing[@]}"
}

# Installs these Debian packages (apt-get; sudo when not root), or says how to.
install_packages() {
    local missing=("$@")
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
        echo "webstack needs these Debian packages: ${missing[*]}" >&2
        echo "Install them with: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing ${missing[*]} (apt-get)" >&2
    local extra=()
    [ "${NO_RECOMMENDS:-0}" = 1 ] && extra+=(--no-install-recommends)
    # Deduplicated: one package may provide several of the commands.
    local unique
    mapfile -t unique < <(printf '%s\n' "${missing[@]}" | sort -u)
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${extra[@]}" "${unique[@]}" >/dev/null
}
