#!/usr/bin/env python3
"""Every link to a heading in README.md and docs/*.md resolves: "](#a)" to a
heading of the same file, "](X.md#a)" to one of X.md. GitHub's slugs: lowercase,
punctuation dropped but "-" and "_", spaces to "-", a repeated slug gets -1, -2.
Usage: scripts/check-doc-links.py [repo root]. Exit 1 naming each broken link."""
import glob, os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else '.'
def anchors(path):
    seen, out, fence = {}, set(), False
    for line in open(path, encoding='utf-8'):
        if line.lstrip().startswith('```'):
            fence = not fence
            continue
        if fence: continue
        m = re.match(r'^(#{1,6})\s+(.*?)\s*#*\s*$', line)
        if not m: continue
        t = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', m.group(2))
        s = re.sub(r'[^\w\- ]', '', t.strip().lower()).replace(' ', '-')
        n = seen.get(s, 0); seen[s] = n + 1
        out.add(s if n == 0 else f'{s}-{n}')
    return out
files = [os.path.join(root, 'README.md')] + sorted(glob.glob(os.path.join(root, 'docs', '*.md')))
bad = 0; total = 0
for f in files:
    fence = False
    for no, line in enumerate(open(f, encoding='utf-8'), 1):
        if line.lstrip().startswith('```'):
            fence = not fence; continue
        if fence: continue
        line = re.sub(r'`[^`]*`', '', line)  # links in code spans are text
        for target in re.findall(r'\]\(([^)\s]*#[^)\s]+)\)', line):
            path, frag = target.split('#', 1)
            dest = f if path == '' else os.path.normpath(os.path.join(os.path.dirname(f), path))
            if path.startswith('http'): continue
            total += 1
            if not os.path.exists(dest) or frag not in anchors(dest):
                bad += 1
                print(f'{os.path.relpath(f, root)}:{no}: #{frag} -> {os.path.relpath(dest, root)}: no such heading')
print(f'{total} links checked, {bad} broken')
sys.exit(1 if bad else 0)
