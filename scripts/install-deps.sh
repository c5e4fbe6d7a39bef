#!/usr/bin/env bash
# Installs the Debian packages tally needs, if any is missing:
#   scripts/install-deps.sh dev   what building and running tally needs
#                                 (scripts/dev.sh)
#   scripts/install-deps.sh       that and what the tests, the fuzzers and
#                                 the benchmarks need (scripts/test.sh)
# Safe to run again: it does nothing when everything is present.
set -euo pipefail

# Build and run (compose/Dockerfile installs the same -dev packages;
# test_compose checks that the lists agree).
packages=(
  build-essential cmake pkg-config
  librdkafka-dev librocksdb-dev libavro-dev libcurl4-openssl-dev
  libmicrohttpd-dev libjansson-dev libssl-dev curl
)
# Tests (cmocka, libyaml for test_compose, chromium for test_dashboard's
# headless browser), fuzzers (clang and its sanitizer runtime) and the HTTP
# benchmark (wrk).
test_packages=(
  libcmocka-dev libyaml-dev
  clang libclang-rt-14-dev
  wrk
  python3 python3-kafka python3-avro
  chromium
)
case "${1:-all}" in
  dev) ;;
  all) packages+=("${test_packages[@]}") ;;
  *) echo "usage: $0 [dev]" >&2; exit 2 ;;
esac
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
