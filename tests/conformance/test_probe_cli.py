"""``chainsuite probe``: exit statuses, outputs that parse, one-line errors, no tracebacks.

The contract is the command's own help text (0 with a chain; 1 when the rules refuse the
chain, the first word on stderr a stable error code; 2 for a usage error) and DESIGN.md's
"nothing in the suite ends in a traceback on bad input". Expected chains come from the rules
(libvirt-rules.md §3.1, §3.8; image-formats.md §2.7) and, where marked, from qemu-img itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.cli import PROFILE_NAMES, main
from simulator.formats import qcow2
from simulator.model import ErrorCode
from simulator.profiles import PROFILES

MIB = 1024 * 1024
ERROR_CODES = {code.value for code in ErrorCode}
REPO = Path(__file__).resolve().parents[2]


def qcow2_file(path: Path, backing: str | None = None, backing_format: str | None = None) -> Path:
    name = backing.encode() if backing is not None else None
    path.write_bytes(
        qcow2.encode(qcow2.Qcow2Image(MIB, name, backing_format, version=3, cluster_bits=9))
    )
    return path


@pytest.fixture
def pair(tmp_path: Path) -> Path:
    """top.qcow2 → base.raw (relative name, format raw recorded)."""
    (tmp_path / "base.raw").write_bytes(bytes(MIB))
    return qcow2_file(tmp_path / "top.qcow2", "base.raw", "raw")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv) in-process: its exit status (argparse's SystemExit included), stdout, stderr."""
    try:
        status = main(list(argv))
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def command() -> list[str]:
    """The installed console script, else the module run by this interpreter."""
    script = Path(sys.executable).with_name("chainsuite")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "conformance.cli"]


def run_process(*argv: str | bytes, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*command(), *argv],
        capture_output=True,
        cwd=cwd or REPO,
        check=False,
        timeout=120,
    )


def assert_one_error_line(err: str, code: ErrorCode | None = None) -> str:
    """stderr holds exactly one line, ``<code>: <message>``; returns the message."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    word, _, message = lines[0].partition(": ")
    assert word in ERROR_CODES, lines[0]
    if code is not None:
        assert word == code.value
    assert message
    return message


def human_images(out: str) -> list[str]:
    return [line.removeprefix("image: ") for line in out.splitlines() if line.startswith("image: ")]


# --------------------------------------------------------------------------- exit 0


def test_json_output_is_the_chain_top_first(capsys, pair):
    status, out, err = run(capsys, "probe", str(pair), "--format", "qcow2", "--output", "json")
    assert status == 0
    assert err == ""
    layers = json.loads(out)
    base = f"{pair.parent}/base.raw"  # libvirt: dirname(parent) + "/" + name (§3.6)
    assert [(layer["filename"], layer["format"]) for layer in layers] == [
        (str(pair), "qcow2"),
        (base, "raw"),
    ]
    assert layers[0]["backing-filename"] == "base.raw"
    assert layers[0]["backing-filename-format"] == "raw"
    assert layers[0]["full-backing-filename"] == base
    assert layers[0]["virtual-size"] == MIB
    assert "backing-filename" not in layers[1]


def test_human_output_lists_each_image_and_the_chain_length(capsys, pair):
    status, out, err = run(capsys, "probe", str(pair), "-f", "qcow2", "-p", "libvirt-modern")
    assert status == 0
    assert err == ""
    assert human_images(out) == [str(pair), f"{pair.parent}/base.raw"]
    assert "file format: qcow2" in out
    assert "backing file: base.raw" in out
    assert "backing file format: raw" in out
    assert out.rstrip().splitlines()[-1] == "chain: 2 layer(s), end terminated"


def test_libvirt_modern_never_probes_an_unspecified_top(capsys, pair):
    """§3.1: a top format left unspecified is raw; the chain is that one image."""
    status, out, _ = run(capsys, "probe", str(pair), "--output", "json")
    assert status == 0
    layers = json.loads(out)
    assert [(layer["filename"], layer["format"]) for layer in layers] == [(str(pair), "raw")]


def test_qemu_profile_probes_an_unspecified_top(capsys, pair):
    status, out, _ = run(capsys, "probe", str(pair), "--profile", "qemu", "--output", "json")
    assert status == 0
    assert [layer["format"] for layer in json.loads(out)] == ["qcow2", "raw"]


@pytest.mark.qemu_img
@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_qemu_profile_json_matches_qemu_img_info_backing_chain(tmp_path):
    """The keys chainsuite shares with qemu-img carry the same values for the same chain."""
    (tmp_path / "base.raw").write_bytes(bytes(MIB))
    qcow2_file(tmp_path / "mid.qcow2", "base.raw", "raw")
    qcow2_file(tmp_path / "top.qcow2", "mid.qcow2", "qcow2")
    qemu = subprocess.run(
        ["qemu-img", "info", "--backing-chain", "--output=json", "top.qcow2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    ours = run_process("probe", "top.qcow2", "--profile", "qemu", "--output", "json", cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr
    keys = (
        "filename",
        "format",
        "virtual-size",
        "backing-filename",
        "full-backing-filename",
        "backing-filename-format",
    )

    def shared(layers: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{key: layer.get(key) for key in keys} for layer in layers]

    assert shared(json.loads(ours.stdout)) == shared(json.loads(qemu.stdout))


@pytest.mark.qemu_img
@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_qemu_profile_probes_below_an_empty_recorded_format_as_qemu_img_does(tmp_path):
    (tmp_path / "base.raw").write_bytes(bytes(MIB))
    image = bytearray(qcow2.encode(qcow2.Qcow2Image(MIB, b"base.raw", "raw", cluster_bits=9)))
    extension = image.index(b"raw\0") - 8  # the backing-format extension's type field
    image[extension + 4 : extension + 8] = bytes(4)  # its length: 0
    (tmp_path / "top.qcow2").write_bytes(bytes(image))
    qemu = subprocess.run(
        ["qemu-img", "info", "--backing-chain", "--output=json", "top.qcow2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = [(layer["filename"], layer["format"]) for layer in json.loads(qemu.stdout)]
    assert expected == [("top.qcow2", "qcow2"), ("base.raw", "raw")]
    ours = run_process("probe", "top.qcow2", "--profile", "qemu", "--output", "json", cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr
    assert [(layer["filename"], layer["format"]) for layer in json.loads(ours.stdout)] == expected


# --------------------------------------------------------------------------- exit 1


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_missing_top_exits_1_with_one_line_naming_not_found(capsys, tmp_path, profile):
    missing = str(tmp_path / "gone.qcow2")
    status, out, err = run(capsys, "probe", missing, "--profile", profile)
    assert status == 1
    assert out == ""
    assert missing in assert_one_error_line(err, ErrorCode.NOT_FOUND)


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_json_error_document_on_stdout(capsys, tmp_path, profile):
    missing = str(tmp_path / "gone.qcow2")
    status, out, err = run(capsys, "probe", missing, "-p", profile, "-o", "json", "-f", "qcow2")
    assert status == 1
    message = assert_one_error_line(err, ErrorCode.NOT_FOUND)
    document = json.loads(out)
    assert set(document) == {"error"}
    assert document["error"]["code"] == "not-found"
    assert document["error"]["message"] == message


def test_missing_backing_exits_1_with_backing_missing(capsys, tmp_path):
    top = qcow2_file(tmp_path / "top.qcow2", "gone.raw", "raw")
    status, out, err = run(capsys, "probe", str(top), "-f", "qcow2", "-o", "json")
    assert status == 1
    assert_one_error_line(err, ErrorCode.BACKING_MISSING)
    assert json.loads(out)["error"]["code"] == "backing-missing"


def test_self_loop_under_qemu_is_backing_loop(capsys, tmp_path, monkeypatch):
    """image-formats.md §2.4: `Backing file 'self.qcow2' creates an infinite loop.`"""
    qcow2_file(tmp_path / "self.qcow2", "self.qcow2", "qcow2")
    monkeypatch.chdir(tmp_path)
    status, _, err = run(capsys, "probe", "self.qcow2", "--profile", "qemu")
    assert status == 1
    message = assert_one_error_line(err, ErrorCode.BACKING_LOOP)
    assert message == "Backing file 'self.qcow2' creates an infinite loop."


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_error_for_a_name_with_a_newline_is_still_one_stderr_line(capsys, tmp_path, profile):
    missing = str(tmp_path / "two\nlines.qcow2")
    status, _, err = run(capsys, "probe", missing, "--profile", profile)
    assert status == 1
    assert_one_error_line(err, ErrorCode.NOT_FOUND)


def test_cli_profile_choices_are_the_simulators_profiles():
    """The CLI keeps its own copy of the names (start-up time); it must not drift."""
    assert tuple(PROFILES) == PROFILE_NAMES


# --------------------------------------------------------------------------- exit 2


@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "x.qcow2", "--profile", "libvirt-2.0"],
        ["probe"],
        ["probe", "x.qcow2", "--output", "xml"],
        [],
        ["unknown-command"],
    ],
    ids=["unknown-profile", "missing-path", "unknown-output", "no-command", "unknown-command"],
)
def test_usage_errors_exit_2_with_usage_on_stderr(capsys, argv):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert "usage: chainsuite" in err
    assert "Traceback" not in err


def test_usage_error_in_a_real_process_exits_2(tmp_path):
    done = run_process("probe", str(tmp_path), "--profile", "no-such-profile")
    assert done.returncode == 2
    assert done.stdout == b""
    assert b"usage: chainsuite" in done.stderr
    assert b"invalid choice: 'no-such-profile'" in done.stderr
    assert b"Traceback" not in done.stderr


# --------------------------------------------------------------------------- garbage


def _garbage(tmp_path: Path) -> dict[str, str]:
    random_file = tmp_path / "random.img"
    random_file.write_bytes(bytes.fromhex("514649fb00000003") + os.urandom(3000))
    short_vmdk = tmp_path / "short.vmdk"
    short_vmdk.write_bytes(b"KDMV")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(70000))
    directory = tmp_path / "a-directory"
    directory.mkdir()
    return {
        "random-after-qcow2-magic": str(random_file),
        "random-64k": str(noise),
        "magic-only-vmdk": str(short_vmdk),
        "directory": str(directory),
        "dev-null": os.devnull,
    }


GARBAGE = ["random-after-qcow2-magic", "random-64k", "magic-only-vmdk", "directory", "dev-null"]


@pytest.mark.parametrize("output", ["human", "json"])
@pytest.mark.parametrize("format", [None, "qcow2", "vmdk"], ids=["unspecified", "qcow2", "vmdk"])
@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize("kind", GARBAGE)
def test_garbage_input_gives_a_chain_or_one_error_line(
    capsys, tmp_path, kind, profile, format, output
):
    path = _garbage(tmp_path)[kind]
    argv = ["probe", path, "--profile", profile, "--output", output]
    if format is not None:
        argv += ["--format", format]
    status, out, err = run(capsys, *argv)
    assert status in (0, 1), err
    assert "Traceback" not in err + out
    if status == 0:
        assert err == ""
        if output == "json":
            assert json.loads(out)[0]["filename"] == path
        else:
            assert human_images(out)[0] == path
    else:
        message = assert_one_error_line(err)
        if output == "json":
            assert json.loads(out)["error"]["message"] == message
        else:
            assert out == ""


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_garbage_in_a_real_process_never_ends_in_a_traceback(tmp_path, profile):
    for path in _garbage(tmp_path).values():
        for output in ("human", "json"):
            done = run_process("probe", path, "-p", profile, "-o", output, "-f", "qcow2")
            assert done.returncode in (0, 1), done.stderr
            assert b"Traceback" not in done.stderr
            if done.returncode == 1:
                assert len(done.stderr.splitlines()) == 1
                code = done.stderr.split(b": ", 1)[0].decode()
                assert code in ERROR_CODES
            if output == "json":
                json.loads(done.stdout)


NON_UTF8 = b"\xff\xfe-disk.qcow2"


@pytest.mark.parametrize("output", ["human", "json"])
def test_non_utf8_file_name_in_a_real_process(tmp_path, output):
    """A name that is not UTF-8 is shown escaped; the chain is still read."""
    directory = os.fsencode(tmp_path)
    top = directory + b"/" + NON_UTF8
    (tmp_path / "base.raw").write_bytes(bytes(MIB))
    with open(top, "wb") as handle:
        handle.write(qcow2.encode(qcow2.Qcow2Image(MIB, b"base.raw", "raw", cluster_bits=9)))
    done = run_process("probe", top, "-f", "qcow2", "-o", output)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    if output == "json":
        layers = json.loads(done.stdout)
        assert os.fsencode(layers[0]["filename"]) == top
        assert layers[1]["filename"] == f"{tmp_path}/base.raw"
    else:
        text = done.stdout.decode("utf-8")
        assert "\\udcff\\udcfe-disk.qcow2" in text
        assert text.rstrip().endswith("chain: 2 layer(s), end terminated")


@pytest.mark.parametrize("output", ["human", "json"])
@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_non_utf8_missing_file_in_a_real_process_is_one_error_line(tmp_path, profile, output):
    missing = os.fsencode(tmp_path) + b"/" + NON_UTF8
    done = run_process("probe", missing, "-p", profile, "-o", output)
    assert done.returncode == 1
    assert b"Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(b"not-found: ")
    if output == "json":
        assert json.loads(done.stdout)["error"]["code"] == "not-found"


def test_non_utf8_file_name_in_process(capsys, tmp_path):
    top = os.fsdecode(os.fsencode(tmp_path) + b"/" + NON_UTF8)
    (tmp_path / "base.raw").write_bytes(bytes(MIB))
    with open(top, "wb") as handle:
        handle.write(qcow2.encode(qcow2.Qcow2Image(MIB, b"base.raw", "raw", cluster_bits=9)))
    status, out, err = run(capsys, "probe", top, "-f", "qcow2")
    assert status == 0, err
    assert "\\udcff\\udcfe-disk.qcow2" in out


# --------------------------------------------------------------------------- depth


CHAIN_LENGTH = 1000


@pytest.fixture(scope="module")
def deep_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """layer0.qcow2 → layer1.qcow2 → … → layer999.qcow2, relative names, format qcow2."""
    directory = tmp_path_factory.mktemp("deep")
    for index in range(CHAIN_LENGTH):
        last = index == CHAIN_LENGTH - 1
        backing = None if last else f"layer{index + 1}.qcow2"
        qcow2_file(directory / f"layer{index}.qcow2", backing, None if last else "qcow2")
    return directory / "layer0.qcow2"


def test_qemu_lists_a_1000_layer_chain(capsys, deep_chain):
    """image-formats.md §2.7: qemu has no depth limit (1001 entries observed)."""
    status, out, err = run(capsys, "probe", str(deep_chain), "--profile", "qemu", "-o", "json")
    assert status == 0, err
    layers = json.loads(out)
    directory = deep_chain.parent
    assert [layer["filename"] for layer in layers] == [
        f"{directory}/layer{index}.qcow2" for index in range(CHAIN_LENGTH)
    ]
    assert all(layer["format"] == "qcow2" for layer in layers)


def test_qemu_lists_a_1000_layer_chain_in_human_output(capsys, deep_chain):
    status, out, _ = run(capsys, "probe", str(deep_chain), "--profile", "qemu")
    assert status == 0
    assert len(human_images(out)) == CHAIN_LENGTH
    assert out.rstrip().endswith(f"chain: {CHAIN_LENGTH} layer(s), end terminated")


@pytest.mark.parametrize("output", ["human", "json"])
def test_libvirt_modern_refuses_a_1000_layer_chain_as_too_deep(capsys, deep_chain, output):
    """§3.2/§3.8: recursion starts at depth 1 for the top; depth > 200 fails with
    "backing store for %s is self-referential or too deeply nested", %s the 201st image."""
    assert PROFILES["libvirt-modern"].max_depth == 200
    argv = ["probe", str(deep_chain), "-p", "libvirt-modern", "-f", "qcow2", "-o", output]
    status, out, err = run(capsys, *argv)
    assert status == 1
    message = assert_one_error_line(err, ErrorCode.TOO_DEEP)
    layer200 = f"{deep_chain.parent}/layer200.qcow2"
    assert message == f"backing store for {layer200} is self-referential or too deeply nested"
    if output == "json":
        assert json.loads(out)["error"]["code"] == "too-deep"


def test_1000_layer_chain_in_a_real_process(deep_chain):
    done = run_process("probe", str(deep_chain), "--profile", "qemu", "--output", "json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == CHAIN_LENGTH
    refused = run_process("probe", str(deep_chain), "--profile", "libvirt-modern", "-f", "qcow2")
    assert refused.returncode == 1
    assert refused.stderr.startswith(b"too-deep: ")
    assert len(refused.stderr.splitlines()) == 1
