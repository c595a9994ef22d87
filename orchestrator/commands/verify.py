"""`orch verify BUNDLE...`: check every file of bundles against their manifests.

A BagIt bundle: every payload file against manifest-sha256.txt, the tag files against
tagmanifest-sha256.txt, Payload-Oxum, and the RO-Crate metadata (it parses; every file it names
exists); a bundle made before BagIt: every file against MANIFEST.sha256. Exit 0 when all match;
otherwise name the missing, changed and unexpected files (an added empty folder too) and the
bag-level problems, and exit 1. A path that is not a bundle at all is a usage error (exit 2).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.preserve.manifest import iter_lines
from orchestrator.preserve.verify import verify_bundle


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle folders or archives (.tar, .tar.gz, .tar.zst)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only problems")


def run(args: argparse.Namespace) -> int:
    try:
        results = [verify_bundle(Path(b)) for b in args.bundles]  # usage errors surface before any output
    except OSError as exc:
        raise UserError(f"cannot read {exc.filename or 'the bundle'}: {exc.strerror or exc}") from None
    bad = 0
    for res in results:
        if res.ok:
            if not args.quiet:
                print(f"OK {res.bundle}: {res.checked} files match {len(res.missing) + res.checked} in the manifests")
            continue
        bad += 1
        print(f"FAILED {res.bundle}: {len(res.missing)} missing, {len(res.changed)} changed, "
              f"{len(res.unexpected)} unexpected" + (f", {len(res.problems)} other problems" if res.problems else ""))
        for label, items in (("missing", res.missing), ("changed", res.changed), ("unexpected", res.unexpected),
                             ("problem", res.problems)):
            for line in iter_lines(items, 50):
                print(f"  {label}: {line}")
    return 1 if bad else 0
