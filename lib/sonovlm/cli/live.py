"""``sonovlm live --igtl-in HOST:PORT --igtl-out PORT --organ O``: segment a live ultrasound stream.

Connects to an OpenIGTLink image server (PLUS's, typically on port 18944) and reconnects when it
goes away; segments the newest IMAGE frame (grey or RGB; frames arriving while the model works
are dropped and counted); serves viewers (3D Slicer's OpenIGTLinkIF as a client) on ``--igtl-out``,
bound to 127.0.0.1 unless ``--out-host`` says otherwise, with per frame a labelmap IMAGE
(``--label-device``, the frame's matrix and timestamp) and a STRING of JSON (``--status-device``:
long and short axis in mm, area, confidence, latency, fps, drops). Events (stream stopped or
resumed, geometry changed, connections) are logged and sent on ``--event-device``.

Runs until Ctrl+C (or ``--max-frames`` / ``--duration``), then prints one JSON line of figures:
frames received, processed, dropped, fps, latency p50/p95 in ms, reconnects.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time

from .model_options import add_model_arguments, model_summary, predictor_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "live",
        help="segment a live ultrasound stream from OpenIGTLink (PLUS) and serve the labelmap to Slicer",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--igtl-in", required=True, metavar="HOST:PORT", help="the image stream's server (PLUS)"
    )
    parser.add_argument("--igtl-out", required=True, metavar="PORT", help="port viewers (Slicer) connect to")
    parser.add_argument(
        "--out-host",
        default="127.0.0.1",
        metavar="HOST",
        help="interface to serve viewers on (default 127.0.0.1: this machine only)",
    )
    parser.add_argument("--organ", required=True, help="lymph_node, breast_lesion or thyroid_nodule")
    parser.add_argument(
        "--image-device", metavar="NAME", help="take only IMAGE messages of this device (default any)"
    )
    parser.add_argument("--label-device", default="SonoVLMLabel", metavar="NAME", help="labelmap device name")
    parser.add_argument(
        "--status-device", default="SonoVLMStatus", metavar="NAME", help="measurements device"
    )
    parser.add_argument("--event-device", default="SonoVLMEvent", metavar="NAME", help="events device name")
    parser.add_argument(
        "--smoothing",
        type=float,
        metavar="ALPHA",
        help="temporal smoothing: EMA weight of the newest frame's probability in (0, 1] (default off)",
    )
    parser.add_argument(
        "--stall-s",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds without a frame that mean the stream stopped",
    )
    parser.add_argument(
        "--all-components", action="store_true", help="send every component, not only the measured lesion"
    )
    parser.add_argument(
        "--forward-image",
        action="store_true",
        help="send each segmented frame too (its own device name): viewers show image and labelmap in step",
    )
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames segmented")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default torch's)")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import SonoInputError
    from ..live import LiveService, parse_address
    from ..live.smoothing import check_alpha
    from ..live.transport import check_port
    from ..organs import organ_label

    organ_label(args.organ)
    in_host, in_port = parse_address(args.igtl_in, "--igtl-in")
    out_port = check_port(args.igtl_out, "--igtl-out")
    smoothing = check_alpha(args.smoothing) if args.smoothing is not None else None
    for name in ("max_frames", "duration", "threads"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise SonoInputError(f"--{name.replace('_', '-')}", f"must be positive, got {value}")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    import torch


    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = predictor_from_args(args, feature_cache_bytes=0)
    service = LiveService(
        predictor,
        args.organ,
        in_host,
        in_port,
        out_port,
        out_host=args.out_host,
        image_device=args.image_device,
        smoothing=smoothing,
        stall_s=args.stall_s,
        label_device=args.label_device,
        status_device=args.status_device,
        event_device=args.event_device,
        single_lesion=not args.all_components,
        forward_image=args.forward_image,
    )
    stop = threading.Event()

    def request_stop(signum, frame) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    try:
        service.start(max_frames=args.max_frames)
        print(json.dumps({"listening": f"{service.server.host}:{service.out_port}"}), flush=True)
        while not stop.is_set():
            if service.wait(0.2):
                break
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
    finally:
        stats = service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = {
        "organ": args.organ,
        "igtl_in": f"{in_host}:{in_port}",
        "igtl_out": f"{service.server.host}:{service.out_port}",
        "seconds": round(time.monotonic() - started, 3),
        **stats,
        **model_summary(predictor),
    }
    print(json.dumps(summary), flush=True)
    return 0
