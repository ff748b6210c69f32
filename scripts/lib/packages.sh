# Sourced by the scripts: installs the Debian packages named that are not
# installed yet (as root; otherwise says which are missing and fails).
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
        return 1
    fi
    echo "installing Debian packages: ${missing[*]}"
    # Postfix is wanted for its tools and private test instances only: no
    # system-wide configuration, so the package starts no daemon.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # slapd likewise: no database, no daemon; the tests run their own.
    echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Building: perl and make build the vendored OpenSSL (openssl-src); the
# system's headers serve `--no-default-features` builds.
BUILD_PACKAGES=(pkg-config libssl-dev perl make)
