"""``sonovlm models list|rollback VERSION [--model-dir DIR]``: published server models.

``list`` shows every published version, oldest first, the served one marked ``*`` (``--json`` for
one JSON object: ``{"model_dir", "current", "models": [{"version", "published_at", "source",
"metrics", "current", "available"}]}``). ``rollback VERSION`` makes an earlier version current
again; a running server picks it up within seconds (its next request at the latest).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: Where ``monailabel start_server --app monailabel_app`` publishes by default.
DEFAULT_MODEL_DIR = Path("monailabel_app") / "model"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list published server models, or roll back to one",
        description=__doc__.splitlines()[0],
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show published versions (the served one marked *)")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    rollback = actions.add_parser("rollback", help="serve an earlier published version again")
    rollback.add_argument("version", metavar="VERSION", help="a version shown by `sonovlm models list`")
    for sub in (listing, rollback):
        sub.add_argument(
            "--model-dir",
            type=Path,
            default=DEFAULT_MODEL_DIR,
            help=f"the server's model_dir (default {DEFAULT_MODEL_DIR})",
        )
    parser.set_defaults(func=run)


def _metric_text(metrics: dict) -> str:
    shown = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()]
    return ", ".join(shown)


def run(args: argparse.Namespace) -> int:
    from ..app.model_store import ModelStore
    from ..errors import SonoInputError

    if not args.model_dir.is_dir():
        raise SonoInputError(args.model_dir, "no such model directory (the server's --conf model_dir)")
    store = ModelStore(args.model_dir)

    if args.action == "rollback":
        model = store.rollback(args.version)
        print(f"serving {model.version} (published {model.published_at}, {model.source})")
        return 0

    history = store.history()
    current = store.current()
    if args.json:
        payload = {
            "model_dir": str(args.model_dir),
            "current": current.version if current else None,
            "models": [
                {
                    "version": m.version,
                    "published_at": m.published_at,
                    "source": m.source,
                    "metrics": m.metrics,
                    "current": m.current,
                    "available": m.exists,
                }
                for m in history
            ],
        }
        print(json.dumps(payload, indent=2))
        return 0
    if not history:
        print(f"no published models in {args.model_dir}")
        return 0
    for m in history:
        mark = "*" if m.current else " "
        state = "" if m.exists else "  (checkpoint pruned)"
        print(f"{mark} {m.version}  {m.published_at}  {m.source}  {_metric_text(m.metrics)}{state}")
    return 0
