#!/usr/bin/env bash
# Checks the code map (README, "Code map"): data flows one way,
#   cli -> http -> consumers -> producers -> cluster, store -> billing ->
#   schema -> base,
# so no #include in a module folder names a header of a folder above it (or
# of a sibling at its own level), and no source file is over 1,250 lines.
# Given the built library (CTest passes libtally_core.a), it also checks
# that every symbol the library exports carries the tly_ or tally_ prefix:
# a file's private helpers are static, a module's shared ones are prefixed.
# Run by CTest (layout.check); prints every violation and exits 1 on any.
set -uo pipefail
cd "$(dirname "$0")/.."
declare -A rank=([base]=0 [schema]=1 [billing]=2 [store]=3 [cluster]=3
                 [producers]=4 [consumers]=5 [http]=6 [cli]=7)
declare -A home
for folder in "${!rank[@]}"; do
  for header in "$folder"/*.h; do
    [ -e "$header" ] && home[$(basename "$header")]=$folder
  done
done
status=0
for folder in "${!rank[@]}"; do
  for file in "$folder"/*.[ch]; do
    [ -e "$file" ] || continue
    lines=$(wc -l < "$file")
    if [ "$lines" -gt 1250 ]; then
      echo "$file: $lines lines (at most 1,250: split it by what a change touches together)"
      status=1
    fi
    while read -r header; do
      target=${home[$header]:-}
      [ -n "$target" ] || continue          # a system or generated header
      [ "$target" = "$folder" ] && continue
      if [ "${rank[$target]}" -ge "${rank[$folder]}" ]; then
        echo "$file includes $target/$header: $folder/ may include only folders below it"
        status=1
      fi
    done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$file")
  done
done
if [ -n "${1:-}" ]; then
  while read -r symbol; do
    echo "$1 exports $symbol: shared names carry the tly_ (or tally_) prefix"
    status=1
  done < <(nm -g --defined-only "$1" | awk '$2 ~ /^[TDBRC]$/ {print $3}' |
           grep -v '^tly_\|^tally_\|^__' | sort -u)
fi
[ "$status" -eq 0 ] && echo "layout: every include runs down, every file within 1,250 lines, every export prefixed"
exit "$status"
