#!/usr/bin/env bash
# Build the companion book into <repo>/_build/html, strictly: any Sphinx
# warning (a missing figure or table, a broken reference) fails the build.
#
# Usage: book/build.sh            (the Makefile's `make book` calls this)
# Env:   JUPYTER_BOOK  path to the jupyter-book executable (default: the
#                      repository's .venv, then whatever is on PATH)
#
# The pages read their numbers and figures from book/_generated/, written by
# the pipeline's summary stage (notebooks/06_summary). No results, no book.
set -euo pipefail

book="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$book")"

if [[ -z "${JUPYTER_BOOK:-}" ]]; then
  if [[ -x "$root/.venv/bin/jupyter-book" ]]; then
    JUPYTER_BOOK="$root/.venv/bin/jupyter-book"
  elif command -v jupyter-book >/dev/null; then
    JUPYTER_BOOK="$(command -v jupyter-book)"
  else
    echo "book/build.sh: jupyter-book not found (pip install 'jupyter-book>=1.0.4.post1,<2')" >&2
    exit 1
  fi
fi

if [[ ! -f "$root/_config.yml" ]]; then
  echo "book/build.sh: $root/_config.yml is missing" >&2
  exit 1
fi

if [[ ! -f "$book/_generated/run_info.md" ]]; then
  echo "book/build.sh: $book/_generated/ holds no results." >&2
  echo "  Run the pipeline first (its summary stage writes book/_generated/)," >&2
  echo "  or copy a results artifact there." >&2
  exit 1
fi

# The study page (study.md) reads the study's records of record (make study writes
# records/study/; they are committed, so a checkout has them). A copy of the book
# without records/ (the book tests) must bring its own _generated/study/.
if [[ -f "$root/records/study/study/effects.md" ]]; then
  rm -rf "$book/_generated/study"
  mkdir -p "$book/_generated/study"
  cp "$root"/records/study/study/*.md "$root"/records/study/study/*.csv \
    "$root"/records/study/study/*.png "$book/_generated/study/"
elif [[ ! -f "$book/_generated/study/effects.md" ]]; then
  echo "book/build.sh: no study tables in $root/records/study/study/ (run make study)" >&2
  exit 1
fi

"$book/vendor_mathjax.sh"

# --all: warnings of unchanged pages would otherwise not be re-emitted, and -W
# would pass on a stale environment.
"$JUPYTER_BOOK" build "$book" \
  --config "$root/_config.yml" \
  --toc "$book/_toc.yml" \
  --path-output "$root" \
  --all -W --keep-going "$@"

echo "book/build.sh: built $root/_build/html/index.html"
