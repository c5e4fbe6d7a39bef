#!/usr/bin/env bash
# Installs the Debian packages tally builds and tests with, if any is missing.
# Safe to run again: it does nothing when everything is present.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  librdkafka-dev librocksdb-dev libavro-dev libcurl4-openssl-dev
  libmicrohttpd-dev libjansson-dev libssl-dev libcmocka-dev libyaml-dev
  clang libclang-rt-14-dev
  wrk
  python3 python3-kafka python3-avro
)
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
