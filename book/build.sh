#!/usr/bin/env bash
# Build the companion book into <repo>/_build/html, strictly: any Sphinx
# warning (a missing figure or table, a broken reference) fails the build.
#
# Usage: book/build.sh            (the Makefile's `make book` calls this)
# Env:   JUPYTER_BOOK  path to the jupyter-book executable (default: the
#                      repository's .venv, then whatever is on PATH)
#
# The pages read their numbers and figures from book/_generated/, written by
# the pipeline's summary stage (notebooks/06_summary); without a pipeline run,
# book/assemble.py makes them from the committed records (records/cpu/,
# records/study/). No results and no records, no book.
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

# The Python that has lsslib: the repository's .venv, else the one beside jupyter-book.
if [[ -x "$root/.venv/bin/python" ]]; then
  PYTHON="$root/.venv/bin/python"
elif [[ -x "$(dirname "$JUPYTER_BOOK")/python" ]]; then
  PYTHON="$(dirname "$JUPYTER_BOOK")/python"
else
  PYTHON="$(command -v python3)"
fi

# book/assemble.py puts the inputs in order: without pipeline results it makes them from
# the committed records of the cpu profile (records/cpu/); it runs the study notebook on
# records/study/ (the study page's tables and figures, and the appendix's 07_study); it
# writes the short speed table; it cleans the executed notebooks (progress bars as their
# last line, no widgets, no local paths).
"$PYTHON" "$book/assemble.py" "$root"

if [[ ! -f "$book/_generated/run_info.md" ]]; then
  echo "book/build.sh: $book/_generated/ holds no results." >&2
  echo "  Run the pipeline first (its summary stage writes book/_generated/)," >&2
  echo "  or copy a results artifact there." >&2
  exit 1
fi

# The study page (study.md) reads the study's tables, made by book/assemble.py from
# records/study/ (committed, so a checkout has them). A copy of the book without
# records/ (the book tests) must bring its own _generated/study/.
if [[ ! -f "$book/_generated/study/effects.md" ]]; then
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
