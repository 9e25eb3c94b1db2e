"""Static checks of the Slicer extension: its Python runs on Slicer's Pythons (3.9 in Slicer 5.8,
3.12 in 5.10), the client needs nothing outside the standard library, and the panel, the build
files and the catalog entry agree with the code."""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import tokenize
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from slicer_extension_helpers import other_pythons

EXTENSION = Path(__file__).resolve().parents[2] / "slicer_extension"
MODULE = EXTENSION / "SonoVLM"
PYTHON_FILES = sorted(MODULE.rglob("*.py"))

#: Names that appeared in Python 3.10 or later (builtins, typing, stdlib attributes and modules).
NEWER_NAMES = {
    "aiter": "3.10",
    "anext": "3.10",
    "pairwise": "3.10",
    "bit_count": "3.10",
    "TypeAlias": "3.10",
    "ParamSpec": "3.10",
    "Concatenate": "3.10",
    "TypeGuard": "3.10",
    "is_typeddict": "3.10",
    "get_annotations": "3.10",
    "stdlib_module_names": "3.10",
    "EncodingWarning": "3.10",
    "Self": "3.11",
    "LiteralString": "3.11",
    "Never": "3.11",
    "assert_never": "3.11",
    "reveal_type": "3.11",
    "StrEnum": "3.11",
    "ExceptionGroup": "3.11",
    "BaseExceptionGroup": "3.11",
    "TaskGroup": "3.11",
    "file_digest": "3.11",
    "UTC": "3.11",
    "tomllib": "3.11",
    "override": "3.12",
    "batched": "3.12",
}
#: Keyword arguments that appeared in 3.10+: (function name, keyword).
NEWER_KEYWORDS = {
    ("zip", "strict"): "3.10",
    ("dataclass", "slots"): "3.10",
    ("dataclass", "kw_only"): "3.10",
    ("dataclass", "match_args"): "3.10",
    ("bisect", "key"): "3.10",
    ("bisect_left", "key"): "3.10",
    ("bisect_right", "key"): "3.10",
    ("insort", "key"): "3.10",
}


def py39_problems(source: str, name: str = "<source>") -> list[str]:
    """What in ``source`` would not run on Python 3.9 (empty when it runs)."""
    try:
        tree = ast.parse(source, filename=name, feature_version=(3, 9))
    except SyntaxError as error:
        return [f"{name}:{error.lineno}: {error.msg}"]
    problems = []
    future_annotations = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )
    annotation_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None and arg.annotation is not None:
                    annotation_nodes.add(id(arg.annotation))
            if node.returns is not None:
                annotation_nodes.add(id(node.returns))
        elif isinstance(node, ast.AnnAssign):
            annotation_nodes.add(id(node.annotation))

    def union_inside(node: ast.AST) -> bool:
        return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(node))

    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if id(node) in annotation_nodes and not future_annotations and union_inside(node):
            problems.append(f"{name}:{line}: X | Y annotation without 'from __future__ import annotations'")
        if isinstance(node, ast.Call):
            func = node.func
            func_name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if (
                func_name in ("isinstance", "issubclass")
                and len(node.args) == 2
                and union_inside(node.args[1])
            ):
                problems.append(f"{name}:{line}: {func_name}() with an X | Y type (3.10+)")
            for keyword in node.keywords:
                version = NEWER_KEYWORDS.get((func_name, keyword.arg))
                if version:
                    problems.append(f"{name}:{line}: {func_name}({keyword.arg}=...) needs Python {version}")
        if isinstance(node, ast.Name) and node.id in NEWER_NAMES:
            problems.append(f"{name}:{line}: {node.id} needs Python {NEWER_NAMES[node.id]}")
        if isinstance(node, ast.Attribute) and node.attr in NEWER_NAMES:
            problems.append(f"{name}:{line}: .{node.attr} needs Python {NEWER_NAMES[node.attr]}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            )
            imported = [alias.name for alias in node.names] if isinstance(node, ast.ImportFrom) else []
            for module in modules + imported:
                if module.split(".")[0] in NEWER_NAMES or module in NEWER_NAMES:
                    problems.append(
                        f"{name}:{line}: imports {module} (Python {NEWER_NAMES.get(module, '3.10+')})"
                    )
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.BinOp)
            and isinstance(node.value.op, ast.BitOr)
        ):
            # A module-level alias such as `Point = int | None` is evaluated at import time.
            operands = [node.value.left, node.value.right]
            if all(isinstance(o, (ast.Name, ast.Subscript, ast.Attribute, ast.Constant)) for o in operands):
                if any(isinstance(o, ast.Constant) and o.value is None for o in operands) or all(
                    isinstance(o, (ast.Name, ast.Subscript)) and _looks_like_type(o) for o in operands
                ):
                    problems.append(f"{name}:{line}: type alias with X | Y (3.10+)")
    problems.extend(_parenthesized_with(source, tree, name))
    return problems


def _looks_like_type(node: ast.AST) -> bool:
    base = node.value if isinstance(node, ast.Subscript) else node
    return isinstance(base, ast.Name) and (
        base.id[:1].isupper()
        or base.id in {"int", "float", "str", "bytes", "list", "dict", "tuple", "set", "bool"}
    )


def _parenthesized_with(source: str, tree: ast.AST, name: str) -> list[str]:
    """``with (a as x, b as y):`` (3.10+): a '(' right after ``with`` that closes after an ``as``
    target or after a second item."""
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for text in lines:
        offsets.append(offsets[-1] + len(text))
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.With, ast.AsyncWith)):
            continue
        start = offsets[node.lineno - 1] + node.col_offset
        rest = source[start:]
        match = re.match(r"(async\s+)?with\s*\(", rest)
        if not match:
            continue
        open_at = start + match.end() - 1
        depth, close_at = 0, None
        for token in tokenize.generate_tokens(io.StringIO(source[open_at:]).readline):
            if token.type == tokenize.OP and token.string in "([{":
                depth += 1
            elif token.type == tokenize.OP and token.string in ")]}":
                depth -= 1
                if depth == 0:
                    row, col = token.start
                    close_at = (
                        open_at
                        + sum(len(t) for t in source[open_at:].splitlines(keepends=True)[: row - 1])
                        + col
                    )
                    break
        if close_at is None:
            continue
        ends = []
        for item in node.items:
            target = item.optional_vars or item.context_expr
            ends.append(offsets[target.end_lineno - 1] + target.end_col_offset)
        if (
            any(item.optional_vars is not None for item in node.items)
            and ends[0] < close_at
            or (len(node.items) > 1 and ends[-1] < close_at)
        ):
            problems.append(f"{name}:{node.lineno}: parenthesized context managers need Python 3.10")
    return problems


@pytest.mark.parametrize(
    "snippet, needle",
    [
        ("match x:\n    case 1:\n        pass\n", "3.10"),
        ("def f(x: int | None):\n    pass\n", "X | Y annotation"),
        ("from __future__ import annotations\nisinstance(1, int | str)\n", "isinstance"),
        ("from __future__ import annotations\nPoint = tuple[int, int] | None\n", "type alias"),
        ("with (open('a') as f, open('b') as g):\n    pass\n", "parenthesized"),
        ("import itertools\nitertools.pairwise([1, 2])\n", "pairwise"),
        ("for a, b in zip([1], [2], strict=True):\n    pass\n", "strict"),
        ("from dataclasses import dataclass\n@dataclass(slots=True)\nclass A:\n    x: int\n", "slots"),
        ("from typing import Self\n", "Self"),
        ("import tomllib\n", "tomllib"),
    ],
)
def test_checker_catches_310_features(snippet, needle):
    problems = py39_problems(snippet)
    assert problems and any(needle in p for p in problems), problems


@pytest.mark.parametrize(
    "snippet",
    [
        "from __future__ import annotations\ndef f(x: int | None) -> list[int] | None:\n    return None\n",
        "with (open('a')) as f:\n    pass\n",
        "with open('a') as f, open('b') as g:\n    pass\n",
        "x = 3 | 4\nflags = a | b\n",
        "Point = tuple[float, float]\n",
    ],
)
def test_checker_accepts_39_code(snippet):
    assert py39_problems(snippet) == []


@pytest.mark.parametrize("path", PYTHON_FILES, ids=lambda p: str(p.relative_to(MODULE)))
def test_module_files_run_on_python_39(path):
    source = path.read_text(encoding="utf-8")
    assert py39_problems(source, path.name) == []
    assert "from __future__ import annotations" in source  # annotations stay strings on 3.9


def test_client_imports_only_the_standard_library():
    tree = ast.parse((MODULE / "SonoVLMLib" / "client.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, (
                "client.py must not import its siblings: it is copied alone into other tools"
            )
            imported.add((node.module or "").split(".")[0])
    outside = sorted(m for m in imported if m not in sys.stdlib_module_names and m != "__future__")
    assert outside == []
    assert "cgi" not in imported  # removed in Python 3.13


def test_slicer_is_imported_lazily_in_the_library():
    """SonoVLMLib must import outside Slicer: no module-level slicer/vtk/qt imports."""
    for path in sorted((MODULE / "SonoVLMLib").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [(node.module or "").split(".")[0]]
            assert not set(names) & {"slicer", "vtk", "qt", "ctk"}, (
                f"{path.name} imports {names} at module level"
            )


def test_panel_has_every_widget_the_module_uses():
    ui = ElementTree.parse(MODULE / "Resources" / "UI" / "SonoVLM.ui").getroot()
    widgets = {w.get("name"): w.get("class") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.([A-Za-z_]+)", (MODULE / "SonoVLM.py").read_text(encoding="utf-8")))
    assert used and used <= set(widgets), sorted(used - set(widgets))
    declared = {c.findtext("class") for c in ui.iter("customwidget")}
    standard = {c for c in widgets.values() if c.startswith("Q")}
    assert set(widgets.values()) - standard <= declared
    assert widgets["SonoVLM"] == "qMRMLWidget"
    notice = next(w for w in ui.iter("widget") if w.get("name") == "researchNoticeLabel")
    assert "research use only" in notice.find("property/string").text.lower()
    receivers = {
        c.findtext("receiver") for c in ui.iter("connection") if c.findtext("signal").startswith("mrmlScene")
    }
    assert {"volumeSelector", "segmentEditorWidget"} <= receivers


def test_build_files_list_every_module_file_and_resource():
    module_cmake = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"\$\{MODULE_NAME\}(Lib/\w+\.py|\.py)", module_cmake))
    on_disk = {"Lib/" + p.name for p in (MODULE / "SonoVLMLib").glob("*.py")} | {".py"}
    assert listed == on_disk
    assert "slicerMacroBuildScriptedModule" in module_cmake
    for resource in re.findall(r"(Resources/\S+)", module_cmake):
        assert (MODULE / resource.replace("${MODULE_NAME}", "SonoVLM")).is_file(), resource

    top = (EXTENSION / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in (
        "HOMEPAGE",
        "CATEGORY",
        "CONTRIBUTORS",
        "DESCRIPTION",
        "ICONURL",
        "SCREENSHOTURLS",
        "DEPENDS",
    ):
        assert re.search(rf"set\(EXTENSION_{key} \"[^\"]+\"\)", top), key
    for needle in (
        "find_package(Slicer REQUIRED)",
        "add_subdirectory(SonoVLM)",
        "Slicer_EXTENSION_GENERATE_CONFIG",
        "Slicer_EXTENSION_CPACK",
    ):
        assert needle in top


def test_catalog_entry_follows_the_index_schema():
    entry = json.loads((EXTENSION / "SonoVLM.json").read_text(encoding="utf-8"))
    # slicer-extension-catalog-entry-schema v1.0.1: these keys only ("additionalProperties": false).
    allowed = {
        "$schema",
        "build_dependencies",
        "build_subdirectory",
        "category",
        "enabled",
        "scm_revision",
        "scm_type",
        "scm_url",
        "tier",
    }
    assert set(entry) <= allowed
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert "slicer-extension-catalog-entry-schema-v1.0.1.json" in entry["$schema"]
    assert entry["tier"] in (1, 3, 5)
    category = re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', (EXTENSION / "CMakeLists.txt").read_text())
    assert entry["category"] == category.group(1)


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(MODULE / "Resources" / "Icons" / "SonoVLM.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


@pytest.mark.parametrize(
    "python", other_pythons() or [pytest.param(None, marks=pytest.mark.skip("no Python 3.9/3.12/3.13 here"))]
)
def test_module_files_compile_on_slicers_pythons(python, tmp_path):
    """The real interpreters, where this machine has them (3.9 = Slicer 5.8, 3.12 = Slicer 5.10)."""
    script = (
        "import py_compile, sys\n"
        "for path in sys.argv[2:]:\n"
        "    py_compile.compile(path, cfile=sys.argv[1] + '/x.pyc', doraise=True)\n"
    )
    run = subprocess.run(
        [python, "-I", "-c", script, str(tmp_path), *map(str, PYTHON_FILES)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


#: Scene-level calls the widget (``SonoVLMWidget``) must leave to the logic (issue 16 item 5): what
#: it used to do itself and now calls ``SonoVLMLogic``, the session or ``SonoVLMLib`` for. Node
#: creation and removal, IJK/RAS geometry, markups points and place mode, segments, layer choice.
WIDGET_FORBIDDEN = {
    # nodes
    "AddNewNodeByClass": "make nodes in the logic",
    "CreateNodeByClass": "make nodes in the logic",
    "AddNode": "make nodes in the logic",
    "RemoveNode": "remove nodes in the logic",
    "GetSingletonNode": "look singletons up in the logic",
    "GetNodeByID": "look nodes up in the logic",
    "CreateDefaultDisplayNodes": "set nodes up in the logic",
    # geometry
    "GetIJKToRASMatrix": "convert coordinates in the logic (SonoVLMLib.geometry)",
    "GetRASToIJKMatrix": "convert coordinates in the logic (SonoVLMLib.interaction)",
    "SetIJKToRASMatrix": "set geometry in the logic",
    "vtkMatrix4x4": "convert coordinates in the logic",
    "volume_ijk_to_ras": "convert coordinates in the logic",
    "pixel_points_to_ras": "convert coordinates in the logic",
    "ras_to_ijk_matrix": "convert coordinates in the logic",
    "ras_to_voxels": "convert coordinates in the logic",
    "control_points_ras": "read points in the logic (PromptMarkups.placed)",
    # markups and place mode
    "AddControlPoint": "place points in the logic (PromptMarkups.show)",
    "RemoveAllControlPoints": "place points in the logic (PromptMarkups.show)",
    "SetActivePlaceNodeID": "start place mode in the logic (PromptMarkups.start_placing)",
    "SetReferenceActivePlaceNodeClassName": "start place mode in the logic",
    "SetPlaceModePersistence": "start place mode in the logic",
    "SetCurrentInteractionMode": "start place mode in the logic",
    "SwitchToViewTransformMode": "stop place mode in the logic (PromptMarkups.stop_placing)",
    # segments and measurements
    "GetSegmentation": "read segments in the logic (AnnotationSession.measure_shown)",
    "AddEmptySegment": "make segments in the logic",
    "find_segment": "find segments in the logic",
    "remove_axes": "draw or remove the axes in the logic",
    "apply_mask": "build segmentations in the logic",
    "scene_logic": "call SonoVLMLogic or the session, not the scene logic behind them",
    # volumes' kinds and pixels
    "IsA": "decide by node class in the logic (LiveLogic.view_layers)",
    "GetImageData": "read pixels in the logic",
    "updateVolumeFromArray": "write pixels in the logic",
    "arrayFromVolume": "read pixels in the logic",
}


def scene_calls_in_class(source: str, class_name: str) -> list[str]:
    """``line: name (why)`` for every use of a :data:`WIDGET_FORBIDDEN` name (an attribute, a
    name or an import) inside class ``class_name`` of ``source``."""
    tree = ast.parse(source)
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    assert found, f"no class {class_name} in the source"
    problems = []
    for node in ast.walk(found[0]):
        names = []
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name.split(".")[-1] for alias in node.names]
        problems += [
            f"{node.lineno}: {name} ({WIDGET_FORBIDDEN[name]})" for name in names if name in WIDGET_FORBIDDEN
        ]
    return sorted(set(problems), key=lambda p: int(p.split(":")[0]))


@pytest.mark.parametrize(
    "snippet, needle",
    [
        (
            "class W:\n    def f(self):\n        slicer.mrmlScene.AddNewNodeByClass('x')\n",
            "AddNewNodeByClass",
        ),
        ("class W:\n    def f(self, v):\n        v.GetIJKToRASMatrix(m)\n", "GetIJKToRASMatrix"),
        ("class W:\n    def f(self):\n        m = vtk.vtkMatrix4x4()\n", "vtkMatrix4x4"),
        (
            "class W:\n    def f(self):\n        from SonoVLMLib.geometry import volume_ijk_to_ras\n",
            "volume_ijk_to_ras",
        ),
        ("class W:\n    def f(self):\n        self.session.scene_logic.select_frame(c, 1)\n", "scene_logic"),
        ("class W:\n    def f(self, n):\n        slicer.mrmlScene.RemoveNode(n)\n", "RemoveNode"),
    ],
)
def test_the_widget_checker_catches_scene_work(snippet, needle):
    problems = scene_calls_in_class(snippet, "W")
    assert problems and needle in problems[0]
    # Outside the class (the logic, the self-test) the same code is fine.
    assert scene_calls_in_class(snippet.replace("class W", "class L") + "class W:\n    pass\n", "W") == []


def test_the_widget_leaves_node_and_geometry_work_to_the_logic():
    """The Slicer widget keeps to UI (Slicer's scripted-module template: the logic does the work,
    the widget wires the panel): no node made or removed, no IJK/RAS matrix, no points placed,
    no segment read in ``SonoVLMWidget``."""
    source = (MODULE / "SonoVLM.py").read_text(encoding="utf-8")
    assert scene_calls_in_class(source, "SonoVLMWidget") == []
