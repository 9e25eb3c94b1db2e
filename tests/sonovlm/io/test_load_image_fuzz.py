"""Mutation fuzzing of :func:`sonovlm.io.load_image`: every input loads or raises SonoInputError.

A deterministic mutation fuzzer driven by NumPy's random generator (case ``i`` always gets the
same mutation), beside the hypothesis property test in ``test_load_image_hypothesis.py``; this
one knows DICOM's structure (lengths, pixel attributes, data elements) and runs in a child
process. The seeds are the three real ultrasound samples of ``tests/data`` plus small compressed
files made by the DICOM factory (JPEG 2000, RLE, JPEG-LS, JPEG baseline) and a cine loop, so the
decoders are fuzzed too.
Mutations: bit flips anywhere, byte overwrites in the header, 4-byte overwrites (lengths), byte
overwrites in the pixel data, truncation, deletion of data elements, and hostile values in the
pixel attributes (rows, bits, photometric, frames, transfer syntax).

The cases run in a child process with a 3 GiB address-space limit: a decoder that crashes the
interpreter or an allocation sized by a corrupt header cannot take pytest down, and the report
names the case that was running. Anything other than success or :class:`SonoInputError` fails
the test with the seed file, mutation and exception of each distinct escape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
FUZZ_SEED = 20261127
CASES = 560
KINDS = (
    "bit_flips",
    "header_bytes",
    "length_bytes",
    "pixel_bytes",
    "truncate",
    "delete_elements",
    "hostile_value",
)

#: Hostile values per pixel attribute (keyword -> candidates).
HOSTILE = {
    "Rows": [0, 1, 65535],
    "Columns": [0, 3, 65535],
    "BitsAllocated": [0, 7, 12, 64],
    "BitsStored": [0, 17, 33],
    "HighBit": [0, 40],
    "SamplesPerPixel": [0, 2, 4],
    "PhotometricInterpretation": ["XYZ", "YBR_FULL", "MONOCHROME1", "PALETTE COLOR", ""],
    "NumberOfFrames": [0, 2, 9999, -1],
    "PlanarConfiguration": [1, 7],
    "PixelRepresentation": [1, 5],
}
HOSTILE_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2", "1.2.3.4"]


def seed_files(folder: Path) -> list[Path]:
    """The real samples plus small compressed and cine files made here."""
    sys.path.insert(0, str(ROOT))
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

    from tests.dicom_factory import bmode_frame, cine_us_dicom, us_dataset, write_dataset

    files = sorted((ROOT / "tests" / "data").glob("*.dcm"))
    frame = bmode_frame(48, 64, seed=1)
    for name, syntax in (("j2k", JPEG2000Lossless), ("rle", RLELossless), ("jls", JPEGLSLossless)):
        files.append(write_dataset(us_dataset(frame, transfer_syntax=syntax), folder / f"{name}.dcm"))
    rgb = np.stack([frame, frame // 2, 255 - frame], axis=-1)
    files.append(
        write_dataset(
            us_dataset(rgb, photometric="YBR_FULL_422", transfer_syntax=JPEGBaseline8Bit), folder / "jpeg.dcm"
        )
    )
    files.append(cine_us_dicom(folder / "cine.dcm", n_frames=3, rows=32, cols=40))
    return files


def mutate(data: bytes, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One mutation of ``data``; returns the bytes and a short description."""
    import io

    import pydicom

    out = bytearray(data)
    size = len(out)
    header_end = min(size, 4096)
    if kind == "bit_flips":
        positions = rng.integers(0, size, int(rng.integers(1, 17)))
        for pos in positions:
            out[pos] ^= 1 << int(rng.integers(0, 8))
        return bytes(out), f"flip bits at {sorted(int(p) for p in positions)[:5]}..."
    if kind == "header_bytes":
        positions = rng.integers(128, header_end, int(rng.integers(1, 9)))
        for pos in positions:
            out[pos] = int(rng.integers(0, 256))
        return bytes(out), f"overwrite header bytes at {sorted(int(p) for p in positions)}"
    if kind == "length_bytes":
        pos = int(rng.integers(132, header_end - 4))
        out[pos : pos + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        return bytes(out), f"overwrite 4 bytes at {pos}"
    if kind == "pixel_bytes":
        start = int(size * 0.4)
        positions = rng.integers(start, size, int(rng.integers(1, 21)))
        for pos in positions:
            out[pos] = int(rng.integers(0, 256))
        return bytes(out), f"overwrite {len(positions)} bytes after {start}"
    if kind == "truncate":
        cut = int(rng.integers(0, size))
        return bytes(out[:cut]), f"truncate at {cut} of {size}"
    dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    if kind == "delete_elements":
        tags = [element.tag for element in dataset]
        chosen = [
            tags[int(i)]
            for i in rng.choice(len(tags), size=min(len(tags), int(rng.integers(1, 4))), replace=False)
        ]
        for tag in chosen:
            del dataset[tag]
        description = f"delete {', '.join(str(t) for t in chosen)}"
    else:  # hostile_value
        if rng.random() < 0.15:
            dataset.file_meta.TransferSyntaxUID = HOSTILE_TRANSFER_SYNTAXES[
                int(rng.integers(len(HOSTILE_TRANSFER_SYNTAXES)))
            ]
            description = f"transfer syntax {dataset.file_meta.TransferSyntaxUID}"
        else:
            keyword = list(HOSTILE)[int(rng.integers(len(HOSTILE)))]
            value = HOSTILE[keyword][int(rng.integers(len(HOSTILE[keyword])))]
            setattr(dataset, keyword, value)
            description = f"{keyword} = {value!r}"
    buffer = io.BytesIO()
    dataset.save_as(buffer, write_like_original=True)
    return buffer.getvalue(), description


def _escape_point(exc: BaseException) -> str:
    """``file:line function`` of the last SonoVLM frame the exception passed through."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}sonovlm{os.sep}" in f.filename] or frames[-1:]
    frame = ours[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"


def run_cases(count: int, progress_path: str, out_path: str) -> None:
    """The child's work: run ``count`` cases, write the tally and the escapes to ``out_path``."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="sonovlm-fuzz-") as folder:
        result = fuzz(Path(folder), count, Path(progress_path))
    Path(out_path).write_text(json.dumps(result))


def fuzz(work: Path, count: int, progress_file: Path) -> dict:
    """Mutate the seeds ``count`` times and load each; ``{"loaded", "refused", "escapes"}``."""
    from sonovlm.errors import SonoInputError
    from sonovlm.io import load_image

    seeds = seed_files(work)
    originals = [path.read_bytes() for path in seeds]
    loaded = refused = 0
    escapes = []
    target = work / "case.dcm"
    for case in range(count):
        index = case % len(seeds)
        kind = KINDS[(case // len(seeds)) % len(KINDS)]
        rng = np.random.default_rng([FUZZ_SEED, case])
        try:
            data, description = mutate(originals[index], kind, rng)
        except Exception as exc:  # a mutation pydicom cannot write is skipped, not a finding
            description, data = f"(mutation not written: {type(exc).__name__})", originals[index]
        target.write_bytes(data)
        progress_file.write_text(
            json.dumps({"case": case, "seed": seeds[index].name, "kind": kind, "what": description})
        )
        try:
            load_image(target)
            loaded += 1
        except SonoInputError:
            refused += 1
        except BaseException as exc:  # the finding: anything else escaping the loader
            escapes.append(
                {
                    "case": case,
                    "seed": seeds[index].name,
                    "kind": kind,
                    "what": description,
                    "exception": type(exc).__name__,
                    "message": str(exc)[:200],
                    "where": _escape_point(exc),
                }
            )
    return {"loaded": loaded, "refused": refused, "escapes": escapes}


def test_load_image_only_raises_sono_input_error(tmp_path):
    progress, out = tmp_path / "progress.json", tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = f"m['run_cases']({CASES}, {str(progress)!r}, {str(out)!r})"
    code = f"import runpy; m = runpy.run_path({str(Path(__file__))!r}); {run}"
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240, cwd=ROOT
    )
    if child.returncode != 0 or not out.exists():
        last = progress.read_text() if progress.exists() else "(none started)"
        raise AssertionError(
            f"the fuzzer's child died (exit {child.returncode}) during case {last}:\n{child.stderr[-3000:]}"
        )
    result = json.loads(out.read_text())
    assert result["loaded"] > CASES // 10 and result["refused"] > CASES // 10, result  # not vacuous
    distinct: dict[tuple[str, str], dict] = {}
    for escape in result["escapes"]:
        distinct.setdefault((escape["kind"], escape["exception"]), escape)
    report = "\n".join(
        f"- {e['exception']} from {e['kind']} of {e['seed']} (case {e['case']}: {e['what']}): "
        f"{e['message']} [{e['where']}]"
        for e in distinct.values()
    )
    assert not result["escapes"], (
        f"{len(result['escapes'])} of {CASES} mutated files escaped load_image with an exception other than "
        f"SonoInputError ({len(distinct)} distinct):\n{report}"
    )
