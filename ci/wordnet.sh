#!/usr/bin/env bash
# Installs Debian's wordnet-base (the WordNet 3.0 database under /usr/share/wordnet) unless it is
# already there. The WordNet test (bin/tests/wordnet.rs), `sutra import --format wordnet` and
# `sutra bench api` read it.
set -euo pipefail
if [ -f /usr/share/wordnet/data.noun ]; then
  echo "wordnet-base: already installed"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends wordnet-base
test -f /usr/share/wordnet/data.noun
echo "wordnet-base: installed"
