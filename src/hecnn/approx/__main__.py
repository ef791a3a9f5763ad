"""``python -m hecnn.approx --write-cache [--alpha A …]``: regenerate ``coeffs_cache.json``."""

from __future__ import annotations

import argparse

from hecnn.approx.composite import CACHE_PATH, write_cache


def main() -> None:
    ap = argparse.ArgumentParser(description="Generate the composite sign coefficient cache.")
    ap.add_argument("--write-cache", action="store_true", help=f"(re)write {CACHE_PATH.name}")
    ap.add_argument("--alpha", type=int, nargs="*", help="only these α (default 4…14)")
    args = ap.parse_args()
    if not args.write_cache:
        ap.print_help()
        return
    for a, e in write_cache(args.alpha):
        print(
            a,
            e["degrees"],
            e["depth"],
            f"eps={e['eps']:.4g}",
            f"relu 2^{e['relu_error_log2']:.3f}",
            f"transition 2^{e['relu_error_transition_log2']:.3f}",
            f"max 2^{e['max_error_log2']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
