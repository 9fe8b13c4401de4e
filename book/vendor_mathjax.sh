#!/usr/bin/env bash
# Vendor MathJax 3 (CommonHTML output + TeX input) into book/_vendor/mathjax so the
# built book typesets math offline. Idempotent: does nothing when already present.
# The folder is copied to the HTML root through Sphinx's html_extra_path.
set -euo pipefail

MATHJAX_VERSION="${MATHJAX_VERSION:-3.2.2}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$here/_vendor/mathjax"
stamp="$dest/.version"

if [[ -f "$dest/tex-chtml.js" && -f "$stamp" && "$(cat "$stamp")" == "$MATHJAX_VERSION" ]]; then
  exit 0
fi

command -v npm >/dev/null || { echo "vendor_mathjax.sh: npm is needed to fetch mathjax@$MATHJAX_VERSION" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "mathjax@$MATHJAX_VERSION" >/dev/null)
tarball="$(ls "$tmp"/mathjax-*.tgz)"
# Only what the pages need: the tex-chtml component, its woff-v2 fonts, and the
# TeX extensions that the autoload component may pull in on demand.
tar -xzf "$tarball" -C "$tmp" \
  package/es5/tex-chtml.js \
  package/es5/output/chtml/fonts/woff-v2 \
  package/es5/input/tex/extensions \
  package/LICENSE

rm -rf "$dest"
mkdir -p "$dest"
cp -r "$tmp/package/es5/." "$dest/"
cp "$tmp/package/LICENSE" "$dest/LICENSE"
echo "$MATHJAX_VERSION" > "$stamp"
echo "vendor_mathjax.sh: mathjax@$MATHJAX_VERSION -> $dest"
