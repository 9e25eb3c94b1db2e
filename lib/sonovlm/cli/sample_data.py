"""``sonovlm sample-data DIR [--count N] [--seed S]``: write a studies folder of simulated cases.

DIR becomes a MONAI Label studies folder: ``<id>.dcm`` simulated B-mode ultrasound DICOMs with a
calibrated region, ``labels/final/<id>.png`` lesion masks for about half of them, and
``cases.csv`` (``id,organ,pathology,labelled``). The same seed writes the same bytes. A folder that
already holds studies is refused, never overwritten. See :mod:`sonovlm.sample_data`.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample-data",
        help="write simulated ultrasound studies (lymph node, breast, thyroid) for the demo and tests",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "directory", metavar="DIR", help="studies folder to create (must not hold studies yet)"
    )
    parser.add_argument("--count", type=int, default=24, metavar="N", help="number of cases (default 24)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..sample_data import write_sample_studies

    cases = write_sample_studies(args.directory, count=args.count, seed=args.seed)
    labelled = sum(case.labelled for case in cases)
    organs = {}
    for case in cases:
        organs[case.organ] = organs.get(case.organ, 0) + 1
    kinds = ", ".join(f"{n} {organ}" for organ, n in organs.items())
    print(f"wrote {len(cases)} simulated cases ({kinds}; {labelled} labelled) to {args.directory}")
    return 0
